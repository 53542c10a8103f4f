"""experiments/official_diff.py -- run our parser and grader side by side with the paper's own functions.

    python experiments/official_diff.py PATH_TO_OFFICIAL_CHECKOUT [--quick]

PATH is a checkout of github.com/FFishy-git/INFUSER (not part of this repository), or the tree of one
(`git archive HEAD verl_inf_evolve | tar -x -C PATH`). At run time the script
puts the official modules it needs (question_parser.py, the verifiers _math_verifier.py, _math_judger.py,
aime.py, and the extractors in mcq_utils.py, math500_prompting.py, mmlu_pro_prompting.py) into a scratch
package in a temporary directory (with a stub verifiers/__init__.py, so nothing else of theirs is imported)
and feeds the same inputs to both sides:
  1. generator outputs: 600 structured ones (every key/choices/benchmark_type form, several objects, think
     blocks, fences, raw LaTeX, an odd quote in prose, unbalanced wrappers, truncation) and 3,000 random
     mutations of valid ones, through `infuser.parse_question` vs the official parse-and-accept steps;
  2. 8,000 multiple-choice responses (boxes, wrappers, MMLU-Pro patterns, letters, cut-off boxes), with
     and without source="mmlu_pro";
  3. 540 free-form responses built from MATH-500, AIME and OlympiadBench answers in ten forms (box, \\text,
     Final Answer line, ANSWER line, a wrong value, a cut-off last box, %, ordinal, prose, an equation);
  4. the 94 non-math-verify rows of ../shared/data/answer_equivalence_cases.jsonl.
It prints the number of cases and of disagreements for each, and the first disagreements. --quick runs a
tenth of 1-3.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
NEEDED = ["verl_inf_evolve/utils/question_parser.py", "verl_inf_evolve/utils/mcq_utils.py",
          "verl_inf_evolve/utils/benchmarks/math500_prompting.py",
          "verl_inf_evolve/utils/benchmarks/mmlu_pro_prompting.py",
          "verl_inf_evolve/utils/benchmarks/verifiers/_math_verifier.py",
          "verl_inf_evolve/utils/benchmarks/verifiers/_math_judger.py",
          "verl_inf_evolve/utils/benchmarks/verifiers/aime.py"]


def official_modules(checkout: Path):
    scratch = Path(tempfile.mkdtemp(prefix="infuser_official_"))
    for rel in NEEDED:
        src = checkout / rel
        if not src.is_file():
            sys.exit(f"{checkout} is not a checkout of FFishy-git/INFUSER ({rel} missing)")
        dst = scratch / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
        for d in dst.parents:
            if d == scratch:
                break
            (d / "__init__.py").touch(exist_ok=True)
    # their mcq_utils imports their prompts module at the top: give it the names, empty
    (scratch / "verl_inf_evolve/utils/prompts.py").write_text(
        "".join(f"{n} = ''\n" for n in ("MCQ_ANSWER_GENERATION_FEW_SHOT_EXAMPLES", "MCQ_ANSWER_GENERATION_ICL_PROMPT",
                                        "MCQ_ANSWER_GENERATION_ICL_SYSTEM_PROMPT", "MCQ_ANSWER_GENERATION_PROMPT",
                                        "MCQ_ANSWER_GENERATION_SYSTEM_PROMPT")))
    (scratch / "verl_inf_evolve/utils/benchmarks/verifiers/__init__.py").write_text(
        "def register(name, needs_full_response=False):\n    return lambda fn: fn\n")
    sys.path.insert(0, str(scratch))
    from verl_inf_evolve.utils import mcq_utils, question_parser
    from verl_inf_evolve.utils.benchmarks import math500_prompting, mmlu_pro_prompting
    from verl_inf_evolve.utils.benchmarks.verifiers import _math_verifier, aime
    return question_parser, mcq_utils, math500_prompting, mmlu_pro_prompting, _math_verifier, aime


def report(name, cases, pairs):
    diffs = [(c, a, b) for c, (a, b) in zip(cases, pairs) if a != b]
    print(f"{name}: {len(cases)} cases, {len(diffs)} differ")
    for c, a, b in diffs[:5]:
        print(f"   {str(c)[:200]!r}\n     official {a}\n     ours     {b}")
    return len(diffs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkout", type=Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    QP, M, M5, MM, MV, AIME = official_modules(args.checkout)
    import evaluate as E
    import infuser
    scale = 10 if args.quick else 1
    rng = random.Random(0)
    t0 = time.time()
    bad = 0

    # 1. generator outputs
    def official_q(text):
        p = QP.parse_generated_question_response(text)
        if p is None or not isinstance(p["question_text"], str) or not p["question_text"].strip():
            return ("reject",)
        gt = str(p.get("ground_truth", "") or "")
        if not gt.strip():
            return ("reject",)
        if p["is_mcq"]:
            return ("reject",) if gt not in p["choices"] else ("mcq", p["question_text"], sorted(p["choices"]), gt)
        return ("free", p["question_text"], gt) if MV.is_math_verifier_parseable(gt) else ("reject",)

    def ours_q(text):
        q = infuser.parse_question(text, "d", 0)
        if q.rejected:
            return ("reject",)
        return ("free", q.text, q.ground_truth) if q.choices is None else ("mcq", q.text, sorted(q.choices),
                                                                           q.ground_truth)
    keys = ["42", "\\frac{1}{2}", "x^2+1", "The sides are 15, 36, and 39 inches.", "Paris", "paris ", True, 7, 3.5,
            ["a", "b"], {"x": "Paris"}, {"x": 1, "y": 2}, None, "", "  ", "25\\%", "5!^2 = 14400", "\\alpha", "B", ...]
    choice_sets = [["Paris", "London", "Rome", "Berlin"], ["Paris", "London", "Rome"],
                   [" Paris", "London", "Rome", "Berlin", "Oslo"], {"A": "Paris", "B": "London", "C": "Rome", "D": "Berlin"},
                   {"a": "Paris", "b": "London", "c": "Rome", "d": "Berlin"}, {"1": "Paris", "2": "x", "3": "y", "4": "z"},
                   "Paris, London", [], None, ["Paris", ["x"], "Rome", "Berlin"], [1, 2, 3, 4],
                   [True, False, "Paris", "x"], [{"t": "Paris"}, "London", "Rome", "Berlin"], ["a"] * 9, ...]
    texts = ["What is the capital?", ["What", "is", 2], {"q": "What?"}, "", "  \\frac{a}{b} \\theta \\u00e9 ", 12, ...]
    btypes = [None, "qa_open", "QA_OPEN", " qa_open ", "qa_mcq", 5]

    def obj(qt, gt, ch, bt):
        o = {k: v for k, v in (("question_text", qt), ("choices", ch), ("ground_truth", gt)) if v is not ...}
        return o if bt is None else dict(o, benchmark_type=bt)
    structured = []
    for _ in range(600 // scale):
        s = json.dumps(obj(rng.choice(texts), rng.choice(keys), rng.choice(choice_sets), rng.choice(btypes)))
        r = rng.random()
        s = ("Some prose {not json} then " + s if r < .15 else "<think>plan { " + s + "</think>" + s if r < .25 else
             "```json\n" + s + "\n```" if r < .35 else
             s + " and later " + json.dumps(obj("Q2?", ["k"], ["a", "b", "c", "d"], None)) if r < .45 else
             json.dumps(obj("Q0?", "a", ["a", "b", "c", "d"], None)) + "\n" + s if r < .55 else
             s.replace("\\\\", "\\") if r < .62 else 'He said "yes. ' + s if r < .68 else
             "{ wrapper " + s if r < .74 else s[:-3] if r < .78 else s)
        structured.append(s)
    bad += report("generator outputs (structured)", structured, [(official_q(s), ours_q(s)) for s in structured])
    alphabet = ["{", "}", '"', "\\", "\\n", "\\frac", "\\u00e9", "\\u", ",", ":", "[", "]", " ", "\n", "a", "<think>",
                "</think>", "```", "```json", "qa_open", "\\t", "\\b", "é"]
    base = [json.dumps(obj("What is 2+2?", "4", ["4", "5", "6", "7"], None)),
            json.dumps(obj("Solve x", "\\frac{1}{2}", ..., "qa_open")),
            json.dumps(obj("Q", "Paris", {"A": "Paris", "B": "b", "C": "c", "D": "d"}, None))]
    mutated = []
    for _ in range(3000 // scale):
        s = rng.choice(base) + (rng.choice(base) if rng.random() < 0.3 else "")
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(s) + 1)
            s = s[:i] + rng.choice(alphabet) + s[i:] if rng.random() < 0.7 else s[:i] + s[i + rng.randint(1, 5):]
        mutated.append(s)
    bad += report("generator outputs (mutated)", mutated, [(official_q(s), ours_q(s)) for s in mutated])

    # 2. multiple choice
    ch = ["three", "Four", "five", "six"]

    def official_mcq(resp, key, src):
        k = key.strip()
        letter = k.upper() if k.upper() in list("ABCD") else "ABCD"[[c.upper().strip() for c in ch].index(k.upper())]
        pred = MM.extract_mmlu_pro_choice(resp) if src == "mmlu_pro" else None
        pred = pred if pred is not None else M.extract_boxed_answer(resp)
        return None if pred is None else (1.0 if M.is_correct(pred, letter) else 0.0)
    bits = ["\\boxed{B}", "\\boxed{b}", "\\boxed{\\text{C}}", "\\boxed{\\text {C}}", "\\boxed{{B}}",
            "\\boxed{ \\textbf{ d } }", "\\boxed{4}", "\\boxed{Four}", "the answer is (C)", "The answer is a",
            "Answer: D", "answer: D", "Answer:\nB", " A ", "I think B or C", "\\boxed{", "}", "\\BOXED {A}",
            "\\boxed{\\text{a} + \\text{b}}", "\\boxed{\\mathrm{}}", "\n", "ß", "\\boxed{ß}"]
    mcq = []
    for _ in range(4000 // scale):
        r = "".join(rng.choice(bits) for _ in range(rng.randint(0, 5)))
        key = rng.choice(["B", "b", "Four", " four ", "C"])
        mcq += [(r, key, None), (r, key, "mmlu_pro")]
    bad += report("multiple choice", mcq, [(official_mcq(*c), E.grade(c[0], c[1], ch, source=c[2])) for c in mcq])

    # 3. free-form
    def official_ff(resp, gold, src, meta):
        if src == "math500":
            ok = MV.verify_math_answer(M5.extract_math500_answer(resp), gold)
        elif src == "aime":
            ok = AIME.verify(M.extract_boxed_answer_general(resp), gold)
        else:
            pred = M.extract_boxed_answer_general(resp)
            if pred is None:
                return None
            p, unit = pred.strip(), (meta or {}).get("unit") or ""
            p = p[:-len(unit)].strip() if unit and p.endswith(unit) else p
            ok = MV.verify_math_answer(p, gold, (meta or {}).get("answer_type") or "")
        return None if ok is None else (1.0 if ok else 0.0)

    def forms(ans):
        wrong = rng.choice(["7", "\\frac{3}{4}", ans + "1", "-" + ans])
        return [f"So \\boxed{{{ans}}}.", f"\\boxed{{\\text{{{ans}}}}}",
                f"Final Answer: The final answer is ${ans}$. I hope it is correct.", f"work\nANSWER: {ans}\n",
                f"\\boxed{{{wrong}}}", f"\\boxed{{{ans}}} then \\boxed{{", f"\\boxed{{{ans}\\%}}",
                f"\\boxed{{{ans}^{{th}}}}", f"$x = {ans}$", f"\\boxed{{x = {ans}}}"]
    rows = lambda n: [json.loads(line) for line in open(DATA / n)]
    ff = []
    for r in rng.sample(rows("math500_test.jsonl"), 60 // scale):
        ff += [(f, r["answer"], "math500", None) for f in rng.sample(forms(r["answer"]), 4)]
    for r in (rows("aime2024.jsonl")[:20] + rows("aime2025.jsonl")[:10])[::scale]:
        a = str(r["answer"])
        ff += [(f, a, "aime", None) for f in (f"\\boxed{{{a}}}", f"\\boxed{{0{a}}}", f"\\boxed{{{a}.7}}",
                                               f"\\boxed{{{a}^\\circ}}", f"\\boxed{{{a}e0}}", "\\boxed{abc}")]
    for r in rng.sample(rows("olympiadbench_oe_maths_en_comp.jsonl"), 40 // scale):
        it = E.BENCHMARKS["olympiadbench"].to_item(r, 0)
        ff += [(f, it.answer, "olympiadbench", it.meta) for f in rng.sample(forms(it.answer), 3)]
    ours_ff = lambda resp, gold, src, meta: E.grade(resp, gold, source=src, answer_type=(meta or {}).get("answer_type"),
                                                    unit=(meta or {}).get("unit"))
    bad += report("free-form", ff, [(official_ff(*c), ours_ff(*c)) for c in ff])

    # 4. answer-equivalence rows
    eq = [r for r in rows("answer_equivalence_cases.jsonl") if r["source"] != "math-verify"]

    def pair(r):
        meta = r.get("metadata") or {}
        if r["kind"] == "full_response":
            return official_ff(r["pred"], r["gold"], "math500", None), E.grade(r["pred"], r["gold"], source="math500")
        p, unit = r["pred"], meta.get("unit") or ""
        p = p.strip()[:-len(unit)].strip() if unit and p.strip().endswith(unit) else p
        at = meta.get("answer_type") or ""
        return MV.verify_math_answer(p, r["gold"], at), E.math_equal(p, r["gold"], answer_type=at)
    bad += report("answer-equivalence rows (official verify_math_answer vs math_equal)", eq, [pair(r) for r in eq])
    print(f"{bad} disagreements in all ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
