"""config.py -- the run's configuration: one flat dataclass (Config), presets as dicts of overrides
(PRESETS), and the `--key=value` parser with type and choice checks (one-line ConfigError on bad input).

Run: imported by train.py (`python train.py --help` lists every key). Tests: tests/test_loop.py.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, fields

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
    dtype: str = "float32"               # weights (masters) dtype; float64 (both keys) for numerics checks
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
    # sizes (algorithm.md §1.3, §9)
    doc_batch_size: int = 128
    n_gen: int = 8
    n_solver: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    max_prompt_tokens: int = 4096
    gen_max_new_tokens: int = 8192
    solver_max_new_tokens: int = 8192
    question_route: str = "mcq"          # mcq | free_form
    # optimisation (algorithm.md §3.6-3.7, §6)
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
    micro_batch_tokens: int = 0          # >0: PPO micro-batches packed by padded tokens instead (rows by length)
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 3.0
    tis_cap: float = 2.0
    # the algorithm and its ablations (algorithm.md §5.4)
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
    dedup_questions: bool = False                    # a question asked before gets the invalid-draft reward
                                                     # (a departure: the paper has no such guard)
    # alarms (diagnostics.py): one console line when a threshold is crossed, listed in summary.json
    alarm_duplicate_rate: float = 0.5    # q_cross_doc_duplicate_rate above this
    alarm_seen_rate: float = 0.5         # q_seen_rate above this
    alarm_signal_rate: float = 0.1       # solver_signal_rate below this
    alarm_test_drops: int = 3            # held-out accuracy lower at this many consecutive measurements (0 = off)
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
    # the paper recipes (algorithm.md §9): give --documents and --dev paths to the released data, and
    # --test=A,B,... the benchmark mix to monitor (measured as the paper's recipes do: n=1, first, every 5, last)
    # Memory knobs (micro_batch, influence_tokens, activation_checkpointing, vllm share) are set so that
    # `python train.py --preset NAME --plan` fits (docs/memory.md); they change no number of the maths
    # (micro-batches are gradient accumulation only). micro_batch is the paper code's per GPU (8 / 4), and
    # micro_batch_tokens the budget of as many full-length rows: short rows share a pass, padding shrinks.
    "qwen3-4b-base": dict(model="Qwen/Qwen3-4B-Base", documents="", dev="", test="", test_every=5, test_samples=1, solver_lr=2e-6,
                          generator_lr=6e-6, micro_batch=8, micro_batch_tokens=8 * 12288, compute_dtype="bfloat16", engine="vllm",
                          iterations=100, save_every=5, activation_checkpointing=True, influence_tokens=24576,
                          influence_chunk=4, vllm_gpu_memory_utilization=0.5),
    "qwen3-8b-base": dict(model="Qwen/Qwen3-8B-Base", documents="", dev="", test="", test_every=5, test_samples=1, solver_lr=2e-6,
                          generator_lr=4e-6, micro_batch=4, micro_batch_tokens=4 * 12288, compute_dtype="bfloat16", engine="vllm",
                          iterations=100, save_every=5, activation_checkpointing=True, influence_tokens=16384,
                          influence_chunk=4, vllm_gpu_memory_utilization=0.5),
    # INFUSER+RLVR: hybrid documents (science + Putnam/AIME-history math) and a mixed dev set, mid-EOS -0.5
    "rlvr-hybrid": dict(model="Qwen/Qwen3-8B-Base", documents="", dev="", test="", test_every=5, test_samples=1, solver_lr=2e-6,
                        generator_lr=4e-6, micro_batch=4, micro_batch_tokens=4 * 12288, compute_dtype="bfloat16",
                        engine="vllm", solver_mid_eos_penalty=-0.5, iterations=100, save_every=5, activation_checkpointing=True,
                        influence_tokens=16384, influence_chunk=4, vllm_gpu_memory_utilization=0.5),
    # what someone with one GPU runs first: Qwen3-1.7B-Base, short lengths, 5 iterations (fits 1 x 141 GB)
    "qwen3-1.7b-smoke": dict(model="Qwen/Qwen3-1.7B-Base", documents="", dev="", test="", solver_lr=2e-6,
                             generator_lr=6e-6, compute_dtype="bfloat16", engine="vllm", iterations=5,
                             save_every=5, doc_batch_size=16, n_gen=4, n_solver=4, max_prompt_tokens=2048,
                             gen_max_new_tokens=2048, solver_max_new_tokens=2048, ppo_minibatch_groups=8,
                             micro_batch=8, micro_batch_tokens=8 * 4096, activation_checkpointing=True, influence_tokens=16384,
                             influence_chunk=4, vllm_gpu_memory_utilization=0.4, plan_world_size=1, plan_gpu_gb=141.0),
}

CHOICES = {"engine": ("hf", "vllm"), "question_route": ("mcq", "free_form"),
           "solver_normalization": ("none", "group_std", "batch_std", "hybrid_std"),
           "generator_normalization": ("none", "group_std", "batch_std", "hybrid_std"),
           "similarity_mode": ("dot", "cosine", "preconditioned_dot", "preconditioned_cosine"),
           "generator_reward": ("influence", "spice", "uncertainty"),
           "dtype": ("float32", "bfloat16", "float16", "float64"),
           "compute_dtype": ("float32", "bfloat16", "float16", "float64")}


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


def usage(cfg: Config, header: str = "") -> str:
    """--help: `header` (train.py passes its run examples), then every key with its value in `cfg` (the
    preset and any overrides given beside --help) and its comment."""
    import inspect
    comments = {}
    for line in inspect.getsource(Config).splitlines():
        name, _, rest = line.strip().partition(":")
        if "#" in rest and name.isidentifier():
            comments[name] = rest.split("#", 1)[1].strip()
    keys = "\n".join(f"  --{k}={v}" + (f"    # {comments[k]}" if k in comments else "")
                     for k, v in asdict(cfg).items() if k != "preset")
    return (f"{header.strip()}\n\nPresets: {', '.join(PRESETS)}\n\n"
            f"Keys, with their values under --preset={cfg.preset}:\n{keys}")


def parse_config(argv: list[str], header: str = "usage: python train.py [--preset NAME] [--key=value ...]") -> Config:
    """`--preset NAME` then `--key=value` / `--key value` overrides; a bare `--flag` sets a bool; then
    validate(). `-h`/`--help` prints `header` and the keys, and exits."""
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
    validate(cfg)
    if not cfg.out_dir:
        cfg.out_dir = os.path.join("runs", cfg.preset)
    if want_help:
        print(usage(cfg, header))
        sys.exit(0)
    return cfg


def validate(cfg: Config) -> None:
    """Every rule on the values of the keys, alone and together, in one place: parse_config runs it before
    train.py touches out_dir or builds anything (the rules that need the data or the world size are
    checked in train.py, after the data load and still before anything is deleted or built)."""
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"--{key}={getattr(cfg, key)!r} is not one of {allowed}")
    for key in ("iterations", "doc_batch_size", "n_gen", "n_solver", "ppo_minibatch_groups", "micro_batch",
                "influence_chunk", "influence_tokens", "ppo_epochs", "test_samples"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"--{key} must be >= 1")
    for key in ("save_every", "keep_last", "test_every", "dev_limit", "alarm_test_drops", "micro_batch_tokens"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"--{key} must be >= 0")
    if cfg.n_solver < 2:
        raise ConfigError("--n_solver must be >= 2: a question answered once has no reward variance, so it "
                          "could neither train the solver nor get an influence score here")
    if cfg.question_source and not cfg.fix_generator:
        raise ConfigError("--question_source needs --fix_generator (its questions come from a frozen generator)")
    if (cfg.dtype == "float64") != (cfg.compute_dtype == "float64"):
        raise ConfigError("float64 is all or nothing: give both --dtype=float64 and --compute_dtype=float64")
    if cfg.engine == "vllm":
        for key in ("model", "generator_model"):
            spec = getattr(cfg, key)
            if spec == "tiny-random" or spec.endswith(".gguf"):
                raise ConfigError(f"--engine=vllm needs a model directory; --{key}={spec} is not one "
                                  f"(use --engine=hf)")
    if not 0 < cfg.top_p <= 1 or cfg.temperature < 0:
        raise ConfigError(f"--top_p must be in (0, 1] and --temperature >= 0: got {cfg.top_p}, {cfg.temperature}")


