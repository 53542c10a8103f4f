"""diagnostics.py: every per-iteration diagnostic against a brute-force count, the alarms (once per crossing,
firing in a run built to collapse), the --dedup_questions guard, and several --test sets. 1 rank = 2 ranks and
resume for these keys: tests/test_loop.py (the two-rank and bitwise-resume tests compare every metric)."""
import math
from types import SimpleNamespace

import pytest

import diagnostics
import loop_fakes
import train
from infuser import Draft, Graded
from questions import Document, Question
from records import Sample
from test_loop import SMALL, loop_args, read_jsonl


def _q(gid, text, key="A", rejected=None, n=4):
    return Question(text, [str(i) for i in range(n)], "0", key, f"d{gid // 2}", f"q{gid}", rejected, gid)


def _sample(n_tokens, length=False):
    return Sample(prompt_ids=[1], response_ids=[5] * n_tokens, finish_reason="length" if length else "stop")


def test_every_diagnostic_equals_a_brute_force_count():
    texts = ["Tam has 3 pears. How many?", "tam has 3 PEARS how many", "Rin has 4 plums. How many?",
             "Ola sells 2 eggs.", "Kip finds coins."]
    keys = ["A", "A", "B", "C", "A"]
    qs = [_q(g, t, k) for g, (t, k) in enumerate(zip(texts, keys))] + [_q(5, "bad", rejected="no_json")]
    drafts = [Draft(Document(f"d{q.gid // 2}", "doc", q.gid // 2), _sample(10 + q.gid, length=q.gid == 1), q,
                    reward=0.1 * q.gid, kept=q.gid < 2) for q in qs]
    valid = qs[:5]
    correct = {0: [1, 0, 1, 1], 1: [1, 1, 1, 1], 2: [0, 0, 0, 0], 3: [1, 0, 0, 0], 4: [0, 1, 0, 1]}
    sol = Graded(group_ids=[g for g in correct for _ in correct[g]], correct=[c for g in correct for c in correct[g]],
                 rewards=[c for g in correct for c in correct[g]],
                 samples=[_sample(3 + g) for g in correct for _ in correct[g]])
    dev = Graded(group_ids=[0, 0, 1, 1], correct=[1, 0, 1, 1], rewards=[1, 0, 1, 1], samples=[_sample(2)] * 4)
    seen = {diagnostics.question_hash("Rin has 4 plums how many")}        # asked in an earlier iteration
    scores = {0: 0.5, 1: 0.0, 2: 0.0, 3: -0.25, 4: 0.125}
    m = diagnostics.iteration_metrics(SimpleNamespace(), dev, drafts, valid, sol, scores, seen,
                                      {"generation": 2.0, "solver_rollout": 4.0, "dev_rollout": 1.0}, 3)
    assert m["questions"] == 6 and m["valid"] == 5 and m["reject_no_json"] == 1 and m["docs_too_long"] == 3
    assert m["q_duplicate_rate"] == 2 / 5                    # texts 0 and 1 are one question once normalised
    assert m["q_cross_doc_duplicate_rate"] == 0              # ... drafted from one document (d0)
    assert m["q_seen_rate"] == 1 / 5                         # text 2
    words = [["tam", "has", "3", "pears", "how", "many"]] * 2 + [["rin", "has", "4", "plums", "how", "many"],
                                                                  ["ola", "sells", "2", "eggs"], ["kip", "finds", "coins"]]
    bigrams = [b for w in words for b in zip(w, w[1:])]
    assert m["q_distinct_2"] == len(set(bigrams)) / len(bigrams) == 14 / 20
    p = [3 / 5, 1 / 5, 1 / 5]                                # keys A A B C A
    assert abs(m["q_key_entropy"] - -sum(x * math.log2(x) for x in p)) < 1e-12
    assert m["q_solve_hist"] == [1 / 5, 1 / 5, 1 / 5, 1 / 5, 1 / 5]   # rates 0.75, 1, 0, 0.25, 0.5
    assert m["solver_signal_rate"] == 3 / 5 and m["question_solve_rate"] == 10 / 20
    assert m["dev_acc"] == 3 / 4 and m["dev_signal_groups"] == 1 and m["dev_signal_rate"] == 1 / 2
    sig = [0.5, -0.25, 0.125]                                # influence of the groups with signal (0, 3, 4)
    mu = sum(sig) / 3
    assert abs(m["influence_mean"] - mu) < 1e-15 and m["influence_pos_frac"] == 2 / 3
    assert abs(m["influence_std"] - math.sqrt(sum((s - mu) ** 2 for s in sig) / 2)) < 1e-15
    r = [0.1 * g for g in range(6)]
    assert abs(m["gen_reward_mean"] - sum(r) / 6) < 1e-15 and m["gen_docs_kept"] == 1
    assert abs(m["gen_reward_std"] - math.sqrt(sum((x - sum(r) / 6) ** 2 for x in r) / 6)) < 1e-15
    assert m["gen_resp_len"] == sum(10 + g for g in range(6)) / 6 and m["gen_trunc_rate"] == 1 / 6
    assert m["solver_resp_len"] == sum(4 * (3 + g) for g in range(5)) / 20 and m["solver_trunc_rate"] == 0
    assert m["tokens_per_s/generation"] == sum(10 + g for g in range(6)) / 2.0
    assert m["tokens_per_s/dev_rollout"] == 8 / 1.0
    assert len(seen) == 4                                    # the iteration's distinct questions are now seen
    empty = diagnostics.iteration_metrics(SimpleNamespace(), None, [], [], Graded(), {}, set(), {})
    assert empty["valid"] == 0 and empty["q_duplicate_rate"] == 0 and empty["q_solve_hist"] == [0.0] * 5


def test_alarms_fire_once_per_crossing_with_their_thresholds():
    cfg = SimpleNamespace(alarm_duplicate_rate=0.5, alarm_seen_rate=0.5, alarm_signal_rate=0.1, alarm_test_drops=2)
    m = lambda dup, seen=0.0, sig=0.5, **kw: {"valid": 4, "q_cross_doc_duplicate_rate": dup, "q_seen_rate": seen,
                                              "solver_signal_rate": sig, "q_duplicate_rate": 1.0, **kw}
    h = [m(0.25)]
    assert diagnostics.alarms(cfg, h, {}) == []
    h.append(m(0.75))
    assert [a for a, _ in diagnostics.alarms(cfg, h, {})] == ["duplicates"]
    h.append(m(0.75, seen=0.6, sig=0.0))                      # still duplicated: not raised again
    assert [a for a, _ in diagnostics.alarms(cfg, h, {})] == ["seen", "solver_signal"]
    h.append(m(0.5))                                         # 0.5 is not above 0.5
    h.append(m(0.6))
    assert [a for a, _ in diagnostics.alarms(cfg, h, {})] == ["duplicates"]
    summary = {"test_acc_start/toy": 0.5}
    t = [m(0.0, **{"test_acc/toy": 0.6}), m(0.0), m(0.0, **{"test_acc/toy": 0.55})]
    assert diagnostics.alarms(cfg, t, summary) == []                      # one fall
    t.append(m(0.0, **{"test_acc/toy": 0.4}))
    raised = diagnostics.alarms(cfg, t, summary)
    assert [a for a, _ in raised] == ["test_falling/toy"] and "0.600 > 0.550 > 0.400" in raised[0][1]
    assert diagnostics.alarms(cfg, t + [m(0.0)], summary) == []          # no new point: nothing new
    assert diagnostics.alarms(cfg, [m(0.0, valid=0, sig=0.0)], {}) == []  # no valid question: no spread alarm


def test_a_generator_that_repeats_one_question_raises_the_alarms(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "HFEngine", loop_fakes.ScriptedEngine)
    monkeypatch.setattr(loop_fakes, "CANNED", loop_fakes.CANNED[:1])      # every draft: one question
    out = train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=3", *SMALL]))
    h = out["history"]
    assert h[0]["q_duplicate_rate"] == h[0]["q_cross_doc_duplicate_rate"] == 1.0 and h[0]["q_seen_rate"] == 0.0
    assert h[1]["q_seen_rate"] == h[2]["q_seen_rate"] == 1.0
    raised = [(a["iteration"], a["alarm"]) for a in out["summary"]["alarms"]]
    assert (0, "duplicates") in raised and (1, "seen") in raised
    assert sum(1 for it, a in raised if a == "duplicates") == 1              # once per crossing
    assert "ALARM it 1: q_seen_rate 1.00 > 0.5" in capsys.readouterr().out
    # the scripted run with its five canned drafts repeats too; with thresholds above 1, no alarm at all
    calm = train.main(loop_args(tmp_path, tmp_path / "calm", ["--iterations=2", "--alarm_duplicate_rate=1",
                                                              "--alarm_seen_rate=1", "--alarm_signal_rate=0", *SMALL]))
    assert calm["summary"]["alarms"] == [] and all(m["alarms"] == [] for m in calm["history"])


def test_dedup_questions_gives_repeats_the_invalid_reward(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "HFEngine", loop_fakes.ScriptedEngine)
    monkeypatch.setattr(loop_fakes, "CANNED", loop_fakes.CANNED[:2])      # two questions, asked again and again
    args = ["--iterations=2", "--gen_invalid_penalty=-1", "--dedup_questions", *SMALL]
    train.main(loop_args(tmp_path, tmp_path / "run", args))
    rows = read_jsonl(tmp_path / "run" / "questions.jsonl")
    first = set()
    for it in (0, 1):
        valid = [r for r in rows if r["iteration"] == it and r["status"] == "valid"]
        texts = {r["question"] for r in valid}
        penalised = [r for r in valid if r["reward"] == -1]
        if it == 0:                          # the first of each text keeps its reward, every repeat gets -1
            assert len(penalised) == len(valid) - len(texts)
            first = texts
        else:                                # every question was asked in iteration 0
            assert texts <= first and len(penalised) == len(valid)
    plain = train.main(loop_args(tmp_path, tmp_path / "plain", ["--iterations=1", "--gen_invalid_penalty=-1", *SMALL]))
    assert plain["history"][0]["q_duplicate_rate"] > 0
    assert not any(r["reward"] == -1 for r in read_jsonl(tmp_path / "plain" / "questions.jsonl")
                   if r["status"] == "valid")                              # off by default


def test_several_test_sets_each_get_a_curve(tmp_path, monkeypatch):
    import json
    monkeypatch.setattr(train, "HFEngine", loop_fakes.ScriptedEngine)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"question": f"{i} + 2 = ?", "choices": [str(i + 2), str(i)],
                                         "answer": "A"}) + "\n" for i in range(3)))
    _, dev = loop_fakes.short_data(tmp_path)
    out = train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=2", "--test_every=1", "--test_samples=1",
                                                            f"--test={dev},{other}", *SMALL]))
    s, h = out["summary"], out["history"]
    for name in ("dev", "other"):
        assert 0 <= s[f"test_acc_start/{name}"] <= 1 and 0 <= s[f"test_acc_end/{name}"] <= 1
    assert "test_acc/other" in h[0] and "test_acc/other" not in h[1]       # every 1, the last is the end
    assert s["test_acc_start"] == s["test_acc_start/dev"] and h[0]["test_acc"] == h[0]["test_acc/dev"]
    with pytest.raises(train.ConfigError, match="twice"):
        train.main(loop_args(tmp_path, tmp_path / "dup", [f"--test={other},{other}", *SMALL]))


def test_wandb_gets_a_table_of_sample_questions_each_iteration(tmp_path, monkeypatch):
    """--wandb: a stand-in wandb module records what the logger sends (wandb itself is not a dependency)."""
    import sys
    import types
    logged = []

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data
    run = types.SimpleNamespace(log=lambda d, step=None: logged.append((step, d)))
    import importlib.machinery
    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init, fake.Table = (lambda **kw: run), Table
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(train, "HFEngine", loop_fakes.ScriptedEngine)
    train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=2", "--wandb=proj", *SMALL]))
    tables = [(step, d["sample_questions"]) for step, d in logged if "sample_questions" in d]
    assert [s for s, _ in tables] == [0, 1]
    rows = read_jsonl(tmp_path / "run" / "questions.jsonl")
    t = tables[0][1]
    assert t.columns[:3] == ["iteration", "status", "question"] and len(t.data) == sum(r["iteration"] == 0 for r in rows)
    assert [d[2] for d in t.data] == [r["question"] for r in rows if r["iteration"] == 0]
    assert any("q_duplicate_rate" in d for _, d in logged)                   # the diagnostics go there too
