"""Tests of toy.py: the world (determinism, formats, dev/test disjointness), the question classifier, the
anchor's pretraining text against the real parser and grader (every noise mode is rejected or graded as
designed), the tokenizer (fixed prompt spans are single tokens, text round-trips, EOS ends a turn), and the
shipped anchor (current with the prompts; its generator writes questions that parse_question accepts, and
its solver stops at the end of its turn with a \\boxed{} letter).

Run: python -m pytest -q tests/test_toy.py        (CPU, no download, < 30 s)
"""
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import toy  # noqa: E402
from grading import grade, solver_messages  # noqa: E402
from questions import generator_messages, parse_question  # noqa: E402
from records import SamplingParams, render_prompt  # noqa: E402
from rollout import HFEngine  # noqa: E402


@pytest.fixture(scope="module")
def world():
    return toy.build_world(seed=0)


# ----------------------------------------------------------------------------------------------
# The world

def test_world_is_deterministic_and_seeded(world):
    again = toy.build_world(seed=0)
    assert (again.documents, again.dev, again.test) == (world.documents, world.dev, world.test)
    other = toy.build_world(seed=1)
    assert other.documents != world.documents and other.dev != world.dev


def test_dev_and_test_are_distinct_and_disjoint(world):
    dev_q = [x["question"] for x in world.dev]
    test_q = [x["question"] for x in world.test]
    assert len(set(dev_q)) == len(dev_q) == 64 and len(set(test_q)) == len(test_q) == 256
    assert not set(dev_q) & set(test_q)
    assert len({x["id"] for x in world.dev + world.test}) == len(world.dev) + len(world.test)


def test_formats(world):
    assert len(world.documents) == 256
    for d in world.documents:
        assert set(d) == {"doc_id", "text"} and isinstance(d["text"], str) and d["text"]
        f = world.farmers[d["doc_id"]]
        assert f"{f.a} {f.item}" in d["text"] and f.color in d["text"] and f.town in d["text"]
    for x in world.dev + world.test:
        assert set(x) == {"id", "question", "choices", "answer"}
        assert 4 <= len(x["choices"]) <= 8 and len(set(x["choices"])) == len(x["choices"])
        assert all(isinstance(c, str) for c in x["choices"]) and x["answer"] in "ABCDEFGH"[:len(x["choices"])]
        key = x["choices"]["ABCDEFGH".index(x["answer"])]
        assert toy.classify_question(x["question"], x["choices"], key) == {"on_target": True,
                                                                            "key_correct": True}


def test_write_world_roundtrips(tmp_path, world):
    paths = toy.write_world(tmp_path, world)
    read = lambda name: [json.loads(line) for line in paths[name].read_text().splitlines()]
    assert read("documents") == world.documents and read("dev") == world.dev and read("test") == world.test


# ----------------------------------------------------------------------------------------------
# The classifier

def test_classify_question_on_hand_made_questions():
    q = "Tam has 14 pears. Tam buys 5 more, then sells 3. How many pears does Tam have now?"
    choices = ["16", "19", "22", "14"]                        # 14 + 5 - 3 = 16; half 19; flip 22; start 14
    assert toy.classify_question(q, choices, "16") == {"on_target": True, "key_correct": True}
    assert toy.classify_question(q, choices, " 16 ") == {"on_target": True, "key_correct": True}
    assert toy.classify_question(q, choices, "19") == {"on_target": True, "key_correct": False}
    assert toy.classify_question(q, ["19", "22", "12", "9"], "19")["key_correct"] is False
    q2 = "Ola has 12 coins. Ola gives away 4, then finds 2 more. How many coins does Ola have now?"
    assert toy.classify_question(q2, ["10", "8", "6", "14"], "10") == {"on_target": True, "key_correct": True}
    off = {"on_target": False, "key_correct": None}
    assert toy.classify_question("What color is Tam's barn?", ["red", "blue", "7", "figs"], "red") == off
    assert toy.classify_question("Tam has 14 pears. How many pears does Tam have now?", ["14"] * 4, "14") == off
    bad_name = "Tam has 14 pears. Rin buys 5 more, then sells 3. How many pears does Tam have now?"
    assert toy.classify_question(bad_name, choices, "16") == off
    assert toy.classify_question("", None, "") == off


# ----------------------------------------------------------------------------------------------
# The anchor's pretraining text, through the real parser and grader

