"""dugrpo.py against float64 computations written independently here (plain Python loops where possible)."""
import math

import pytest
import torch

import dugrpo


# ---------------------------------------------------------------- advantages (algorithm.md §6) --------------

def ref_advantages(rewards, gids, mode, eps=1e-6):
    """Spec §6 in float64 Python: centre by group mean, then divide."""
    r = [float(x) for x in rewards]
    g = [int(x) for x in gids]
    groups = {}
    for i, k in enumerate(g):
        groups.setdefault(k, []).append(i)
    mu, sd = {}, {}
    for k, rows in groups.items():
        vals = [r[i] for i in rows]
        if len(vals) == 1:
            mu[k], sd[k] = 0.0, 1.0
        else:
            m = sum(vals) / len(vals)
            mu[k] = m
            sd[k] = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    centred = [r[i] - mu[g[i]] for i in range(len(r))]
    if mode == "none":
        return centred
    if mode == "group_std":
        return [c / (sd[g[i]] + eps) for i, c in enumerate(centred)]
    if mode == "batch_std":
        m = sum(centred) / len(centred)
        s = math.sqrt(sum((c - m) ** 2 for c in centred) / (len(centred) - 1)) if len(centred) > 1 else 0.0
        return [c / (s + eps) for c in centred]
    pos = [s for s in sd.values() if s > 0]
    bar = sum(pos) / len(pos) if pos else 0.0
    return [c / (sd[g[i]] + bar + eps) for i, c in enumerate(centred)]


CASES = {
    # non-contiguous ids, unequal sizes, a constant group and a singleton
    "mixed": ([0.1, 0.9, 0.3, 0.3, 0.3, -0.2, 0.5, 0.7, 1.0],
              [7, 2, 5, 5, 5, 7, 2, 9, 2]),
    "all_constant": ([1.0, 1.0, 0.0, 0.0, 0.0], [1, 1, 4, 4, 4]),
    "near_eps": ([1e-7, 2e-7, 0.0, 1e-7, 3e-6, 3e-6], [0, 0, 0, 1, 1, 1]),
    "binary": ([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0], [3, 3, 3, 3, 8, 8, 8, 8, 1, 1, 1, 1]),
}


@pytest.mark.parametrize("mode", dugrpo.ADVANTAGE_MODES)
@pytest.mark.parametrize("case", CASES)
def test_group_advantages_match_float64_reference(mode, case):
    rewards, gids = CASES[case]
    got = dugrpo.group_advantages(torch.tensor(rewards, dtype=torch.float64), torch.tensor(gids), mode)
    want = torch.tensor(ref_advantages(rewards, gids, mode), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", dugrpo.ADVANTAGE_MODES)
def test_group_advantages_random_float32(mode):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(200, generator=gen)
    gids = torch.randint(0, 40, (200,), generator=gen) * 11      # unequal, shuffled, sparse ids
    got = dugrpo.group_advantages(rewards, gids, mode)
    want = torch.tensor(ref_advantages(rewards.tolist(), gids.tolist(), mode))
    # float32 mean/std over groups of ~5 of N(0,1): a few units of 6e-8 on values <= ~5 (measured <= 5e-7)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)


def test_hybrid_std_is_dual_normalised():
    """A tiny-spread group is not blown up to unit scale under DuGRPO, unlike GRPO."""
    r = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.50, 0.51, 0.50, 0.51])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    grpo = dugrpo.group_advantages(r, g, "group_std")
    du = dugrpo.group_advantages(r, g, "hybrid_std")
    assert grpo[4:].abs().max() > 0.8                 # GRPO: the 0.01 spread becomes ~unit advantages
    assert du[4:].abs().max() < 0.05                  # DuGRPO: damped by the batch-mean std
    assert du[:4].abs().max() > 0.4


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown advantage mode"):
        dugrpo.group_advantages(torch.zeros(2), torch.zeros(2), "grpo")


def test_varying_groups():
    r = torch.tensor([1.0, 1.0, 0.3, 0.3, 0.3, 0.0, 1.0, 5.0])
    g = torch.tensor([4, 4, 9, 9, 9, 2, 2, 11])
    assert dugrpo.varying_groups(r, g).tolist() == [False, False, False, False, False, True, True, False]
    # eight equal float32 values whose float32 mean rounds: still constant
    x = torch.full((8,), 0.1, dtype=torch.float32)
    assert not dugrpo.varying_groups(x, torch.zeros(8, dtype=torch.long)).any()


