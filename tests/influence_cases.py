"""Shared test cases for the influence tests: a tiny Qwen3 and synthetic rollouts (no download)."""
import torch

from dugrpo import token_logprobs
from tiny_model import tiny_qwen3
from records import Rollouts


def fake_rollouts(n_q, g, t, vocab, seed, plen=5, sampler=True, gid_stride=3, gid_offset=0):
    """n_q questions x g rollouts of length <= t: prompts of plen tokens, random responses, right padding,
    binary rewards, non-contiguous group ids, sampler log-probs near the model's."""
    gen = torch.Generator().manual_seed(seed)
    n = n_q * g
    ids = torch.randint(1, vocab, (n, t), generator=gen)
    lens = torch.randint(plen + 2, t + 1, (n,), generator=gen)
    am = (torch.arange(t)[None] < lens[:, None]).long()
    ids = ids * am
    rm = ((torch.arange(t)[None] >= plen) & (am > 0)).float()
    gids = torch.arange(n_q).repeat_interleave(g) * gid_stride + gid_offset
    rewards = torch.randint(0, 2, (n,), generator=gen).float()
    slp = (-torch.rand(n, t, generator=gen) * 3) * rm if sampler else None
    return Rollouts(ids, am, rm, gids, rewards, slp)


def build_case(tied=False, sampler=True, dtype=torch.float32):
    """(model, warm_up(model, opt), dev, gen): 6 dev questions and 7 generated ones, 4 rollouts each."""
    model = tiny_qwen3(tie_word_embeddings=tied, dtype=dtype)
    dev = fake_rollouts(6, 4, 16, 512, 1, sampler=sampler)
    gen = fake_rollouts(7, 4, 16, 512, 2, sampler=sampler)
    gen.rewards[:4] = 1.0                          # question 0: all correct -> score 0

    def warm_up(model, opt, steps=3):
        for _ in range(steps):
            lp = token_logprobs(model, dev.input_ids, dev.attention_mask, 0.7)
            (-(lp * dev.response_mask).sum() / 100).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return model, warm_up, dev, gen
