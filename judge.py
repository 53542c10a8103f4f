"""judge.py -- the paper's second math judge, the one its grader ORs with math-verify.

The official grader (`verl_inf_evolve/utils/benchmarks/verifiers/_math_verifier.py`, `verify_math_answer`)
calls math-verify first and, when that does not say True, this rule-based judge
(`.../verifiers/_math_judger.py`, `judge`); the answer counts as correct if either says True. The rules
below follow that function's decisions, written here in our own code:

  1. a ground truth with ';' is several answers: the prediction is split on top-level commas (or on ';'
     when the counts differ), the counts must agree, and every part must be judged True (any False: False)
  2. equal after cleaning, case-insensitively (cleaning: outer $...$, \\dfrac -> \\frac, compact \\frac43,
     one-character ^{x} / _{x}, \\text{..}-style wrappers, a trailing % or \\%, ordinal suffixes such as
     12^{th}, \\left / \\right, \\, and runs of spaces); then equal with all spaces removed
  3. both sides plain numbers (a trailing % divides by 100) within relative tolerance 1e-4 (absolute
     1e-4 when the reference is 0)
  4. answer_type "interval": brackets must match and the endpoints must be equal or numerically equal
     within the same tolerance (a mismatch is False)
  5. answer_type "equation", or '=' on both sides: lhs - rhs of the two differ by a nonzero real factor
  6. symbolic: latex2sympy of both sides, simplify(a - b) == 0 or |evalf(a - b)| < 1e-6; any power with
     an exponent above 100 is not attempted

`judge` returns True, False (only from rules 1 and 4) or None (cannot tell). It is slow on bad inputs
(sympy), so evaluate.py runs it only inside its killable worker process, under a time bound.
"""
from __future__ import annotations

import re

TOLERANCE = 1e-4
_WRAPPED = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf)\{([^}]*)\}")
_ORDINAL = re.compile(r"\^\{?(?:st|nd|rd|th)\}?(?:\s+(?:grade|place|row))?$", re.IGNORECASE)
_INTERVAL = re.compile(r"^([(\[])(.+),(.+)([)\]])$")


def clean(text: str) -> str:
    s = text.strip()
    if s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    s = s.replace("\\dfrac", "\\frac")
    s = re.sub(r"\\frac\s*([^{])\s*([^{])", r"\\frac{\1}{\2}", s)      # \frac43 -> \frac{4}{3}
    s = re.sub(r"\^{([^}])}", r"^\1", s)
    s = re.sub(r"_{([^}])}", r"_\1", s)
    s = _WRAPPED.sub(r"\1", s)
    s = re.sub(r"\\%$", "", s)
    s = re.sub(r"%$", "", s)
    s = _ORDINAL.sub("", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\,", " ")
    return " ".join(s.split())


def split_top_level(text: str) -> list[str]:
    """Split on commas outside (), [] and {}; empty trailing part dropped."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _number(text: str) -> float | None:
    s = text.strip()
    try:
        return float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        return None


def numerically_equal(pred: str, gold: str, tol: float = TOLERANCE) -> bool | None:
    p, g = _number(pred), _number(gold)
    if p is None or g is None:
        return None
    return abs(p) < tol if g == 0 else abs(p - g) / max(abs(g), 1e-15) < tol


def _powers_ok(s: str, limit: int = 100) -> bool:
    return all(int(m.group(1)) <= limit for m in re.finditer(r"(?:\*\*|\^)\s*(\d+)", s))


def _sympy(s: str):
    from latex2sympy2_extended import latex2sympy
    return latex2sympy(s)


def symbolically_equal(pred: str, gold: str) -> bool | None:
    if not (_powers_ok(pred) and _powers_ok(gold)):
        return None
    try:
        import sympy
        a, b = _sympy(clean(pred)), _sympy(clean(gold))
    except Exception:
        return None
    try:
        d = sympy.simplify(a - b)
        if d == 0 or abs(complex(d.evalf())) < 1e-6:
            return True
    except Exception:
        pass
    return None


def equations_equal(pred: str, gold: str) -> bool | None:
    if "=" not in pred or "=" not in gold:
        return None
    try:
        import sympy

        def zero_form(eq: str):
            lhs, rhs = clean(eq).split("=", 1)
            return sympy.simplify(_sympy(lhs.strip()) - _sympy(rhs.strip()))
        ratio = sympy.simplify(zero_form(pred) / zero_form(gold))
        if ratio.is_number and ratio.is_real and ratio != 0:
            return True
    except Exception:
        pass
    return None


def intervals_equal(pred: str, gold: str) -> bool | None:
    def parse(s: str):
        m = _INTERVAL.match(clean(s).replace(" ", "").replace("\\infty", "oo"))
        return None if m is None else (m[1], m[2].strip(), m[3].strip(), m[4])
    p, g = parse(pred), parse(gold)
    if p is None or g is None:
        return None
    if (p[0], p[3]) != (g[0], g[3]):
        return False
    return all(a == b or numerically_equal(a, b) is True for a, b in ((p[1], g[1]), (p[2], g[2])))


def judge(pred: str | None, gold: str, answer_type: str = "") -> bool | None:
    """Is `pred` (an extracted answer) equal to `gold`? True / False / None, by the rules above."""
    if pred is None or not pred.strip():
        return None
    pred, gold = pred.strip(), gold.strip()
    kind = (answer_type or "").lower()
    if ";" in gold:
        golds = [g.strip() for g in gold.split(";")]
        preds = split_top_level(pred)
        if len(preds) != len(golds):
            preds = [p.strip() for p in pred.split(";")]
        if len(preds) != len(golds):
            return False
        verdicts = [judge(p, g, answer_type) for p, g in zip(preds, golds)]
        return True if all(v is True for v in verdicts) else (False if False in verdicts else None)
    a, b = clean(pred).lower(), clean(gold).lower()
    if a == b or re.sub(r"\s+", "", a) == re.sub(r"\s+", "", b):
        return True
    if numerically_equal(pred, gold) is True:
        return True
    if kind == "interval" and (v := intervals_equal(pred, gold)) is not None:
        return v
    if kind == "equation" or ("=" in pred and "=" in gold):
        if (v := equations_equal(pred, gold)) is not None:
            return v
    return True if symbolically_equal(pred, gold) is True else None
