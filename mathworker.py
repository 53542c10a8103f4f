"""mathworker.py -- math answers checked in a killable worker process: the client the trainer calls, and
the program it runs (`python mathworker.py`), in one file.

Client (the parent): math_equal (the official `verify_math_answer`: math-verify, first match,
verify(prediction, gold), OR the rule-based judge of judge.py), math_parseable (the check a generated
free-form key must pass), session / ask (one worker and one deadline for the steps of one check: 15 s, the
official bound), set_math_workers. Past the deadline the worker is killed (SIGKILL: sympy's C loops do not
see signals) and restarted: safe from threads and ranks.

Program (the child): one JSON request per line on stdin, one JSON answer per line on a private copy of
stdout (anything a library prints goes to stderr); "ready" once math-verify is imported. It runs on its own
main thread, so math-verify's SIGALRM timers (5 s per parse and per comparison, as in the official code)
work. Its imports (math-verify, benchmarks.py's extraction rules, judge.py) happen in main(), in the child
only. Why a program and not a process-pool library: DEVELOPERS.md. Tests: tests/test_evaluate.py.
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
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
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
    """One request to a worker (the ops: `answer` below); None past `timeout` or on a crash."""
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
# The program: run as `python mathworker.py` by _MathWorker.start

_PERCENT = re.compile(r"\\%|(?<=\d)%")


def answer(req: dict, mv, free_form_answer, aime_equal):
    """One request, in the worker. `mv` is the math_verify module; the extraction rules are benchmarks.py's."""
    op = req["op"]
    official = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    if op == "answer":                       # free-form extraction by the rules of req["source"]
        return free_form_answer(req["response"], req["source"], req.get("unit"))
    if op == "aime":
        return aime_equal(free_form_answer(req["response"], "aime"), req["gold"])
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


def main() -> None:
    import logging
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C belongs to the parent, which kills us itself
    channel = os.fdopen(os.dup(1), "w")             # private copy of stdout for the protocol ...
    os.dup2(2, 1)                                   # ... anything a library prints goes to stderr
    sys.stdout = sys.stderr
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    import math_verify
    from benchmarks import aime_equal, free_form_answer
    channel.write("ready\n")
    channel.flush()
    for line in sys.stdin:
        try:
            out = answer(json.loads(line), math_verify, free_form_answer, aime_equal)
        except Exception:                           # malformed request or an error inside sympy
            out = None
        channel.write(json.dumps(out) + "\n")
        channel.flush()


if __name__ == "__main__":
    main()
