"""The whole iteration and train.py: end to end on a tiny random Qwen3, the scripted full path, two ranks
against one, resume against an uninterrupted run, and clear errors for bad input."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import checkpoint
import train
from loop_fakes import ScriptedEngine, loop_args

ROOT = Path(__file__).resolve().parent.parent
# the scripted loop at its smallest (about a second per iteration), where the size does not matter
SMALL = ["--doc_batch_size=2", "--n_gen=2", "--n_solver=2", "--ppo_minibatch_groups=1", "--dev_limit=2"]


def dcp_tensors(ckpt: Path) -> dict:
    """Every tensor of a checkpoint's sharded (DCP) training state, as one flat dict (dcp_to_torch_save)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    out = ckpt / "flat.pt"
    dcp_to_torch_save(ckpt / "dcp", out)
    flat = {}

    def walk(prefix, x):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(f"{prefix}.{i}", v)
        elif torch.is_tensor(x):
            flat[prefix] = x
    walk("", torch.load(out, weights_only=False))
    out.unlink()
    return flat


def read_jsonl(p):
    return [json.loads(l) for l in Path(p).read_text().splitlines() if l.strip()]


def untimed(rows: list[dict]) -> list[dict]:
    """Metrics rows without what depends on the clock (time_*, tokens_per_s/*)."""
    return [{k: v for k, v in r.items() if not k.startswith(("time", "tokens_per_s"))} for r in rows]


