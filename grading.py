"""grading.py -- how the loop grades an answer: the solver's prompts, the official answer extraction, and
the official math grader in a killable worker process.

  solver_messages   the solver prompt (own wording, the official structure; algorithm.md §3.1), shared by
                    training and evaluation so that evaluation measures what training optimises
  extraction        the official MCQ extractor (`verl_inf_evolve/utils/mcq_utils.py`): extract_boxed,
                    strip_wrappers, mcq_letter, key_letter
  math_equal        `verifiers/_math_verifier.py::verify_math_answer`: math-verify (pinned 0.9.0; first match,
                    verify(prediction, gold)) OR the rule-based judge (judge.py): True if either says True.
                    Both run in a persistent worker process (mathworker.py, a program of its own) killed and
                    restarted past the deadline: safe from threads and ranks
  session           one worker and one deadline for all the steps of one check (15 s, the official bound)
  grade             (response, ground_truth, choices=None) -> 1.0 / 0.0 / None (no answer extracted, or
                    undecidable): the boxed letter for multiple choice; otherwise the extraction rules of the
                    data_source (a generated question's is "math": MATH-500's, benchmarks.free_form_answer, run
                    in the worker) and math_equal. The benchmarks' own patterns: benchmarks.py.
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
from contextlib import contextmanager
from typing import Any

# Nothing heavy is imported here: the worker process (mathworker.py) imports this file and must start fast.

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
# 2. Answer extraction: the official MCQ extractor's rules (mcq_utils.py), in linear time on any string

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
    start, depth = starts[-1] if last else starts[0], 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip() or None
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


# -----------------------------------------------------------------------------------------------------
# 3. math-verify and the judge in a killable worker process

DEFAULT_TIMEOUT = 15.0       # seconds per grade() call in total (all its steps), the official outer bound
STARTUP_TIMEOUT = 120.0      # seconds for a fresh worker to import math-verify (not counted in the above)


class _MathWorker:
    """One worker process. `ask` sends a request and waits at most `timeout` seconds for the answer;
    past that the process is killed (SIGKILL: sympy's C loops do not see signals) and a fresh one is
    started at once so that it imports while the caller goes on. Not thread-safe on its own: _MathPool
    hands each worker to one thread at a time."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.ready = self.was_ready = False      # was_ready: a first start has finished its imports
        self.buf = b""

    def start(self) -> None:
        program = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mathworker.py")
        self.proc = subprocess.Popen([sys.executable, program], stdin=subprocess.PIPE,
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
        """One line from the worker, or None at the deadline or if the worker died."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def ensure_ready(self, deadline: float | None = None) -> bool:
        """Is a live worker done with its imports? A first start is waited for up to STARTUP_TIMEOUT (a cold
        import is no caller's doing); a restart after a kill only until `deadline` (False past it, the
        worker importing on for the next call)."""
        if self.proc is None or self.proc.poll() is not None:
            self.kill()
            self.start()
        if self.ready:
            return True
        limit = deadline if self.was_ready and deadline is not None else time.monotonic() + STARTUP_TIMEOUT
        if self._readline(limit) == "ready":
            self.ready = self.was_ready = True
            return True
        if self.was_ready and self.proc.poll() is None:
            return False
        self.kill()
        raise RuntimeError("the math-verify worker process did not start (is math-verify "
                           f"installed for {sys.executable}?); its errors are on stderr above")

    def ask(self, request: dict, timeout: float) -> Any:
        """The worker's answer, or None past `timeout` seconds (a restart's wait for imports included)."""
        deadline = time.monotonic() + timeout
        if timeout <= 0 or not self.ensure_ready(deadline):
            return None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            line = self._readline(deadline)
        except OSError:                             # BrokenPipeError included
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
        self.size, self.all = size, [_MathWorker() for _ in range(size)]
        self.free: queue.Queue[_MathWorker] = queue.Queue()
        for w in self.all:
            self.free.put(w)

    @contextmanager
    def worker(self):
        w = self.free.get()
        try:
            yield w
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
        if _pool is None or _pool.size != n:
            if _pool is not None:
                _pool.close()
            _pool = _MathPool(n)


def _forget_pool_in_child() -> None:
    # After os.fork the child must not share the parent's worker pipes (or a lock held by another thread).
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)
atexit.register(lambda: _pool is not None and _pool.close())


@contextmanager
def session(timeout: float | None = None):
    """One worker held for a check of several steps, and one deadline shared by them: yields ask(request),
    which answers None once `timeout` seconds (default DEFAULT_TIMEOUT) have passed. Not counted: waiting
    for a free worker (other threads' checks) and a worker's first start (its imports, ~0.5 s)."""
    with _get_pool().worker() as w:
        if not w.was_ready:
            w.ensure_ready()
        deadline = time.monotonic() + (DEFAULT_TIMEOUT if timeout is None else float(timeout))
        yield lambda request: w.ask(request, deadline - time.monotonic())


def ask(request: dict, timeout: float | None = None) -> Any:
    """One request to a worker (the ops are in mathworker.py); None past `timeout` or on a crash."""
    with session(timeout) as ask_:
        return ask_(request)


def math_parseable(text: str | None, *, timeout: float | None = None) -> bool | None:
    """Does math-verify read `text` into a math object (official `is_math_verifier_parseable`: `%` and
    `\\%` after a digit become /100, then $text$ is parsed, first match)? The check a generated free-form
    key must pass. None on timeout."""
    if text is None or not str(text):
        return False
    return ask(dict(op="parse", text=str(text)), timeout)


def math_equal(prediction: str | None, gold: str, *, answer_type: str = "",
               timeout: float | None = None, _ask=None) -> bool | None:
    """Is an extracted answer equal to the reference? The official `verify_math_answer`: math-verify
    (both sides as $...$, first match, verify(prediction, gold)), and if that does not say True, the judge
    (judge.py); True if either says True, False if either says False, else None. Both run in the worker
    within one `timeout` in total (default DEFAULT_TIMEOUT; the official code bounds each check by 15 s);
    `_ask`: the session of a caller that shares its deadline (grade)."""
    if prediction is None:
        return None
    if not isinstance(prediction, str):
        raise TypeError(f"prediction must be a str or None, got {type(prediction).__name__}")
    pred, gold = prediction.strip(), str(gold).strip()
    if not pred:
        return None
    if _ask is None:
        with session(timeout) as ask_:
            return math_equal(pred, gold, answer_type=answer_type, _ask=ask_)
    by_mv = _ask(dict(op="mv", pred=pred, gold=gold))
    if by_mv is True:
        return True
    by_judge = _ask(dict(op="judge", pred=pred, gold=gold, answer_type=answer_type or ""))
    if by_judge is True:
        return True
    return False if False in (by_mv, by_judge) else None


# -----------------------------------------------------------------------------------------------------
# 4. Grading: what the training loop scores a response with (Question.grade)

def mcq_key(ground_truth: str, choices: list[str]) -> str:
    """key_letter, or a one-line ValueError for a key that is neither a letter nor a choice's text."""
    key = key_letter(ground_truth, choices)
    if key is None:
        raise ValueError(f"ground truth {str(ground_truth)[:80]!r} is neither a letter A-"
                         f"{LETTERS[min(len(choices), len(LETTERS)) - 1]} nor the text of one of the "
                         f"{len(choices)} choices")
    return key


def grade(response: str | None, ground_truth: str, choices: list[str] | None = None, *, source: str = "math",
          unit: str | None = None, answer_type: str | None = None, timeout: float | None = None) -> float | None:
    """1.0 if `response` answers correctly, 0.0 if it gives a wrong answer, None if no answer can be
    extracted or the verifier cannot decide (timeout included). Never raises on any response string.
    With non-empty `choices`: the letter of the last \\boxed{} against the key (a letter or a choice's
    text), in-process, linear time. Otherwise: the answer extracted by the rules of `source` (default "math",
    MATH-500's: benchmarks.free_form_answer), then `math_equal`; all in the worker, within one `timeout`
    (default DEFAULT_TIMEOUT) in total."""
    if response is not None and not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    if choices:
        key, got = mcq_key(ground_truth, choices), mcq_letter(response)
        return None if got is None else float(got.upper().strip() == key)
    if not response:
        return None
    with session(timeout) as ask_:
        got = ask_(dict(op="answer", response=response, source=source, unit=unit))
        ok = math_equal(got, ground_truth, answer_type=answer_type or "", _ask=ask_)
    return None if ok is None else float(ok)
