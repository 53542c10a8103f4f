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
from evaluate import LETTERS, grade, math_parseable, solver_messages
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


REJECT_REASONS = ("no_json", "bad_schema", "bad_encoding", "empty_question", "invalid_ground_truth",
                  "prompt_too_long")
MAX_PARSE_CHARS = 200_000          # longer outputs are not scanned at all (counted as no_json)
BRUTE_FORCE_CHARS = 16_384         # the fallback scan only on texts this short (official value) ...
BRUTE_FORCE_STARTS = 8             # ... and from its first 8 "{" only


def _json_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every top-level balanced {...} span. A '"' opens a string at any depth (as in the
    official scanner), and braces inside strings do not count."""
    spans, depth, start, in_str, esc = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if esc:
            esc = False
        elif in_str:
            if ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
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


def fix_json_escapes(s: str) -> str:
    r"""Repair LaTeX backslashes inside JSON text, as the official parser does: "\\" is kept; \" and \/
    are kept; \b \f \n \r \t are kept unless an ASCII letter follows (then they are LaTeX: \frac, \theta,
    \nu, and are doubled); every other backslash (\alpha, \sum, and \u too) is doubled. A backslash
    before a line break is left alone."""
    out, i = [], 0
    while i < len(s):
        ch = s[i]
        nxt = s[i + 1] if i + 1 < len(s) else ""
        if ch != "\\" or nxt in ("", "\n"):
            out.append(ch)
            i += 1
        elif nxt == "\\" or nxt in '"/' or (nxt in "bfnrt" and not _ascii_letter(s[i + 2:i + 3])):
            out.append(s[i:i + 2])
            i += 2
        else:
            out.append("\\\\")
            i += 1
    return "".join(out)


def _ascii_letter(c: str) -> bool:
    return len(c) == 1 and ("a" <= c <= "z" or "A" <= c <= "Z")


def _loads(text: str, whole: bool):
    """The JSON object that is `text` (whole=False: that starts it) or None; the repaired text first, the
    raw text second. Any failure (bad JSON, nesting too deep, a >4300-digit integer) is None."""
    for candidate in (fix_json_escapes(text), text):
        try:
            obj = json.loads(candidate) if whole else json.JSONDecoder().raw_decode(candidate)[0]
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _string_field(v, allow_list: bool = False) -> str | None:
    """A model-written scalar as a string (official `_normalize_string_field`): strings, numbers (and
    booleans, which Python counts as numbers: "True"), a list of scalars joined by spaces where allowed,
    the value of a one-key dict."""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return str(v)
    if allow_list and isinstance(v, list) and all(isinstance(x, (str, int, float)) for x in v):
        return " ".join(str(x) for x in v)
    if isinstance(v, dict) and len(v) == 1 and isinstance(next(iter(v.values())), (str, int, float)):
        return str(next(iter(v.values())))
    return None


def _choices(v) -> list[str] | None:
    """Choices as a list of strings: a list of scalars, or a dict read A, B, C, ... (either case) up to
    the first missing letter. None when an item is not a scalar or v is anything else."""
    if isinstance(v, dict):
        items = []
        for letter in LETTERS:
            if letter not in v and letter.lower() not in v:
                break
            items.append(v[letter] if letter in v else v[letter.lower()])
        v = items
    if not isinstance(v, list):
        return None
    out = [_string_field(x) for x in v]
    return None if any(x is None for x in out) else out


def _free_form(obj: dict) -> bool:
    return str(obj.get("benchmark_type", "") or "").strip().lower() == "qa_open" or obj.get("choices") == []


def _schema_ok(obj: dict) -> bool:
    """The official structure check: question_text and ground_truth present, and 4-8 choices or a free-
    form marker (benchmark_type "qa_open", any case, or "choices": [])."""
    if "question_text" not in obj or "ground_truth" not in obj:
        return False
    choices = _choices(obj.get("choices"))
    return 4 <= len(choices) <= 8 if choices else _free_form(obj)


def _strip_think(text: str) -> str:
    """Remove every <think>...</think> block (the first </think> after each <think>), in linear time."""
    out, pos = [], 0
    while (i := text.find("<think>", pos)) >= 0 and (j := text.find("</think>", i + 7)) >= 0:
        out.append(text[pos:i])
        pos = j + 8
    out.append(text[pos:])
    return "".join(out)


def _encodable(*texts: str) -> bool:
    try:
        for t in texts:
            t.encode("utf-8")
        return True
    except UnicodeEncodeError:                               # a lone surrogate such as \ud800
        return False


def parse_question(response: str, doc_id: str, row: int, seed: int = 0, route: str = "mcq") -> Question:
    """One generator response -> a Question (valid, or with `rejected` set). Never raises; linear time.

    The official parser's decisions (`question_parser.py`: `extract_thinking_and_json`,
    `parse_generated_question_response`, `parse_generated_questions`): <think> blocks and code fences
    are removed; every balanced top-level {...} that parses as JSON (LaTeX escapes repaired first) is a
    candidate, and only when none parses, the objects starting at the first 8 '{' of a text of at most
    16,384 characters; the last candidate that passes the structure check is taken, and rejected if its
    question text or key is not a scalar. Multiple choice (4-8 choices): the key must equal a choice, or
    equal one trimmed and case-insensitively; choices are then shuffled (seeded here, from the run seed
    and the question id). Free-form (benchmark_type "qa_open" or no choices) is accepted on every route,
    as officially, when math-verify parses its key (`math_parseable`). `route` picks the prompt, not the
    parse. Departures, for a loop that must not crash or stall: outputs over MAX_PARSE_CHARS are not
    scanned (no_json); integers of more than 4,300 digits make a candidate unparseable (the official
    parser raises); text with a lone surrogate is rejected as bad_encoding (it cannot be logged)."""
    qid_base = f"gen_{doc_id}_{row}"
    bad = lambda why: Question("", None, "", "", doc_id, qid_base, rejected=why)
    if not isinstance(response, str) or len(response) > MAX_PARSE_CHARS:
        return bad("no_json")
    text = re.sub(r"```\s*", "", re.sub(r"```json\s*", "", _strip_think(response))).strip()
    found = [(s, o) for s, e in _json_spans(text) if (o := _loads(text[s:e], whole=True)) is not None]
    if not found and len(text) <= BRUTE_FORCE_CHARS:        # e.g. an object cut short by a later brace
        starts = [i for i, ch in enumerate(text) if ch == "{"][:BRUTE_FORCE_STARTS]
        found = [(s, o) for s in starts if (o := _loads(text[s:], whole=False)) is not None]
    if not found:
        return bad("no_json")
    valid = [(s, o) for s, o in found if _schema_ok(o)]
    if not valid:
        return bad("bad_schema")
    obj = max(valid, key=lambda x: x[0])[1]                  # the last schema-valid object wins
    qtext, key = _string_field(obj["question_text"], allow_list=True), _string_field(obj["ground_truth"])
    if qtext is None or key is None:
        return bad("bad_schema")
    choices = _choices(obj.get("choices")) or None
    if not _encodable(qtext, key, *(choices or [])):
        return bad("bad_encoding")
    qid = f"{qid_base}_{hashlib.md5(qtext.encode()).hexdigest()[:8]}"
    reject = lambda why: Question(qtext, choices, key, "", doc_id, qid, rejected=why)
    if not qtext.strip():
        return reject("empty_question")
    if not key.strip():
        return reject("invalid_ground_truth")
    if choices is None:
        if math_parseable(key) is not True:                   # math-verify must read the key
            return reject("invalid_ground_truth")
        return Question(qtext, None, key, key, doc_id, qid)
    if key not in choices:                                    # then trimmed and case-insensitively
        match = [c for c in choices if c.strip().lower() == key.strip().lower()]
        if not match:
            return reject("invalid_ground_truth")
        key = match[0]
    choices = list(choices)
    random.Random(f"{seed}:{qid}").shuffle(choices)          # seeded shuffle: position-bias removal
    return Question(qtext, choices, key, LETTERS[choices.index(key)], doc_id, qid)


# ----------------------------------------------------------------------------------------------
# Data: documents in the order the paper draws them (spec §2.1)

class DocumentStream:
    """Doc ids shuffled once with random.Random(seed); sequential batches; at the end of an epoch the
    remainder is taken, the list is reshuffled with the same RNG, and the batch is filled from the start
    of the new order. state_dict() / load_state_dict() make resume exact."""

    def __init__(self, documents: list[dict], seed: int):
        self.documents = documents
        self.rng = random.Random(seed)
        self.order = list(range(len(documents)))
        self.rng.shuffle(self.order)
        self.pos, self.epoch = 0, 0

    def next_batch(self, size: int) -> list[dict]:
        out = []
        while len(out) < size:
            take = self.order[self.pos:self.pos + size - len(out)]
            out += take
            self.pos += len(take)
            if self.pos >= len(self.order):
                self.rng.shuffle(self.order)
                self.pos, self.epoch = 0, self.epoch + 1
        return [self.documents[i] for i in out]

    def state_dict(self) -> dict:
        return {"order": self.order, "pos": self.pos, "epoch": self.epoch, "rng": self.rng.getstate()}

    def load_state_dict(self, s: dict) -> None:
        self.order, self.pos, self.epoch = list(s["order"]), s["pos"], s["epoch"]
        st = s["rng"]
        self.rng.setstate((st[0], tuple(st[1]), st[2]))


# ----------------------------------------------------------------------------------------------
# Distributed glue: a few lines, no-ops at world size 1

def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_objects(x) -> list:
    """[x of rank 0, x of rank 1, ...] (just [x] at world size 1)."""
    rank, world = rank_world()
    if world == 1:
        return [x]
    out = [None] * world
    dist.all_gather_object(out, x)
    return out


def all_sum(values: list[float]) -> list[float]:
    """Elementwise sum over ranks of a short list of numbers, in float64."""
    t = torch.tensor(values, dtype=torch.float64)
    if rank_world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def seed_for(*parts) -> int:
    """A stable 63-bit seed from any parts (run seed, iteration, role, global id, ...)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


