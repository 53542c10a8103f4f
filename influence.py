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
(`torch.autograd.grad` to the embedding output; parameter `.grad` is never touched). Every module's
output passes through a tap (_Tap, an identity autograd function) that saves the module's input x; its
backward receives the output gradient delta and builds the per-question weight gradients directly: for a
Linear layer g_q = sum_{tokens of q} delta_t x_t^T, one batched matmul [Q, out, T_q] @ [Q, T_q, in].
That is the same arithmetic as the ordinary weight gradient, just kept apart per question, and it is then
preconditioned and reduced to two scalars per question (<gamma_q, m> and ||gamma_q||^2) before the next
module's gradient arrives, so at most one module's [Q_chunk, *param] block is alive at a time. Exact:
identical to the per-question loop (the tests compare them mode by mode, with and without checkpointing).

Memory: every forward (dev gradient and question pass) holds at most `max_tokens` padded tokens; a
question whose rollouts do not fit one forward is scored by the paper's own per-question backward (its
rows micro-batched under the budget and spread over the ranks, its gradient accumulated in the sharded
.grad, then reduced shard by shard) -- see influence_scores. Activation checkpointing (non-reentrant,
rollout.set_activation_checkpointing) works in both paths: x is a saved tensor of the tap, so the
checkpointed layer's recomputation supplies it in the backward.

Supported parameter owners: nn.Linear, nn.Embedding, and 1-D elementwise-affine layers (RMSNorm,
LayerNorm: out = a(x) + b(x) * weight [+ bias]). Tied input/output embeddings are summed per question
before preconditioning. Anything else raises a clear error naming the module.

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
TEMP_ELEMENTS = 1 << 26     # floats per fp32 temporary of the hook path (256 MB): slices bound the copies


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


def _gather(x) -> list:
    """[x of rank 0, x of rank 1, ...] (token ids and the like: small next to a gradient). Under the
    memory plan's fake process group (train.py --plan) no data moves: every rank is taken to hold x."""
    if _world() == 1:
        return [x]
    if dist.get_backend() == "fake":
        return [x] * _world()
    out = [None] * _world()
    dist.all_gather_object(out, x)
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


# ----------------------------------------------------------------------------------------------
# The policy-gradient surrogate of spec §4.1, and token-budgeted micro-batches

def pg_surrogate(model, rollouts, adv, temperature: float, tis_cap: float, row_scale: torch.Tensor) -> torch.Tensor:
    """sum_i row_scale_i * A_i * sum_t mask * w_it * (-log pi(y_it)) -- its gradient is -sum_i scale_i A_i ... .

    adv [N]: the Dr.GRPO advantage of each row, formed by the caller over the row's WHOLE group (a
    micro-batch may hold part of a group; its own mean would be wrong). row_scale [N] carries the
    normaliser 1 / (n L) of each row's set. The spec writes the per-token term as -A w exp(lp - sg(lp));
    its gradient equals that of -A w lp, which is used here. w_it uses the same forward's (detached)
    log-probs as pi_old. Padded positions are selected away (not multiplied by 0), so a non-finite value
    there cannot reach the sum.
    """
    lp = token_logprobs(model, rollouts.input_ids, rollouts.attention_mask, temperature,
                        rollouts.response_mask)                                            # [N, T]
    on = rollouts.response_mask > 0
    lp = torch.where(on, lp, torch.zeros_like(lp))                 # select: no 0 * nan in the gradient
    slp = rollouts.sampler_logprobs
    slp = None if slp is None else torch.where(on, slp, torch.zeros_like(slp))
    w = tis_weights(lp.detach(), slp, tis_cap)                                               # [N, T]
    per_row = (w * on * lp).sum(-1)                                                          # [N]
    return -(row_scale.to(lp.dtype) * adv.to(lp.dtype) * per_row).sum()


def _kept(rollouts):
    """Rollouts of groups whose rewards vary (zero-variance groups carry no gradient, spec §4.2-4.3)."""
    return rollouts.select(varying_groups(rollouts.rewards, rollouts.group_ids))


def _widths(rollouts) -> torch.Tensor:
    """[N] number of attended tokens of each right-padded row (its width once `select` trims it)."""
    return rollouts.attention_mask.sum(-1).clamp(min=1)


