"""grading.py -- how the loop grades an answer: the solver's prompts (solver_messages, shared by training and
evaluation), the official MCQ extractor (`verl_inf_evolve/utils/mcq_utils.py`: extract_boxed,
strip_wrappers, mcq_letter, key_letter) and grade(): the boxed letter against the key in-process, or a
free-form answer by its data source's rules and math_equal in the killable math worker (mathworker.py).
Nothing heavy is imported here: the math worker's program imports this file (through benchmarks.py).
"""
from __future__ import annotations

import re

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
    """Chat messages [system, user]: with choices the MCQ prompt, "Question: ..." then an "A) ..." line per
    choice; without, the free-form system prompt and the question itself (algorithm.md §3.1)."""
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
    """A multiple-choice answer (official `extract_boxed_answer`): the last \\boxed{...}, wrappers stripped;
    its first letter upper-cased ("\\boxed{b) 4}" -> "B"), else the content ("4", "{B}": they match no key)."""
    content = extract_boxed(response, last=True)
    if content is None:
        return None
    content = strip_wrappers(content)
    up = content.upper().strip()
    return up[0] if up and up[0].isalpha() else (content.strip() or None)


def key_letter(ground_truth: str, choices: list[str]) -> str | None:
    """The key's letter in the displayed order (official `_normalize_mcq_ground_truth`): the key, trimmed and
    upper-cased, if a letter valid here; else the letter of the choice it matches (trimmed, any case); None."""
    key = str(ground_truth).strip().upper()
    letters = list(LETTERS[:len(choices)])
    if key in letters:
        return key
    for i, c in enumerate(choices):
        if str(c).upper().strip() == key:
            return LETTERS[i] if i < len(LETTERS) else None
    return None


# -----------------------------------------------------------------------------------------------------
# 3. Grading: what the training loop scores a response with (Question.grade)

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
    """1.0 right, 0.0 wrong, None when no answer is extracted or the verifier cannot decide (timeout
    included); never raises on a string. With choices: the last \\boxed{} letter against the key (a letter
    or a choice's text), in-process. Otherwise: the answer by the rules of `source` (MATH-500's:
    benchmarks.free_form_answer), then math_equal, in the worker within one `timeout` in all."""
    if response is not None and not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    if choices:
        key, got = mcq_key(ground_truth, choices), mcq_letter(response)
        return None if got is None else float(got.upper().strip() == key)
    if not response:
        return None
    import mathworker                          # the free-form routes only: the MCQ path never starts a worker
    with mathworker.session(timeout) as ask_:
        got = ask_(dict(op="answer", response=response, source=source, unit=unit))
        ok = mathworker.math_equal(got, ground_truth, answer_type=answer_type or "", _ask=ask_)
    return None if ok is None else float(ok)
