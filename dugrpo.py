"""dugrpo.py -- the pure tensor math of INFUSER's policy updates (README eq. 1-3, algorithm.md §3, §6).

  group_advantages   per group of rollouts: "none" (Dr.GRPO, the solver), "hybrid_std" (DuGRPO, the
                     generator), "group_std" and "batch_std" (the generator's ablations)
  varying_groups     the zero-variance filter (§3.4, §5.2): callers decide where rows are dropped
  token_logprobs     log p(input_ids[n,t] | input_ids[n,<t]) at temperature T, the LM head run block by
                     block (head_logprobs): the [N, T, V] logits never exist whole
  tis_weights        token-level truncated importance weights min(pi_old / pi_sampler, cap) (§3.6)
  policy_loss        PPO clip + dual clip, times the TIS weight, over token_mean_normaliser
No KL or entropy terms (the paper uses neither). Shapes: N rollouts, T tokens, V vocabulary, K groups.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

ADVANTAGE_MODES = ("none", "group_std", "batch_std", "hybrid_std")


# ----------------------------------------------------------------------------------------------
# Group statistics and advantages (algorithm.md §6)

def _groups(group_ids: torch.Tensor):
    """Map arbitrary (non-contiguous) group ids to 0..K-1. Returns (inverse [N], counts [K])."""
    _, inverse, counts = torch.unique(group_ids, sorted=True, return_inverse=True, return_counts=True)
    return inverse, counts


def group_mean_std(rewards: torch.Tensor, group_ids: torch.Tensor):
    """rewards [N], group_ids [N] (any values, any order) -> mu [N], sigma [N], sigma per group [K]:
    per-group mean and unbiased std; a group of one rollout gets mu = 0, sigma = 1 (verl's rule)."""
    inverse, counts = _groups(group_ids)                                  # [N], [K]
    r, cnt = rewards, counts.to(rewards.dtype)
    mean = torch.zeros_like(cnt).index_add_(0, inverse, r) / cnt          # [K]
    dev = r - mean[inverse]                                               # [N]
    std = torch.sqrt(torch.zeros_like(cnt).index_add_(0, inverse, dev * dev) / (cnt - 1).clamp(min=1))  # [K]
    single = counts == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return mean[inverse], std[inverse], std


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, mode: str,
                     eps: float = 1e-6) -> torch.Tensor:
    """rewards [N], group_ids [N] -> advantages [N], centred on the group mean, then divided by mode:
      "none" A = R - mu_g (Dr.GRPO) | "group_std" / (sigma_g + eps) | "batch_std" / (std(R - mu) + eps) |
      "hybrid_std" / (sigma_g + mean_{sigma > 0} sigma + eps) (DuGRPO: a group whose rewards barely differ
      is not blown up to unit scale, a widely spread one is still damped by its own sigma_g)."""
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"unknown advantage mode {mode!r}; choose one of {ADVANTAGE_MODES}")
    if rewards.numel() == 0:
        return rewards.clone()
    mu, sigma, sigma_groups = group_mean_std(rewards, group_ids)          # [N], [N], [K]
    centred = rewards - mu                                                # [N]
    if mode == "none":
        return centred
    if mode == "group_std":
        return centred / (sigma + eps)
    if mode == "batch_std":
        # std_u of all centred rewards in the batch; one rollout alone has no spread (0, not NaN)
        batch_sigma = centred.std() if centred.numel() > 1 else centred.new_zeros(())
        return centred / (batch_sigma + eps)
    positive = sigma_groups[sigma_groups > 0]                             # [K'] groups with spread
    sigma_bar = positive.mean() if positive.numel() > 0 else sigma_groups.new_zeros(())
    return centred / (sigma + sigma_bar + eps)


def varying_groups(rewards: torch.Tensor, group_ids: torch.Tensor, tol: float = 1e-12) -> torch.Tensor:
    """Keep-mask [N]: True where the group's rewards are not all equal (population std > tol, in float64
    so that equal float32 rewards whose mean rounds count as constant; algorithm.md §3.4, §5.2)."""
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)
    inverse, counts = _groups(group_ids)
    r, cnt = rewards.double(), counts.double()
    mean = torch.zeros_like(cnt).index_add_(0, inverse, r) / cnt
    dev = r - mean[inverse]
    var = torch.zeros_like(cnt).index_add_(0, inverse, dev * dev) / cnt
    return (var.sqrt() > tol)[inverse]


# ----------------------------------------------------------------------------------------------
# Per-token log-probs at a temperature, from the LM head's input: the [N, T, V] logits never exist

