"""infuser.py: parsing (algorithm.md §2.4), the document order (§2.1), stratification (§3.7), rewards (§5), and each
phase on hand-made inputs, with independent expectations written here."""
import dataclasses
import json
import math
import random

import pytest
import torch

import data
import dugrpo
import infuser
import questions
from grading import LETTERS


def mcq(q="What is 2+2?", choices=("3", "4", "5", "6"), key="4", **extra):
    return json.dumps({"question_text": q, "choices": list(choices), "ground_truth": key, **extra})


# ---------------------------------------------------------------- parsing --------------------------

def test_valid_question_shuffled_and_keyed():
    q = infuser.parse_question("Reasoning first.\n" + mcq(), "doc7", 3, seed=11)
    assert q.rejected is None and q.doc_id == "doc7" and q.qid.startswith("gen_doc7_3_")
    assert sorted(q.choices) == ["3", "4", "5", "6"]
    assert q.choices[LETTERS.index(q.answer)] == "4" == q.ground_truth
    again = infuser.parse_question("Reasoning first.\n" + mcq(), "doc7", 3, seed=11)
    assert again.choices == q.choices                      # seeded shuffle
    orders = {tuple(infuser.parse_question(mcq(), "d", r, seed=s).choices) for r in range(4) for s in range(6)}
    assert len(orders) > 3                                  # ... that does move choices around


@pytest.mark.parametrize("text,reason", [
    ("no json at all", "no_json"),
    ('{"question_text": "cut off', "no_json"),
    ("{" * 50_000, "no_json"),
    ("x" * 300_000 + mcq(), "no_json"),                   # enormous output is not scanned
    (mcq(choices=("a", "b", "c")), "bad_schema"),          # 3 choices
    (mcq(choices=[str(i) for i in range(9)], key="1"), "bad_schema"),
    (json.dumps({"question_text": "Q", "choices": [["x"], "b", "c", "d"], "ground_truth": "b"}), "bad_schema"),
    (json.dumps({"question_text": "Q", "ground_truth": "b"}), "bad_schema"),   # no choices, not qa_open
    (json.dumps({"choices": ["a", "b", "c", "d"], "ground_truth": "b"}), "bad_schema"),
    (mcq(q="  "), "empty_question"),
    (mcq(key="7"), "invalid_ground_truth"),
    (mcq(key=""), "invalid_ground_truth"),
    ('{"question_text": "", "choices": ["", "", "", ""], "ground_truth": ""}', "empty_question"),
])
def test_rejections_are_counted_not_raised(text, reason):
    assert infuser.parse_question(text, "d", 0).rejected == reason


@pytest.mark.parametrize("bad", [None, 42, b"bytes", ["list"]])
def test_non_string_output_is_a_rejection(bad):
    assert infuser.parse_question(bad, "d", 0).rejected == "no_json"


def test_key_matching_dict_choices_and_last_valid_object():
    q = infuser.parse_question(mcq(choices=("one", "the four", "x", "y"), key="  The Four "), "d", 0)
    assert q.rejected is None and q.ground_truth == "the four"
    # official fold: trimmed and lower-cased, inner spaces kept
    q = infuser.parse_question(mcq(choices=("one", "the four", "x", "y"), key="The  Four"), "d", 0)
    assert q.rejected == "invalid_ground_truth" and q.ground_truth == "The  Four"
    d = json.dumps({"question_text": "Q", "choices": {"B": "bee", "A": "ay", "D": "dee", "C": "sea"},
                    "ground_truth": "sea"})
    q = infuser.parse_question(d, "d", 0)
    assert q.rejected is None and sorted(q.choices) == ["ay", "bee", "dee", "sea"]
    two = mcq(q="first") + " and later " + mcq(q="second") + " then " + json.dumps({"question_text": "bad"})
    assert infuser.parse_question(two, "d", 0).text == "second"


def test_think_blocks_code_fences_and_latex_escapes():
    body = r'{"question_text": "Find \frac{a}{b} when \theta = \nu", "choices": ["\alpha", "2", "3", "4"], "ground_truth": "\alpha"}'
    text = "<think>{\"question_text\": \"hidden\", \"choices\": [1,2,3,4], \"ground_truth\": 1}</think>```json\n" + body + "\n```"
    q = infuser.parse_question(text, "d", 0)
    assert q.rejected is None
    assert q.text == r"Find \frac{a}{b} when \theta = \nu" and q.ground_truth == r"\alpha"