EXPECTED_REJECT = {"target": None, "wrong_key": None, "lookup": None, "empty": "empty_question",
                   "prose": "no_json", "cut": "no_json", "three_choices": "bad_schema",
                   "key_not_a_choice": "invalid_ground_truth"}


def test_generator_modes_parse_as_designed():
    assert set(EXPECTED_REJECT) == set(toy.GENERATOR_MODES)
    rng = random.Random(0)
    for i in range(200):
        f = toy.random_farmer(rng)
        for mode, reject in EXPECTED_REJECT.items():
            _, resp = toy.generator_response(f, rng, mode)
            q = parse_question(resp, "doc", i)
            assert q.rejected == reject, (mode, resp, q)
            if reject is None:
                kind = toy.classify_question(q.text, q.choices, q.ground_truth)
                assert kind["on_target"] == (mode != "lookup")
                assert kind["key_correct"] == {"target": True, "wrong_key": False, "lookup": None}[mode]
                assert len(q.choices) == 4 and q.choices[LETTER_INDEX[q.answer]] == q.ground_truth


LETTER_INDEX = {c: i for i, c in enumerate("ABCDEFGH")}


def test_solver_modes_grade_as_designed():
    rng = random.Random(0)
    for _ in range(200):
        f = toy.random_farmer(rng)
        x = toy.mcq_item(f, rng, "q")
        v = f.values
        letter = lambda value: "ABCD"[x["choices"].index(str(value))]
        for mode in ("correct", "half", "flip"):
            r = toy.solver_response(x["question"], x["choices"], rng, mode)
            assert grade(r, x["answer"], x["choices"]) == (1.0 if mode == "correct" else 0.0), (mode, r)
        # a wrong key (the value of a typical mistake) rewards exactly that mistake
        r = toy.solver_response(x["question"], x["choices"], rng, "half")
        assert grade(r, letter(v["half"]), x["choices"]) == 1.0
        assert grade(toy.solver_response(x["question"], x["choices"], rng, "guess"), "A", x["choices"]) is not None


# ----------------------------------------------------------------------------------------------
# The tokenizer (a small one, built here from a little text)

@pytest.fixture(scope="module")
def small_tok():
    rng = random.Random(0)
    texts = [toy._render(m) + r for m, r in (toy.pretraining_example(rng, set()) for _ in range(300))]
    return toy.build_tokenizer(texts)


def test_tokenizer_prompt_spans_are_single_tokens_and_text_roundtrips(small_tok, world):
    tok = small_tok
    assert len(tok) % toy.VOCAB_MULTIPLE == 0 and tok.eos_token == "<|im_end|>"
    for span in toy.prompt_spans() + toy.JSON_SPANS:
        assert len(tok(span, add_special_tokens=False)["input_ids"]) == 1, span
    rng = random.Random(1)
    for d, x in zip(world.documents[:20], world.dev[:20]):
        _, resp = toy.generator_response(world.farmers[d["doc_id"]], rng)
        for msgs, r in ((generator_messages(d["text"]), resp),
                        (solver_messages(x["question"], x["choices"]),
                         toy.solver_response(x["question"], x["choices"], rng))):
            ids = render_prompt(tok, msgs)
            assert len(ids) <= 100
            assert tok.decode(ids) == toy._render(msgs)
            r_ids = tok(r, add_special_tokens=False)["input_ids"]
            assert tok.decode(r_ids + [tok.eos_token_id], skip_special_tokens=True) == r


def test_tokenizer_is_deterministic(small_tok):
    rng = random.Random(0)
    texts = [toy._render(m) + r for m, r in (toy.pretraining_example(rng, set()) for _ in range(300))]
    assert toy.build_tokenizer(texts).backend_tokenizer.to_str() == small_tok.backend_tokenizer.to_str()


def test_pretrain_a_few_steps_saves_a_loadable_anchor(tmp_path):
    from rollout import load_model
    toy.pretrain_anchor(tmp_path, steps=2, batch_size=4, tokenizer_texts=100, log_every=0)
    model, tok = load_model(tmp_path)
    cfg = model.config
    assert cfg.head_dim >= 32 and not cfg.tie_word_embeddings and cfg.model_type == "qwen3"
    assert model.generation_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert cfg.vocab_size == len(tok)


# ----------------------------------------------------------------------------------------------
# The shipped anchor

