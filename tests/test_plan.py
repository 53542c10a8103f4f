"""The memory plan (plan.py, train.py --plan): exit codes, the phases it runs, and its prediction against
a real run of the same phases on CPU (tracker on real tensors, and the process's peak-RSS increment)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import plan
import train

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["--max_prompt_tokens=96", "--solver_max_new_tokens=64", "--gen_max_new_tokens=64", "--n_solver=4",
         "--micro_batch=4"]


def run_plan(capsys, *extra):
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "tiny", "--plan", *SHORT, *extra])
    return e.value.code, capsys.readouterr().out


def test_plan_fits_on_a_fake_world_and_prints_every_phase(capsys):
    code, out = run_plan(capsys, "--plan_world_size=4", "--plan_gpu_gb=40")
    assert code == 0, out
    assert out.strip().splitlines()[-1].startswith("fits")
    for phase in ("dev gradient", "influence", "solver step", "generator step", "rollout"):
        assert any(line.startswith(phase) for line in out.splitlines()), phase


def test_plan_that_does_not_fit_exits_3_naming_the_phase_and_a_knob(capsys):
    # the reserve alone (CUDA context, assumed 2 GiB) exceeds 1 GiB: every phase fails, nothing helps
    code, out = run_plan(capsys, "--plan_world_size=2", "--plan_gpu_gb=1")
    assert code == 3
    last = out.strip().splitlines()[-1]
    assert last.startswith("does not fit") and "dev gradient" in last and "solver step" in last
    assert "would fit with" in out


def test_plan_knob_found_for_the_failing_phase(capsys):
    """A GPU between what the dev gradient needs at --influence_tokens=1024 and at 4096: the plan says it
    does not fit there and names a knob (checkpointing or a smaller budget) that makes it fit."""
    args = ["--plan_world_size=2", "--max_prompt_tokens=1024", "--solver_max_new_tokens=1024"]
    need = {}
    for budget in (1024, 4096):
        code, out = run_plan(capsys, *args, f"--influence_tokens={budget}", "--plan_gpu_gb=1000")
        assert code == 0
        need[budget] = float(next(l for l in out.splitlines() if l.startswith("dev gradient")).split()[-1])
    assert need[1024] < need[4096]                      # the budget bounds the dev gradient's memory
    gpu = (need[1024] + need[4096]) / 2
    code, out = run_plan(capsys, *args, "--influence_tokens=4096", f"--plan_gpu_gb={gpu}")
    assert code == 3 and "dev gradient" in out.strip().splitlines()[-1]
    line = next(l for l in out.splitlines() if l.startswith("  dev gradient: needs"))
    assert "--activation_checkpointing" in line or "--influence_tokens=" in line, line


def test_plan_bad_flags_are_one_line_errors():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for args, needle in [(["--plan_world_size=0"], "--plan_world_size must be >= 1"),
                         (["--model=/nonexistent/model"], "no config for model '/nonexistent/model'")]:
        p = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--plan", *args],
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]


# The hook-path configuration (checkpointing off) takes ~2 minutes more; CI runs the split-path one, which
# covers every phase but the hook-path influence. INFUSER_SLOW_TESTS=1 runs both.
@pytest.mark.parametrize("ckpt", [pytest.param(False, marks=pytest.mark.skipif(
    not os.environ.get("INFUSER_SLOW_TESTS"), reason="slow: set INFUSER_SLOW_TESTS=1")), True])
def test_plan_prediction_matches_a_real_run_within_20_percent(tmp_path, ckpt):
    """Each phase's peak above its starting memory, predicted on fake tensors, against the same phase run
    for real: the tracker on real tensors (must agree to 1%) and the kernel's peak-RSS increment (within
    20%, the issue's bar), with checkpointing off (hook path) and on with a budget that splits questions."""
    extra = "['--activation_checkpointing', '--influence_tokens=1024']" if ckpt else "[]"
    script = (
        "import json, sys, plan, train\n"
        "rows = []\n"
        f"for extra in ({extra},):\n"
        "    cfg = train.parse_config(['--preset', 'tiny', '--max_prompt_tokens=128', '--solver_max_new_tokens=384',\n"
        "        '--gen_max_new_tokens=384', '--micro_batch=4', '--n_solver=4', '--influence_tokens=2048',\n"
        "        '--influence_chunk=2', *extra])\n"
        "    rows += [dict(r, ckpt=bool(extra)) for r in plan.validate(cfg)]\n"
        "json.dump(rows, open(sys.argv[1], 'w'))\n")
    out = tmp_path / "v.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())
    names = {r["phase"] for r in rows}
    assert {"dev gradient", "solver step", "generator step"} <= names, names
    assert any(n.startswith("influence") for n in names), names
    print(json.dumps(rows, indent=1))
    for r in rows:
        assert abs(r["tracker_real_over_predicted"] - 1) <= 0.01, r
        assert 0.8 <= r["rss_over_predicted"] <= 1.2, r


def test_peak_tracker_counts_live_storages():
    tr = plan.PeakTracker()
    with tr.mode():
        a = torch.empty(1000, dtype=torch.float32)            # 4,000 bytes
        b = torch.empty(500, dtype=torch.float64)             # 4,000 bytes
        del a
        c = torch.empty(250, dtype=torch.float32)             # 1,000 bytes
        v = b[:10]                                            # a view: no new storage
    assert tr.peak == 8000 and tr.now == 5000
    del b, c, v
    assert tr.now == 0
