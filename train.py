r"""train.py -- the INFUSER entry point: setup, models and roles, data, resume, the outer loop, the summary.

Run
  python train.py                                   # the embedded default: the toy world (preset "toy")
  python train.py --preset tiny                     # a few-second smoke run on a random tiny Qwen3
  python train.py --preset toy --iterations=5 --seed=1
  torchrun --standalone --nproc_per_node=8 train.py --preset qwen3-8b-base \
      --documents=/data/documents.jsonl --dev=/data/supergpqa_science_800.jsonl --engine=vllm
  python train.py --preset toy --resume             # continue the latest checkpoint in out_dir
  python train.py --preset qwen3-8b-base --plan --plan_world_size=8 --plan_gpu_gb=80   # memory plan (plan.py)

Config and presets: config.py; data: data.py; checkpoints and resume: checkpoint.py; the run's files:
runlog.py. Distributed: under torchrun one process per device (nccl on GPU, gloo on CPU); both models are
sharded with FSDP2 (`fully_shard` on every decoder layer, then the root) when world size > 1; infuser.py
gathers the few global quantities. With engine=hf the engine samples the training model itself (under
FSDP2 it holds the gathered full weights for a call); engine=vllm runs one colocated vLLM engine per rank,
shared by both roles ("external_launcher" under torchrun), asleep between rollouts where vLLM can sleep;
every rollout starts with the one weight-sync function (vllm_engine.sync_weights_to_vllm).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed

import diagnostics
import infuser
from checkpoint import check_resume, find_checkpoint, load_checkpoint, save_checkpoint
from config import Config, ConfigError, parse_config
from data import DocumentStream, load_documents, load_external_questions, load_questions
from dist import all_sum, barrier, print0, rank_world
from evaluate import Item, evaluate
from runlog import Logger, claim_out_dir, plot_curves
from records import SamplingParams
from rollout import HFEngine, load_model, make_optimizer, prepare_model, resolve_dtype

from tiny_model import byte_tokenizer, tiny_qwen3

# `python train.py --help`: how to run (this docstring's Run block), then every key (config.usage)
USAGE = ("usage: python train.py [--preset NAME] [--key=value ...]   (or torchrun ... train.py ...)\n\n"
         + __doc__[__doc__.index("Run\n"):__doc__.index("\nConfig and presets")])

# ----------------------------------------------------------------------------------------------
# Distributed setup (a thin layer: world size 1 is the same code path)

def setup_distributed(cfg: Config):
    """Init torch.distributed when launched by torchrun. Returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if want_cuda else "gloo")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu" if cfg.device in ("auto", "cuda") else cfg.device)
    return rank, world, device


# ----------------------------------------------------------------------------------------------
# Models and data

def build_model(spec: str, cfg: Config):
    """(model, tokenizer, path for vLLM or None) from a model spec."""
    if spec == "toy":
        import toy
        path = toy.anchor_path()          # shipped, cached, or pretrained now (toy.py)
        model, tok = load_model(path)     # fp32, as toy.load_anchor
        return model, tok, path
    if spec == "tiny-random":
        tok = byte_tokenizer()
        model = tiny_qwen3(vocab_size=len(tok), seed=cfg.seed, dtype=resolve_dtype(cfg.dtype))
        return model, tok, None
    gguf = None
    if spec.endswith(".gguf"):
        spec, gguf = os.path.dirname(spec) or ".", os.path.basename(spec)
    try:
        model, tok = load_model(spec, dtype=cfg.dtype, gguf_file=gguf)
    except (ValueError, OSError) as e:
        raise ConfigError(f"--model={spec}: {e}") from None
    return model, tok, (spec if gguf is None else None)


# ----------------------------------------------------------------------------------------------
# Roles: models, optimizers, engines

def make_role(name: str, model, tok, path, cfg: Config, device, shared: dict) -> infuser.Role:
    """Model on its device (FSDP2-sharded when world > 1), its AdamW, and the engine that samples it."""
    prepare_model(model, cfg, device)
    opt = make_optimizer(model, cfg, name)
    if cfg.engine == "vllm":
        if path is None:
            raise ConfigError("--engine=vllm needs a model directory (not tiny-random or a .gguf file)")
        if "vllm" not in shared:
            from vllm_engine import VLLMEngine
            shared["vllm"] = VLLMEngine(path, tok, dtype=cfg.compute_dtype, seed=cfg.seed,
                                        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                                        max_model_len=cfg.max_prompt_tokens + max(cfg.gen_max_new_tokens,
                                                                                  cfg.solver_max_new_tokens),
                                        **VLLMEngine.torchrun_args(rank_world()[1]))
        engine = shared["vllm"]
        sync = lambda: engine.sync_weights(model)          # one engine, both roles: always push this role
    else:
        # HFEngine samples the training model itself (under FSDP2 it gathers the full weights per call)
        engine = HFEngine(model, tok, cfg.max_tokens_per_batch,
                          progress=cfg.progress and rank_world()[0] == 0)
        sync = None
    return infuser.Role(name, model, opt, engine, tok, sync)


