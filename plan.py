"""plan.py -- the memory plan of a preset, computed by running the real code on fake tensors.

    python train.py --preset qwen3-8b-base --plan --plan_world_size=8 --plan_gpu_gb=80

builds the preset's real model class from its config (Qwen3 configs of the paper's models are below, so
nothing is downloaded; a local model directory is read from its config.json) under torch's FakeTensorMode,
shards both models with FSDP2 exactly as train.make_role does (rollout.prepare_model) over a fake N-rank
process group (no data moves; every rank is taken to hold the same worst-case batch), and runs the real phases of one iteration
at the preset's worst-case lengths (every row max_prompt_tokens + max_new_tokens long):

  rollout            both roles resident (weights, AdamW states) + vLLM awake (its memory share)
  dev gradient       influence.dev_gradient on two full micro-batches of `influence_tokens` tokens
  influence          influence.question_scalars: the hook path (chunk_questions questions per forward) if a
                     question fits the budget, else the per-question backward on sharded gradients
  solver step        infuser.micro_step on micro_batch rows (or micro_batch_tokens of full-width rows),
                     grad clip, AdamW step
  generator step     the same for the generator

Each phase runs under torch.distributed._tools' MemTracker (FSDPMemTracker when sharded), with the other
role's weights and AdamW state, the held dev gradient m and the input rollouts registered as external
tensors, so its peak is everything torch allocates on one GPU. Two things no tracker on this machine can
see are added as stated assumptions (not measured here): the CUDA context + NCCL buffers of the trainer
(CUDA_RESERVE_GB) and what a sleeping vLLM keeps (VLLM_SLEEP_GB: its CUDA graphs and context; weights go
to CPU and the KV cache is freed by sleep level 1). Exit 0 when every phase fits, 3 when one does not.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import weakref

import torch
import torch.distributed as dist

GiB = 2 ** 30
CUDA_RESERVE_GB = 2.0      # GiB, assumed: CUDA context, cuBLAS workspace, NCCL buffers of the trainer process
VLLM_SLEEP_GB = 2.0        # GiB, assumed: what a sleeping vLLM engine keeps (CUDA graphs, its context)

# The architectures of the paper's models and of the one-GPU smoke model (their public config.json values).
_QWEN3 = dict(max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, vocab_size=151936,
              num_key_value_heads=8, head_dim=128, hidden_act="silu", attention_bias=False)
QWEN3_CONFIGS = {
    "Qwen/Qwen3-8B-Base": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                               num_attention_heads=32, tie_word_embeddings=False),
    "Qwen/Qwen3-4B-Base": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                               num_attention_heads=32, tie_word_embeddings=True),
    "Qwen/Qwen3-1.7B-Base": dict(_QWEN3, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                                 num_attention_heads=16, tie_word_embeddings=True),
    "Qwen/Qwen3-0.6B-Base": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                 num_attention_heads=16, tie_word_embeddings=True),
}


class PlanError(ValueError):
    pass


def model_config(spec: str, cfg):
    """A transformers config for a model spec, without downloading anything."""
    import os
    from transformers import AutoConfig, Qwen3Config
    if spec in QWEN3_CONFIGS:
        return Qwen3Config(**QWEN3_CONFIGS[spec])
    if spec == "tiny-random":
        from tiny_model import byte_tokenizer, tiny_qwen3
        return tiny_qwen3(vocab_size=len(byte_tokenizer())).config
    if spec == "toy":
        import toy
        return AutoConfig.from_pretrained(toy.anchor_path())
    if os.path.isfile(os.path.join(spec, "config.json")):
        return AutoConfig.from_pretrained(spec)
    raise PlanError(f"--plan: no config for model {spec!r}: give a local model directory or one of "
                    f"{', '.join(QWEN3_CONFIGS)}")


def _nbytes(tensors) -> int:
    """Bytes of this rank's part of each tensor (the local shard of a DTensor)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def _opt_tensors(opt) -> list:
    return [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0]


