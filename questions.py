"""questions.py -- the generator's side of the records: documents, its prompts, and the parser that turns
one generator response into a Question (valid, or with the reason it was rejected).

The parser makes the official parser's decisions (`verl_inf_evolve/utils/question_parser.py`; algorithm.md
§2.4-2.5), checked case by case against it by experiments/official_diff.py.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

from grading import LETTERS, grade


@dataclass
class Document:
    """One document of an iteration's batch; `gid`, its index in the global batch, seeds its drafts and
    names its advantage group."""
    doc_id: str
    text: str
    gid: int


# The generator's prompts (own words; the structure of algorithm.md §2.2). The solver's are in grading.py.

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


@dataclass
class Question:
    """A generated (or loaded) question; choices None: free-form. `answer`, what the solver is graded against:
    the key's letter in the displayed (shuffled) order, or the free-form key. `rejected`: None, or why. `gid`
    (document gid x n_gen + draft index) seeds its solver rollouts and names its group."""
    text: str
    choices: list[str] | None
    ground_truth: str
    answer: str
    doc_id: str
    qid: str
    rejected: str | None = None
    gid: int = -1

    def grade(self, response: str | None) -> float | None:    # 1.0 / 0.0 / None: grading.grade on the key
        return grade(response, self.answer, self.choices)


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
        ch, nxt = s[i], s[i + 1:i + 2]
        if ch != "\\" or nxt in ("", "\n"):
            out.append(ch)
            i += 1
        elif nxt in '\\"/' or (nxt in "bfnrt" and not _ASCII_LETTER.match(s, i + 2)):
            out.append(s[i:i + 2])
            i += 2
        else:
            out.append("\\\\")
            i += 1
    return "".join(out)


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


def _schema_ok(obj: dict) -> bool:
    """The official structure check: question_text and ground_truth present, and 4-8 choices or a free-
    form marker (benchmark_type "qa_open", any case, or "choices": [])."""
    if "question_text" not in obj or "ground_truth" not in obj:
        return False
    choices = _choices(obj.get("choices"))
    if choices:
        return 4 <= len(choices) <= 8
    return str(obj.get("benchmark_type", "") or "").strip().lower() == "qa_open" or obj.get("choices") == []


def _strip_think(text: str) -> str:
    """Remove every <think>...</think> block (the first </think> after each <think>), in linear time."""
    out, pos = [], 0
    while (i := text.find("<think>", pos)) >= 0 and (j := text.find("</think>", i + 7)) >= 0:
        out.append(text[pos:i])
        pos = j + 8
    out.append(text[pos:])
    return "".join(out)


_WORD = re.compile(r"[a-z0-9]+")
_ASCII_LETTER = re.compile("[A-Za-z]")                      # fix_json_escapes: \n then a letter is LaTeX
_SURROGATE = re.compile("[\ud800-\udfff]")                  # a lone surrogate such as \ud800


def normalise(text: str) -> str:
    """Lower case, words only (punctuation and spacing dropped): the text two questions must share to be equal."""
    return " ".join(_WORD.findall(text.lower()))


def question_hash(text: str) -> int:
    """A 60-bit hash of the normalised text (an int: checkpoints keep a set of them)."""
    return int(hashlib.sha256(normalise(text).encode()).hexdigest()[:15], 16)


def parse_question(response: str, doc_id: str, row: int, seed: int = 0, route: str = "mcq") -> Question:
    """One generator response -> a Question (valid, or with `rejected` set). Never raises; linear time.
    As the official parser (`extract_thinking_and_json`, `parse_generated_question_response`): <think> blocks
    and code fences removed; every balanced top-level {...} that parses as JSON (LaTeX escapes repaired) is a
    candidate -- if none, the objects from the first 8 '{' of a text of <= 16,384 chars; the last
    structure-valid one is taken, rejected if its text or key is not a scalar. Multiple choice (4-8): the
    key must equal a choice (or one, trimmed, any case); choices are then shuffled (seeded by run seed and
    question id). Free-form (qa_open or no choices), on any route: when math-verify parses the key.
    Departures, so that the loop never crashes or stalls: outputs over MAX_PARSE_CHARS are not scanned
    (no_json); >4,300-digit integers make a candidate unparseable (officially: raises); a lone surrogate
    is bad_encoding."""
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
    if any(_SURROGATE.search(t) for t in (qtext, key, *(choices or []))):    # not UTF-8 encodable
        return bad("bad_encoding")
    qid = f"{qid_base}_{hashlib.md5(qtext.encode()).hexdigest()[:8]}"
    reject = lambda why: Question(qtext, choices, key, "", doc_id, qid, rejected=why)
    if not qtext.strip():
        return reject("empty_question")
    if not key.strip():
        return reject("invalid_ground_truth")
    if choices is None:
        from mathworker import math_parseable                # the free-form route only
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