# ---------------------------------------------------------------- log-probs ----------------------

@pytest.mark.parametrize("chunk", [dugrpo.DEFAULT_CHUNK_ELEMENTS, 50])
def test_logprobs_and_gradient_match_float64(chunk):
    gen = torch.Generator().manual_seed(1)
    n, t, v, temp = 3, 7, 23, 0.7
    logits = torch.randn(n, t, v, generator=gen, dtype=torch.float64) * 3
    ids = torch.randint(0, v, (n, t), generator=gen)
    x = logits.clone().float().requires_grad_(True)
    lp = dugrpo.logprobs_from_logits(x, ids, temp, chunk_elements=chunk)
    ref_x = logits.clone().requires_grad_(True)
    ref = torch.zeros(n, t, dtype=torch.float64)
    ls = torch.log_softmax(ref_x / temp, dim=-1)
    for i in range(n):
        for j in range(1, t):
            ref[i, j] = ls[i, j - 1, ids[i, j]]
    assert lp.shape == (n, t) and torch.all(lp[:, 0] == 0)
    # float32 log-softmax over 23 logits of |x| <= ~15: ~u x |logsumexp| x sqrt(23) = 6e-8 x 20 x 5 = 6e-6
    torch.testing.assert_close(lp.double(), ref, rtol=1e-5, atol=1e-5)
    w = torch.randn(n, t, generator=gen, dtype=torch.float64)
    (lp * w.float()).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-5, atol=1e-5)


def test_logprobs_bf16_logits_stay_bf16_and_match():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 11, generator=gen).bfloat16().requires_grad_(True)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    lp = dugrpo.logprobs_from_logits(logits, ids, 0.7)
    ref = torch.log_softmax(logits.detach().double() / 0.7, -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    # exact bf16 inputs, float32 log-softmax over 11 logits of |x| <= 5: a few u x |logsumexp| ~ 1e-6 (measured 2e-7)
    torch.testing.assert_close(lp[:, 1:].double(), ref, rtol=1e-6, atol=1e-6)
    lp.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    ref_x = logits.detach().double().requires_grad_(True)
    torch.log_softmax(ref_x / 0.7, -1)[:, :-1].gather(-1, ids[:, 1:, None]).sum().backward()
    # the softmax is formed in fp32 and rounded to bf16 once: within bf16's resolution of the float64 grad
    torch.testing.assert_close(logits.grad.double(), ref_x.grad, rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- the loss (algorithm.md §3.6) -------------

def ref_policy_loss(lp, old, adv, mask, norm, slp, cap=2.0, cl=0.2, ch=0.2, c=3.0):
    total, n, clip, trunc = 0.0, 0, 0, 0
    for i in range(lp.shape[0]):
        a = float(adv[i])
        for t in range(lp.shape[1]):
            if mask[i, t] == 0:
                continue
            rho = math.exp(max(-20.0, min(20.0, float(lp[i, t] - old[i, t]))))
            l1, l2 = -a * rho, -a * min(max(rho, 1 - cl), 1 + ch)
            L = max(l1, l2)
            if a < 0:
                L = min(L, c * abs(a))
            raw = math.exp(max(-20.0, min(20.0, float(old[i, t] - slp[i, t])))) if slp is not None else 1.0
            w = min(raw, cap)
            total += w * L
            n += 1
            clip += l2 > l1
            trunc += raw > cap
    return total / norm, clip / n, trunc / n


@pytest.mark.parametrize("with_sampler", [True, False])
def test_policy_loss_matches_float64_reference(with_sampler):
    gen = torch.Generator().manual_seed(3)
    n, t = 6, 9
    old = -torch.rand(n, t, generator=gen, dtype=torch.float64) * 2
    lp = (old + torch.randn(n, t, generator=gen, dtype=torch.float64) * 0.4).requires_grad_(True)
    slp = old + torch.randn(n, t, generator=gen, dtype=torch.float64) * 0.8 if with_sampler else None
    adv = torch.tensor([1.5, -0.5, 0.0, -2.0, 0.7, -0.1], dtype=torch.float64)
    mask = (torch.rand(n, t, generator=gen) > 0.3).double()
    norm = dugrpo.token_mean_normaliser(mask, minibatch_size=8)
    assert norm == pytest.approx(8 * mask.sum().item() / n)
    loss, stats = dugrpo.policy_loss(lp, old, adv, mask, norm, sampler_logprobs=slp)
    want, clipfrac, truncfrac = ref_policy_loss(lp.detach(), old, adv, mask, norm, slp)
    assert loss.item() == pytest.approx(want, rel=1e-10)
    assert stats["clip_frac"].item() == pytest.approx(clipfrac)
    assert stats["tis_truncated_frac"].item() == pytest.approx(truncfrac)
    assert stats["tis_max"].item() <= 2.0
    assert stats["approx_kl"].item() == pytest.approx(((old - lp.detach()) * mask).sum().item() / mask.sum().item())
    # gradient by finite differences of the float64 reference (the TIS weight is detached)
    loss.backward()
    i, j = (mask > 0).nonzero()[0].tolist()
    h = 1e-6
    lp_p = lp.detach().clone(); lp_p[i, j] += h
    lp_m = lp.detach().clone(); lp_m[i, j] -= h
    fd = (ref_policy_loss(lp_p, old, adv, mask, norm, slp)[0] - ref_policy_loss(lp_m, old, adv, mask, norm, slp)[0]) / (2 * h)
    assert lp.grad[i, j].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_dual_clip_bounds_negative_advantage_loss():
    lp = torch.tensor([[0.0, 5.0]])           # ratio e^5 on the second token
    old = torch.zeros(1, 2)
    loss, stats = dugrpo.policy_loss(lp, old, torch.tensor([-1.0]), torch.ones(1, 2), normaliser=1.0)
    # token 1: -A rho = 1 (ratio 1); token 2: min(e^5, 3) = 3
    assert loss.item() == pytest.approx(1.0 + 3.0)
    assert stats["dual_clip_frac"].item() == pytest.approx(0.5)


def test_tis_weights():
    old = torch.tensor([[0.0, -1.0, -3.0]])
    slp = torch.tensor([[-1.0, -1.0, -0.5]])
    w = dugrpo.tis_weights(old, slp, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, math.exp(-2.5)]]))
    assert torch.equal(dugrpo.tis_weights(old, None), torch.ones_like(old))