def worst_rollouts(rows: int, prompt: int, response: int, vocab: int, group: int):
    """`rows` rollouts of prompt + response tokens each (real CPU tensors: token ids are tiny), groups of
    `group` rows with varying rewards, sampler log-probs present (TIS on)."""
    from records import Rollouts
    t = prompt + response
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (rows, t), generator=g)
    rm = torch.zeros(rows, t)
    rm[:, prompt:] = 1.0
    gids = torch.arange(rows) // group
    rewards = (torch.arange(rows) % 2).float()
    return Rollouts(ids, torch.ones(rows, t, dtype=torch.long), rm, gids, rewards, -torch.rand(rows, t) * rm)


class PeakTracker:
    """Live bytes of every tensor storage on the (fake) device, and the breakdown at its peak.

    A dispatch mode sees every op's outputs; each new storage is counted until Python frees it (a weak
    reference's callback). Categories: tensors registered up front (`track(t, category)`: this role's
    params and AdamW state; as 'held' the other role's, the held m and the rollouts), 'grads' (re-labelled
    when a parameter's gradient is accumulated), 'activations' (allocated in a forward) and 'temporaries'
    (allocated in the backward, the recomputation of checkpointed layers included, or the optimizer step).
    torch's own MemTracker does the same but refuses a module that runs twice in one session (every
    micro-batch loop and every checkpointed layer does)."""

    def __init__(self):
        self.live, self.by_cat, self.now, self.peak, self.at_peak, self.start = {}, {}, 0, 0, {}, 0

    def track(self, t, cat=None):
        from torch.utils._python_dispatch import is_traceable_wrapper_subclass
        if not isinstance(t, torch.Tensor):
            return
        if is_traceable_wrapper_subclass(t):            # a DTensor: its local shard holds the memory
            for name in t.__tensor_flatten__()[0]:
                self.track(getattr(t, name), cat)
            return
        st = t.untyped_storage()
        key = id(st)
        if key in self.live:
            n, old = self.live[key]
            if cat is not None and old != cat:           # re-label (a gradient, once accumulated)
                self.by_cat[old] -= n
                self.by_cat[cat] = self.by_cat.get(cat, 0) + n
                self.live[key] = (n, cat)
            return
        if cat is None:
            cat = "temporaries" if torch._C._current_graph_task_id() != -1 else "activations"
        n = st.nbytes()
        self.live[key] = (n, cat)
        self.by_cat[cat] = self.by_cat.get(cat, 0) + n
        self.now += n
        weakref.finalize(st, self._free, key)
        if self.now > self.peak:
            self.peak, self.at_peak = self.now, dict(self.by_cat)

    def _free(self, key):
        n, cat = self.live.pop(key, (0, None))
        if cat is not None:
            self.by_cat[cat] -= n
            self.now -= n

    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    tracker.track(t)
                return out
        return Mode()

    def breakdown(self) -> dict[str, float]:
        out = dict.fromkeys(["params", "grads", "optimizer", "activations", "temporaries", "held"], 0.0)
        for cat, n in self.at_peak.items():
            out[cat] += n / GiB
        out["total"] = self.peak / GiB
        return out


class _RealMetadata:
    """A dispatch mode over the fake mode: ops on real tensors only (token ids, masks, group ids, counts:
    the loop's bookkeeping, which reads values) and integer/bool/float64 factories run for real; every op
    that touches a fake tensor, and every float32/bf16/fp16 factory (parameters, activations, gradients,
    FSDP buffers), stays fake. So the real code runs unchanged, and only the model's memory is faked."""

    FAKE_FACTORY = (torch.float32, torch.bfloat16, torch.float16)

    def __new__(cls):
        from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
                if tensors:
                    real = not any(isinstance(t, FakeTensor) for t in tensors)
                else:
                    dtype = kwargs.get("dtype")
                    if dtype is None and func.__name__.startswith(("arange", "scalar_tensor")):
                        real = True                 # index ranges and scalars: bookkeeping
                    else:
                        real = dtype not in (None, *cls.FAKE_FACTORY)
                if real:
                    with unset_fake_temporarily():
                        return func(*args, **kwargs)
                return func(*args, **kwargs)
        return Mode()