# ----------------------------------------------------------------------------------------------
# Roles and the batches that flow between phases

@dataclass
class Role:
    """One of the two co-evolving copies: the trained model, its AdamW, and an engine that samples with
    the role's latest weights. `sync` (None for an engine that samples the training model itself) pushes
    the weights into the engine before every rollout (spec §1.5)."""
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    engine: object
    tokenizer: object
    sync: object = None

    def sample(self, prompts: list[list[dict]], params: SamplingParams, seeds: list[int]) -> list[list[Sample]]:
        # an engine with a sleep mode (vLLM on CUDA) holds its memory only while it samples: the updates
        # in between run with its weights on the CPU and its KV cache freed (the memory plan assumes so)
        wake, sleep = getattr(self.engine, "wake_up", None), getattr(self.engine, "sleep", None)
        if wake is not None:
            wake()
        if self.sync is not None:
            self.sync()
        # called even with no prompts: under FSDP2 the engine's weight gather is a collective
        out = self.engine.generate(prompts, params, seeds=seeds)
        if sleep is not None:
            sleep()
        return out


@dataclass
class Graded:
    """Samples of a set of prompts with their grades: group g = one prompt, n samples each."""
    samples: list[Sample] = field(default_factory=list)      # flat, prompt-major
    group_ids: list[int] = field(default_factory=list)       # global id of each sample's prompt
    correct: list[float] = field(default_factory=list)       # 1/0 (None counted as 0)
    rewards: list[float] = field(default_factory=list)       # correct (+ mid-EOS penalty)
    grade_seconds: float = 0.0                                # time spent in grade() (timed apart)

    def rollouts(self, pad_id: int, rewards: list[float] | None = None) -> Rollouts:
        return make_rollouts(self.samples, self.group_ids, self.rewards if rewards is None else rewards, pad_id)