def test_fix_json_escapes():
    # the official repair doubles every \u too, so a unicode escape stays literal text
    assert json.loads('"' + questions.fix_json_escapes(r"\frac{1}{2} \\ \n1 \t \beta \u00e9") + '"') == \
        "\\frac{1}{2} \\ \n1 \t \\beta \\u00e9"


def test_free_form_route():
    ok = json.dumps({"question_text": "Compute 2^10.", "ground_truth": "1024", "benchmark_type": "qa_open"})
    q = infuser.parse_question(ok, "d", 0, route="free_form")
    assert q.rejected is None and q.choices is None and q.answer == "1024"
    # math-verify reads "a red fox" as a product of symbols (accepted, as in the paper's code), but not prose
    bad = json.dumps({"question_text": "Name it.", "ground_truth": "The answer is unknown.", "benchmark_type": "qa_open"})
    assert infuser.parse_question(bad, "d", 0, route="free_form").rejected == "invalid_ground_truth"
    # as officially, a free-form question is accepted on the multiple-choice route too
    assert infuser.parse_question(ok, "d", 0, route="mcq") == q


def test_generator_messages():
    msgs = questions.generator_messages("  Photosynthesis stores energy.  ")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "[DOCUMENT START]\nPhotosynthesis stores energy.\n[DOCUMENT END]" in msgs[1]["content"]
    assert '"ground_truth"' in msgs[1]["content"] and "{document}" not in msgs[1]["content"]
    with pytest.raises(ValueError):
        questions.generator_messages("x", route="essay")


# ---------------------------------------------------------------- documents, stratification -------

def test_document_stream_follows_spec_and_resumes():
    docs = [{"doc_id": str(i)} for i in range(7)]
    s = data.DocumentStream(docs, seed=5)
    got = [[d["doc_id"] for d in s.next_batch(3)] for _ in range(5)]
    # the spec's rule, written out: shuffle once; take sequentially; at an epoch end take the remainder,
    # reshuffle the same list with the same RNG, and fill from its start
    rng = random.Random(5)
    order = list(range(7))
    rng.shuffle(order)
    pos, want = 0, []
    for _ in range(5):
        b = []
        while len(b) < 3:
            take = order[pos:pos + 3 - len(b)]
            b += take
            pos += len(take)
            if pos >= 7:
                rng.shuffle(order)
                pos = 0
        want.append([str(i) for i in b])
    assert got == want
    s2 = data.DocumentStream(docs, seed=5)
    s2.next_batch(3)
    state = json.loads(json.dumps(s2.state_dict()))            # survives a JSON round trip
    s3 = data.DocumentStream(docs, seed=999)
    s3.load_state_dict(state)
    assert [[d["doc_id"] for d in s3.next_batch(3)] for _ in range(4)] == got[1:]


def test_stratify_by_doc_spreads_documents():
    groups = [(0, "a"), (1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "b"), (6, "c")]
    order = infuser.stratify_by_doc(groups)
    # ideal positions: a -> 1/8, 3/8, 5/8, 7/8; b -> 1/4, 3/4; c -> 1/2 (ties: first-seen doc first)
    assert order == [0, 4, 1, 6, 2, 5, 3]
    assert sorted(order) == list(range(7))


# ---------------------------------------------------------------- rewards ------------------------------

def test_question_rewards():
    assert infuser.question_reward("influence", [1, 0], 0.37) == 0.37
    p = 0.25
    assert infuser.question_reward("spice", [1, 0, 0, 0], 0.0) == pytest.approx(math.exp(-((p * (1 - p) - 0.25) ** 2) / 0.02))
    assert infuser.question_reward("spice", [1, 0], 0.0) == pytest.approx(1.0)
    assert infuser.question_reward("uncertainty", [1, 1, 1, 0], 0.0) == 0.25
    with pytest.raises(ValueError):
        infuser.question_reward("difficulty", [1], 0.0)