DEFAULT_CHUNK_ELEMENTS = 1 << 24   # logits per temporary block (64 MB in fp32)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for fp32/bf16/fp16 inputs, float64 for float64 (used by the tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(n: int, w: int, v: int, budget: int):
    """(r0, r1, s0, s1) blocks of an [n, w] grid of positions with <= budget logits each (at least one
    position): whole rows together while a row fits, else slices of one row."""
    if w * v <= budget:
        k = max(1, budget // max(w * v, 1))
        return [(r, min(r + k, n), 0, w) for r in range(0, n, k)]
    c = max(1, budget // v)
    return [(r, r + 1, s, min(s + c, w)) for r in range(n) for s in range(0, w, c)]


class _HeadLogprob(torch.autograd.Function):
    """lp = log_softmax(h W^T / T).gather(targets), block by block. The forward keeps h and an [N, W]
    log-sum-exp; the backward recomputes each block's logits (a lone block is kept instead), forms
    d logits = (onehot(target) - softmax(h W^T / T)) g / T, then dh = d W and dW += d^T h (in fp32).
    A `tap` (influence.py) sees every block: tap.block(r0, r1, h, d), then tap.done()."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, budget, tap):
        # hidden [N, W, H] (any strides), weight [V, H], targets [N, W] long
        n, w, _ = hidden.shape
        acc = acc_dtype(hidden.dtype)
        out = torch.empty(n, w, dtype=acc, device=hidden.device)           # [N, W]
        lse = torch.empty(n, w, dtype=acc, device=hidden.device)           # [N, W]
        blocks = _blocks(n, w, weight.shape[0], budget)
        for r0, r1, s0, s1 in blocks:
            x = (hidden[r0:r1, s0:s1] @ weight.T).to(acc) / temperature     # [r, s, V] the only temporary
            lse[r0:r1, s0:s1] = torch.logsumexp(x, dim=-1)
            out[r0:r1, s0:s1] = x.gather(-1, targets[r0:r1, s0:s1, None]).squeeze(-1) - lse[r0:r1, s0:s1]
        # a single block (all logits <= budget) is kept for the backward instead of recomputed
        ctx.save_for_backward(hidden, weight, targets, lse, x if len(blocks) == 1 else None)
        ctx.temperature, ctx.budget, ctx.tap = temperature, budget, tap
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, targets, lse, kept = ctx.saved_tensors
        t, tap = ctx.temperature, ctx.tap
        n, w, _ = hidden.shape
        d_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)   # [N, W, H]
        # dW in fp32; not formed under a tap (the influence pass differentiates down to the embeddings only)
        d_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if tap is None else None
        for r0, r1, s0, s1 in _blocks(n, w, weight.shape[0], ctx.budget):
            h = hidden[r0:r1, s0:s1]                                       # [r, s, H]
            g = grad_out[r0:r1, s0:s1, None].to(lse.dtype)                 # [r, s, 1]
            d = (h @ weight.T).to(lse.dtype).div_(t) if kept is None else kept.clone()   # [r, s, V] logits / T
            d.sub_(lse[r0:r1, s0:s1, None]).exp_().mul_(-g)               # -softmax * g
            d.scatter_add_(-1, targets[r0:r1, s0:s1, None], g)             # + onehot * g
            d.div_(t)
            if tap is not None:
                tap.block(r0, r1, h, d)
            dl = d.to(weight.dtype)
            d_hidden[r0:r1, s0:s1] = dl @ weight
            if d_weight is not None:
                d_weight += (dl.flatten(0, 1).T @ h.flatten(0, 1)).to(d_weight.dtype)
        if tap is not None:
            tap.done()
        return d_hidden, None if d_weight is None else d_weight.to(weight.dtype), None, None, None, None


def head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, tap=None) -> torch.Tensor:
    """hidden [N, W, H] (the LM head's input), weight [V, H] (a bias-free head), targets [N, W] -> lp [N, W]
    (fp32; fp64 for fp64 inputs), lp[n, s] = log softmax(hidden[n, s] W^T / T)[targets[n, s]]: tempered, as
    the sampler reports it. The logits exist one block of <= chunk_elements at a time."""
    return _HeadLogprob.apply(hidden, weight, targets, float(temperature), int(chunk_elements), tap)


@contextmanager
def _head_returns_logprobs(model, targets, temperature, chunk_elements, tap):
    """Inside the block, the model's LM head returns head_logprobs of its input (the last position, which
    has no target, dropped) instead of logits: the model's own forward, so FSDP2 unshards the head as usual."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise ValueError(f"token_logprobs needs a bias-free nn.Linear LM head; {type(model).__name__} has "
                         f"{type(head).__name__}")
    own = head.__dict__.get("forward")
    head.forward = lambda h: head_logprobs(h[:, :-1], head.weight, targets, temperature, chunk_elements, tap)
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float,
                   response_mask: torch.Tensor | None = None,
                   chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, tap=None) -> torch.Tensor:
    """Aligned log-probs [N, T] of right-padded rows from an HF causal LM: lp[n, t] = log p_T(input_ids[n, t] |
    input_ids[n, <t]), lp[:, 0] = 0. With response_mask [N, T] the LM head runs only from the batch's first
    response token on (logits_to_keep); earlier positions are 0. The head runs as head_logprobs: logits
    exist one block at a time, recomputed in the backward."""
    n, t = input_ids.shape
    start = 1
    if response_mask is not None and response_mask.any():
        start = max(int(response_mask.any(0).nonzero()[0].item()), 1)   # first column with a response token
    # positions start-1 .. t-1 reach the head; position p predicts token p + 1 (the last one: nothing)
    with _head_returns_logprobs(model, input_ids[:, start:], temperature, chunk_elements, tap):
        lp = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                   logits_to_keep=t - start + 1).logits                  # [N, T - start]
    return torch.cat([lp.new_zeros(n, start), lp], dim=1)                # [N, T] aligned