def load_test_sets(cfg: Config) -> dict[str, list[Item]]:
    """--test: one or several sets, comma-separated ("toy", benchmark names, JSONL paths); named by the
    benchmark or the file's stem. Each is measured at the start, every test_every iterations and at the end."""
    sets = {}
    for spec in [x.strip() for x in cfg.test.split(",") if x.strip()]:
        name = Path(spec).stem if spec.endswith(".jsonl") or os.path.sep in spec else spec
        if name in sets:
            raise ConfigError(f"--test names {name!r} twice")
        sets[name] = load_questions(spec, cfg, "test")
    return sets


def measure_tests(cfg: Config, role: infuser.Role, sets: dict[str, list[Item]], out: dict, suffix: str = "") -> None:
    """out[f"test_acc{suffix}/NAME"] for every set, and out[f"test_acc{suffix}"] = the first set's."""
    for i, (name, items) in enumerate(sets.items()):
        out[f"test_acc{suffix}/{name}"] = test_accuracy(cfg, role, items, "test" if i == 0 else f"test/{name}")
        if i == 0:
            out[f"test_acc{suffix}"] = out[f"test_acc{suffix}/{name}"]


def test_accuracy(cfg: Config, role: infuser.Role, items: list[Item], tag: str) -> float | None:
    """avg@k of the solver on held-out target questions (each rank its share, summed)."""
    if not items:
        return None
    rank, world = rank_world()
    mine = items[rank::world]
    if role.sync is not None:
        role.sync()
    params = SamplingParams(n=cfg.test_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.solver_max_new_tokens, seed=infuser.seed_for(cfg.seed, tag))
    rep = evaluate(role.engine, mine, params, batch_size=64, progress=False)
    ok = sum(g == 1.0 for r in rep["items"] for g in r["grades"])
    n = sum(len(r["grades"]) for r in rep["items"])
    ok, n = all_sum([ok, n])
    return ok / max(n, 1)


# ----------------------------------------------------------------------------------------------
# The outer loop