def test_generator_reward_pipeline_on_hand_made_outputs():
    """A valid and an invalid generator output per document, through parse -> rewards -> filtering ->
    DuGRPO, as run_iteration does it (penalty 0, influence rewards)."""
    outs = {0: [mcq(), "garbage", mcq(q="Q2"), "{bad"], 1: ["junk", "junk", "junk", "junk"],
            2: [mcq(q="Q3"), mcq(q="Q4"), "x", "y"]}
    scores = {"What is 2+2?": 0.30, "Q2": -0.10, "Q3": 0.05, "Q4": 0.05}
    R, G = [], []
    for d, texts in outs.items():
        for k, t in enumerate(texts):
            q = infuser.parse_question(t, str(d), k)
            R.append(scores[q.text] if q.rejected is None else 0.0)
            G.append(d)
    R, G = torch.tensor(R, dtype=torch.float64), torch.tensor(G)
    keep = dugrpo.varying_groups(R, G)
    assert keep.tolist() == [True] * 4 + [False] * 4 + [True] * 4      # doc 1: all invalid -> dropped
    adv = dugrpo.group_advantages(R[keep], G[keep], "hybrid_std")
    # independent: doc 0 rewards [.3, 0, -.1, 0], doc 2 [.05, .05, 0, 0]
    s0 = torch.tensor([0.3, 0.0, -0.1, 0.0], dtype=torch.float64)
    s2 = torch.tensor([0.05, 0.05, 0.0, 0.0], dtype=torch.float64)
    bar = (s0.std() + s2.std()) / 2
    want = torch.cat([(s0 - s0.mean()) / (s0.std() + bar + 1e-6), (s2 - s2.mean()) / (s2.std() + bar + 1e-6)])
    torch.testing.assert_close(adv, want)
    assert adv[0] > 0 > adv[2]                 # the useful question is reinforced, the harmful one pushed down


# -----------------------------------------------------------------------------------------------------
# The official parser's decisions (verl_inf_evolve/utils/question_parser.py), case by case. Each case was
# written from the official code's logic; the expected values were also checked against that code.

def _decide(text):
    q = infuser.parse_question(text, "d", 0)
    if q.rejected:
        return q.rejected
    return ("free", q.text, q.ground_truth) if q.choices is None else ("mcq", q.text, sorted(q.choices), q.ground_truth)