def solve(role: Role, cfg, items: list, gids: list[int], it: int, tag: str) -> Graded:
    """The solver answers each item (anything with .text/.question, .choices, .answer) cfg.n_solver times."""
    params = SamplingParams(n=cfg.n_solver, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.solver_max_new_tokens, seed=None)
    prompts = [solver_messages(_qtext(x), x.choices) for x in items]
    outs = role.sample(prompts, params, [seed_for(cfg.seed, it, tag, g) for g in gids])
    eos = role.tokenizer.eos_token_id
    out = Graded()
    tick = time.perf_counter()
    for x, g, samples in zip(items, gids, outs):
        meta = getattr(x, "meta", None) or {}
        how = dict(source=getattr(x, "source", None), answer_type=meta.get("answer_type"), unit=meta.get("unit"))
        for s in samples:
            score = grade(s.text, x.answer, x.choices, **how)
            c = 1.0 if score == 1.0 else 0.0
            r = c
            # spec §2.6: no extractable answer although the model stopped by itself (EOS, not truncation)
            if cfg.solver_mid_eos_penalty and score is None and s.finish_reason == "stop" \
                    and s.response_ids and s.response_ids[-1] == eos:
                r += cfg.solver_mid_eos_penalty
            out.samples.append(s)
            out.group_ids.append(g)
            out.correct.append(c)
            out.rewards.append(r)
    out.grade_seconds = time.perf_counter() - tick
    return out