# ----------------------------------------------------------------------------------------------
# The clipped surrogate with truncated importance sampling (algorithm.md §3.6)

def tis_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor | None,
                cap: float = 2.0) -> torch.Tensor:
    """w = min(exp(clamp(old - sampler, -20, 20)), cap), detached [N, T]; sampler_logprobs None (the trainer
    sampled itself): w = 1. Upper truncation only: no rejection, no renormalisation."""
    if sampler_logprobs is None:
        return torch.ones_like(old_logprobs)
    raw = torch.exp(torch.clamp(old_logprobs.detach() - sampler_logprobs, -20.0, 20.0))
    return torch.clamp(raw, max=cap)


def token_mean_normaliser(response_mask: torch.Tensor | None, minibatch_size: int,
                          totals: tuple[float, float] | None = None) -> float:
    """B * L_bar: B = configured minibatch size in responses, L_bar = mean response length of the whole
    update batch (response_mask [N, T], or totals = (response tokens, responses) over all ranks). Constant
    within an update, so a partial last minibatch weighs proportionally less."""
    n_tok, n_rows = totals if totals is not None else (response_mask.sum().item(), response_mask.shape[0])
    mean_len = n_tok / max(n_rows, 1)
    return float(minibatch_size) * max(mean_len, 1.0)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                response_mask: torch.Tensor, normaliser: float, *,
                sampler_logprobs: torch.Tensor | None = None, tis_cap: float = 2.0,
                clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float = 3.0):
    """logprobs [N, T] (with grad), old_logprobs [N, T], advantages [N], response_mask [N, T],
    sampler_logprobs [N, T] or None, normaliser = token_mean_normaliser(...) of the whole update:
      rho_t = exp(clamp(lp - lp_old, -20, 20))
      L_t   = max(-A rho_t, -A clip(rho_t, 1 - clip_low, 1 + clip_high));  if A < 0: L_t = min(L_t, c |A|)
      loss  = sum_{n,t} mask * w_t * L_t / normaliser,   w_t = tis_weights(lp_old, lp_sampler)
    Returns (loss, stats) where stats holds detached scalars: clip_frac, dual_clip_frac, tis_mean,
    tis_max, tis_truncated_frac, approx_kl (mean of lp_old - lp over response tokens), ratio_mean.
    """
    mask = response_mask.to(logprobs.dtype)                               # [N, T]
    # padded positions are selected away first (not multiplied by 0 later): a non-finite value there
    # reaches neither the loss nor, through 0 * nan, the gradient
    on = mask > 0
    logprobs = torch.where(on, logprobs, torch.zeros_like(logprobs))
    old_logprobs = torch.where(on, old_logprobs, torch.zeros_like(old_logprobs))
    if sampler_logprobs is not None:
        sampler_logprobs = torch.where(on, sampler_logprobs, torch.zeros_like(sampler_logprobs))
    adv = advantages.to(logprobs.dtype)[:, None]                          # [N, 1]
    log_ratio = torch.clamp(logprobs - old_logprobs, -20.0, 20.0)
    ratio = torch.exp(log_ratio)                                          # [N, T]
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(loss1, loss2)
    loss3 = -adv * dual_clip                                              # = c|A| where A < 0
    dual = torch.minimum(loss3, clipped)
    per_token = torch.where(adv < 0, dual, clipped)                       # [N, T]
    w = tis_weights(old_logprobs, sampler_logprobs, tis_cap)              # [N, T] detached
    loss = (per_token * w * mask).sum() / normaliser

    with torch.no_grad():
        ntok = mask.sum().clamp(min=1)
        mmean = lambda x: (x * mask).sum() / ntok
        stats = {
            "clip_frac": mmean((loss2 > loss1).to(mask.dtype)),
            "dual_clip_frac": mmean(((adv < 0) & (loss3 < clipped)).to(mask.dtype)),
            "tis_mean": mmean(w),
            "tis_max": torch.where(on, w, torch.zeros_like(w)).amax(),     # w > 0: 0 when no token
            "tis_truncated_frac": mmean((tis_weights(old_logprobs, sampler_logprobs, float("inf")) > tis_cap)
                                        .to(mask.dtype)),
            "approx_kl": mmean(old_logprobs - logprobs),
            "ratio_mean": mmean(ratio),
        }
    return loss, stats