def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(sys.argv[1:] if argv is None else argv, header=USAGE)
    if cfg.plan:
        import plan
        try:
            code = plan.main(cfg)
        except plan.PlanError as e:
            raise ConfigError(str(e)) from None
        sys.exit(code)
    if cfg.engine == "vllm":
        import importlib.util
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError("--engine=vllm: vLLM is not installed in this environment (see "
                              "requirements-vllm.txt), or use --engine=hf")
    theirs = claim_out_dir(cfg)
    ckpt = find_checkpoint(cfg)
    state = check_resume(ckpt, cfg, int(os.environ.get("WORLD_SIZE", "1"))) if ckpt is not None else None
    finished = state is not None and state["iteration"] + 1 >= cfg.iterations
    if finished and (Path(cfg.out_dir) / "summary.json").is_file():
        print0(f"{ckpt}: the run is finished (iteration {state['iteration'] + 1} of {cfg.iterations}); "
               f"nothing to do (raise --iterations to continue it)")
        return {"summary": state.get("summary", {}), "history": state.get("history", []), "config": asdict(cfg)}
    rank, world, device = setup_distributed(cfg)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # ---- data ---------------------------------------------------------------------------------
    documents = [] if cfg.dev_only else load_documents(cfg.documents)
    dev_items = load_questions(cfg.dev, cfg, "dev")
    test_sets = load_test_sets(cfg)
    external = load_external_questions(cfg.question_source) if cfg.question_source else None
    stream = DocumentStream(documents, cfg.seed)
    if len(dev_items) < world or (documents and cfg.doc_batch_size < world):
        raise ConfigError(f"every rank needs at least one dev question and one document per batch: got "
                          f"{len(dev_items)} dev questions and --doc_batch_size={cfg.doc_batch_size} for {world} ranks")

    # ---- models: two copies of one anchor, each with its own AdamW --------------------------------
    shared: dict = {}
    s_model, s_tok, s_path = build_model(cfg.model, cfg)
    g_model, g_tok, g_path = build_model(cfg.generator_model or cfg.model, cfg)
    solver = make_role("solver", s_model, s_tok, s_path, cfg, device, shared)
    generator = make_role("generator", g_model, g_tok, g_path, cfg, device, shared)
    roles = {"generator": generator, "solver": solver}
    if rank == 0:
        for p in theirs:                   # --overwrite: the other run's files go only now, every check passed
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    barrier()

    log = Logger(cfg)
    start, history, summary, seen = 0, [], {"alarms": []}, set()
    if ckpt is not None:
        state = load_checkpoint(ckpt, roles, stream, state)
        start, history, summary = state["iteration"] + 1, state.get("history", []), state.get("summary", {})
        seen = set(state.get("seen_questions", []))      # hashes of every earlier valid question (q_seen_rate)
        log.resume(state["iteration"], history)
        print0(f"resumed from {ckpt} (next iteration {start})" if not finished else
               f"{ckpt}: the run is finished but its summary is missing (killed after its last checkpoint): "
               f"writing it now")
    n_params = sum(p.numel() for p in s_model.parameters())
    print0(f"INFUSER | preset {cfg.preset} | world {world} on {device} | {n_params / 1e6:.2f}M params per model"
           f" | {len(documents)} documents, {len(dev_items)} dev, "
           + (", ".join(f"{len(v)} {k}" for k, v in test_sets.items()) or "no") + " test questions")
    isa = torch.backends.cpu.get_cpu_capability()
    half = cfg.compute_dtype in ("bfloat16", "float16")
    if device.type == "cpu" and half and not isa.startswith("AVX512"):
        print0(f"warning: --compute_dtype={cfg.compute_dtype} on a CPU without AVX-512 ({isa}): half-precision "
               f"matmuls are emulated here, measured 12-18x slower than float32 (README, Performance)")
    amp = (torch.autocast(device.type, dtype=getattr(torch, cfg.compute_dtype))
           if world == 1 and half else nullcontext())
    if start == 0 and test_sets:
        measure_tests(cfg, solver, test_sets, summary, "_start")
        print0("held-out test accuracy at start: " + ", ".join(f"{k} {summary[f'test_acc_start/{k}']:.3f}"
                                                               for k in test_sets))

    for it in range(start, cfg.iterations):
        batch = stream.next_batch(cfg.doc_batch_size) if documents else []
        with amp:
            rec = infuser.run_iteration(cfg, it, generator, solver, batch, dev_items,
                                        external_questions=None if external is None else external.get(it, []),
                                        seen=seen)
        if not cfg.dev_only:
            log.questions(diagnostics.question_log(rec))
        m = diagnostics.metrics_line(cfg, rec, seen)
        if test_sets and cfg.test_every and (it + 1) % cfg.test_every == 0 and it < cfg.iterations - 1:
            measure_tests(cfg, solver, test_sets, m)
        history.append(m)
        raised = diagnostics.alarms(cfg, history, summary)
        m["alarms"] = [name for name, _ in raised]
        summary.setdefault("alarms", []).extend({"iteration": it, "alarm": a, "message": msg} for a, msg in raised)
        if cfg.save_every and ((it + 1) % cfg.save_every == 0 or it == cfg.iterations - 1):
            tick = time.perf_counter()
            try:
                save_checkpoint(cfg, it, roles, stream, {"history": history, "summary": summary,
                                                         "seen_questions": sorted(seen)})
            except OSError as e:           # e.g. the disk is full: what is on disk stays as it was
                shutil.rmtree(Path(cfg.out_dir) / f".tmp_ckpt_{it:05d}", ignore_errors=True)
                raise ConfigError(f"the checkpoint of iteration {it} could not be written ({e.strerror or e}); "
                                  f"the run stops here, earlier checkpoints are untouched") from None
            m["time_checkpoint"] = time.perf_counter() - tick
        log.metrics(m)
        for _, msg in raised:
            print0(f"ALARM it {it}: {msg}")

    if test_sets and "test_acc_end" not in summary:
        measure_tests(cfg, solver, test_sets, summary, "_end")
    devs = [m["dev_acc"] for m in history if m.get("dev_acc") is not None]
    if devs:
        summary.update(dev_acc_start=devs[0], dev_acc_end=devs[-1])
    if rank == 0:
        summary["plot"] = plot_curves(cfg.out_dir, history, summary)
        Path(cfg.out_dir, "summary.json").write_text(json.dumps(summary, indent=2))
        line = " | ".join(f"{k} {v:.3f}" for k, v in summary.items()
                          if isinstance(v, float) and ("/" not in k or len(test_sets) > 1))
        if summary.get("alarms"):
            line += f" | alarms raised: {len(summary['alarms'])} (summary.json)"
        print0(f"summary: {line} | curves: {summary.get('plot')}")
    if "vllm" in shared:
        shared["vllm"].close()             # vLLM's process groups go before the trainer's
    if torch.distributed.is_initialized():
        torch.distributed.barrier()        # rank 0 may still be writing; no rank tears gloo down early
        torch.distributed.destroy_process_group()
    return {"summary": summary, "history": history, "config": asdict(cfg)}


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
