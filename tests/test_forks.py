"""forks/: the CoT-selection fork -- its data (toy.cot_pool), its pruning rules, and every path end to end
(--quick). The per-example influence it uses is tested in tests/test_influence.py (example_scores)."""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "forks"))

import toy  # noqa: E402
from grading import mcq_letter  # noqa: E402


def test_cot_pool_plants_a_known_share_of_wrong_solutions():
    world = toy.build_world()
    held = {x["question"] for x in world.dev + world.test}
    pool = toy.cot_pool(3, 200, 0.15, held)
    assert len(pool) == 200 and len({x["question"] for x in pool}) == 200 and not held & {x["question"] for x in pool}
    flaws = [x["flaw"] for x in pool if x["flaw"]]
    assert len(flaws) == 30 and set(flaws) == set(toy.COT_FLAWS)
    for x in pool:                       # a clean trace boxes the key, a flawed one does not
        assert (mcq_letter(x["response"]) == x["answer"]) == (x["flaw"] is None), x
    assert toy.cot_pool(3, 200, 0.15, held) == pool                  # deterministic


def test_pruning_rules_drop_what_they_say():
    import cot_selection as CS
    s_c = torch.tensor([0.5, -1.0, 0.2, 0.9, -0.3, 0.0, 0.7, -0.8])
    s_i = torch.tensor([-0.9, 0.4, 0.6, -0.2, 0.1, -0.7, 0.3, 0.8])
    assert CS.prune(s_c, s_i, "correct", 0.25) == [0, 2, 3, 4, 5, 6]        # the two lowest s_C go
    assert CS.prune(s_c, s_i, "incorrect", 0.25) == [1, 2, 3, 4, 6, 7]      # the two lowest s_I go
    assert CS.prune(s_c, s_i, "combined", 0.5) == [2, 3, 4, 6]              # lowest s_C 1, 7; lowest s_I 0, 5
    assert CS.prune(s_c, s_i, "correct", 0.0) == list(range(8))
    # mean rank (r_C + r_I) / 2, r = percentile in the pool: 5 -> 2/7, then 0, 1 and 4 -> 2.5/7 each go
    assert CS.prune(s_c, s_i, "combined", 0.5, "mean_rank") == [2, 3, 6, 7]


def test_quick_runs_every_path(tmp_path):
    import cot_selection as CS
    out = CS.main(["--quick", "--out", str(tmp_path)])
    (res,) = out["results"]
    want = {"full"} | {f"{e}/{r}/0.5" for e in CS.ESTIMATORS for r in CS.RULES} | {f"{b}/0.5/0" for b in CS.BASELINES}
    assert set(res["runs"]) == want
    for run in res["runs"].values():
        assert 0 <= run["test_acc"] <= 1 and 0 <= run["flaw_precision"] <= 1 and 0 <= run["flaw_recall"] <= 1
    assert res["runs"]["adam/correct/0.5"]["kept"] == 24 and res["runs"]["full"]["kept"] == 48
    assert all(len(res["scores"][e]["s_C"]) == 48 for e in CS.ESTIMATORS)
    assert "| adam/combined | 0.5 |" in out["report"]
    again = CS.main(["--quick", "--out", str(tmp_path), "--report-only"])               # from the files
    assert again["report"] == out["report"] and json.loads((tmp_path / "seed1.json").read_text())["runs"] == res["runs"]


def test_quick_with_kronfluence(tmp_path):
    """The EK-FAC estimator (kronfluence 1.0.1, an optional extra) on the quick path: every rule runs and its
    scores are finite, one per pool example."""
    import pytest
    pytest.importorskip("kronfluence", reason="kronfluence is an optional extra (pip install --no-deps "
                                              "kronfluence==1.0.1 einops einconv opt-einsum)")
    import cot_selection as CS
    (res,) = CS.main(["--quick", "--out", str(tmp_path)])["results"]
    assert {f"kronfluence/{r}/0.5" for r in CS.RULES} <= set(res["runs"])
    sc = torch.tensor(res["scores"]["kronfluence"]["s_C"])
    assert len(sc) == 48 and torch.isfinite(sc).all() and sc.abs().max() > 0
