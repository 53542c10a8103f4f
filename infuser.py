"""infuser.py -- the INFUSER loop: prompts, question parsing, one iteration, the PPO updates.

One iteration (spec §1.4, checklist §10.1), all of it in `run_iteration`:

  1 dev rollouts        the solver answers every dev question n_solver times; graded (None counts as 0)
  2 question drafting   the generator writes n_gen candidate questions per document; each response is
                        parsed into at most one question (last schema-valid JSON, spec §2.4) or a counted
                        rejection; accepted choices are shuffled with a seeded RNG
  3 solver rollouts     the solver answers each valid question n_solver times; graded against the key
  4 influence           score_q = preconditioned cosine between the AdamW-preconditioned per-question
                        gradient and the dev gradient (influence.py), on the PRE-update solver with its
                        existing optimizer state; zero-variance questions score 0
  5 generator reward    R = s_q for valid questions, gen_invalid_penalty otherwise (spec §5.1); documents
                        whose rewards are all equal are dropped (§5.2); DuGRPO advantages (§6)
  6 generator update    PPO-clip x token TIS, global token-mean normaliser, grad clip 1.0 (§3.6, §6)
  7 solver update       Dr.GRPO advantages over the non-constant question groups, stratified by document,
                        minibatches of whole groups, recomputed old log-probs, same loss (§3.5-3.8)

The paper's baselines and ablations are configuration values, not code paths:
  fix_generator            fixed generator (never updated; no influence computed)
  dev_only                 RLVR on the dev rollouts themselves (no generator)
  similarity_mode          dot | cosine | preconditioned_dot | preconditioned_cosine
  generator_normalization  none | group_std | batch_std | hybrid_std (DuGRPO)
  generator_reward         influence | spice (exp(-(p(1-p) - 0.25)^2 / 0.02)) | uncertainty (min(p, 1-p))
  question_source          a JSONL of pre-generated questions (a frozen external generator)
  solver_mid_eos_penalty   the INFUSER+RLVR recipe's penalty for answers that stop without an answer

Distributed: every rank owns its share of documents (and so of questions) and dev questions; the few
small things the maths needs globally (rewards and ids for advantages, token counts for normalisers,
the minibatch plan) are all-gathered. World size 1 runs the same code. Sampling seeds derive from global
ids, so a run gives the same samples on any number of ranks.

Left out (spec §10.2): curriculum refresh, seeded-dev generation, solver filter modes, decoupled
(GDPO) rewards, quantification modes, the formatting bonus, several gen loops per ans loop.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

import dugrpo
import influence
from evaluate import LETTERS, grade, key_letter, math_equal, solver_messages
from rollout import Rollouts, Sample, SamplingParams, make_rollouts

# ----------------------------------------------------------------------------------------------
# Prompts for the generator (own words; structure of spec §2.2). The solver's prompt lives in
# evaluate.py so that evaluation measures exactly what training optimises.

GENERATOR_SYSTEM_PROMPT = (
    "You are an experienced examiner who writes difficult multiple-choice questions. You always end your "
    "answer with valid JSON in exactly the structure you are asked for.")

GENERATOR_MCQ_PROMPT = """Write one challenging exam question based on the document between the markers.

[DOCUMENT START]
{document}
[DOCUMENT END]

How to write it:
1. Pick material that lets you combine several ideas: a process with several steps, a comparison, a calculation with more than one quantity, or a principle applied to a new situation. Avoid single facts, definitions, lists and numbers that can simply be looked up.
2. Make it hard: a good answer needs at least three reasoning steps and cannot be found by matching words in the text.
3. Make it self-contained: never mention the document, the passage or the text; define every term and symbol a reader needs; do not give away the key steps.
4. Give between 4 and 8 answer choices (6 to 8 for complex questions) of similar length and in consistent units. Build the wrong choices from typical mistakes: slips in a calculation, reasoning that stops halfway, related ideas confused.
5. Solve the question yourself. If a choice is too easy to rule out, or fewer than three steps are needed, rewrite it.

End with one JSON object and nothing after it:
{{"question_text": "...", "choices": ["...", "...", "...", "..."], "ground_truth": "<the exact text of the correct choice>", "difficulty": "hard", "reasoning_steps": ["..."]}}
Write the choices without letters in front. If the document cannot support a hard question, give the same keys with empty strings."""

GENERATOR_FREE_FORM_PROMPT = """Write one challenging math problem based on the document between the markers.

[DOCUMENT START]
{document}
[DOCUMENT END]

The problem must be self-contained (never mention the document), need several reasoning steps, and have one exact final answer that can be written as a single mathematical expression (a number, a fraction, an expression in LaTeX).

End with one JSON object and nothing after it:
{{"question_text": "...", "ground_truth": "<the final answer as one expression>", "benchmark_type": "qa_open"}}"""


def generator_messages(document: str, route: str = "mcq") -> list[dict]:
    """Chat messages [system, user] asking the generator for one question about `document`."""
    if route not in ("mcq", "free_form"):
        raise ValueError(f"unknown question route {route!r}: use 'mcq' or 'free_form'")
    template = GENERATOR_MCQ_PROMPT if route == "mcq" else GENERATOR_FREE_FORM_PROMPT
    return [{"role": "system", "content": GENERATOR_SYSTEM_PROMPT},
            {"role": "user", "content": template.format(document=document.strip())}]


# ----------------------------------------------------------------------------------------------
# Parsing generator output into questions (spec §2.4)

@dataclass
class Question:
    """A generated (or loaded) question. `choices` None means free-form. `answer` is what the solver is
    graded against: the key's letter in the displayed (shuffled) order for multiple choice, the ground
    truth expression for free-form. `rejected` is None for a valid question, else the reason."""
    text: str
    choices: list[str] | None
    ground_truth: str
    answer: str
    doc_id: str
    qid: str
    rejected: str | None = None


REJECT_REASONS = ("no_json", "bad_schema", "empty_question", "invalid_ground_truth", "prompt_too_long")
MAX_PARSE_CHARS = 200_000          # longer outputs are not scanned at all (counted as no_json)
BRUTE_FORCE_CHARS = 16_384         # spec §2.4: the raw_decode fallback only on short texts


def _json_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every top-level balanced {...} span, skipping braces inside JSON strings."""
    spans, depth, start, in_str, esc = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append((start, i + 1))
    return spans