class Planner:
    """Both roles built under fake tensors, sharded like train.make_role (rollout.prepare_model); `phase()` measures one phase."""

    def __init__(self, cfg, world: int, fake: bool = True, configs: dict | None = None, device: str = "cpu"):
        from torch._subclasses.fake_tensor import FakeTensorMode
        from transformers import AutoModelForCausalLM
        from rollout import make_optimizer, prepare_model
        self.cfg, self.world = cfg, world
        self.mesh = None
        if world > 1:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.testing._internal.distributed.fake_pg import FakeStore
            if dist.is_initialized():
                dist.destroy_process_group()
            dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
            self.mesh = init_device_mesh("cpu", (world,))          # outside the fake mode
        self.fake = fake
        self.mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
        self.models, self.opts = {}, {}
        old = torch.get_default_dtype()
        configs = configs or {name: model_config(spec, cfg) for name, spec in
                              (("solver", cfg.model), ("generator", cfg.generator_model or cfg.model))}
        with self.mode:
            torch.set_default_dtype(getattr(torch, cfg.dtype))
            try:
                for name, mcfg in configs.items():
                    mcfg._attn_implementation = "sdpa"
                    model = AutoModelForCausalLM.from_config(mcfg)
                    self.vocab = mcfg.vocab_size
                    prepare_model(model, cfg, None if fake else torch.device(device), self.mesh)
                    opt = make_optimizer(model, cfg, name)
                    for p in model.parameters():          # AdamW state as after the first step
                        p.grad = torch.zeros_like(p)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    self.models[name], self.opts[name] = model, opt
            finally:
                torch.set_default_dtype(old)
        self.sharded = world > 1
        self.device = torch.device("cpu" if fake else device)
        self.amp = (torch.autocast(self.device.type, dtype=getattr(torch, cfg.compute_dtype))
                    if world == 1 and cfg.compute_dtype != "float32" else contextlib.nullcontext())

    def checkpointing(self, on: bool) -> None:
        from rollout import set_activation_checkpointing
        for model in self.models.values():
            set_activation_checkpointing(model, on)

    def resident(self, name: str) -> list:
        return list(self.models[name].parameters()) + _opt_tensors(self.opts[name])

    def phase(self, role: str, fn, held=()) -> dict[str, float]:
        """Peak of fn(model, opt) on one GPU: the role's params / grads / optimizer state / activations /
        temporaries, and as 'held' the other role's weights and AdamW state plus `held` (m, ...)."""
        other = "generator" if role == "solver" else "solver"
        model, opt = self.models[role], self.opts[role]
        tr = PeakTracker()
        for p in model.parameters():
            tr.track(p, "params")
        for t in _opt_tensors(opt):
            tr.track(t, "optimizer")
        for t in self.resident(other) + list(held):
            tr.track(t, "held")
        hooks = [p.register_post_accumulate_grad_hook(lambda p: tr.track(p.grad, "grads"))
                 for p in model.parameters()]
        rss = None
        if not self.fake:            # a real run: the process's own peak first, without the tracker's objects
            cuda = self.device.type == "cuda"
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                rss0 = torch.cuda.memory_allocated()
            else:
                rss0 = _rss_reset()
            with self.amp:
                fn(model, opt)
                model.zero_grad(set_to_none=True)
            rss = (torch.cuda.max_memory_allocated() if cuda else _rss_peak()) - rss0
        try:
            with self.mode, (_RealMetadata() if self.fake else contextlib.nullcontext()), self.amp, tr.mode():
                tr.start = tr.now
                fn(model, opt)
                model.zero_grad(set_to_none=True)
        finally:
            for h in hooks:
                h.remove()
        out = tr.breakdown()
        out["increment"] = (tr.peak - tr.start) / GiB          # the phase's own peak above what it started with
        if rss is not None:
            out["rss_increment"] = rss / GiB
        return out


