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

@pytest.mark.parametrize("chunk", [dugrpo.DEFAULT_CHUNK_ELEMENTS, 50, 23 * 7 * 2, 1])
def test_head_logprobs_and_gradients_match_float64(chunk):
    """Block by block (whole rows, row slices, one position per block) = log_softmax of the full logits."""
    gen = torch.Generator().manual_seed(1)
    n, t, h, v, temp = 3, 7, 5, 23, 0.7
    hidden = torch.randn(n, t + 1, h, generator=gen, dtype=torch.float64)[:, :-1]   # a strided view, as HF's
    weight = torch.randn(v, h, generator=gen, dtype=torch.float64) * 1.5
    ids = torch.randint(0, v, (n, t), generator=gen)
    x, wt = hidden.float().requires_grad_(True), weight.float().requires_grad_(True)
    lp = dugrpo.head_logprobs(x, wt, ids, temp, chunk_elements=chunk)
    ref_x, ref_w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    ref = torch.log_softmax(ref_x @ ref_w.T / temp, -1).gather(-1, ids[..., None])[..., 0]   # [N, T] float64
    assert lp.shape == (n, t) and lp.dtype == torch.float32
    # float32 log-softmax over 23 logits of |x| <= ~15: ~u x |logsumexp| x sqrt(23) = 6e-8 x 20 x 5 = 6e-6
    torch.testing.assert_close(lp.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(n, t, generator=gen, dtype=torch.float64)
    (lp * g.float()).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wt.grad.double(), ref_w.grad, rtol=1e-5, atol=1e-5)
    x64, w64 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp64 = dugrpo.head_logprobs(x64, w64, ids, temp, chunk_elements=chunk)       # float64 in: exact to 1e-12
    (lp64 * g).sum().backward()
    torch.testing.assert_close(lp64, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w64.grad, ref_w.grad, rtol=1e-12, atol=1e-12)


def test_head_logprobs_bf16_matches_and_keeps_the_head_dtype():
    gen = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 5, 4, generator=gen).bfloat16().requires_grad_(True)
    weight = torch.randn(11, 4, generator=gen).bfloat16().requires_grad_(True)
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    lp = dugrpo.head_logprobs(hidden, weight, ids, 0.7)
    logits = (hidden.detach() @ weight.detach().T).double()                       # the bf16 matmul's logits
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, ids[..., None])[..., 0]
    # bf16 logits (as nn.Linear gives them), a float32 log-softmax: a few u x |logsumexp| ~ 1e-6
    torch.testing.assert_close(lp.double(), ref, rtol=1e-6, atol=1e-6)
    lp.sum().backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    rx, rw = hidden.detach().double().requires_grad_(True), weight.detach().double().requires_grad_(True)
    torch.log_softmax(rx @ rw.T / 0.7, -1).gather(-1, ids[..., None]).sum().backward()
    # the softmax is formed in fp32 and rounded to bf16 once: within bf16's resolution of the float64 grads
    torch.testing.assert_close(hidden.grad.double(), rx.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(weight.grad.double(), rw.grad, rtol=2e-2, atol=2e-2)


def test_tis_weights():
    old = torch.tensor([[0.0, -1.0, -3.0]])
    slp = torch.tensor([[-1.0, -1.0, -0.5]])
    w = dugrpo.tis_weights(old, slp, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, math.exp(-2.5)]]))
    assert torch.equal(dugrpo.tis_weights(old, None), torch.ones_like(old))


def test_token_logprobs_with_response_mask_skips_the_prompt_head():
    """logits_to_keep from the response mask: same log-probs on response tokens, LM head on fewer rows."""
    from tiny_model import tiny_qwen3
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
    assert seen == [11, 7]                         # positions 4..10 only: the first response token is at 5
    assert torch.all(part[:, :5] == 0)
    torch.testing.assert_close(part * rm, full * rm, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tied", [False, True])
def test_token_logprobs_equal_the_logits_path_and_never_hold_the_logits(tied):
    """token_logprobs (head by blocks, logits recomputed in the backward) = log_softmax of the model's full
    logits, values and every parameter's gradient (float64, tied and untied heads); no tensor of the
    forward or the backward holds more than one block of logits."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from tiny_model import tiny_qwen3
    model = tiny_qwen3(seed=5, dtype=torch.float64, tie_word_embeddings=tied)
    gen = torch.Generator().manual_seed(5)
    n, t, v, budget = 4, 16, 512, 3 * 512
    ids = torch.randint(1, v, (n, t), generator=gen)
    am = torch.ones_like(ids)
    am[3, 12:] = 0
    w = torch.randn(n, t, generator=gen, dtype=torch.float64)

    class Largest(TorchDispatchMode):             # the largest tensor with a vocabulary axis, [V, H] aside
        big = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(o, torch.Tensor) and o.dim() > 1 and v in o.shape[-2:] and 64 not in o.shape[-2:]:
                    self.big = max(self.big, o.numel())
            return out
    with Largest() as seen:
        lp = dugrpo.token_logprobs(model, ids, am, 0.7, chunk_elements=budget)
        (lp * w).sum().backward()
    got = {k: p.grad.clone() for k, p in model.named_parameters()}
    assert 0 < seen.big <= budget < n * t * v
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=am).logits / 0.7                # [N, T, V] float64
    ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(lp[:, 1:], ref, rtol=1e-12, atol=1e-12)
    assert torch.all(lp[:, 0] == 0)
    (ref * w[:, 1:]).sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(got[k], p.grad, rtol=1e-10, atol=1e-12, msg=k)


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


def test_pack_by_tokens_against_brute_force():
    """records.pack against every partition of up to 7 long-tailed widths: every row once, each micro-batch
    within the budget (a wider row alone), original order inside a batch; without max_batches as few batches
    as any partition; with it, at most max_batches (or the fewest possible) and the fewest padded tokens of
    all such partitions."""
    import random
    from records import pack

    def partitions(items):
        if not items:
            yield []
            return
        for p in partitions(items[1:]):
            for i in range(len(p)):
                yield p[:i] + [[items[0]] + p[i]] + p[i + 1:]
            yield [[items[0]]] + p
    rng = random.Random(0)
    padded = lambda w, batches: sum(len(b) * max(w[i] for i in b) for b in batches)
    for trial in range(300):
        n = rng.randint(1, 7)
        w = [max(1, int(rng.paretovariate(1.2) * 20)) for _ in range(n)]
        budget, k = rng.choice([50, 100, 400]), rng.randint(1, n)
        fits = lambda p: all(len(b) == 1 or len(b) * max(w[i] for i in b) <= budget for b in p)
        every = [p for p in partitions(list(range(n))) if fits(p)]
        fewest = min(len(p) for p in every)
        greedy, best, capped = pack(w, budget), pack(w, budget, k), pack(w, budget, max_items=k)
        for got in (greedy, best, capped):
            assert sorted(i for b in got for i in b) == list(range(n))
            assert all(b == sorted(b) for b in got) and fits(got)
        assert len(greedy) == fewest and len(best) <= max(k, fewest)
        assert max(map(len, capped)) <= k          # max_items: the fewest batches of at most k items each
        assert len(capped) == min(len(p) for p in every if max(map(len, p)) <= k)
        assert padded(w, best) == min(padded(w, p) for p in every if len(p) <= max(k, fewest))
    assert pack([5, 5, 5], 100, 3) == [[0, 1, 2]]         # one batch: the rows keep their order