_VALID_ESCAPES = set('"\\/bfnrtu')


def fix_json_escapes(s: str) -> str:
    r"""Repair LaTeX backslashes inside JSON text: "\\" is kept; \b \f \n \r \t followed by a letter are
    LaTeX (\frac, \theta, \nu, ...) and are doubled; any other invalid escape (\alpha, \sum) is doubled."""
    out, i = [], 0
    while i < len(s):
        ch = s[i]
        if ch != "\\" or i + 1 >= len(s):
            out.append(ch)
            i += 1
            continue
        nxt = s[i + 1]
        if nxt == "\\":
            out.append("\\\\")
            i += 2
        elif nxt in "bfnrt" and i + 2 < len(s) and s[i + 2].isalpha():
            out.append("\\\\")
            i += 1
        elif nxt not in _VALID_ESCAPES:
            out.append("\\\\")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _loads(span: str):
    for candidate in (fix_json_escapes(span), span):
        try:
            obj = json.loads(candidate)
            if isinstance(obj, dict):
                return obj
        except (json.JSONDecodeError, RecursionError):
            pass
    return None


def _scalar(x) -> bool:
    return isinstance(x, (str, int, float)) and not isinstance(x, bool)


def _normalise(obj: dict):
    """(text, choices or None, ground truth) from a parsed object, or a reject reason string."""
    if "question_text" not in obj or "ground_truth" not in obj:
        return "bad_schema"
    text, key, choices = obj["question_text"], obj["ground_truth"], obj.get("choices")
    if isinstance(text, list) and all(_scalar(t) for t in text):
        text = " ".join(str(t) for t in text)
    if not _scalar(text) or not _scalar(key):
        return "bad_schema"
    if isinstance(choices, dict):
        choices = [choices[k] for k in sorted(choices, key=str)]         # {"A": ..., "B": ...} -> list
    if choices is None:
        choices = []
    if not isinstance(choices, list) or not all(_scalar(c) for c in choices):
        return "bad_schema"
    choices = [str(c).strip() for c in choices]
    if choices:
        if not 4 <= len(choices) <= 8:
            return "bad_schema"
    elif obj.get("benchmark_type") != "qa_open" and obj.get("choices") != []:
        return "bad_schema"
    return str(text).strip(), (choices or None), str(key).strip()


def parse_question(response: str, doc_id: str, row: int, seed: int = 0, route: str = "mcq") -> Question:
    """One generator response -> a Question (valid, or with `rejected` set). Never raises."""
    qid_base = f"gen_{doc_id}_{row}"
    bad = lambda why, text="": Question(text, None, "", "", doc_id, qid_base, rejected=why)
    if not isinstance(response, str) or len(response) > MAX_PARSE_CHARS:
        return bad("no_json")
    text = re.sub(r"<think>.*?</think>", "", response, flags=re.DOTALL)
    text = re.sub(r"```(?:json)?", "", text)
    parsed = [(s, _loads(text[s:e])) for s, e in _json_spans(text)]
    parsed = [(s, o) for s, o in parsed if o is not None]
    if not parsed and len(text) <= BRUTE_FORCE_CHARS:       # e.g. an object cut short by a later brace
        dec = json.JSONDecoder()
        for pos in [m.start() for m in re.finditer(r"\{", text)][:8]:
            for cand in (fix_json_escapes(text[pos:]), text[pos:]):
                try:
                    obj, _ = dec.raw_decode(cand)
                except (json.JSONDecodeError, RecursionError):
                    continue
                if isinstance(obj, dict):
                    parsed.append((pos, obj))
                    break
    if not parsed:
        return bad("no_json")
    norm = [_normalise(o) for _, o in sorted(parsed, key=lambda x: x[0])]
    good = [n for n in norm if not isinstance(n, str)]
    if not good:
        return bad("bad_schema")
    qtext, choices, key = good[-1]                            # the last schema-valid object wins
    qid = f"{qid_base}_{hashlib.md5(qtext.encode()).hexdigest()[:8]}"
    if not qtext:
        return Question(qtext, choices, key, "", doc_id, qid, rejected="empty_question")
    if not key:
        return Question(qtext, choices, key, "", doc_id, qid, rejected="invalid_ground_truth")
    if choices is None:
        if route != "free_form" or math_equal(key, key) is not True:   # key must parse as math
            return Question(qtext, None, key, "", doc_id, qid, rejected="invalid_ground_truth")
        return Question(qtext, None, key, key, doc_id, qid)
    if key not in choices:                                    # then case- and whitespace-insensitive
        fold = lambda s: " ".join(s.split()).lower()
        match = [c for c in choices if fold(c) == fold(key)]
        if not match:
            return Question(qtext, choices, key, "", doc_id, qid, rejected="invalid_ground_truth")
        key = match[0]
    choices = list(choices)
    rng = random.Random(f"{seed}:{qid}")                     # seeded shuffle: position-bias removal
    rng.shuffle(choices)
    return Question(qtext, choices, key, LETTERS[choices.index(key)], doc_id, qid)