def assert_same_metrics(a: list[dict], b: list[dict], rel: float = 1e-9) -> None:
    """Every key of every row, equal: counts exactly, floats to `rel` (float64 sums in another order)."""
    a, b = untimed(a), untimed(b)
    assert [r.keys() for r in a] == [r.keys() for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            x, y = ra[k], rb[k]
            if isinstance(x, float) or isinstance(y, float):
                assert abs(x - y) <= rel * max(1.0, abs(x)), (ra["iteration"], k, x, y)
            elif isinstance(x, list) and x and isinstance(x[0], float):
                assert all(abs(u - v) <= rel for u, v in zip(x, y)), (ra["iteration"], k, x, y)
            else:
                assert x == y, (ra["iteration"], k, x, y)


def test_one_iteration_random_model_counts_invalid_and_finishes(tmp_path):
    out = train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=1", "--gen_max_new_tokens=12"]))
    m = out["history"][0]
    assert m["questions"] == 16 and m["valid"] == 0          # a random model writes no valid question
    assert sum(m[f"reject_{r}"] for r in ("no_json", "bad_schema", "empty_question", "invalid_ground_truth",
                                           "prompt_too_long")) == 16
    assert "dev_acc" in m and m["time_total"] > 0
    rows = read_jsonl(tmp_path / "run" / "questions.jsonl")
    assert len(rows) == 16 and all(r["status"] != "valid" for r in rows)
    assert (tmp_path / "run" / "metrics.jsonl").exists() and (tmp_path / "run" / "curves.png").exists()


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setattr(train, "HFEngine", ScriptedEngine)


def test_full_iteration_scripted(tmp_path, scripted):
    torch.manual_seed(0)
    out = train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=1", "--save_every=1"]))
    m = out["history"][0]
    rows = read_jsonl(tmp_path / "run" / "questions.jsonl")
    valid = [r for r in rows if r["status"] == "valid"]
    assert m["valid"] == len(valid) and 0 < len(valid) < 16
    assert m["reject_no_json"] + m["reject_bad_schema"] == 16 - len(valid)
    # each valid question: the key letter points at the key text in the shuffled choices
    for r in valid:
        assert r["choices"]["ABCDEFGH".index(r["answer"])] == r["ground_truth"]
    varying = [r for r in valid if 0 < r["solver_acc"] < 1]
    constant = [r for r in valid if r["solver_acc"] in (0.0, 1.0)]
    assert varying and all(r["influence"] != 0 for r in varying)
    assert all(r["influence"] == 0 for r in constant)           # zero-variance questions score 0
    assert all(r["reward"] == 0.0 for r in rows if r["status"] != "valid")
    assert m["gen_steps"] >= 1 and m["solver_steps"] >= 1 and m["solver_tis_mean"] > 0
    # both models moved away from the shared anchor
    ck = tmp_path / "run" / "ckpt_00000"
    g, s = load_file(ck / "generator" / "model.safetensors"), load_file(ck / "solver" / "model.safetensors")
    assert any(not torch.equal(g[k], s[k]) for k in g)
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(ck / "solver")          # HF-loadable


SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.mark.skipif(not (SHARED_DATA / "supergpqa_sample300.jsonl").is_file(),
                    reason=f"the SuperGPQA sample is not at {SHARED_DATA} (a checkout without ../shared)")
def test_an_exported_solver_is_evaluable(tmp_path, scripted):
    """evaluate.py --model on a checkpoint's solver export, on real SuperGPQA questions."""
    import evaluate
    train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=1", "--save_every=1", *SMALL]))
    rep = evaluate.main(["--model", str(tmp_path / "run" / "ckpt_00000" / "solver"), "--benchmark", "supergpqa",
                         "--data-dir", str(SHARED_DATA), "--limit", "2", "--n", "1", "--max-new-tokens", "4",
                         "--quiet"])
    assert rep["results"]["supergpqa"]["metrics"]["items"] == 2


@pytest.mark.parametrize("two_extra", [[], ["--activation_checkpointing", "--influence_tokens=150",
                                                "--micro_batch_tokens=1700"]])
def test_two_ranks_equal_one_rank(tmp_path, two_extra):
    """Two FSDP2 ranks equal one process; the second case runs the two ranks with activation
    checkpointing, a token budget below one row (every dev and question forward split, every
    question through the per-question backward) and PPO micro-batches packed by length under 1700
    padded tokens, against the plain one-rank run (micro-batches of 4 rows in order).

    Both sides run in float64 so that the comparison can be tight: in float32 the two layouts sum the
    same gradients in another order (~1e-7 relative), and AdamW's g / (sqrt(v) + eps) turns that into
    O(lr) moves for the few elements whose gradient is near eps (measured: 3.7e-6 on one AVX-512 CPU)."""
    f64 = ["--dtype=float64", "--compute_dtype=float64"]
    args = lambda out, extra=(): loop_args(tmp_path, out, ["--iterations=1", "--save_every=1", *f64, *extra])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    one = subprocess.run([sys.executable, str(ROOT / "tests" / "dist_loop.py"), *args(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "tests" / "dist_loop.py"), *args(tmp_path / "two", two_extra)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    key = lambda r: r["qid"]
    q1 = sorted(read_jsonl(tmp_path / "one" / "questions.jsonl"), key=key)
    q2 = sorted(read_jsonl(tmp_path / "two" / "questions.jsonl"), key=key)
    assert [r["qid"] for r in q1] == [r["qid"] for r in q2]
    assert [r["status"] for r in q1] == [r["status"] for r in q2]
    s1 = torch.tensor([r["influence"] or 0.0 for r in q1])
    s2 = torch.tensor([r["influence"] or 0.0 for r in q2])
    assert s1.abs().max() > 0
    # float64 scores: reductions of <= 1e5 terms in another order, unit 1.1e-16 -> <= 1e-11 (measured 6e-16)
    assert ((s1 - s2).abs().max() / s1.abs().max()).item() <= 1e-11
    base = train.build_model("tiny-random", train.parse_config(["--preset", "tiny", *f64]))[0].state_dict()
    for role in ("generator", "solver"):
        a = load_file(tmp_path / "one" / "ckpt_00000" / role / "model.safetensors")
        b = load_file(tmp_path / "two" / "ckpt_00000" / role / "model.safetensors")
        assert a[k := next(iter(a))].dtype == b[k].dtype == base[k].dtype == torch.float64
        assert any(not torch.equal(a[k], base[k]) for k in a)     # the update happened
        for k in a:
            # float64 gradients differ by ~1e-16 relative (sum order); AdamW amplifies a difference dg by at
            # most lr * dg / eps (lr 1e-3, eps 1e-8: <= 1e-13 for |g| <= 1); measured: bitwise equal
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12)
    # every metric (diagnostics.py: one packed reduction over ranks) is the one-rank value; the influence
    # statistics are means of the float64 scores above (<= 1e-11 apart), so 1e-9 relative
    m1, m2 = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert {"q_duplicate_rate", "q_seen_rate", "q_distinct_2", "q_key_entropy", "q_solve_hist",
            "solver_signal_rate", "dev_signal_rate", "influence_mean"} <= m1[0].keys()
    assert_same_metrics(m1, m2)


def test_resume_is_bitwise_equal_to_uninterrupted(tmp_path, scripted, monkeypatch):
    import loop_fakes
    monkeypatch.setattr(loop_fakes, "CANNED", loop_fakes.CANNED[:1])     # one question, asked by every draft
    full = train.main(loop_args(tmp_path, tmp_path / "full", ["--iterations=2", "--save_every=1", *SMALL]))
    train.main(loop_args(tmp_path, tmp_path / "cut", ["--iterations=1", "--save_every=1", *SMALL]))
    resumed = train.main(loop_args(tmp_path, tmp_path / "cut", ["--iterations=2", "--save_every=1", "--resume",
                                                                *SMALL]))
    assert resumed["history"][-1]["iteration"] == 1
    for role in ("generator", "solver"):
        a = load_file(tmp_path / "full" / "ckpt_00001" / role / "model.safetensors")
        b = load_file(tmp_path / "cut" / "ckpt_00001" / role / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = (dcp_tensors(tmp_path / run / "ckpt_00001") for run in ("full", "cut"))
    assert oa.keys() == ob.keys() and any(".optim." in k and "exp_avg_sq" in k for k in oa)
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
    assert untimed(full["history"]) == untimed(resumed["history"])
    # one canned question: iteration 1's q_seen_rate counts iteration 0's questions, which the resumed run
    # knows only from the checkpoint
    assert resumed["history"][1]["q_seen_rate"] > 0


def test_two_ranks_resume_is_bitwise_equal_to_uninterrupted(tmp_path):
    """2 gloo ranks (FSDP2): checkpoint after iteration 0, stop, resume for iteration 1; the models (HF
    export) and the sharded AdamW states (DCP) equal those of an uninterrupted 2-iteration run, and so do the
    metrics (one canned question: iteration 1's q_seen_rate needs the checkpoint's record of iteration 0)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CANNED_FIRST="1")
    run = lambda out, extra: subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "dist_loop.py"), *loop_args(tmp_path, out, ["--save_every=1", *SMALL, *extra])],
        capture_output=True, text=True, env=env, timeout=600)
    for out, extra in ((tmp_path / "full", ["--iterations=2"]), (tmp_path / "cut", ["--iterations=1"]),
                       (tmp_path / "cut", ["--iterations=2", "--resume"])):
        p = run(out, extra)
        assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stdout
    for role in ("generator", "solver"):
        a = load_file(tmp_path / "full" / "ckpt_00001" / role / "model.safetensors")
        b = load_file(tmp_path / "cut" / "ckpt_00001" / role / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa, ob = (dcp_tensors(tmp_path / r / "ckpt_00001") for r in ("full", "cut"))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa)
    assert sorted(p.name for p in (tmp_path / "cut" / "ckpt_00001" / "rng").iterdir()) == ["rank_0.pt", "rank_1.pt"]
    full_m, cut_m = (read_jsonl(tmp_path / r / "metrics.jsonl") for r in ("full", "cut"))
    assert cut_m[1]["q_seen_rate"] > 0
    assert untimed(full_m) == untimed(cut_m)


def test_resume_refuses_another_seed_or_world_size(tmp_path, scripted):
    train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=1", "--save_every=1"]))
    with pytest.raises(train.ConfigError, match="--seed=7 differs from the checkpoint's 42"):
        train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=2", "--resume", "--seed=7"]))
    state = torch.load(tmp_path / "run" / "ckpt_00000" / "state.pt", weights_only=False)
    state["world_size"] = 2
    torch.save(state, tmp_path / "run" / "ckpt_00000" / "state.pt")
    checkpoint.write_manifest(tmp_path / "run" / "ckpt_00000")        # an intact checkpoint of another world size
    with pytest.raises(train.ConfigError, match="was written by 2 ranks, this run has 1"):
        train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=2", "--resume"]))


@pytest.mark.parametrize("args,needle", [
    (["--preset", "tiny", "--learning_rate=1"], "unknown config key 'learning_rate'"),
    (["--preset", "tiny", "--n_solver=1"], "--n_solver must be >= 2"),
    (["--preset", "tiny", "--n_gen=two"], "--n_gen expects int"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--preset=huge", "--help"], "unknown preset 'huge'"),
    (["--preset", "tiny", "--documents=/nonexistent/docs.jsonl"], "file not found: /nonexistent/docs.jsonl"),
    (["--preset", "tiny", "--similarity_mode=cos"], "--similarity_mode='cos' is not one of"),
])
def test_bad_input_gives_one_clear_line(args, needle):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr[-2000:]


def test_help_lists_every_key_at_the_presets_value():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = train.parse_config(["--preset", "tiny"])
    listed = {line.split("=", 1)[0].strip(): line.split("=", 1)[1].split("    #")[0]
              for line in out.stdout.splitlines() if line.startswith("  --")}
    assert set(listed) == {f"--{f.name}" for f in dataclasses.fields(cfg) if f.name != "preset"}
    assert all(listed[f"--{k}"] == str(v) for k, v in dataclasses.asdict(cfg).items() if k != "preset")


def test_malformed_jsonl_line_is_named(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"doc_id": "a", "text": "fine"}\n{"doc_id": "b", "text": broken}\n')
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "tiny", f"--documents={docs}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()
    assert len(line) == 1 and f"{docs}:2: not valid JSON" in line[0]


@pytest.mark.parametrize("extra,check", [
    (["--fix_generator"], lambda m: "gen_steps" not in m and m["solver_steps"] >= 1 and "influence_mean" not in m),
    (["--dev_only"], lambda m: m["questions"] == 0 and m["solver_steps"] >= 1),
    (["--generator_reward=spice"], lambda m: m["gen_steps"] >= 1 and "influence_mean" not in m),
    (["--generator_reward=uncertainty", "--generator_normalization=group_std"], lambda m: m["gen_steps"] >= 1),
    (["--similarity_mode=cosine", "--generator_normalization=batch_std"],
     lambda m: m["gen_steps"] >= 1 and m["influence_mean"] != 0),
    (["--solver_mid_eos_penalty=-0.5", "--skip_dev_rollout"], lambda m: m["solver_steps"] >= 1),
])
def test_ablations_are_config_values(tmp_path, scripted, extra, check):
    out = train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=1", "--doc_batch_size=2", *extra]))
    assert check(out["history"][0]), out["history"][0]


def test_frozen_external_questions(tmp_path, scripted):
    qs = tmp_path / "q.jsonl"
    qs.write_text("".join(json.dumps({"iteration": 0, "doc_id": f"x{i}", "question": f"{i} + {i} = ?",
                                      "choices": [str(2 * i), str(i), str(2 * i + 1), "0"],
                                      "ground_truth": str(2 * i)}) + "\n" for i in range(1, 5)))
    out = train.main(loop_args(tmp_path, tmp_path / "run", ["--iterations=1", "--fix_generator",
                                                            f"--question_source={qs}"]))
    m = out["history"][0]
    assert m["questions"] == 4 and m["valid"] == 4 and "gen_steps" not in m
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "tiny", f"--question_source={qs}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "--question_source needs --fix_generator" in proc.stderr


def test_export_in_several_safetensors_files_loads_with_from_pretrained(tmp_path, monkeypatch):
    """export_hf streams tensor by tensor: with 64 KiB files the model is split over many files plus the
    index, and from_pretrained gives back exactly the same weights."""
    from transformers import AutoModelForCausalLM
    import infuser
    from tiny_model import byte_tokenizer, tiny_qwen3
    tok = byte_tokenizer()
    model = tiny_qwen3(vocab_size=len(tok))
    checkpoint.export_hf(infuser.Role("solver", model, None, None, tok, None), tmp_path, 0, shard_bytes=64 * 1024)
    files = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(files) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    sd = back.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_nodes_equal_one_node_and_resume(tmp_path):
    """`torchrun --nnodes=2 --nproc_per_node=1 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT` started once per
    node (here both on this machine, gloo): global rank 1 has LOCAL_RANK 0 on its node. Two iterations equal
    one node x 2 ranks bitwise (the same layout, the same collectives), and so does a run stopped after its
    first checkpoint and resumed on two nodes. The out_dir is shared, as it must be across real nodes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CANNED_FIRST="2")
    script = str(ROOT / "tests" / "dist_loop.py")
    args = lambda out, extra: loop_args(tmp_path, out, ["--save_every=1", *SMALL, *extra])

    def one_node(out, extra):
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            script, *args(out, extra)], capture_output=True, text=True, env=env, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]

    def two_nodes(out, extra):
        port = _free_port()
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                  "--rdzv-backend=c10d", f"--rdzv-endpoint=localhost:{port}", f"--rdzv-id=two-nodes-{port}",
                  script, *args(out, extra)]
        nodes = [subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        outs = [n.communicate(timeout=600) for n in nodes]
        for n, (o, e) in zip(nodes, outs):
            assert n.returncode == 0, e[-3000:]
        return "".join(o for o, _ in outs)

    one_node(tmp_path / "one", ["--iterations=2"])
    log = two_nodes(tmp_path / "two", ["--iterations=2"])
    assert log.count("INFUSER | preset tiny | world 2") == 1               # printed by global rank 0 only
    two_nodes(tmp_path / "cut", ["--iterations=1"])
    assert "resumed from" in two_nodes(tmp_path / "cut", ["--iterations=2", "--resume"])
    for run in ("two", "cut"):
        for role in ("generator", "solver"):
            a = load_file(tmp_path / "one" / "ckpt_00001" / role / "model.safetensors")
            b = load_file(tmp_path / run / "ckpt_00001" / role / "model.safetensors")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (run, role)
        oa, ob = (dcp_tensors(tmp_path / r / "ckpt_00001") for r in ("one", run))
        assert oa.keys() == ob.keys() and all(torch.equal(oa[k], ob[k]) for k in oa), run
        assert untimed(read_jsonl(tmp_path / "one" / "metrics.jsonl")) == untimed(read_jsonl(tmp_path / run / "metrics.jsonl"))
    assert sorted(p.name for p in (tmp_path / "cut" / "ckpt_00001" / "rng").iterdir()) == ["rank_0.pt", "rank_1.pt"]