J = json.dumps
OFFICIAL_CASES = [
    # free-form: "qa_open" in any case and padding, or "choices": []; a string `choices` with qa_open is free-form
    (J({"question_text": "Q", "ground_truth": "42", "benchmark_type": "QA_OPEN"}), ("free", "Q", "42")),
    (J({"question_text": "Q", "ground_truth": "42", "benchmark_type": " qa_open "}), ("free", "Q", "42")),
    (J({"question_text": "Q", "ground_truth": "42", "choices": []}), ("free", "Q", "42")),
    (J({"question_text": "Q", "ground_truth": "42", "choices": "A or B", "benchmark_type": "qa_open"}), ("free", "Q", "42")),
    (J({"question_text": "Q", "ground_truth": "42"}), "bad_schema"),                  # neither choices nor marker
    # keys: numbers and booleans become strings; a one-key dict gives its value; a list key rejects
    (J({"question_text": "Q", "ground_truth": 7, "choices": ["7", "8", "9", "10"]}), ("mcq", "Q", ["10", "7", "8", "9"], "7")),
    (J({"question_text": "Q", "ground_truth": True, "choices": ["True", "False", "x", "y"]}),
     ("mcq", "Q", ["False", "True", "x", "y"], "True")),
    (J({"question_text": {"en": "Q"}, "ground_truth": {"k": "b"}, "choices": ["a", "b", "c", "d"]}),
     ("mcq", "Q", ["a", "b", "c", "d"], "b")),
    (J({"question_text": ["Two", "words"], "ground_truth": "a", "choices": ["a", "b", "c", "d"]}),
     ("mcq", "Two words", ["a", "b", "c", "d"], "a")),
    (J({"question_text": "Q", "ground_truth": ["a"], "choices": ["a", "b", "c", "d"]}), "bad_schema"),
    # the last schema-valid object is taken even when its key then fails (the earlier good one is not used)
    (J({"question_text": "A", "ground_truth": "a", "choices": ["a", "b", "c", "d"]}) + " " +
     J({"question_text": "B", "ground_truth": ["a"], "choices": ["a", "b", "c", "d"]}), "bad_schema"),
    # choices: a dict read A, B, C, ... in either case up to the first gap; a one-key-dict choice is its value
    (J({"question_text": "Q", "ground_truth": "b", "choices": {"a": "a", "b": "b", "c": "c", "d": "d", "f": "f"}}),
     ("mcq", "Q", ["a", "b", "c", "d"], "b")),
    (J({"question_text": "Q", "ground_truth": "b", "choices": [{"t": "a"}, "b", "c", "d"]}), ("mcq", "Q", ["a", "b", "c", "d"], "b")),
    (J({"question_text": "Q", "ground_truth": "b", "choices": ["a", "b", "c"]}), "bad_schema"),
    (J({"question_text": "Q", "ground_truth": "b", "choices": list("abcdefghi")}), "bad_schema"),
    # the free-form key must be math: prose does not pass (math-verify's first match), 25\% does
    (J({"question_text": "Q", "ground_truth": "The sides are 15, 36, and 39 inches.", "benchmark_type": "qa_open"}),
     "invalid_ground_truth"),
    (J({"question_text": "Q", "ground_truth": "25\\%", "benchmark_type": "qa_open"}), ("free", "Q", "25\\%")),
    # a '"' in the prose opens a string for the span scanner; the fallback scan still finds the object
    ('He said "yes. ' + J({"question_text": "Q", "ground_truth": "a", "choices": ["a", "b", "c", "d"]}),
     ("mcq", "Q", ["a", "b", "c", "d"], "a")),
    # \\u escapes stay literal; LaTeX \\frac survives; text and choices are kept unstripped
    ('{"question_text": " caf\\u00e9 \\frac{1}{2} ", "ground_truth": "a", "choices": ["a", " b", "c", "d"]}',
     ("mcq", " caf\\u00e9 \\frac{1}{2} ", [" b", "a", "c", "d"], "a")),
]


@pytest.mark.parametrize("text, want", OFFICIAL_CASES)
def test_parser_decides_as_the_official_one(text, want):
    assert _decide(text) == want


def test_parser_never_raises_on_any_string():
    huge_int = '{"question_text": "Q", "ground_truth": ' + "9" * 5000 + ', "choices": ["a", "b", "c", "d"]}'
    assert _decide(huge_int) == "no_json"                                     # Python's int-string limit
    lone = '{"question_text": "Q \ud800", "ground_truth": "a", "choices": ["a", "b", "c", "d"]}'
    assert _decide(lone) == "bad_encoding"                                    # could not be logged as UTF-8
    assert _decide(lone.replace("\ud800", "\\ud800"))[1] == "Q \\ud800"      # an escape stays literal text
    deep = "[" * 100_000
    assert _decide('{"question_text": ' + deep + '}') == "no_json"            # nesting too deep
    rng = random.Random(0)
    pieces = ["{", "}", '"', "\\", "\\u", "\\ud800", "<think>", "</think>", "```json", ",", ":", "[", "]", "9" * 50,
              '"question_text": "Q"', '"ground_truth": "a"', '"choices": ["a","b","c","d"]', "qa_open", "\x00"]
    for _ in range(300):                                                      # a bounded fuzz: never raises
        q = infuser.parse_question("".join(rng.choice(pieces) for _ in range(rng.randint(0, 60))), "d", 0)
        if q.rejected is None:
            json.dumps(dataclasses.asdict(q), ensure_ascii=False).encode("utf-8")   # what it accepts can be logged
    # inputs that are quadratic for a regex or a naive scan (about a minute each then; `python bench.py
    # parse` measures the scaling): a repeated unclosed <think>, many braces, many unclosed strings
    for bad in ("<think>" * 28_000, "{" * 190_000, '{"a": "' * 25_000):
        assert infuser.parse_question(bad, "d", 0).rejected == "no_json"
