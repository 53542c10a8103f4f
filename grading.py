"""grading.py -- what the loop needs to grade an answer: the solver's prompts, the official answer
extraction, and the official math grader in a killable worker process.

  solver_messages   the solver prompt (own wording, the official structure; algorithm.md §3.1), shared by
                    training and evaluation so that evaluation measures what training optimises
  extraction        the official extractors (`verl_inf_evolve/utils/mcq_utils.py`, `.../benchmarks/
                    math500_prompting.py`, `mmlu_pro_prompting.py`, `verifiers/aime.py`): extract_boxed,
                    strip_wrappers, mcq_letter, mmlu_pro_letter, key_letter, math_answer, aime_equal
  math_equal        `verifiers/_math_verifier.py::verify_math_answer`: math-verify (pinned 0.9.0; first match,
                    verify(prediction, gold)) OR the rule-based judge (judge.py): True if either says True.
                    Both run in a persistent worker process killed and restarted past its timeout (15 s,
                    the official bound), so `grade` is safe from threads and torchrun ranks
  grade             (response, ground_truth, choices=None, *, source=None) -> 1.0 / 0.0 / None (no answer
                    extracted or undecidable); `source`, the official data_source, picks the rules
                    (mmlu_pro, aime, olympiadbench, math500; default "math": generated free-form questions)
Nothing heavy is imported at module level: the worker process imports this file and must start fast.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from typing import Any

# Nothing heavy is imported at module level: the math-verify worker process imports this file, and it must
# start fast (torch / transformers / rollout are imported inside the functions that use them).

# -----------------------------------------------------------------------------------------------------
# 1. Solver prompt (algorithm.md §3.1). Own wording; same structure as the paper's.

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
    the raw question as the user message (algorithm.md §3.1)."""
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
