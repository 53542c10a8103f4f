"""influence.py -- INFUSER's optimizer-aware influence score: its plain definition, then the fast exact one.

For solver rollouts R grouped by question, with Dr.GRPO advantages A_i = r_i - mean_group(r) and detached
truncated IS weights w_it (pi_old = the current solver), the policy-gradient vector (README eq. 4-7,
algorithm.md §4) is

    G(R; n, L) = -(1 / (n L)) sum_{i in R} A_i sum_t w_it grad log pi_theta(y_it | x_i, y_i,<t)   (log-probs at T)

  m = G(R_dev; |R_dev|, L_dev) (all non-constant dev groups), g_q = G(R_q; |R_q|, L_gen) (one question, the
  batch-wide mean length L_gen), gamma_q = precondition(g_q, v, step, beta2, eps) (AdamW's direction if its
  next gradient were g_q), score_q = <gamma_q, m> / (||gamma_q|| ||m||) ("preconditioned_cosine", the paper;
  also "dot", "cosine", "preconditioned_dot"). A positive score: a solver step on q lowers the dev loss.

1. `plain_scores`, the definition: the paper's loop, one backward into .grad per question
   (`question_by_backward`). The reference of tests and bench.py; the fallback for a too-large question.
2. `influence_scores`, the fast exact version: one forward over a chunk of questions, ONE backward. A tap
   on every module's output saves its input x; its backward gets the output gradient delta and forms the
   per-question weight gradients (Linear: g_q = sum_{tokens of q} delta_t x_t^T, one batched matmul),
   reduced to two scalars before the next module's gradient arrives; the LM head (dugrpo.head_logprobs)
   hands over its input and logit gradient block by block. Tested against 1. and a float64 loop.
Each forward holds <= `max_tokens` padded tokens. Parameters: Linear, Embedding, 1-D affine norms (tied
embeddings summed first). FSDP2: m from an ordinary backward; the hook path gathers one parameter's m and
exp_avg_sq at a time; ranks with fewer questions run zero-weight passes. Left out (algorithm.md §4.2,
§4.5): a momentum buffer for m, "shortcut" questions, random projections, layer subsets.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from dist import all_reduce_, all_sum, full, gather_flat, local, max_over_ranks, rank_world, sharded
from dugrpo import acc_dtype, group_advantages, tis_weights, token_logprobs, varying_groups
from records import Rollouts, pack

MODES = ("dot", "cosine", "preconditioned_dot", "preconditioned_cosine")
TEMP_ELEMENTS = 1 << 26     # floats per fp32 temporary of the hook path (256 MB): slices bound the copies


# 1. The definition: one backward pass per question (the paper's loop, algorithm.md §4.2-4.7) ---------

def plain_scores(model, optimizer, dev, gen, *, mode: str = "preconditioned_cosine", temperature: float = 0.7,
                 tis_cap: float = 2.0, max_tokens: int = 32768) -> torch.Tensor:
    """What influence_scores returns, computed plainly: m, then for each question g_q by its own backward."""
    scores, uniq, m = _setup(model, dev, mode, temperature, tis_cap, max_tokens, gen)
    if m is None:
        return scores
    kept = _kept(gen)
    l_gen, qids, rows_of = _questions(kept)
    dot, norm2 = torch.zeros(len(qids), dtype=torch.float64), torch.zeros(len(qids), dtype=torch.float64)
    for j, d, n in _loop_scalars(model, optimizer, m, kept, rows_of, range(len(qids)), mode, l_gen,
                                 temperature, tis_cap, max_tokens):
        dot[j], norm2[j] = d, n
    return _fill(scores, uniq, qids, dot, norm2, m, mode)


def question_by_backward(model, optimizer, m, rows, mode, l_gen, temperature, tis_cap, max_tokens) -> torch.Tensor:
    """[<u_q, m>, ||u_q||^2] of ONE question (rows: its whole group, the same on every rank). Each rank takes
    every world-th row into one backward, reduces its shard of g_q against m and v; partials are summed."""
    rank, world = rank_world()
    params = dict(model.named_parameters())
    shard = sharded(params.values())
    n_q = len(rows)
    share = rows.select(torch.arange(rank, n_q, world))
    adv = group_advantages(rows.rewards.double(), rows.group_ids, "none")[rank::world]    # whole group
    scale = (world if shard else 1) / (n_q * l_gen)
    if len(share) == 0:                   # fewer rows than ranks: this rank only keeps FSDP in step
        share, adv, scale = filler(), torch.zeros(1, dtype=torch.float64), 0.0
    with _training(model):
        _backward_rows(model, share, adv, scale, temperature, tis_cap, max_tokens)
        part = torch.zeros(2, dtype=torch.float64)
        for name, p in params.items():
            if p.grad is None:
                continue
            g = local(p.grad).detach().to(acc_dtype(p.dtype))
            if not shard and world > 1:
                g = all_reduce_(g.clone())
            if mode.startswith("preconditioned"):
                v, step, beta2, eps = adamw_state(optimizer, p)
                g = precondition(g, None if v is None else local(v), step, beta2, eps)
            part = part + torch.stack([(g * local(m[name]).to(g.dtype)).sum(), g.pow(2).sum()]).double().cpu()
    return all_reduce_(part) if shard else part


def dev_gradient(model, dev, temperature: float = 0.7, tis_cap: float = 2.0,
                 max_tokens: int = 32768) -> dict[str, torch.Tensor] | None:
    """m = G(R_dev) as {param name: fp32 tensor (the local shard under FSDP2)}, or None when no dev group
    (on any rank) has reward variance. Advantages over whole groups, then micro-batches of <= max_tokens."""
    dev = _kept(dev)
    n_rows, n_tokens = all_sum([len(dev), dev.response_mask.sum().item()])
    if n_rows == 0:
        return None
    params = dict(model.named_parameters())
    shard = sharded(params.values())
    # FSDP2 averages gradients over ranks; scale by the world size so that m is the sum over all rows
    scale = (rank_world()[1] if shard else 1) / (n_rows * (n_tokens / n_rows))
    adv = group_advantages(dev.rewards.double(), dev.group_ids, "none")                     # [N] whole groups
    if len(dev) == 0:                     # this rank has no signal rows: it joins with zero-weight passes
        dev, adv, scale = filler(), torch.zeros(1, dtype=torch.float64), 0.0
    with _training(model):
        _backward_rows(model, dev, adv, scale, temperature, tis_cap, max_tokens)
        m = {n: p.grad.detach().to(acc_dtype(p.dtype)).clone() if p.grad is not None
             else torch.zeros_like(p, dtype=acc_dtype(p.dtype)) for n, p in params.items()}
    if not shard and rank_world()[1] > 1:     # replicated model: sum the ranks' gradients explicitly
        for g in m.values():
            all_reduce_(g)
    return m


def precondition(grad: torch.Tensor, exp_avg_sq: torch.Tensor | None, step: int | float,
                 beta2: float, eps: float, in_place: bool = False) -> torch.Tensor:
    """gamma = g / (sqrt(v' / (1 - beta2^(step+1))) + eps),  v' = beta2 * v + (1 - beta2) * g * g.

    grad [..., *P] broadcasts against exp_avg_sq [*P] (None: v = 0); step = steps taken so far. AdamW's step
    on g with beta1 = 0, no weight decay, lr 1: g's square enters v first (step 1 ~ sign(g)); eps outside.
    in_place: gamma overwrites grad (an fp32 block of the hook path: one temporary, not four)."""
    g = grad if in_place else grad.to(acc_dtype(grad.dtype), copy=True)
    denom = (g * g).mul_(1.0 - beta2)
    if exp_avg_sq is not None:
        denom.add_(exp_avg_sq.to(g.dtype), alpha=beta2)
    denom.div_(1.0 - beta2 ** (float(step) + 1.0)).sqrt_().add_(eps)
    return g.div_(denom)


def adamw_state(optimizer: torch.optim.Optimizer, param: nn.Parameter):
    """(exp_avg_sq or None, step, beta2, eps) of `param`, read from the live optimizer and its group."""
    group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
    if group is None:
        raise ValueError("a model parameter is not managed by the optimizer passed to influence_scores")
    state = optimizer.state.get(param, {})
    return state.get("exp_avg_sq"), float(state.get("step", 0)), float(group["betas"][1]), float(group["eps"])


def pg_surrogate(model, rollouts, adv, temperature: float, tis_cap: float, row_scale: torch.Tensor,
                 tap=None) -> torch.Tensor:
    """sum_i row_scale_i A_i sum_t mask w_it (-log pi(y_it)), whose gradient is G's (algorithm.md §4.1): adv [N]
    over each row's WHOLE group, row_scale [N] = 1 / (n L); w_it detached; padding selected away (no nan)."""
    lp = token_logprobs(model, rollouts.input_ids, rollouts.attention_mask, temperature,
                        rollouts.response_mask, tap=tap)                                   # [N, T]
    on = rollouts.response_mask > 0
    lp = torch.where(on, lp, torch.zeros_like(lp))                 # select: no 0 * nan in the gradient
    slp = rollouts.sampler_logprobs
    slp = None if slp is None else torch.where(on, slp, torch.zeros_like(slp))
    w = tis_weights(lp.detach(), slp, tis_cap)                                               # [N, T]
    per_row = (w * on * lp).sum(-1)                                                          # [N]
    return -(row_scale.to(lp.dtype) * adv.to(lp.dtype) * per_row).sum()


def _setup(model, dev, mode, temperature, tis_cap, max_tokens, gen):
    """(scores [Q] zeros, question ids [Q] of gen, m or None)."""
    if mode not in MODES:
        raise ValueError(f"unknown influence mode {mode!r}; choose one of {MODES}")
    uniq = torch.unique(gen.group_ids, sorted=True)                                      # [Q]
    scores = torch.zeros(len(uniq), dtype=acc_dtype(next(model.parameters()).dtype))
    return scores, uniq, dev_gradient(model, dev, temperature, tis_cap, max_tokens)


def _questions(kept):
    """(batch-wide L_gen, this rank's question ids [Q'], the rows of each) of the varying groups `kept`."""
    n_rows, n_tokens = all_sum([len(kept), kept.response_mask.sum().item()])
    qids = torch.unique(kept.group_ids, sorted=True)
    return n_tokens / max(n_rows, 1.0), qids, [(kept.group_ids == q).nonzero().squeeze(-1) for q in qids]


def _loop_scalars(model, optimizer, m, kept, rows_list, local_index, mode, l_gen, temperature, tis_cap, max_tokens):
    """question_by_backward for every rank's listed questions (all ranks join each); yields this rank's own."""
    rank = rank_world()[0]
    mine = [(rank, j, kept.select(rows)) for j, rows in zip(local_index, rows_list)]
    for owner, j, rows in gather_flat(mine):
        part = question_by_backward(model, optimizer, m, rows, mode, l_gen, temperature, tis_cap, max_tokens)
        if owner == rank:
            yield j, part[0], part[1]


def _fill(scores, uniq, qids, dot, norm2, m, mode):
    """scores[q] from the two scalars; the only cross-rank quantity needed is ||m||^2 (sum of shards)."""
    m_norm2 = sum(local(g).double().pow(2).sum() for g in m.values()).reshape(1)
    m_norm = (all_reduce_(m_norm2) if sharded(m.values()) else m_norm2).sqrt().item()
    s = dot if mode in ("dot", "preconditioned_dot") else dot / (norm2.sqrt().clamp(min=1e-12) * max(m_norm, 1e-12))
    scores[torch.searchsorted(uniq, qids)] = s.to(scores.dtype)
    return scores


def _backward_rows(model, rows, adv, scale: float, temperature, tis_cap, max_tokens: int) -> None:
    """.grad += scale * d pg_surrogate(rows) in micro-batches under the budget, equal pass counts on all ranks."""
    device = next(model.parameters()).device
    batches = pack(rows.widths().tolist(), max_tokens)              # longest rows together
    for s in range(max_over_ranks(len(batches))):
        idx, weight = (batches[s], 1.0) if s < len(batches) else ([0], 0.0)
        if len(rows) == 0:
            raise RuntimeError("influence: a rank with no rows cannot join a distributed backward")
        part = rows.select(torch.tensor(idx))                       # trimmed to its widest row
        row_scale = torch.full((len(idx),), scale * weight, dtype=torch.float64)
        pg_surrogate(model, part.to(device), adv[idx].to(device), temperature, tis_cap, row_scale.to(device)).backward()


def _kept(rollouts):
    """Rollouts of groups whose rewards vary (zero-variance groups carry no gradient)."""
    return rollouts.select(varying_groups(rollouts.rewards, rollouts.group_ids))


def filler() -> Rollouts:
    """One all-padding row: what a rank without rows feeds to a collective forward/backward."""
    z = torch.zeros(1, 2, dtype=torch.long)
    return Rollouts(z, torch.ones_like(z), torch.zeros(1, 2), torch.tensor([-1]), torch.zeros(1), None)


@contextmanager
def _training(model):
    """A block of training-mode forwards (activation checkpointing applies only in train mode; no dropout
    here) and backwards into .grad; the mode and every parameter's .grad are as they were after it."""
    params, was = list(model.parameters()), model.training
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    model.train()
    try:
        yield
    finally:
        model.train(was)
        for p, g in zip(params, saved):
            p.grad = g


# ----------------------------------------------------------------------------------------------
# 2. The fast exact version: per-question gradients, block by block, inside one backward pass

def influence_scores(model, optimizer, dev, gen, *, mode: str = "preconditioned_cosine",
                     temperature: float = 0.7, tis_cap: float = 2.0, chunk_questions: int = 16,
                     max_tokens: int = 32768) -> torch.Tensor:
    """One score per group of `gen` (ascending group id). dev, gen: the solver's Rollouts (this rank's share,
    whole groups), rewards in {0, 1}; optimizer: its live AdamW, read only. Zero-variance groups score 0, and
    all do when no dev group varies. One module's [Qc, *param] block is alive at a time (Qc <=
    chunk_questions); a question too large for one forward is scored by question_by_backward."""
    scores, uniq, m = _setup(model, dev, mode, temperature, tis_cap, max_tokens, gen)
    if m is None:
        return scores
    with _training(model):
        qids, dot, norm2 = question_scalars(model, optimizer, m, _kept(gen), mode, temperature, tis_cap,
                                            chunk_questions, max_tokens)
    return _fill(scores, uniq, qids, dot, norm2, m, mode)


def question_scalars(model, optimizer, m, kept, mode, temperature, tis_cap, chunk_questions, max_tokens):
    """(question ids [Q'] of this rank, <u_q, m> [Q'], ||u_q||^2 [Q']) for the varying groups `kept`."""
    device = next(model.parameters()).device
    l_gen, qids, rows_of = _questions(kept)
    widths = kept.widths()
    g_max = max_over_ranks(max((len(r) for r in rows_of), default=1))
    # pack whole questions into forwards of <= max_tokens padded tokens and <= chunk_questions questions
    q_width = [int(widths[rows].max()) for rows in rows_of]       # a question's forward: g_max x its width
    split = [j for j, w in enumerate(q_width) if g_max * w > max_tokens]
    fit = [j for j, w in enumerate(q_width) if g_max * w <= max_tokens]
    chunks = [[fit[k] for k in b]
              for b in pack([q_width[j] for j in fit], max_tokens / g_max, max_items=chunk_questions)]
    dot, norm2 = torch.zeros(len(qids), dtype=torch.float64), torch.zeros(len(qids), dtype=torch.float64)
    for c in range(max_over_ranks(len(chunks))):
        chunk = chunks[c] if c < len(chunks) else []
        batch, row_scale, qc = _chunk_batch(kept, [rows_of[j] for j in chunk], g_max, l_gen)
        blocks = _Blocks(model, optimizer, m, mode, qc, g_max)
        adv = group_advantages(batch.rewards.double(), batch.group_ids, "none")
        with blocks:
            loss = pg_surrogate(model, batch.to(device), adv.to(device), temperature, tis_cap, row_scale.to(device),
                                tap=blocks)
            if not blocks.embed_outputs:
                raise RuntimeError("influence: no embedding output was seen in the forward pass")
            torch.autograd.grad(loss, blocks.embed_outputs, allow_unused=True)
        for k, j in enumerate(chunk):
            dot[j], norm2[j] = blocks.dot[k], blocks.norm2[k]
    for j, d, n in _loop_scalars(model, optimizer, m, kept, [rows_of[j] for j in split], split, mode, l_gen,
                                 temperature, tis_cap, max_tokens):
        dot[j], norm2[j] = d, n
    return qids, dot, norm2


def _chunk_batch(kept, rows_list, g_max, l_gen):
    """(Rollouts of the chunk's questions, question-major, each padded to g_max rows with all-padding dummy
    rows, trimmed to the widest row; row_scale [Qc*g_max] = 1 / (n_q L_gen), 0 for dummies; Qc)."""
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
    t = int(kept.widths()[idx[real]].max()) if real.any() else 2
    safe, src = idx.clamp(min=0), kept if len(kept) else filler()     # dummies: row 0, zeroed
    pick = lambda x: None if x is None else (x[safe][:, :t] * real.view(-1, 1).to(x.dtype))
    ids, am, rm, slp = (pick(x) for x in (src.input_ids, src.attention_mask, src.response_mask, src.sampler_logprobs))
    rewards = src.rewards[safe] * real
    am[~real, 0] = 1                               # one visible token keeps attention well defined
    gids = torch.repeat_interleave(torch.arange(qc), g_max)
    # dummy rows get their own group ids so they never shift a real group's mean reward
    gids = torch.where(real, gids, -1 - torch.arange(len(rows)))
    return type(kept)(ids, am, rm, gids, rewards, slp), torch.tensor(scale, dtype=torch.float64), qc


class _Blocks:
    """The per-module hooks of one chunk; reduces each per-question gradient block to two scalars. Rows are
    question-major (Qc questions x G rows, dummies pad short groups): [Qc*G, ...] reshapes to [Qc, G*...]."""

    def __init__(self, model, optimizer, m, mode, qc, g):
        self.model, self.optimizer, self.m, self.mode, self.qc, self.g = model, optimizer, m, mode, qc, g
        self.dot, self.norm2 = torch.zeros(qc, dtype=torch.float64), torch.zeros(qc, dtype=torch.float64)
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
                raise NotImplementedError(f"influence: no per-question gradients for module {mod_name!r} "
                                          f"({type(mod).__name__}, parameters {sorted(direct)}); supported: "
                                          "Linear, Embedding, 1-D elementwise-affine layers (RMSNorm, LayerNorm)")
            names = {attr: by_id[id(p)] for attr, p in direct.items() if p.requires_grad}
            for n in names.values():
                self.uses[n] = self.uses.get(n, 0) + 1
            self.owner[mod] = (kind, names)
        self.params = {n: p for n, p in model.named_parameters()}
        self.acc = acc_dtype(next(iter(self.params.values())).dtype)   # fp32 (fp64 for fp64 models)
        self.head, self.head_grad = model.get_output_embeddings(), None   # the LM head reports by block()

    # hooks --------------------------------------------------------------------------------------
    def __enter__(self):
        for mod in self.owner:
            if mod is not self.head:
                self.handles.append(mod.register_forward_hook(self._forward_hook))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def _forward_hook(self, mod, inputs, output):
        """Route the output through _Tap, which saves the input x (the module's own saved x: no memory)."""
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
                # by token slices, so that the fp32 copies of delta and x stay <= TEMP_ELEMENTS
                step = max(1, TEMP_ELEMENTS // (qc * max(d.shape[2], xin.shape[2])))
                blocks = {"weight": torch.zeros(qc, d.shape[2], xin.shape[2], dtype=self.acc, device=d.device)}
                if "bias" in names:                                              # [Qc, out, in], [Qc, out]
                    blocks["bias"] = torch.zeros(qc, d.shape[2], dtype=self.acc, device=d.device)
                for s in range(0, d.shape[1], step):
                    ds = d[:, s:s + step].to(self.acc)
                    blocks["weight"].baddbmm_(ds.transpose(1, 2), xin[:, s:s + step].to(self.acc))
                    if "bias" in blocks:
                        blocks["bias"] += ds.sum(1)
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

    # the LM head (dugrpo.head_logprobs): its logits' gradient d arrives block by block ----------------
    def block(self, r0, r1, x, d):
        """Rows r0:r1 of the head's input x [r, s, H] and d loss / d logits [r, s, V]: g_q += d^T x per question."""
        if self.head_grad is None:
            self.head_grad = torch.zeros(self.qc, d.shape[-1], x.shape[-1], dtype=self.acc, device=d.device)
        for q in range(r0 // self.g, (r1 - 1) // self.g + 1):          # rows are question-major
            a, b = max(r0, q * self.g) - r0, min(r1, (q + 1) * self.g) - r0
            self.head_grad[q].addmm_(d[a:b].flatten(0, 1).T.to(self.acc), x[a:b].flatten(0, 1).to(self.acc))

    def done(self):
        """The head's backward is over: reduce its [Qc, V, H] block (summed with a tied embedding's)."""
        grad, self.head_grad = self.head_grad, None
        if "weight" in self.owner[self.head][1]:                        # a frozen head has no score share
            self._add(self.owner[self.head][1]["weight"], grad)

    def _add(self, name, block):
        """Sum a parameter's contributions (two for tied embeddings) before preconditioning, then reduce."""
        acc, seen = self.pending.get(name, (None, 0))
        acc = block if acc is None else acc + block
        if seen + 1 == self.uses[name]:
            self.pending.pop(name, None)
            self._reduce(name, acc)
        else:
            self.pending[name] = (acc, seen + 1)

    def _reduce(self, name, g):
        """<u_q, m> and ||u_q||^2, u_q = gamma_q (preconditioned) or g_q, g [Qc, *P]; in place (O(Q x P))."""
        p = self.params[name]
        m = full(self.m[name]).to(device=g.device, dtype=g.dtype).reshape(-1)          # [P]
        pre = self.mode.startswith("preconditioned")
        v, step, beta2, eps = adamw_state(self.optimizer, p) if pre else (None, 0, 0.0, 0.0)
        if v is not None:
            v = full(v).to(device=g.device, dtype=g.dtype).reshape(-1)                 # [P]
        g = g.reshape(self.qc, -1)                                                        # [Qc, P]
        cols = max(1, TEMP_ELEMENTS // self.qc)      # columns per slice: the preconditioner's temporary
        for s in range(0, g.shape[1], cols):        # (one slice for all but the largest modules)
            u = g[:, s:s + cols]
            if pre:
                u = precondition(u, None if v is None else v[s:s + cols], step, beta2, eps, in_place=True)
            self.dot = self.dot + (u @ m[s:s + cols]).double().cpu()                      # [Qc]
            self.norm2 = self.norm2 + torch.linalg.vector_norm(u, dim=1).double().pow(2).cpu()  # [Qc]


class _Tap(torch.autograd.Function):
    """Identity on a module's output; its backward hands (saved input x, delta) to _Blocks._on_grad."""

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


def _kind(mod, direct) -> str | None:
    if isinstance(mod, (nn.Linear, nn.Embedding)):
        return "linear" if isinstance(mod, nn.Linear) else "embedding"
    affine = set(direct) <= {"weight", "bias"} and all(p.dim() == 1 for p in direct.values())
    return "affine" if affine and not list(mod.children()) else None


def _affine_slope(mod, x):
    """d out / d weight for out = a(x) + b(x) * weight (+ bias): b = out(w=1, bias=0) - out(w=0, bias=0)."""
    from torch.func import functional_call
    w = mod.weight
    extra = {"bias": torch.zeros_like(w)} if getattr(mod, "bias", None) is not None else {}
    one = functional_call(mod, {"weight": torch.ones_like(w), **extra}, (x,))
    zero = functional_call(mod, {"weight": torch.zeros_like(w), **extra}, (x,))
    return one - zero