def row_batches(widths: list[int], max_tokens: float, max_items: int | None = None) -> list[list[int]]:
    """Consecutive items (rows, or question groups) in batches whose padded size (items x widest item)
    stays <= max_tokens and that hold at most max_items; an item wider than the budget gets a batch of
    its own. This bounds every forward's activations."""
    out, cur, cur_w = [], [], 0
    for i, w in enumerate(widths):
        nw = max(cur_w, w)
        if cur and ((len(cur) + 1) * nw > max_tokens or (max_items is not None and len(cur) >= max_items)):
            out.append(cur)
            cur, nw = [], w
        cur.append(i)
        cur_w = nw
    if cur:
        out.append(cur)
    return out


def _max_over_ranks(n: int) -> int:
    return int(_all_reduce(torch.tensor([n]), dist.ReduceOp.MAX if _world() > 1 else None).item())


def _backward_rows(model, rows, adv, scale: float, temperature, tis_cap, max_tokens: int) -> None:
    """Accumulate scale * d/dtheta pg_surrogate(rows) into .grad, micro-batch by micro-batch under the token
    budget; every rank runs the same number of passes (zero-weight passes on one row where it has fewer),
    so that FSDP2's collectives stay in step."""
    device = _device(model)
    widths = _widths(rows).tolist()
    batches = row_batches(widths, max_tokens)
    for s in range(_max_over_ranks(len(batches))):
        idx, weight = (batches[s], 1.0) if s < len(batches) else ([0], 0.0)
        if len(rows) == 0:
            raise RuntimeError("influence: a rank with no rows cannot join a distributed backward")
        part = rows.select(torch.tensor(idx))                       # trimmed to its widest row
        row_scale = torch.full((len(idx),), scale * weight, dtype=torch.float64)
        pg_surrogate(model, part.to(device), adv[idx].to(device), temperature, tis_cap,
                     row_scale.to(device)).backward()


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


@contextmanager
def _train_mode(model):
    """Training-mode forwards (activation checkpointing, where enabled, applies only in train mode;
    the models here have no dropout, so the numbers are those of eval mode)."""
    was = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was)


def dev_gradient(model, dev, temperature: float = 0.7, tis_cap: float = 2.0,
                 max_tokens: int = 32768) -> dict[str, torch.Tensor] | None:
    """m = G(R_dev) as {param name: fp32 tensor (the local shard under FSDP2)}, or None when no dev group
    (on any rank) has reward variance. Advantages are formed over whole groups before the rows are cut
    into micro-batches of at most `max_tokens` padded tokens. Parameter .grad is restored afterwards."""
    dev = _kept(dev)
    counts = _all_reduce(torch.tensor([len(dev), dev.response_mask.sum().item()], dtype=torch.float64))
    n_rows, n_tokens = counts.tolist()
    if n_rows == 0:
        return None
    params = dict(model.named_parameters())
    sharded = any(hasattr(p, "full_tensor") for p in params.values())
    # FSDP2 averages gradients over ranks; scale by the world size so that m is the sum over all rows
    scale = (_world() if sharded else 1) / (n_rows * (n_tokens / n_rows))
    adv = group_advantages(dev.rewards.double(), dev.group_ids, "none")                     # [N] whole groups
    if len(dev) == 0:                     # this rank has no signal rows: it joins with zero-weight passes
        dev, adv = _filler(model), torch.zeros(1, dtype=torch.float64)
        scale = 0.0
    with _saved_grads(list(params.values())), _train_mode(model):
        _backward_rows(model, dev, adv, scale, temperature, tis_cap, max_tokens)
        m = {n: p.grad.detach().to(acc_dtype(p.dtype)).clone() if p.grad is not None
             else torch.zeros_like(p, dtype=acc_dtype(p.dtype)) for n, p in params.items()}
    if not sharded and _world() > 1:      # replicated model: sum the ranks' gradients explicitly
        for g in m.values():
            _all_reduce(g)
    return m


