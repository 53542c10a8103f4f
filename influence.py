"""influence.py -- INFUSER's optimizer-aware influence score, exact and fast.

What it computes (spec §4, README eq. (4)-(7)). For solver rollouts R grouped by question, with Dr.GRPO
advantages A_i = r_i - mean_group(r) and detached truncated IS weights w_it (spec §3.6 with pi_old = the
current solver), the policy-gradient vector is

    G(R; n, L) = -(1 / (n L)) sum_{i in R} A_i sum_t w_it grad log pi_theta(y_it | x_i, y_i,<t)   (log-probs at T)

  * m   = G(R_dev; |R_dev|, L_dev)    the target ("dev") gradient, all non-constant dev groups at once
  * g_q = G(R_q;   |R_q|,   L_gen)    one question's rollouts, with the batch-wide mean length L_gen
  * gamma_q = precondition(g_q, v, step, beta2, eps)      AdamW's direction if its next gradient were g_q
  * score_q = <gamma_q, m> / (||gamma_q|| ||m||)          "preconditioned_cosine" (the paper); also "dot",
    "cosine" and "preconditioned_dot" (spec §4.4). Norms are clamped below at 1e-12.
A positive score: one solver step on q is expected to lower the dev policy loss (first order).

Why it is fast. The paper's code spends one full backward pass per question. Here one forward over a
chunk of questions is followed by ONE backward that computes activation gradients only
(`torch.autograd.grad` to the embedding output; parameter `.grad` is never touched). For every module a
tensor hook receives the output gradient delta and, with the input x captured in the forward, builds the
per-question weight gradients directly: for a Linear layer g_q = sum_{tokens of q} delta_t x_t^T, one
batched matmul [Q, out, T_q] @ [Q, T_q, in]. That is the same arithmetic as the ordinary weight gradient,
just kept apart per question, and it is then preconditioned and reduced to two scalars per question
(<gamma_q, m> and ||gamma_q||^2) before the next module's gradient arrives, so at most one module's
[Q_chunk, *param] block is alive at a time. Exact: identical to the per-question loop (the tests compare
them mode by mode); `chunk_questions` bounds memory.

Supported parameter owners: nn.Linear, nn.Embedding, and 1-D elementwise-affine layers (RMSNorm,
LayerNorm: out = a(x) + b(x) * weight [+ bias]). Tied input/output embeddings are summed per question
before preconditioning. Anything else raises a clear error naming the module. Gradient checkpointing must
be off during the call (the hooks need the forward's activations).

Distributed (torchrun, FSDP2): every rank scores the questions of its own rollouts. The dev gradient m
comes from an ordinary backward (FSDP2 reduce-scatters it into shards; the loss is scaled by the world size
to undo FSDP's averaging). In the per-question pass, each rank gathers one parameter's full m and
exp_avg_sq at a time (2 x P floats per chunk, instead of reduce-scattering Q per-question gradients,
Q x P floats) and reduces its own questions' gradients against them. Global quantities -- the dev
rollout and token counts, L_gen, ||m||^2 -- are combined with all_reduce of a few packed scalars. World
size 1 runs the same code with the collectives skipped. All ranks must call with the same chunking
(ranks with fewer questions run zero-weight dummy passes so collectives stay in step).

Left out (spec §4.2, §4.5): the momentum buffer for m (`use_momentum`, off in every recipe) and free-form
"shortcut" questions (off everywhere). No random projection, no layer subset: all parameters, fp32.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn

from dugrpo import acc_dtype, group_advantages, tis_weights, token_logprobs, varying_groups

MODES = ("dot", "cosine", "preconditioned_dot", "preconditioned_cosine")


# ----------------------------------------------------------------------------------------------
# The AdamW preconditioner (spec §4.4)

def precondition(grad: torch.Tensor, exp_avg_sq: torch.Tensor | None, step: int | float,
                 beta2: float, eps: float) -> torch.Tensor:
    """gamma = g / (sqrt(v' / (1 - beta2^(step+1))) + eps),  v' = beta2 * v + (1 - beta2) * g * g.

    grad [..., *P] (leading dims broadcast against exp_avg_sq [*P]); exp_avg_sq None = empty optimizer
    state (v = 0); step = optimizer steps taken so far. This is exactly the step AdamW would take on
    gradient g with beta1 = 0, no weight decay and unit learning rate: g's own square is folded into the
    second moment first (so the first step is ~ sign(g)), and eps sits outside the root as in AdamW.
    """
    g = grad.to(acc_dtype(grad.dtype))
    v_new = (1.0 - beta2) * g * g
    if exp_avg_sq is not None:
        v_new = v_new + beta2 * exp_avg_sq.to(g.dtype)
    bias_correction = 1.0 - beta2 ** (float(step) + 1.0)
    return g / (torch.sqrt(v_new / bias_correction) + eps)


def adamw_state(optimizer: torch.optim.Optimizer, param: nn.Parameter):
    """(exp_avg_sq or None, step, beta2, eps) of `param`, read from the live optimizer and its group."""
    group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
    if group is None:
        raise ValueError("a model parameter is not managed by the optimizer passed to influence_scores")
    state = optimizer.state.get(param, {})
    step = state.get("step", 0)
    step = float(step.item()) if torch.is_tensor(step) else float(step)
    return state.get("exp_avg_sq"), step, float(group["betas"][1]), float(group["eps"])


# ----------------------------------------------------------------------------------------------
# Small distributed helpers: no-ops at world size 1

def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if _world() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def _full(t: torch.Tensor | None) -> torch.Tensor | None:
    """The full tensor of an FSDP2 (DTensor) shard; plain tensors pass through."""
    return t.full_tensor() if t is not None and hasattr(t, "full_tensor") else t


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


# ----------------------------------------------------------------------------------------------
# The policy-gradient surrogate of spec §4.1

def pg_surrogate(model, rollouts, temperature: float, tis_cap: float, row_scale: torch.Tensor) -> torch.Tensor:
    """sum_i row_scale_i * A_i * sum_t mask * w_it * (-log pi(y_it)) -- its gradient is -sum_i scale_i A_i ... .

    row_scale [N] carries the normaliser 1 / (n L) of each row's set. The spec writes the per-token term
    as -A w exp(lp - sg(lp)); its gradient equals that of -A w lp, which is used here. A_i is the Dr.GRPO
    advantage within each row's group; w_it uses the same forward's (detached) log-probs as pi_old.
    """
    lp = token_logprobs(model, rollouts.input_ids, rollouts.attention_mask, temperature,
                        rollouts.response_mask)                                            # [N, T]
    adv = group_advantages(rollouts.rewards.to(lp.dtype), rollouts.group_ids, "none")      # [N]
    w = tis_weights(lp.detach(), rollouts.sampler_logprobs, tis_cap)                       # [N, T]
    per_row = (w * rollouts.response_mask * lp).sum(-1)                                    # [N]
    return -(row_scale.to(lp.dtype) * adv * per_row).sum()


def _kept(rollouts):
    """Rollouts of groups whose rewards vary (zero-variance groups carry no gradient, spec §4.2-4.3)."""
    return rollouts.select(varying_groups(rollouts.rewards, rollouts.group_ids))


@contextmanager
def _saved_grads(params):
    """Run a block that calls .backward() and leave every parameter's .grad as it was before."""
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, g in zip(params, saved):
            p.grad = g


def dev_gradient(model, dev, temperature: float = 0.7, tis_cap: float = 2.0,
                 micro_batch: int = 64) -> dict[str, torch.Tensor] | None:
    """m = G(R_dev) as {param name: fp32 tensor (the local shard under FSDP2)}, or None when no dev group
    (on any rank) has reward variance. Parameter .grad is restored afterwards."""
    dev = _kept(dev)
    counts = _all_reduce(torch.tensor([len(dev), dev.response_mask.sum().item()], dtype=torch.float64))
    n_rows, n_tokens = counts.tolist()
    if n_rows == 0:
        return None
    params = dict(model.named_parameters())
    sharded = any(hasattr(p, "full_tensor") for p in params.values())
    # FSDP2 averages gradients over ranks; scale by the world size so that m is the sum over all rows
    scale = (_world() if sharded else 1) / (n_rows * (n_tokens / n_rows))
    steps = int(_all_reduce(torch.tensor([math.ceil(len(dev) / micro_batch)]), dist.ReduceOp.MAX
                            if _world() > 1 else None).item())
    with _saved_grads(list(params.values())):
        for s in range(steps):
            part = dev.select(torch.arange(s * micro_batch, min((s + 1) * micro_batch, len(dev))))
            weight = 1.0
            if len(part) == 0:        # this rank has run out of rows: a zero-weight pass keeps FSDP in step
                part, weight = dev.select(torch.arange(0, 1)), 0.0
            row_scale = torch.full((len(part),), scale * weight, dtype=torch.float64)
            pg_surrogate(model, part.to(_device(model)), temperature, tis_cap, row_scale.to(_device(model))).backward()
        m = {n: p.grad.detach().to(acc_dtype(p.dtype)).clone() if p.grad is not None
             else torch.zeros_like(p, dtype=acc_dtype(p.dtype)) for n, p in params.items()}
    if not sharded and _world() > 1:      # replicated model: sum the ranks' gradients explicitly
        for g in m.values():
            _all_reduce(g)
    return m


def _device(model) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------------------------
# Per-question gradients, block by block, inside one backward pass

class _Blocks:
    """Owns the per-module hooks of one chunk and reduces each per-question gradient block to scalars.

    rows of the chunk are laid out question-major: Qc questions x G rows (dummy rows pad short groups),
    so any per-row tensor [Qc*G, ...] reshapes to [Qc, G*...] without a copy.
    """

    def __init__(self, model, optimizer, m, mode, qc, g):
        self.model, self.optimizer, self.m, self.mode, self.qc, self.g = model, optimizer, m, mode, qc, g
        self.dot = torch.zeros(qc, dtype=torch.float64)
        self.norm2 = torch.zeros(qc, dtype=torch.float64)
        self.handles, self.pending, self.embed_outputs = [], {}, []
        self.uses = {}                     # param name -> number of modules that use it (2 when tied)
        self.owner = {}                    # module -> {attr: param name}
        by_id = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            by_id.setdefault(id(p), name)  # first name wins: tied weights share one key
        for mod_name, mod in model.named_modules():
            direct = dict(mod.named_parameters(recurse=False))
            if not direct:
                continue
            kind = _kind(mod, direct)
            if kind is None:
                raise NotImplementedError(
                    f"influence: cannot form per-question gradients for module {mod_name!r} "
                    f"({type(mod).__name__}) with parameters {sorted(direct)}; supported are Linear, "
                    "Embedding and 1-D elementwise-affine layers (RMSNorm, LayerNorm)")
            names = {attr: by_id[id(p)] for attr, p in direct.items() if p.requires_grad}
            for n in names.values():
                self.uses[n] = self.uses.get(n, 0) + 1
            self.owner[mod] = (kind, names)
        self.params = {n: p for n, p in model.named_parameters()}
        self.acc = acc_dtype(next(iter(self.params.values())).dtype)   # fp32 (fp64 for fp64 models)

    # hooks --------------------------------------------------------------------------------------
    def __enter__(self):
        for mod in self.owner:
            self.handles.append(mod.register_forward_hook(self._forward_hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def _forward_hook(self, mod, inputs, output):
        kind, _ = self.owner[mod]
        x = inputs[0]
        if not output.requires_grad:
            return
        if kind == "embedding":
            self.embed_outputs.append(output)
        output.register_hook(lambda delta, mod=mod, x=x: self._on_grad(mod, x, delta))

    # per-question gradient of each parameter of one module, [Qc, *param shape] ------------------------
    def _on_grad(self, mod, x, delta):
        kind, names = self.owner[mod]
        qc = self.qc
        with torch.no_grad():
            if kind == "linear":
                xin = x.reshape(qc, -1, x.shape[-1]).to(self.acc)                # [Qc, G*T, in]
                d = delta.reshape(qc, -1, delta.shape[-1]).to(self.acc)          # [Qc, G*T, out]
                blocks = {"weight": torch.bmm(d.transpose(1, 2), xin)}          # [Qc, out, in]
                if "bias" in names:
                    blocks["bias"] = d.sum(1)                                    # [Qc, out]
            elif kind == "embedding":
                v, h = mod.weight.shape[0], delta.shape[-1]
                ids = x.reshape(qc, -1)                                          # [Qc, G*T]
                flat = (ids + torch.arange(qc, device=ids.device)[:, None] * v).reshape(-1)
                gw = torch.zeros(qc * v, h, dtype=self.acc, device=delta.device)
                gw.index_add_(0, flat, delta.reshape(-1, h).to(self.acc))        # [Qc*V, H]
                blocks = {"weight": gw.view(qc, v, h)}                           # [Qc, V, H]
            else:                                                                # elementwise-affine
                b = _affine_slope(mod, x).to(self.acc)                           # d out / d weight
                h = delta.shape[-1]
                blocks = {"weight": (delta.to(self.acc) * b).reshape(qc, -1, h).sum(1)}   # [Qc, H]
                if "bias" in names:
                    blocks["bias"] = delta.to(self.acc).reshape(qc, -1, h).sum(1)
            for attr, block in blocks.items():
                if attr in names:
                    self._add(names[attr], block)

    def _add(self, name, block):
        """Sum a parameter's contributions (two when input and output embeddings are tied) before the
        nonlinear preconditioner sees them; reduce once all have arrived."""
        acc, seen = self.pending.get(name, (None, 0))
        acc = block if acc is None else acc + block
        if seen + 1 == self.uses[name]:
            self.pending.pop(name, None)
            self._reduce(name, acc)
        else:
            self.pending[name] = (acc, seen + 1)

    def _reduce(self, name, g):
        """Scalars <u_q, m> and ||u_q||^2 for u_q = gamma_q (preconditioned modes) or g_q.

        g [Qc, *P]. This is the only O(Q x P) elementwise work, so it is written in place: a few passes
        over one [Qc, *P] block, then a matrix-vector product for the dots and one norm pass."""
        p = self.params[name]
        m = _full(self.m[name]).to(device=g.device, dtype=g.dtype).reshape(-1)          # [P]
        if self.mode.startswith("preconditioned"):
            v, step, beta2, eps = adamw_state(self.optimizer, p)
            v = _full(v)
            u = _precondition_(g, None if v is None else v.to(device=g.device, dtype=g.dtype), step, beta2, eps)
        else:
            u = g
        u = u.reshape(self.qc, -1)                                                        # [Qc, P]
        self.dot += (u @ m).double().cpu()                                                # [Qc]
        self.norm2 += torch.linalg.vector_norm(u, dim=1).double().pow(2).cpu()           # [Qc]


def _precondition_(g, v, step, beta2, eps):
    """precondition() for a per-question block g [Qc, *P], overwriting g (same formula, fewer passes)."""
    denom = g * g                                                      # (1-b2) g^2 + b2 v, in place
    denom.mul_(1.0 - beta2)
    if v is not None:
        denom.add_(v, alpha=beta2)
    denom.div_(1.0 - beta2 ** (float(step) + 1.0)).sqrt_().add_(eps)
    return g.div_(denom)


def _kind(mod, direct):
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, nn.Embedding):
        return "embedding"
    if set(direct) <= {"weight", "bias"} and all(p.dim() == 1 for p in direct.values()) \
            and not list(mod.children()):
        return "affine"
    return None


def _affine_slope(mod, x):
    """d out / d weight for out = a(x) + b(x) * weight (+ bias): b = out(w=1, bias=0) - out(w=0, bias=0)."""
    from torch.func import functional_call
    w = mod.weight
    extra = {"bias": torch.zeros_like(w)} if getattr(mod, "bias", None) is not None else {}
    one = functional_call(mod, {"weight": torch.ones_like(w), **extra}, (x,))
    zero = functional_call(mod, {"weight": torch.zeros_like(w), **extra}, (x,))
    return one - zero


# ----------------------------------------------------------------------------------------------
# The score

def influence_scores(model, optimizer, dev, gen, *, mode: str = "preconditioned_cosine",
                     temperature: float = 0.7, tis_cap: float = 2.0, chunk_questions: int = 16,
                     dev_micro_batch: int = 64) -> torch.Tensor:
    """One influence score per group of `gen` (ascending group id), spec §4.

    dev, gen: Rollouts of the solver (this rank's share, whole groups: a question's rollouts on one rank,
    since advantages are formed per group) with rewards in {0, 1} (None already mapped to
    0). optimizer: the solver's live AdamW (its exp_avg_sq, step, beta2 and eps are read, never changed).
    Zero-variance gen groups score 0; all scores are 0 when no dev group has reward variance. Parameters,
    their .grad and the optimizer state are left exactly as they were. chunk_questions bounds memory:
    at most that many questions' rollouts are in one forward/backward pass.
    """
    if mode not in MODES:
        raise ValueError(f"unknown influence mode {mode!r}; choose one of {MODES}")
    device = _device(model)
    uniq = torch.unique(gen.group_ids, sorted=True)                                      # [Q]
    scores = torch.zeros(len(uniq), dtype=acc_dtype(next(model.parameters()).dtype))
    m = dev_gradient(model, dev, temperature, tis_cap, dev_micro_batch)
    if m is None:
        return scores
    m_norm2 = sum(_local(g).double().pow(2).sum() for g in m.values()).reshape(1)

    keep = varying_groups(gen.rewards, gen.group_ids)
    kept = gen.select(keep)
    stats = _all_reduce(torch.tensor([len(kept), kept.response_mask.sum().item()], dtype=torch.float64))
    l_gen = stats[1].item() / max(stats[0].item(), 1.0)                                  # batch-wide L_gen
    qids = torch.unique(kept.group_ids, sorted=True)                                     # [Q'] local
    sizes = torch.stack([(kept.group_ids == q).sum() for q in qids]) if len(qids) else torch.zeros(0, dtype=torch.long)
    g_max = int(_all_reduce(torch.tensor([int(sizes.max()) if len(sizes) else 1]),
                            dist.ReduceOp.MAX if _world() > 1 else None).item())
    n_chunks = int(_all_reduce(torch.tensor([math.ceil(len(qids) / chunk_questions)]),
                               dist.ReduceOp.MAX if _world() > 1 else None).item())

    dot = torch.zeros(len(qids), dtype=torch.float64)
    norm2 = torch.zeros(len(qids), dtype=torch.float64)
    for c in range(n_chunks):
        chunk = qids[c * chunk_questions:(c + 1) * chunk_questions]
        batch, row_scale, qc = _chunk_batch(kept, chunk, sizes, qids, g_max, l_gen)
        blocks = _Blocks(model, optimizer, m, mode, qc, g_max)
        with blocks:
            loss = pg_surrogate(model, batch.to(device), temperature, tis_cap, row_scale.to(device))
            if not blocks.embed_outputs:
                raise RuntimeError("influence: no embedding output was seen in the forward pass")
            torch.autograd.grad(loss, blocks.embed_outputs, allow_unused=True)
        n = len(chunk)
        dot[c * chunk_questions:c * chunk_questions + n] = blocks.dot[:n]
        norm2[c * chunk_questions:c * chunk_questions + n] = blocks.norm2[:n]

    # the only cross-rank quantity the score needs is ||m||^2 (sum of the shards' squares)
    m_norm = _all_reduce(m_norm2).sqrt().item() if any(hasattr(g, "full_tensor") for g in m.values()) \
        else m_norm2.sqrt().item()
    if mode in ("dot", "preconditioned_dot"):
        s = dot
    else:
        s = dot / (norm2.sqrt().clamp(min=1e-12) * max(m_norm, 1e-12))
    pos = torch.searchsorted(uniq, qids)
    scores[pos] = s.to(scores.dtype)
    return scores


def _chunk_batch(kept, chunk, sizes, qids, g_max, l_gen):
    """Rows of the chunk's questions, question-major, each question padded to g_max rows with dummy
    (all-padding, zero-mask) rows; row_scale = 1 / (n_q * L_gen) for real rows, 0 for dummies."""
    t = kept.input_ids.shape[1]
    qc = max(len(chunk), 1)
    rows, scale = [], []
    for q in chunk.tolist():
        idx = (kept.group_ids == q).nonzero().squeeze(-1)
        n_q = len(idx)
        rows += idx.tolist() + [-1] * (g_max - n_q)
        scale += [1.0 / (n_q * l_gen)] * n_q + [0.0] * (g_max - n_q)
    if not chunk.numel():                          # this rank has no more questions: one dummy question
        rows, scale = [-1] * g_max, [0.0] * g_max
    idx = torch.tensor(rows)
    real = idx >= 0
    safe = idx.clamp(min=0)
    pick = lambda x: None if x is None else x[safe] * real.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    ids = pick(kept.input_ids) if len(kept) else torch.zeros(len(rows), t, dtype=torch.long)
    am = pick(kept.attention_mask) if len(kept) else torch.zeros(len(rows), t, dtype=torch.long)
    am[~real, 0] = 1                               # one visible token keeps attention well defined
    rm = pick(kept.response_mask) if len(kept) else torch.zeros(len(rows), t)
    gids = torch.repeat_interleave(torch.arange(qc), g_max) if len(rows) == qc * g_max else torch.zeros(len(rows), dtype=torch.long)
    # dummy rows get their own group ids so they never shift a real group's mean reward
    gids = torch.where(real, gids, -1 - torch.arange(len(rows)))
    rewards = kept.rewards[safe] * real if len(kept) else torch.zeros(len(rows))
    slp = pick(kept.sampler_logprobs) if kept.sampler_logprobs is not None and len(kept) else None
    return type(kept)(ids, am, rm, gids, rewards, slp), torch.tensor(scale, dtype=torch.float64), qc