def _rss_reset() -> int:
    """Current resident set size in bytes, after resetting the kernel's peak-RSS mark (Linux clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS") * 1024


def _rss_peak() -> int:
    return _status_kb("VmHWM") * 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def run_phases(cfg, world: int, only: str | None = None, planner: Planner | None = None) -> dict[str, dict]:
    """{phase: breakdown in GiB} for every phase (or just `only`)."""
    import influence
    import infuser
    pl = planner or Planner(cfg, world)
    pl.checkpointing(cfg.activation_checkpointing)
    v = pl.vocab
    s_width = cfg.max_prompt_tokens + cfg.solver_max_new_tokens
    g_width = cfg.max_prompt_tokens + cfg.gen_max_new_tokens
    out = {}

    # dev gradient: two micro-batches, each as many full-width rows as the token budget allows
    per = max(1, cfg.influence_tokens // s_width)
    dev = worst_rollouts(2 * per, cfg.max_prompt_tokens, cfg.solver_max_new_tokens, v, cfg.n_solver)
    keep = {}
    want = lambda name: only is None or only == name

    def dev_phase(model, opt):
        keep["m"] = influence.dev_gradient(model, dev, cfg.temperature, cfg.tis_cap, cfg.influence_tokens)
    if only is None or only.startswith(("dev gradient", "influence")):
        ph = pl.phase("solver", dev_phase)
        if want("dev gradient"):
            out["dev gradient"] = ph

    # influence, two worst cases: (a) full-width questions (the per-question backward when a group does
    # not fit the budget, else as many whole groups as fit); (b) the hook path at its most questions per
    # forward: influence_chunk groups of the width that just fits the budget (the [Qc, *param] blocks,
    # e.g. Qc x the LM head, are largest then)
    m = keep.get("m") or {}
    g = cfg.n_solver
    cases = []
    if g * s_width <= cfg.influence_tokens:
        cases.append(("influence", min(cfg.influence_chunk, cfg.influence_tokens // (g * s_width)), s_width))
    else:
        cases.append(("influence (split)", 1, s_width))
    w_hook = min(s_width, cfg.influence_tokens // (g * cfg.influence_chunk))
    if w_hook >= 2 and (cases[0][1] < cfg.influence_chunk or w_hook < s_width):
        cases.append(("influence (hook)", cfg.influence_chunk, w_hook))
    for name, n_q, w in cases:
        prompt = min(cfg.max_prompt_tokens, max(1, w // 3)) if w < s_width else cfg.max_prompt_tokens
        gen = worst_rollouts(n_q * g, prompt, w - prompt, v, g)

        def infl_phase(model, opt, gen=gen):
            with influence._training(model):
                influence.question_scalars(model, opt, m, gen, cfg.similarity_mode, cfg.temperature,
                                            cfg.tis_cap, cfg.influence_chunk, cfg.influence_tokens)
        if want(name):
            out[name] = pl.phase("solver", infl_phase, held=list(m.values()))
            out[name]["path"] = f"{n_q} x {g} rows x {w} tokens"
    keep.clear()

    # one PPO micro-batch step with grad clip and AdamW, per role
    for role, width, new in (("solver", s_width, cfg.solver_max_new_tokens),
                             ("generator", g_width, cfg.gen_max_new_tokens)):
        rows = max(1, cfg.micro_batch_tokens // width) if cfg.micro_batch_tokens else cfg.micro_batch
        mb = worst_rollouts(rows, cfg.max_prompt_tokens, new, v, rows)
        adv = torch.linspace(-1, 1, rows)

        def step(model, opt, mb=mb, adv=adv, rows=rows, new=new):
            model.train()
            dev_ = next(model.parameters()).device
            infuser.micro_step(model, cfg, mb.to(dev_), adv.to(dev_), None, float(rows * new), 1.0)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if want(f"{role} step"):
            out[f"{role} step"] = pl.phase(role, step)

    # rollout: both roles resident, nothing else of the trainer; vLLM (when used) is awake then
    res = _nbytes(pl.resident("solver") + pl.resident("generator")) / GiB
    if want("rollout"):
        out["rollout"] = dict.fromkeys(["params", "grads", "optimizer", "activations", "temporaries"], 0.0)
        out["rollout"].update(held=res, total=res)
    return out


def _fits(cfg, world, gpu_gb, only=None, planner=None) -> tuple[bool, dict, dict]:
    phases = run_phases(cfg, world, only, planner)
    vllm = cfg.engine == "vllm"
    for name, ph in phases.items():
        awake = name == "rollout"
        ph["vllm"] = (cfg.vllm_gpu_memory_utilization * gpu_gb if awake else VLLM_SLEEP_GB) if vllm else 0.0
        ph["reserve"] = CUDA_RESERVE_GB
        ph["gpu"] = ph["total"] + ph["vllm"] + ph["reserve"]
        ph["fits"] = ph["gpu"] <= gpu_gb
    return all(p["fits"] for p in phases.values()), phases, {}


KNOBS = {"dev gradient": ("influence_tokens",), "influence": ("influence_tokens", "influence_chunk"),
         "influence (split)": ("influence_tokens",), "influence (hook)": ("influence_chunk", "influence_tokens"),
         "solver step": ("micro_batch", "micro_batch_tokens"), "generator step": ("micro_batch", "micro_batch_tokens"),
         "rollout": ("vllm_gpu_memory_utilization",)}


def suggest(cfg, world, gpu_gb, phase: str, phases: dict, planner: Planner) -> str:
    """The knob with which the failing phase fits: activation checkpointing first, then each of the
    phase's knobs, tried at its floor (if even that fails: next knob) and then halved from its value
    until it fits. The models are built once (`planner`); each trial reruns just that phase."""
    if phase == "rollout":
        ph = phases[phase]
        room = (gpu_gb - ph["total"] - ph["reserve"]) / gpu_gb
        return (f"--vllm_gpu_memory_utilization={int(room * 100) / 100:g}" if room >= 0.05 else
                "nothing in reach: the two models alone do not fit; more GPUs (--plan_world_size)")
    fits = lambda c: _fits(c, world, gpu_gb, phase, planner)[1][phase]["fits"]
    base = cfg
    if not cfg.activation_checkpointing:
        base = dataclasses.replace(cfg, activation_checkpointing=True)
        if fits(base):
            return "--activation_checkpointing"
    floors = {"influence_tokens": 1024, "influence_chunk": 1, "micro_batch": 1, "micro_batch_tokens": 1024}
    for knob in KNOBS[phase]:
        val = getattr(base, knob)
        if val <= floors[knob] or not fits(dataclasses.replace(base, **{knob: floors[knob]})):
            continue
        val //= 2
        while val > floors[knob] and not fits(dataclasses.replace(base, **{knob: val})):
            val //= 2
        extra = "--activation_checkpointing " if base is not cfg else ""
        return f"{extra}--{knob}={max(val, floors[knob])}"
    return "nothing in reach: more GPUs (--plan_world_size) or shorter --max_prompt_tokens / --*_max_new_tokens"


def format_plan(cfg, world, gpu_gb, phases) -> str:
    cols = ["params", "grads", "optimizer", "activations", "temporaries", "held", "vllm", "reserve", "gpu"]
    head = f"{'phase (GiB per GPU)':<22}" + "".join(f"{c:>12}" for c in cols)
    lines = [f"memory plan: preset {cfg.preset}, model {cfg.model}, {world} x {gpu_gb:g} GiB, dtype {cfg.dtype}, "
             f"compute {cfg.compute_dtype}, activation_checkpointing {cfg.activation_checkpointing}",
             f"  worst case: rows of max_prompt_tokens {cfg.max_prompt_tokens} + solver {cfg.solver_max_new_tokens}"
             f" / generator {cfg.gen_max_new_tokens} new tokens; "
             + (f"micro_batch_tokens {cfg.micro_batch_tokens}" if cfg.micro_batch_tokens else f"micro_batch {cfg.micro_batch}")
             + ", influence_tokens "
             f"{cfg.influence_tokens}, influence_chunk {cfg.influence_chunk}, engine {cfg.engine}"
             + (f" (vllm_gpu_memory_utilization {cfg.vllm_gpu_memory_utilization} awake, {VLLM_SLEEP_GB:g} GiB "
                f"asleep, assumed)" if cfg.engine == "vllm" else ""),
             "  held = the other role's weights and AdamW state (+ the dev gradient m during influence); "
             f"reserve = CUDA context + NCCL (assumed {CUDA_RESERVE_GB:g} GiB)", head]
    for name, ph in phases.items():
        lines.append(f"{name:<22}" + "".join(f"{ph[c]:>12.1f}" for c in cols)
                     + ("" if ph["fits"] else "   <- does not fit")
                     + (f"   [{ph['path']}]" if "path" in ph else ""))
    return "\n".join(lines)


def main(cfg) -> int:
    world, gpu_gb = cfg.plan_world_size, cfg.plan_gpu_gb
    if world < 1 or gpu_gb <= 0:
        raise PlanError("--plan_world_size must be >= 1 and --plan_gpu_gb > 0")
    tick = time.perf_counter()
    planner = Planner(cfg, world)
    try:
        ok, phases, _ = _fits(cfg, world, gpu_gb, None, planner)
        print(format_plan(cfg, world, gpu_gb, phases), flush=True)
        bad = [n for n, p in phases.items() if not p["fits"]]
        for name in bad:
            print(f"  {name}: needs {phases[name]['gpu']:.1f} of {gpu_gb:g} GiB; would fit with "
                  f"{suggest(cfg, world, gpu_gb, name, phases, planner)}", flush=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    peak = max(p["gpu"] for p in phases.values())
    print(f"(planned in {time.perf_counter() - tick:.0f} s)")
    if bad:
        print(f"does not fit: {', '.join(bad)} (peak {peak:.1f} of {gpu_gb:g} GiB per GPU)")
        return 3
    print(f"fits: peak {peak:.1f} of {gpu_gb:g} GiB per GPU ({max(phases, key=lambda n: phases[n]['gpu'])})")
    return 0


def validate(cfg=None, configs=None) -> list[dict]:
    """The plan against a real run, on CPU: every phase of a small fp32 model predicted on fake tensors and
    then run for real, the phase's peak above its starting memory compared with (a) the same tracker on the
    real tensors and (b) the process's peak-RSS increment (kernel VmHWM after clear_refs; glibc told to
    mmap every allocation >= 64 KiB so that freed memory leaves the RSS: MALLOC_MMAP_THRESHOLD_=65536 in
    the environment of the process). The real phases run twice and the second run is measured, so that
    one-time costs (lazy imports, first use of checkpointing) do not count. One row per phase."""
    from config import parse_config
    from transformers import Qwen3Config
    if cfg is None:
        cfg = parse_config(["--preset", "tiny", "--max_prompt_tokens=256", "--solver_max_new_tokens=768",
                                  "--gen_max_new_tokens=768", "--micro_batch=4", "--n_solver=4",
                                  "--influence_tokens=8192", "--influence_chunk=2"])
    if configs is None:
        small = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=64, vocab_size=32000, tie_word_embeddings=False)
        configs = {"solver": Qwen3Config(**small), "generator": Qwen3Config(**small)}
    rows = []
    torch.manual_seed(0)
    pred = run_phases(cfg, 1, planner=Planner(cfg, 1, fake=True, configs=configs))
    torch.manual_seed(0)
    real_planner = Planner(cfg, 1, fake=False, configs=configs)
    run_phases(cfg, 1, planner=real_planner)        # warm-up: lazy imports and one-time set-up of torch
    real = run_phases(cfg, 1, planner=real_planner)
    for name in pred:
        if name == "rollout":
            continue
        p, r = pred[name]["increment"], real[name]
        rows.append({"phase": name, "predicted_gib": round(p, 4), "tracker_real_gib": round(r["increment"], 4),
                     "rss_gib": round(r["rss_increment"], 4), "rss_over_predicted": round(r["rss_increment"] / p, 3),
                     "tracker_real_over_predicted": round(r["increment"] / p, 3)})
    return rows