def test_shipped_anchor_is_current():
    meta = toy._anchor_meta(toy.SHIPPED_ANCHOR)
    assert meta, f"no anchor shipped in {toy.SHIPPED_ANCHOR}: run python toy.py --pretrain"
    assert meta["fingerprint"] == toy.anchor_fingerprint(), (
        "the shipped toy anchor is stale (a prompt, the world or the recipe changed): "
        "run python toy.py --pretrain and commit assets/toy_anchor")


@pytest.fixture(scope="module")
def anchor():
    try:
        d = toy.anchor_path(pretrain_if_missing=False)
    except FileNotFoundError as e:
        pytest.skip(f"no current toy anchor (pretraining takes minutes): {e}")
    from rollout import load_model
    return load_model(d)


def test_anchor_writes_parsable_questions_and_stops_at_end_of_turn(anchor, world):
    model, tok = anchor
    engine = HFEngine(model, tok, progress=False)
    docs = world.documents[:8]
    out = engine.generate([generator_messages(d["text"]) for d in docs],
                          SamplingParams(n=2, temperature=0.7, max_new_tokens=96, seed=0))
    samples = [s for per in out for s in per]
    assert all(s.finish_reason == "stop" and s.response_ids[-1] == tok.eos_token_id for s in samples)
    qs = [parse_question(s.text, d["doc_id"], j) for d, per in zip(docs, out) for j, s in enumerate(per)]
    valid = [q for q in qs if q.rejected is None]
    assert len(valid) >= 3, [s.text for s in samples]
    assert any(toy.classify_question(q.text, q.choices, q.ground_truth)["on_target"] for q in valid)


def test_anchor_solver_answers_with_a_boxed_letter(anchor, world):
    model, tok = anchor
    engine = HFEngine(model, tok, progress=False)
    items = world.dev[:16]
    out = engine.generate([solver_messages(x["question"], x["choices"]) for x in items],
                          SamplingParams(n=2, temperature=0.7, max_new_tokens=48, seed=0))
    grades = [grade(s.text, x["answer"], x["choices"]) for x, per in zip(items, out) for s in per]
    assert all(s.finish_reason == "stop" for per in out for s in per)
    assert sum(g is not None for g in grades) >= 0.9 * len(grades)
    assert 0 < sum(g or 0.0 for g in grades) < len(grades)       # right sometimes, not always


# ----------------------------------------------------------------------------------------------
# The default run: `python train.py` is the toy preset through the real loop

def test_default_run_is_the_toy_world_through_the_real_loop(tmp_path, anchor):
    import train
    cfg = train.parse_config([])
    assert cfg.preset == "toy" and cfg.model == cfg.documents == cfg.dev == cfg.test == "toy"
    res = train.main([f"--out_dir={tmp_path}", "--iterations=2", "--test_every=1"])
    hist, summary = res["history"], res["summary"]
    assert [m["iteration"] for m in hist] == [0, 1]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in lines] == [0, 1]
    m0 = lines[0]
    assert m0["questions"] == cfg.doc_batch_size * cfg.n_gen and 0 < m0["valid"] <= m0["questions"]
    assert 0 < m0["dev_acc"] < 1 and "influence_mean" in m0 and "test_acc" in m0
    phases = {"dev_rollout", "generation", "solver_rollout", "grading", "influence", "rewards", "generator_update",
              "solver_update"}
    assert phases <= {k[5:] for k in m0 if k.startswith("time_")}
    assert abs(m0["time_total"] - sum(m0[f"time_{p}"] for p in phases)) < 1e-6
    assert 0 < summary["test_acc_start"] < 1 and 0 < summary["test_acc_end"] < 1
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "questions.jsonl").is_file()
    if summary.get("plot"):
        assert Path(summary["plot"]).is_file()
    # what a researcher watches (diagnostics.py) is on every line; the default run raises no alarm
    watched = {"q_duplicate_rate", "q_seen_rate", "q_distinct_2", "q_key_entropy", "q_solve_hist",
               "solver_signal_rate", "dev_signal_rate", "gen_resp_len", "gen_trunc_rate", "gen_reward_std",
               "tokens_per_s/generation", "tokens_per_s/solver_rollout", "tokens_per_s/dev_rollout", "alarms"}
    for m in lines:
        assert watched <= m.keys(), watched - m.keys()
        assert 0 < m["q_distinct_2"] <= 1 and 0 < m["q_key_entropy"] <= 2 and abs(sum(m["q_solve_hist"]) - 1) < 1e-9
    assert summary["alarms"] == [] and lines[1]["alarms"] == []
