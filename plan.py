"""plan.py -- the memory plan of a preset, computed by running the real code on fake tensors.

    python train.py --preset qwen3-8b-base --plan --plan_world_size=8 --plan_gpu_gb=80

builds the preset's real model class from its config (Qwen3 configs of the paper's models are below, so
nothing is downloaded; a local model directory is read from its config.json) under torch's FakeTensorMode,
shards both models with FSDP2 exactly as train.make_role does over a fake N-rank process group (no data
moves; every rank is taken to hold the same worst-case batch), and runs the real phases of one iteration
at the preset's worst-case lengths (every row max_prompt_tokens + max_new_tokens long):

  rollout            both roles resident (weights, AdamW states) + vLLM awake (its memory share)
  dev gradient       influence.dev_gradient on two full micro-batches of `influence_tokens` tokens
  influence          influence._question_scalars: the hook path (chunk_questions questions per forward) if a
                     question fits the budget, else the per-question backward on sharded gradients
  solver step        infuser.micro_step on micro_batch rows, grad clip, AdamW step
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
CUDA_RESERVE_GB = 2.0      # assumed: CUDA context, cuBLAS workspace, NCCL buffers of the trainer process
VLLM_SLEEP_GB = 2.0        # assumed: what a sleeping vLLM engine keeps (CUDA graphs, its context)

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
        from rollout import byte_tokenizer, tiny_qwen3
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
    from rollout import Rollouts
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
        self.live, self.by_cat, self.now, self.peak, self.at_peak = {}, {}, 0, 0, {}

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
    """Both roles built under fake tensors, sharded like train.make_role; `phase()` measures one phase."""

    def __init__(self, cfg, world: int):
        from torch._subclasses.fake_tensor import FakeTensorMode
        from transformers import AutoModelForCausalLM
        import train
        self.cfg, self.world = cfg, world
        self.mesh = None
        if world > 1:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.testing._internal.distributed.fake_pg import FakeStore
            if dist.is_initialized():
                dist.destroy_process_group()
            dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
            self.mesh = init_device_mesh("cpu", (world,))          # outside the fake mode
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.models, self.opts = {}, {}
        old = torch.get_default_dtype()
        configs = {name: model_config(spec, cfg) for name, spec in
                   (("solver", cfg.model), ("generator", cfg.generator_model or cfg.model))}
        with self.mode:
            torch.set_default_dtype(getattr(torch, cfg.dtype))
            try:
                for name, mcfg in configs.items():
                    mcfg._attn_implementation = "sdpa"
                    model = AutoModelForCausalLM.from_config(mcfg)
                    self.vocab = mcfg.vocab_size
                    train.prepare_model(model, cfg, None, self.mesh)
                    lr = cfg.solver_lr if name == "solver" else cfg.generator_lr
                    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(cfg.beta1, cfg.beta2),
                                            eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
                    for p in model.parameters():          # AdamW state as after the first step
                        p.grad = torch.zeros_like(p)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    self.models[name], self.opts[name] = model, opt
            finally:
                torch.set_default_dtype(old)
        self.sharded = world > 1
        self.amp = (torch.autocast("cpu", dtype=getattr(torch, cfg.compute_dtype))
                    if world == 1 and cfg.compute_dtype != "float32" else contextlib.nullcontext())

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
        try:
            with self.mode, _RealMetadata(), self.amp, tr.mode():
                fn(model, opt)
                model.zero_grad(set_to_none=True)
        finally:
            for h in hooks:
                h.remove()
        return tr.breakdown()


def run_phases(cfg, world: int, only: str | None = None) -> dict[str, dict]:
    """{phase: breakdown in GiB} for every phase (or just `only`)."""
    import influence
    import infuser
    pl = Planner(cfg, world)
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
    if want("dev gradient") or want("influence"):
        ph = pl.phase("solver", dev_phase)
        if want("dev gradient"):
            out["dev gradient"] = ph

    # influence: one question group of n_solver full-width rows, or chunk_questions of them if they fit
    m = keep.get("m") or {}
    fits_one = cfg.n_solver * s_width <= cfg.influence_tokens
    n_q = min(cfg.influence_chunk, max(1, cfg.influence_tokens // (cfg.n_solver * s_width))) if fits_one else 1
    gen = worst_rollouts(n_q * cfg.n_solver, cfg.max_prompt_tokens, cfg.solver_max_new_tokens, v, cfg.n_solver)

    def infl_phase(model, opt):
        with influence._train_mode(model):
            influence._question_scalars(model, opt, m, gen, cfg.similarity_mode, cfg.temperature, cfg.tis_cap,
                                        cfg.influence_chunk, cfg.influence_tokens)
    if want("influence"):
        out["influence"] = pl.phase("solver", infl_phase, held=list(m.values()))
        out["influence"]["path"] = "hook" if fits_one else "per-question backward"
    keep.clear()

    # one PPO micro-batch step with grad clip and AdamW, per role
    for role, width, new in (("solver", s_width, cfg.solver_max_new_tokens),
                             ("generator", g_width, cfg.gen_max_new_tokens)):
        mb = worst_rollouts(cfg.micro_batch, cfg.max_prompt_tokens, new, v, cfg.micro_batch)
        adv = torch.linspace(-1, 1, cfg.micro_batch)

        def step(model, opt):
            model.train()
            infuser.micro_step(model, cfg, mb, adv, None, float(cfg.micro_batch * new), 1.0)
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
    if dist.is_initialized():
        dist.destroy_process_group()
    return out


def _fits(cfg, world, gpu_gb, only=None) -> tuple[bool, dict, dict]:
    phases = run_phases(cfg, world, only)
    vllm = cfg.engine == "vllm"
    for name, ph in phases.items():
        awake = name == "rollout"
        ph["vllm"] = (cfg.vllm_gpu_memory_utilization * gpu_gb if awake else VLLM_SLEEP_GB) if vllm else 0.0
        ph["reserve"] = CUDA_RESERVE_GB
        ph["gpu"] = ph["total"] + ph["vllm"] + ph["reserve"]
        ph["fits"] = ph["gpu"] <= gpu_gb
    return all(p["fits"] for p in phases.values()), phases, {}


KNOBS = {"dev gradient": ("influence_tokens",), "influence": ("influence_tokens", "influence_chunk"),
         "solver step": ("micro_batch",), "generator step": ("micro_batch",),
         "rollout": ("vllm_gpu_memory_utilization",)}


def suggest(cfg, world, gpu_gb, phase: str) -> str:
    """The first knob (halving it, down to its floor) with which the failing phase fits, else a hint."""
    hints = []
    if not cfg.activation_checkpointing and phase != "rollout":
        trial = dataclasses.replace(cfg, activation_checkpointing=True)
        if _fits(trial, world, gpu_gb, phase)[1][phase]["fits"]:
            return "--activation_checkpointing"
        hints.append("--activation_checkpointing")
    for knob in KNOBS[phase]:
        val = getattr(cfg, knob)
        floor = {"influence_tokens": 1024, "influence_chunk": 1, "micro_batch": 1,
                 "vllm_gpu_memory_utilization": 0.1}[knob]
        while val / 2 >= floor or (isinstance(val, float) and val - 0.1 >= floor):
            val = round(val - 0.1, 2) if isinstance(val, float) else val // 2
            trial = dataclasses.replace(cfg, **{knob: val}, activation_checkpointing=True) \
                if hints else dataclasses.replace(cfg, **{knob: val})
            if _fits(trial, world, gpu_gb, phase)[1][phase]["fits"]:
                return " ".join(hints + [f"--{knob}={val}"])
    return "nothing in reach: more GPUs (--plan_world_size) or shorter --max_prompt_tokens / --*_max_new_tokens"


def format_plan(cfg, world, gpu_gb, phases) -> str:
    cols = ["params", "grads", "optimizer", "activations", "temporaries", "held", "vllm", "reserve", "gpu"]
    head = f"{'phase (GiB per GPU)':<22}" + "".join(f"{c:>12}" for c in cols)
    lines = [f"memory plan: preset {cfg.preset}, model {cfg.model}, {world} x {gpu_gb:g} GB, dtype {cfg.dtype}, "
             f"compute {cfg.compute_dtype}, activation_checkpointing {cfg.activation_checkpointing}",
             f"  worst case: rows of max_prompt_tokens {cfg.max_prompt_tokens} + solver {cfg.solver_max_new_tokens}"
             f" / generator {cfg.gen_max_new_tokens} new tokens; micro_batch {cfg.micro_batch}, influence_tokens "
             f"{cfg.influence_tokens}, influence_chunk {cfg.influence_chunk}, engine {cfg.engine}"
             + (f" (vllm_gpu_memory_utilization {cfg.vllm_gpu_memory_utilization} awake, {VLLM_SLEEP_GB:g} GB "
                f"asleep, assumed)" if cfg.engine == "vllm" else ""),
             "  held = the other role's weights and AdamW state (+ the dev gradient m during influence); "
             f"reserve = CUDA context + NCCL (assumed {CUDA_RESERVE_GB:g} GB)", head]
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
    ok, phases, _ = _fits(cfg, world, gpu_gb)
    print(format_plan(cfg, world, gpu_gb, phases), flush=True)
    bad = [n for n, p in phases.items() if not p["fits"]]
    for name in bad:
        print(f"  {name}: needs {phases[name]['gpu']:.1f} of {gpu_gb:g} GB; would fit with "
              f"{suggest(cfg, world, gpu_gb, name)}", flush=True)
    peak = max(p["gpu"] for p in phases.values())
    print(f"(planned in {time.perf_counter() - tick:.0f} s)")
    if bad:
        print(f"does not fit: {', '.join(bad)} (peak {peak:.1f} of {gpu_gb:g} GB per GPU)")
        return 3
    print(f"fits: peak {peak:.1f} of {gpu_gb:g} GB per GPU ({max(phases, key=lambda n: phases[n]['gpu'])})")
    return 0