def _qtext(x) -> str:
    return x.text if hasattr(x, "text") else x.question


# ----------------------------------------------------------------------------------------------
# Generator rewards (spec §5) and the solver-side alternatives of the paper's baselines

def question_reward(kind: str, correct: list[float], score: float) -> float:
    """Reward of one valid question from its solver rollouts' correctness and its influence score."""
    p = sum(correct) / len(correct)
    if kind == "influence":
        return score
    if kind == "spice":                   # SPICE-style: peaks at a 50% solve rate (spec §5.3)
        return math.exp(-((p * (1 - p) - 0.25) ** 2) / 0.02)
    if kind == "uncertainty":             # R-Zero-style: min(p, 1 - p)
        return min(p, 1.0 - p)
    raise ValueError(f"unknown generator_reward {kind!r}: influence | spice | uncertainty")


# ----------------------------------------------------------------------------------------------
# The PPO update shared by both roles (spec §3.6-3.8, §6)

def stratify_by_doc(groups: list[tuple[int, str]]) -> list[int]:
    """Order question groups so that questions of one document are spread evenly (spec §3.7): the j-th of
    a document's k questions goes to ideal position (j + 0.5) / k; ties keep first-seen document order.
    groups: [(group id, doc id)] -> group ids in the new order."""
    by_doc, first = {}, {}
    for i, (g, d) in enumerate(groups):
        by_doc.setdefault(d, []).append(g)
        first.setdefault(d, i)
    keyed = [((j + 0.5) / len(gs), first[d], j, g) for d, gs in by_doc.items() for j, g in enumerate(gs)]
    return [g for *_, g in sorted(keyed)]


def micro_step(model, cfg, mb: Rollouts, adv: torch.Tensor, lp_old: torch.Tensor | None, normaliser: float,
               scale: float):
    """One micro-batch of a PPO update: forward, the loss of eq. (3), backward into .grad (times `scale`).
    lp_old None = on-policy (pi_old is this forward's detached log-probs). Returns (loss, stats)."""
    lp = dugrpo.token_logprobs(model, mb.input_ids, mb.attention_mask, cfg.temperature, mb.response_mask)
    lp_old = lp.detach() if lp_old is None else lp_old
    loss, st = dugrpo.policy_loss(lp, lp_old, adv, mb.response_mask, normaliser,
                                  sampler_logprobs=mb.sampler_logprobs, tis_cap=cfg.tis_cap,
                                  clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip)
    (loss * scale).backward()
    return loss, st


