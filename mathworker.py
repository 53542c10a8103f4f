"""mathworker.py -- the program grading.py runs as its killable worker process: math-verify, the judge and
the free-form extraction (regexes on untrusted text), each request bounded by the parent's timeout.

Protocol: one JSON request per line on stdin, one JSON answer per line on a private copy of stdout (anything
a library prints goes to stderr); "ready" once math-verify is imported. It runs on its own main thread, so
math-verify's SIGALRM timers (5 s per parse and per comparison, as in the official code) work here; the
parent kills the process (SIGKILL: sympy's C loops do not see signals) past its own bound.

Why a program of its own and not a process-pool library: concurrent.futures cannot kill a task past its
timeout (a hung sympy call would hold its worker for good); pebble can, but its workers are forked from the
trainer (unsafe in a process with CUDA and NCCL threads) or spawned, which re-imports the main module:
importing train.py takes 1.45 s and 221 MB of RSS per worker, this program's imports 0.5 s and 56 MB
(measured on 2 CPU cores: `python -c "import train"` vs `python -c "import benchmarks, math_verify, judge"`).

Run: started by grading._MathWorker as `python mathworker.py`; never imported by the loop.
Tests: tests/test_evaluate.py (official rules, timeouts, threads).
"""
from __future__ import annotations

import json
import os
import re
import sys

from benchmarks import aime_equal, free_form_answer

_PERCENT = re.compile(r"\\%|(?<=\d)%")


def answer(req: dict, mv):
    """One request. `mv` is the math_verify module."""
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
    channel.write("ready\n")
    channel.flush()
    for line in sys.stdin:
        try:
            out = answer(json.loads(line), math_verify)
        except Exception:                           # malformed request or an error inside sympy
            out = None
        channel.write(json.dumps(out) + "\n")
        channel.flush()


if __name__ == "__main__":
    main()
