"""dugrpo.py -- the pure tensor math of INFUSER's policy updates (README eq. 1-3, algorithm.md §3, §6).

  group_advantages   per group of rollouts ("none" Dr.GRPO for the solver, "hybrid_std" DuGRPO for the
                     generator; "group_std", "batch_std" the generator ablations)
  varying_groups     the explicit zero-variance filter (§3.4, §5.2): callers decide where rows are dropped
  token_logprobs     log p(input_ids[n,t] | input_ids[n,<t]) of logits / T, chunk by chunk: no second
                     [N, T, V] float tensor in the forward; the backward allocates exactly one
  tis_weights        token-level truncated importance weights min(pi_old / pi_sampler, cap) (§3.6)
  policy_loss        PPO clipped surrogate with dual clip, times the TIS weight, summed over response tokens
                     and divided by token_mean_normaliser (minibatch size x batch-mean response length)
Not here: KL penalties and entropy bonuses (the paper uses neither), sequence-level importance sampling,
rejection sampling, advantage clipping (off in every recipe). No model code, no I/O, no process group.
Shapes: N rollouts, T tokens, V vocabulary, K groups.
"""
from __future__ import annotations

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
    k = counts.numel()
    r = rewards
    sums = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
    cnt = counts.to(r.dtype)
    mean = sums / cnt                                                     # [K]
    dev = r - mean[inverse]                                               # [N]
    ss = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, inverse, dev * dev)
    std = torch.sqrt(ss / (cnt - 1).clamp(min=1))                          # [K] unbiased
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
    r = rewards.double()
    k = counts.numel()
    mean = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, inverse, r) / counts
    dev = r - mean[inverse]
    var = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, inverse, dev * dev) / counts
    return (var.sqrt() > tol)[inverse]


# ----------------------------------------------------------------------------------------------
# Per-token log-probs at a temperature

DEFAULT_CHUNK_ELEMENTS = 1 << 24   # floats per temporary chunk (64 MB in fp32)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for fp32/bf16/fp16 inputs, float64 for float64 (used by the tests)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _TemperedLogprob(torch.autograd.Function):
    """log_softmax(logits / T).gather(targets), row chunk by row chunk. Forward keeps the logits plus an
    [M] log-sum-exp; backward writes d logits = (onehot(target) - softmax(logits / T)) * g / T in place."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, chunk_rows):
        # logits [M, V] (any float dtype, contiguous), targets [M] long
        m, acc = logits.shape[0], acc_dtype(logits.dtype)
        out = torch.empty(m, dtype=acc, device=logits.device)             # [M]
        lse = torch.empty(m, dtype=acc, device=logits.device)             # [M]
        for i in range(0, m, chunk_rows):
            x = logits[i:i + chunk_rows].to(acc) / temperature            # [c, V] the only temporary
            lse[i:i + chunk_rows] = torch.logsumexp(x, dim=-1)
            out[i:i + chunk_rows] = x.gather(-1, targets[i:i + chunk_rows, None]).squeeze(-1) - lse[i:i + chunk_rows]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, targets, lse = ctx.saved_tensors
        t, c = ctx.temperature, ctx.chunk_rows
        grad = torch.empty_like(logits)                                   # [M, V] the one big tensor
        for i in range(0, logits.shape[0], c):
            g = grad_out[i:i + c, None].to(lse.dtype)                     # [c, 1]
            # softmax(logits / T) in place: in the output block itself when it has the accumulation dtype
            inplace = grad.dtype == lse.dtype
            d = grad[i:i + c] if inplace else torch.empty_like(logits[i:i + c], dtype=lse.dtype)
            torch.div(logits[i:i + c], t, out=d)
            d.sub_(lse[i:i + c, None]).exp_().mul_(-g)                     # -p * g
            d.scatter_add_(-1, targets[i:i + c, None], g)                  # + onehot * g
            d.div_(t)
            if not inplace:
                grad[i:i + c] = d
        return grad, None, None, None


def logprobs_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0,
                         chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """logits [N, T, V] (logits[n, t] predicts token t+1), input_ids [N, T] -> lp [N, T] (fp32; fp64 for
    fp64 logits), lp[n, t] = log p_T(input_ids[n, t] | input_ids[n, <t]), lp[:, 0] = 0: of the tempered
    distribution, as the sampler reports it, so that pi_old / pi_sampler compares like with like."""
    n, t, v = logits.shape
    # targets for position t are the next tokens; the last position has no target (its value is unused)
    nxt = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)          # [N, T]
    rows = max(1, chunk_elements // max(v, 1))
    lp_next = _TemperedLogprob.apply(logits.reshape(n * t, v), nxt.reshape(-1), float(temperature), rows)
    lp_next = lp_next.view(n, t)                                          # lp of token t+1 at position t
    return torch.cat([lp_next.new_zeros(n, 1), lp_next[:, :-1]], dim=1)  # [N, T] aligned


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float,
                   response_mask: torch.Tensor | None = None,
                   chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """Aligned log-probs [N, T] of right-padded rows from `model` (HF-style, returns `.logits`). With
    response_mask [N, T] the LM head runs only from the batch's first response token on (logits_to_keep):
    for long prompts and a large vocabulary most of the logits' memory. Earlier positions are 0."""
    n, t = input_ids.shape
    start = 1
    if response_mask is not None and response_mask.any():
        start = max(int(response_mask.any(0).nonzero()[0].item()), 1)   # first column with a response token
    keep = t - start + 1                                                  # logits of positions start-1 .. t-1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                   logits_to_keep=keep).logits                           # [N, keep, V]
    lp = logprobs_from_logits(logits, input_ids[:, start - 1:], temperature, chunk_elements)  # [N, keep]
    return torch.cat([lp.new_zeros(n, start), lp[:, 1:]], dim=1)         # [N, T] aligned


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
        raw = (torch.exp(torch.clamp(old_logprobs - sampler_logprobs, -20.0, 20.0))
               if sampler_logprobs is not None else torch.ones_like(w))
        stats = {
            "clip_frac": mmean((loss2 > loss1).to(mask.dtype)),
            "dual_clip_frac": mmean(((adv < 0) & (loss3 < clipped)).to(mask.dtype)),
            "tis_mean": mmean(w),
            "tis_max": torch.where(on, w, torch.zeros_like(w)).amax(),     # w > 0: 0 when no token
            "tis_truncated_frac": mmean((raw > tis_cap).to(mask.dtype)),
            "approx_kl": mmean(old_logprobs - logprobs),
            "ratio_mean": mmean(ratio),
        }
    return loss, stats