def ppo_update(role: Role, cfg, rollouts: Rollouts, advantages: torch.Tensor, group_order: list[int],
               lr_name: str) -> dict:
    """One PPO update over `rollouts` (this rank's rows) in minibatches of cfg.ppo_minibatch_groups whole
    groups, following the global `group_order` (identical on every rank). Returns logged statistics.

    Loss per minibatch M: sum_{i in M} sum_t mask * w_t * L_t / (B * L_bar) with B = groups per minibatch x
    rollouts per group (the configured minibatch size in responses) and L_bar the mean response length of
    the whole update batch over all ranks: constant within the update, so a partial last minibatch gets
    less weight (spec §3.6). Under FSDP2 the loss is multiplied by the world size (FSDP averages).
    """
    model, opt = role.model, role.optimizer
    device = next(model.parameters()).device
    rank, world = rank_world()
    n_rows, n_tok = all_sum([len(rollouts), rollouts.response_mask.sum().item()])
    if n_rows == 0:
        return {}
    group_size = cfg.n_solver if role.name == "solver" else cfg.n_gen
    normaliser = dugrpo.token_mean_normaliser(None, cfg.ppo_minibatch_groups * group_size, (n_tok, n_rows))
    sharded = any(hasattr(p, "full_tensor") for p in model.parameters())
    scale = float(world) if sharded else 1.0
    minibatches = [group_order[i:i + cfg.ppo_minibatch_groups]
                   for i in range(0, len(group_order), cfg.ppo_minibatch_groups)]
    gid = rollouts.group_ids
    rows_of = [torch.isin(gid, torch.tensor(mb, dtype=gid.dtype)).nonzero().squeeze(-1) for mb in minibatches]
    # every rank must run the same number of forward/backward passes (FSDP2 collectives inside)
    passes = [max(math.ceil(c / cfg.micro_batch) for c in counts)
              for counts in zip(*gather_objects([len(r) for r in rows_of]))]
    on_policy = len(minibatches) == 1 and cfg.ppo_epochs == 1

    def micro(rows, k):
        part = rows[k * cfg.micro_batch:(k + 1) * cfg.micro_batch]
        if len(part) == 0:                       # a zero-weight pass on one row keeps ranks in step
            filler = rollouts.select(torch.zeros(1, dtype=torch.long)) if len(rollouts) else influence._filler(model)
            return filler, torch.zeros(1), None, 0.0
        return rollouts.select(part), advantages[part], part, 1.0

    old = None
    if not on_policy:                             # recompute pi_old with the current weights (spec §3.8)
        old = torch.zeros_like(rollouts.response_mask)
        with torch.no_grad():
            for rows, n_pass in zip(rows_of, passes):
                for k in range(n_pass):
                    mb, _, part, _ = micro(rows, k)
                    lp = dugrpo.token_logprobs(model, mb.input_ids.to(device), mb.attention_mask.to(device),
                                               cfg.temperature, mb.response_mask.to(device)).cpu()
                    if part is not None:
                        old[part, :lp.shape[1]] = lp
    model.train()
    stats = {}
    for epoch in range(cfg.ppo_epochs):
        for rows, n_pass in zip(rows_of, passes):
            opt.zero_grad(set_to_none=True)
            for k in range(n_pass):
                mb, adv, part, weight = micro(rows, k)
                mb = mb.to(device)
                lp_old = None if old is None or part is None else old[part, :mb.input_ids.shape[1]].to(device)
                loss, st = micro_step(model, cfg, mb, adv.to(device), lp_old, normaliser, scale * weight)
                if weight:
                    ntok = mb.response_mask.sum().item()
                    for key, v in st.items():
                        s = stats.setdefault(key, [0.0, 0.0])
                        if key == "tis_max":
                            s[0] = max(s[0], v.item())
                            s[1] = 1.0
                        else:
                            s[0] += v.item() * ntok
                            s[1] += ntok
                    stats.setdefault("loss", [0.0, 0.0])[0] += loss.item()
                    stats["loss"][1] = 1.0
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
            if torch.isfinite(gnorm):
                opt.step()                         # a non-finite norm skips the step (spec §3.7)
            opt.zero_grad(set_to_none=True)
            stats.setdefault("grad_norm", [0.0, 0.0])
            stats["grad_norm"][0] += gnorm.item()
            stats["grad_norm"][1] += 1
    out = {k: v[0] / max(v[1], 1e-12) for k, v in stats.items()}
    out["steps"] = len(minibatches) * cfg.ppo_epochs
    return out