def _filler(model):
    """One all-padding row: what a rank without rows feeds to a collective forward/backward."""
    from rollout import Rollouts
    z = torch.zeros(1, 2, dtype=torch.long)
    return Rollouts(z, torch.ones_like(z), torch.zeros(1, 2), torch.tensor([-1]), torch.zeros(1), None)


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
        """Route the module's output through _Tap, which saves the input x for the backward. Saved
        tensors are what activation checkpointing discards and recomputes, so the tap sees the right x
        with checkpointing on or off (and holds no extra memory: the module saves the same x itself)."""
        if not output.requires_grad:
            return None
        tapped = _Tap.apply(output, inputs[0], self, mod)
        if self.owner[mod][0] == "embedding":
            self.embed_outputs.append(output)         # the backward runs down to here (through the tap)
        return tapped

    # per-question gradient of each parameter of one module, [Qc, *param shape] ------------------------
    def _on_grad(self, mod, x, delta):
        kind, names = self.owner[mod]
        qc = self.qc
        with torch.no_grad():
            if kind == "linear":
                xin = x.reshape(qc, -1, x.shape[-1])                             # [Qc, G*T, in]
                d = delta.reshape(qc, -1, delta.shape[-1])                       # [Qc, G*T, out]
                n_tok, width = d.shape[1], max(d.shape[2], xin.shape[2])
                step = max(1, TEMP_ELEMENTS // (qc * width))                     # tokens per fp32 slice
                if step >= n_tok:                                                # one slice: one bmm
                    d, xin = d.to(self.acc), xin.to(self.acc)
                    blocks = {"weight": torch.bmm(d.transpose(1, 2), xin)}      # [Qc, out, in]
                    if "bias" in names:
                        blocks["bias"] = d.sum(1)                                # [Qc, out]
                else:             # token slices: the fp32 copies of delta and x stay <= TEMP_ELEMENTS
                    w = torch.zeros(qc, d.shape[2], xin.shape[2], dtype=self.acc, device=d.device)
                    bias = torch.zeros(qc, d.shape[2], dtype=self.acc, device=d.device) if "bias" in names else None
                    for s in range(0, n_tok, step):
                        ds = d[:, s:s + step].to(self.acc)
                        w.baddbmm_(ds.transpose(1, 2), xin[:, s:s + step].to(self.acc))
                        if bias is not None:
                            bias += ds.sum(1)
                    blocks = {"weight": w} if bias is None else {"weight": w, "bias": bias}
            elif kind == "embedding":
                v, h = mod.weight.shape[0], delta.shape[-1]
                ids = x.reshape(qc, -1)                                          # [Qc, G*T]
                flat = (ids + torch.arange(qc, device=ids.device)[:, None] * v).reshape(-1)
                gw = delta.new_zeros(qc * v, h, dtype=self.acc)
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
        pre = self.mode.startswith("preconditioned")
        v, step, beta2, eps = adamw_state(self.optimizer, p) if pre else (None, 0, 0.0, 0.0)
        if v is not None:
            v = _full(v).to(device=g.device, dtype=g.dtype).reshape(-1)                 # [P]
        g = g.reshape(self.qc, -1)                                                        # [Qc, P]
        cols = max(1, TEMP_ELEMENTS // self.qc)      # columns per slice: the preconditioner's temporary
        for s in range(0, g.shape[1], cols):        # (one slice for all but the largest modules)
            u = g[:, s:s + cols]
            if pre:
                u = _precondition_(u, None if v is None else v[s:s + cols], step, beta2, eps)
            self.dot = self.dot + (u @ m[s:s + cols]).double().cpu()                      # [Qc]
            self.norm2 = self.norm2 + torch.linalg.vector_norm(u, dim=1).double().pow(2).cpu()  # [Qc]


class _Tap(torch.autograd.Function):
    """Identity on a module's output whose backward hands (saved input x, output gradient delta) to
    _Blocks._on_grad. x is a saved tensor, so under non-reentrant activation checkpointing it is the
    recomputed input of the checkpointed layer's recomputation."""

    @staticmethod
    def forward(ctx, out, x, blocks, mod):
        ctx.save_for_backward(x)
        ctx.blocks, ctx.mod = blocks, mod
        return out.view_as(out)

    @staticmethod
    def backward(ctx, delta):
        (x,) = ctx.saved_tensors
        ctx.blocks._on_grad(ctx.mod, x, delta)
        return delta, None, None, None


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
                     max_tokens: int = 32768) -> torch.Tensor:
    """One influence score per group of `gen` (ascending group id), spec §4.

    dev, gen: Rollouts of the solver (this rank's share, whole groups: a question's rollouts on one rank)
    with rewards in {0, 1} (None already mapped to 0). optimizer: the solver's live AdamW (its exp_avg_sq,
    step, beta2 and eps are read, never changed). Zero-variance gen groups score 0; all scores are 0 when no
    dev group has reward variance. Parameters, their .grad and the optimizer state are left as they were.

    What bounds memory: every forward holds at most `max_tokens` padded tokens (rows x widest row), so
    activations (with activation checkpointing, where the model has it on: the checkpointed layer inputs
    plus one layer's recomputation) are bounded by the budget, not by a question's size; and the hook
    path holds one module's per-question block [Qc, *param] (Qc <= chunk_questions) plus that module's
    gathered m and exp_avg_sq. A question whose padded rollouts exceed the budget is scored by the
    paper's loop instead (_split_question_scores): its rows are spread over the ranks and micro-batched
    under the same budget, its gradient accumulates in the (sharded) .grad, and two scalars are reduced.
    """
    if mode not in MODES:
        raise ValueError(f"unknown influence mode {mode!r}; choose one of {MODES}")
    uniq = torch.unique(gen.group_ids, sorted=True)                                      # [Q]
    scores = torch.zeros(len(uniq), dtype=acc_dtype(next(model.parameters()).dtype))
    m = dev_gradient(model, dev, temperature, tis_cap, max_tokens)
    if m is None:
        return scores
    with _train_mode(model):
        qids, dot, norm2 = _question_scalars(model, optimizer, m, _kept(gen), mode, temperature, tis_cap,
                                             chunk_questions, max_tokens)
    # the only cross-rank quantity the score needs is ||m||^2 (sum of the shards' squares)
    m_norm2 = sum(_local(g).double().pow(2).sum() for g in m.values()).reshape(1)
    m_norm = _all_reduce(m_norm2).sqrt().item() if any(hasattr(g, "full_tensor") for g in m.values()) \
        else m_norm2.sqrt().item()
    if mode in ("dot", "preconditioned_dot"):
        s = dot
    else:
        s = dot / (norm2.sqrt().clamp(min=1e-12) * max(m_norm, 1e-12))
    scores[torch.searchsorted(uniq, qids)] = s.to(scores.dtype)
    return scores


def _question_scalars(model, optimizer, m, kept, mode, temperature, tis_cap, chunk_questions, max_tokens):
    """(question ids [Q'] of this rank, <u_q, m> [Q'], ||u_q||^2 [Q']) for the varying groups `kept`."""
    device = _device(model)
    stats = _all_reduce(torch.tensor([len(kept), kept.response_mask.sum().item()], dtype=torch.float64))
    l_gen = stats[1].item() / max(stats[0].item(), 1.0)                                  # batch-wide L_gen
    qids = torch.unique(kept.group_ids, sorted=True)                                     # [Q'] local
    rows_of = [(kept.group_ids == q).nonzero().squeeze(-1) for q in qids]
    sizes = torch.tensor([len(r) for r in rows_of], dtype=torch.long)
    widths = _widths(kept)
    g_max = _max_over_ranks(int(sizes.max()) if len(sizes) else 1)
    # pack whole questions into forwards of <= max_tokens padded tokens and <= chunk_questions questions
    q_width = [int(widths[rows].max()) for rows in rows_of]       # a question's forward: g_max x its width
    split = [j for j, w in enumerate(q_width) if g_max * w > max_tokens]
    fit = [j for j, w in enumerate(q_width) if g_max * w <= max_tokens]
    chunks = [[fit[k] for k in b] for b in row_batches([q_width[j] for j in fit], max_tokens / g_max, chunk_questions)]

    dot, norm2 = [torch.zeros((), dtype=torch.float64)] * len(qids), [torch.zeros((), dtype=torch.float64)] * len(qids)
    for c in range(_max_over_ranks(len(chunks))):
        chunk = chunks[c] if c < len(chunks) else []
        batch, row_scale, qc = _chunk_batch(kept, [rows_of[j] for j in chunk], g_max, l_gen)
        blocks = _Blocks(model, optimizer, m, mode, qc, g_max)
        adv = group_advantages(batch.rewards.double(), batch.group_ids, "none")
        with blocks:
            loss = pg_surrogate(model, batch.to(device), adv.to(device), temperature, tis_cap, row_scale.to(device))
            if not blocks.embed_outputs:
                raise RuntimeError("influence: no embedding output was seen in the forward pass")
            torch.autograd.grad(loss, blocks.embed_outputs, allow_unused=True)
        for k, j in enumerate(chunk):
            dot[j], norm2[j] = blocks.dot[k], blocks.norm2[k]
    for j, d, n in _split_question_scores(model, optimizer, m, kept, [rows_of[j] for j in split], split, mode,
                                          l_gen, temperature, tis_cap, max_tokens):
        dot[j], norm2[j] = d, n
    stack = lambda xs: torch.stack(xs) if xs else torch.zeros(0, dtype=torch.float64)
    return qids, stack(dot), stack(norm2)


def _split_question_scores(model, optimizer, m, kept, rows_list, local_index, mode, l_gen, temperature,
                           tis_cap, max_tokens):
    """The paper's per-question loop for questions too large for one forward: every rank takes its share of
    the question's rows (all ranks see every such question), backward accumulates g_q into .grad (FSDP2
    reduce-scatters it into shards), and each rank reduces its shard against its shards of m and
    exp_avg_sq. Yields (local index, <u_q, m>, ||u_q||^2) for this rank's own split questions."""
    rank, world = (dist.get_rank(), _world()) if _world() > 1 else (0, 1)
    params = dict(model.named_parameters())
    sharded = any(hasattr(p, "full_tensor") for p in params.values())
    mine = [(rank, j, kept.select(rows)) for j, rows in zip(local_index, rows_list)]
    every = [x for part in _gather(mine) for x in part]           # [(owner rank, local index, Rollouts)]
    for owner, j, rows in every:
        n_q = len(rows)
        share = rows.select(torch.arange(rank, n_q, world)) if rank < n_q else None
        adv = group_advantages(rows.rewards.double(), rows.group_ids, "none")[rank::world]   # whole group
        scale = (world if sharded else 1) / (n_q * l_gen)
        if share is None or len(share) == 0:     # fewer rows than ranks: this rank only keeps FSDP in step
            share, adv, scale = _filler(model), torch.zeros(1, dtype=torch.float64), 0.0
        with _saved_grads(list(params.values())):
            _backward_rows(model, share, adv, scale, temperature, tis_cap, max_tokens)
            part = torch.zeros(2, dtype=torch.float64)
            for name, p in params.items():
                g = p.grad
                if g is None:
                    continue
                g = _local(g).detach().to(acc_dtype(p.dtype))
                if not sharded and world > 1:
                    g = _all_reduce(g.clone())
                if mode.startswith("preconditioned"):
                    v, step, beta2, eps = adamw_state(optimizer, p)
                    g = precondition(g, None if v is None else _local(v), step, beta2, eps)
                part = part + torch.stack([(g * _local(m[name]).to(g.dtype)).sum(), g.pow(2).sum()]).double().cpu()
        if sharded:
            part = _all_reduce(part)
        if owner == rank:
            yield j, part[0], part[1]


def _chunk_batch(kept, rows_list, g_max, l_gen):
    """Rows of the chunk's questions, question-major, each question padded to g_max rows with dummy
    (all-padding, zero-mask) rows; row_scale = 1 / (n_q * L_gen) for real rows, 0 for dummies. Returns
    (Rollouts trimmed to the chunk's widest row, row_scale [Qc*g_max], Qc)."""
    qc = max(len(rows_list), 1)
    rows, scale = [], []
    for idx in rows_list:
        n_q = len(idx)
        rows += idx.tolist() + [-1] * (g_max - n_q)
        scale += [1.0 / (n_q * l_gen)] * n_q + [0.0] * (g_max - n_q)
    if not rows_list:                              # this rank has no more questions: one dummy question
        rows, scale = [-1] * g_max, [0.0] * g_max
    idx = torch.tensor(rows)
    real = idx >= 0
    t = int(_widths(kept)[idx[real]].max()) if real.any() else 2
    safe = idx.clamp(min=0)
    if len(kept):
        pick = lambda x: None if x is None else (x[safe][:, :t] * real.view(-1, 1).to(x.dtype))
        ids, am, rm, slp = pick(kept.input_ids), pick(kept.attention_mask), pick(kept.response_mask), \
            pick(kept.sampler_logprobs)
        rewards = kept.rewards[safe] * real
    else:
        ids, am = torch.zeros(len(rows), t, dtype=torch.long), torch.zeros(len(rows), t, dtype=torch.long)
        rm, slp, rewards = torch.zeros(len(rows), t), None, torch.zeros(len(rows))
    am[~real, 0] = 1                               # one visible token keeps attention well defined
    gids = torch.repeat_interleave(torch.arange(qc), g_max)
    # dummy rows get their own group ids so they never shift a real group's mean reward
    gids = torch.where(real, gids, -1 - torch.arange(len(rows)))
    return type(kept)(ids, am, rm, gids, rewards, slp), torch.tensor(scale, dtype=torch.float64), qc