def test_token_logprobs_with_response_mask_skips_the_prompt_head():
    """logits_to_keep from the response mask: same log-probs on response tokens, LM head on fewer rows."""
    from fixtures import tiny_qwen3
    model = tiny_qwen3(seed=4, dtype=torch.float64)    # same log-probs twice: tight, so in float64
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 512, (3, 12), generator=gen)
    am = torch.ones_like(ids)
    am[2, 10:] = 0
    rm = torch.zeros(3, 12)
    rm[0, 5:] = 1
    rm[1, 7:] = 1
    rm[2, 6:10] = 1
    seen = []
    h = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    full = dugrpo.token_logprobs(model, ids, am, 0.7)
    part = dugrpo.token_logprobs(model, ids, am, 0.7, response_mask=rm)
    h.remove()
    assert seen == [12, 8]                         # positions 4..11 only: the first response token is at 5
    assert torch.all(part[:, :5] == 0)
    torch.testing.assert_close(part * rm, full * rm, rtol=1e-12, atol=1e-12)


def test_policy_loss_ignores_non_finite_values_at_padded_positions():
    """The masked sum selects: NaN / inf log-probs where response_mask is 0 leave the loss (and its
    gradient) exactly as with finite values there (a multiply by the mask would give NaN)."""
    from dugrpo import policy_loss
    g = torch.Generator().manual_seed(0)
    lp = (-torch.rand(3, 6, generator=g)).requires_grad_()
    old = -torch.rand(3, 6, generator=g)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([1.0, -0.5, 0.25])
    clean, _ = policy_loss(lp, old, adv, mask, 10.0)
    bad = lp.detach().clone()
    bad[mask == 0] = float("nan")
    bad[0, 5] = float("inf")
    bad = bad.requires_grad_()
    dirty, _ = policy_loss(bad, old, adv, mask, 10.0)
    assert torch.isfinite(dirty) and torch.equal(dirty, clean)
    dirty.backward()
    clean.backward()
    assert torch.equal(bad.grad[mask > 0], lp.grad[mask > 0]) and torch.all(bad.grad[mask == 0] == 0)


def test_token_mean_normaliser_from_totals_equals_the_mask_form():
    from dugrpo import token_mean_normaliser
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    assert token_mean_normaliser(mask, 8) == token_mean_normaliser(None, 8, (5.0, 2)) == 8 * 2.5