# ----------------------------------------------------------------------------------------------
# One iteration (spec §1.4)

def run_iteration(cfg, it: int, generator: Role, solver: Role, docs: list[dict], dev_items: list,
                  external_questions: list[Question] | None = None, log_questions=None) -> dict:
    """One INFUSER iteration over this rank's documents `docs` and dev items `dev_items`.

    docs: [{"doc_id", "text", "gidx"}] where gidx is the document's index in the global batch; dev_items:
    evaluate.Item-like objects with .gidx (global index). external_questions: pre-generated questions for
    this iteration (question_source), replacing phase 2. log_questions(records): receives one record per
    generator sample. Returns a flat dict of metrics (global where it matters: rates and accuracies).
    """
    rank, world = rank_world()
    m, times = {"iteration": it}, {}
    tick = time.time()

    def lap(name):
        nonlocal tick
        now = time.time()
        times[name] = now - tick
        tick = now

    use_influence = cfg.generator_reward == "influence" and not cfg.fix_generator and not cfg.dev_only
    pad_s = _pad_id(solver.tokenizer)

    # 1. dev rollouts --------------------------------------------------------------------------------
    dev = None
    if not cfg.skip_dev_rollout or cfg.dev_only or use_influence:
        dev = solve(solver, cfg, dev_items, [x.gidx for x in dev_items], it, "dev")
        ok, n = all_sum([sum(dev.correct), len(dev.correct)])
        m["dev_acc"] = ok / max(n, 1)
        dev_groups = gather_objects(_varying_count(dev))
        m["dev_signal_groups"] = sum(dev_groups)
    lap("dev_rollout")

    # 2. question drafting ------------------------------------------------------------------------------
    gen_rows, questions = [], []           # gen_rows: (doc, k, Sample or None, Question)
    qgid = {}                              # id(question) -> global question id (seeds its solver rollouts)
    if not cfg.dev_only:
        if external_questions is not None:
            questions = external_questions
            gen_rows = [(None, 0, None, q) for q in questions]
            off = _exclusive_offset(len(questions))
            qgid = {id(q): off + i for i, q in enumerate(questions)}
        else:
            prompts, kept_docs = [], []
            for d in docs:
                msgs = generator_messages(d["text"], cfg.question_route)
                if len(_render(generator, msgs)) <= cfg.max_prompt_tokens:   # spec §2.1: too long -> dropped
                    prompts.append(msgs)
                    kept_docs.append(d)
            params = SamplingParams(n=cfg.n_gen, temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_new_tokens=cfg.gen_max_new_tokens, seed=None)
            m["docs_too_long"] = int(all_sum([len(docs) - len(kept_docs)])[0])   # dropped: counted, printed
            outs = generator.sample(prompts, params, [seed_for(cfg.seed, it, "gen", d["gidx"]) for d in kept_docs])
            for d, samples in zip(kept_docs, outs):
                for k, s in enumerate(samples):
                    q = parse_question(s.text, d["doc_id"], d["gidx"] * cfg.n_gen + k, seed_for(cfg.seed, it),
                                       cfg.question_route)
                    gen_rows.append((d, k, s, q))
                    questions.append(q)
                    qgid[id(q)] = d["gidx"] * cfg.n_gen + k   # the same on any number of ranks
    lap("generation")

    # 3. solver rollouts on the valid questions ----------------------------------------------------------
    valid = []
    for q in questions:
        if q.rejected is None and len(_render(solver, solver_messages(q.text, q.choices))) > cfg.max_prompt_tokens:
            q.rejected = "prompt_too_long"
        if q.rejected is None:
            valid.append(q)
    vgids = [qgid[id(q)] for q in valid]
    counts = all_sum([len(questions), len(valid)] + [sum(q.rejected == r for q in questions) for r in REJECT_REASONS])
    m["questions"], m["valid"] = counts[0], counts[1]
    m["valid_rate"] = counts[1] / max(counts[0], 1)
    for r, c in zip(REJECT_REASONS, counts[2:]):
        m[f"reject_{r}"] = c
    sol = solve(solver, cfg, valid, vgids, it, "q") if valid or world > 1 else Graded()
    lap("solver_rollout")
    dev_grade = dev.grade_seconds if dev is not None else 0.0
    times["dev_rollout"] -= dev_grade      # grading is timed on its own: moved out of the rollout phases
    times["solver_rollout"] -= sol.grade_seconds
    times["grading"] = dev_grade + sol.grade_seconds
    acc_q = {}
    for g, c in zip(sol.group_ids, sol.correct):
        acc_q.setdefault(g, []).append(c)
    ok, n = all_sum([sum(sol.correct), len(sol.correct)])
    m["question_solve_rate"] = ok / max(n, 1)

    # 4. influence on the pre-update solver, with its existing AdamW state --------------------------------
    scores = {g: 0.0 for g in vgids}
    if use_influence and counts[1] > 0:
        q_roll = sol.rollouts(pad_s, rewards=sol.correct)         # correctness only: no mid-EOS here
        d_roll = dev.rollouts(pad_s, rewards=dev.correct)
        s = influence.influence_scores(solver.model, solver.optimizer, d_roll, q_roll,
                                       mode=cfg.similarity_mode, temperature=cfg.temperature,
                                       tis_cap=cfg.tis_cap, chunk_questions=cfg.influence_chunk,
                                       max_tokens=cfg.influence_tokens)
        for g, v in zip(sorted(set(sol.group_ids)), s.tolist()):
            scores[g] = v
        if m.get("dev_signal_groups", 0) == 0:
            m["note"] = "no dev question with reward variance: all influence scores are 0"
    svals = gather_objects([v for g, v in scores.items() if len(set(acc_q.get(g, [0]))) > 1]) if use_influence else []
    svals = [v for part in svals for v in part]
    if svals:                              # statistics of the scores that carry signal (non-constant groups)
        t = torch.tensor(svals)
        m.update(influence_mean=t.mean().item(), influence_std=t.std().item() if len(t) > 1 else 0.0,
                 influence_pos_frac=(t > 0).float().mean().item())
    lap("influence")

    # 5. generator rewards -> drop constant documents -> DuGRPO ---------------------------------------------
    gstats = {}
    if not cfg.dev_only and not cfg.fix_generator and external_questions is None and gen_rows:
        rewards = []
        for d, k, s, q in gen_rows:
            if q.rejected is None:
                g = qgid[id(q)]
                rewards.append(question_reward(cfg.generator_reward, acc_q[g], scores[g]))
            else:
                rewards.append(cfg.gen_invalid_penalty)
        doc_ids = [d["gidx"] for d, *_ in gen_rows]
        all_r = [x for part in gather_objects(list(zip(doc_ids, rewards))) for x in part]
        R = torch.tensor([r for _, r in all_r], dtype=torch.float64)
        G = torch.tensor([d for d, _ in all_r])
        keep = dugrpo.varying_groups(R, G)
        adv_all = torch.zeros_like(R)
        if keep.any():
            adv_all[keep] = dugrpo.group_advantages(R[keep], G[keep], cfg.generator_normalization)
        m["gen_reward_mean"] = R.mean().item()
        m["gen_docs_kept"] = len(torch.unique(G[keep]))
        mine = _exclusive_offset(len(gen_rows))
        local_keep = keep[mine:mine + len(gen_rows)]
        local_adv = adv_all[mine:mine + len(gen_rows)].float()
        lap("rewards")
        # 6. generator update ------------------------------------------------------------------------------
        if m["gen_docs_kept"] > 0:
            rows = [i for i in range(len(gen_rows)) if local_keep[i]]
            roll = make_rollouts([gen_rows[i][2] for i in rows], [doc_ids[i] for i in rows],
                                 [rewards[i] for i in rows], _pad_id(generator.tokenizer))
            order = sorted(set(G[keep].tolist()))
            gstats = ppo_update(generator, cfg, roll, local_adv[rows], order, "generator")
        else:
            m["note_generator"] = "every document's rewards were constant: generator update skipped"
        if log_questions is not None:
            log_questions([_question_record(it, d, s, q, qgid[id(q)] if q.rejected is None else None,
                                            acc_q, scores, r, a)
                           for (d, k, s, q), r, a in zip(gen_rows, rewards, local_adv.tolist())])
    elif log_questions is not None and gen_rows:
        log_questions([_question_record(it, d, s, q, qgid[id(q)] if q.rejected is None else None,
                                        acc_q, scores, None, None) for d, k, s, q in gen_rows])
    m.update({f"gen_{k}": v for k, v in gstats.items()})
    lap("generator_update")

    # 7. solver update: Dr.GRPO over non-constant question groups, stratified by document -------------------
    train = dev if cfg.dev_only else sol
    sstats = {}
    if not cfg.fix_solver and train is not None:
        roll_all = train.rollouts(pad_s)
        keep = dugrpo.varying_groups(roll_all.rewards, roll_all.group_ids)
        roll = roll_all.select(keep)
        doc_of = {qgid[id(q)]: q.doc_id for q in valid}
        groups = sorted(set(roll.group_ids.tolist()))
        # sorted by global id, so that "first-seen document" (stratify's tie-break) is rank-independent
        meta = sorted(x for part in gather_objects([(g, doc_of.get(g, "dev")) for g in groups]) for x in part)
        order = stratify_by_doc(meta)
        m["solver_groups_trained"] = len(order)
        if order:                                        # global: every rank takes the same branch
            adv = dugrpo.group_advantages(roll.rewards, roll.group_ids, cfg.solver_normalization)
            sstats = ppo_update(solver, cfg, roll, adv, order, "solver")
    m.update({f"solver_{k}": v for k, v in sstats.items()})
    lens = [len(s.response_ids) for s in sol.samples]
    tl = all_sum([sum(lens), len(lens), sum(s.finish_reason == "length" for s in sol.samples)])
    m["solver_resp_len"] = tl[0] / max(tl[1], 1)
    m["solver_trunc_rate"] = tl[2] / max(tl[1], 1)
    lap("solver_update")
    m.update({f"time_{k}": v for k, v in times.items()})
    m["time_total"] = sum(times.values())
    return m


def _question_record(it, d, s, q, g, acc_q, scores, reward, adv) -> dict:
    acc = acc_q.get(g) if g is not None else None
    return {"iteration": it, "doc_id": q.doc_id, "qid": q.qid, "status": q.rejected or "valid",
            "question": q.text, "choices": q.choices, "ground_truth": q.ground_truth, "answer": q.answer,
            "solver_acc": (sum(acc) / len(acc)) if acc else None,
            "influence": scores.get(g) if g is not None else None, "reward": reward, "advantage": adv,
            "response": s.text if s is not None else None}


def _varying_count(g: Graded) -> int:
    by = {}
    for gid, c in zip(g.group_ids, g.correct):
        by.setdefault(gid, set()).add(c)
    return sum(len(v) > 1 for v in by.values())


def _exclusive_offset(n_local: int) -> int:
    """Sum of n_local over lower ranks: turns local indices into global ones."""
    rank, _ = rank_world()
    return sum(gather_objects(n_local)[:rank])


def _pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def _render(role: Role, messages) -> list[int]:
    from rollout import render_prompt
    return render_prompt(role.tokenizer, messages)
