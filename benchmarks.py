"""benchmarks.py -- what a benchmark is: its items, where they are loaded from, and its own answer rules.

The training loop does not import this file: a generated question is graded by grading.grade (the boxed
letter; for free-form, math_answer below, run inside the math worker). A dev or test set loaded from a
benchmark brings its rules with it: every `Item` grades itself (`Item.grade`) by its data_source's rules.

  rules      the official per-benchmark extractors (`verl_inf_evolve/utils/benchmarks/math500_prompting.py`,
             `mmlu_pro_prompting.py`, `verifiers/aime.py`, `sol_eval/benchmark_adapters.py`): math_answer
             (last box, first box, Minerva "Final Answer" line, last "ANSWER:" line; also the rule of
             generated free-form questions, whose data_source is "math"), mmlu_pro_letter (tried before
             the box), aime_equal (integer comparison after unit suffixes), free_form_answer (by source)
  grade      (response, ground_truth, choices=None, *, source=None) -> 1.0 / 0.0 / None, the DESIGN.md
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
    comparison both run in the worker, within one `timeout` in total (grading.session)."""
    if response is not None and not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    if choices:
        got = mmlu_pro_letter(response) if source == "mmlu_pro" else None
        return grading.grade(response, ground_truth, choices) if got is None \
            else float(got == mcq_key(ground_truth, choices))
    if source == "aime" and response:
        ok = grading.ask(dict(op="aime", response=response, gold=str(ground_truth)), timeout)
        return None if ok is None else float(ok)
    return grading.grade(response, ground_truth, source=source or "math", unit=unit, answer_type=answer_type,
                         timeout=timeout)


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
    threads = threads or grading._get_pool().size
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
    use this (see `grading.math_equal`); tests use it to check that the worker carries math-verify's own
    decisions."""
    if not isinstance(prediction, str) or not isinstance(gold, str):
        raise TypeError("verify_math takes two strings (prediction, gold)")
    bad = set(match_types) - {"latex", "expr"}
    if bad or not match_types:
        raise ValueError(f"match_types must be drawn from ('latex', 'expr'), got {match_types}")
    return grading.ask(dict(op="verify", pred=prediction, gold=gold, match_types=list(match_types),
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
        return grade(response, self.answer, self.choices, source=self.source, timeout=timeout,
                     answer_type=meta.get("answer_type"), unit=meta.get("unit"))

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
    per question with a seed derived from the id (algorithm.md §8.1); rows already in question/choices/answer form
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
    k: int                                     # samples per question (algorithm.md §8.1)
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

