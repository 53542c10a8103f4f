"""The paper's influence computation, written plainly as the reference for tests and bench.py.

One full backward pass per question (as the official code does, algorithm.md §4.3), parameter gradients from
torch.autograd.grad, everything after the gradients in float64, and none of influence.py's or
dugrpo.py's functions: log-probs, advantages, TIS weights, filtering and the preconditioner are all
re-derived here from the spec, so agreement with influence.py is evidence, not tautology.
"""
from __future__ import annotations

import torch


def _logprobs(model, ids, am, temperature):
    logits = model(input_ids=ids, attention_mask=am, use_cache=False).logits.double() / temperature
    lp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.cat([torch.zeros_like(lp[:, :1]), lp], dim=1)                # [N, T] aligned


def _groups(rewards, group_ids):
    """{group id: list of row indices} for groups whose rewards are not all equal."""
    out = {}
    for i, g in enumerate(group_ids.tolist()):
        out.setdefault(g, []).append(i)
    return {g: rows for g, rows in sorted(out.items()) if len({float(rewards[i]) for i in rows}) > 1}


def _loss(model, r, rows, n_norm, l_norm, temperature, tis_cap):
    ids, am, rm = r.input_ids[rows], r.attention_mask[rows], r.response_mask[rows]
    lp = _logprobs(model, ids, am, temperature)
    rew = r.rewards[rows].double()
    gid = r.group_ids[rows].tolist()
    adv = torch.stack([rew[i] - rew[[j for j in range(len(rows)) if gid[j] == gid[i]]].mean()
                       for i in range(len(rows))])
    if r.sampler_logprobs is not None:
        w = torch.exp(torch.clamp(lp.detach() - r.sampler_logprobs[rows], -20, 20)).clamp(max=tis_cap)
    else:
        w = torch.ones_like(lp)
    per_row = (w * rm * lp).sum(-1)
    return -(adv.to(per_row.dtype) * per_row).sum() / (n_norm * l_norm)


def reference_scores(model, optimizer, dev, gen, mode="preconditioned_cosine", temperature=0.7,
                     tis_cap=2.0, return_parts=False, return_m=False):
    params = [p for p in model.parameters() if p.requires_grad]
    scores = torch.zeros(len(torch.unique(gen.group_ids)), dtype=torch.float64)
    dev_groups = _groups(dev.rewards, dev.group_ids)
    if not dev_groups:
        return scores
    dev_rows = [i for rows in dev_groups.values() for i in rows]
    l_dev = dev.response_mask[dev_rows].sum().item() / len(dev_rows)
    m = torch.autograd.grad(_loss(model, dev, dev_rows, len(dev_rows), l_dev, temperature, tis_cap), params)
    m = [x.double() for x in m]
    m_norm = torch.sqrt(sum((x * x).sum() for x in m))

    gen_groups = _groups(gen.rewards, gen.group_ids)
    all_rows = [i for rows in gen_groups.values() for i in rows]
    l_gen = gen.response_mask[all_rows].sum().item() / max(len(all_rows), 1)
    order = sorted(set(gen.group_ids.tolist()))
    parts = {}
    for g, rows in gen_groups.items():
        grads = torch.autograd.grad(_loss(model, gen, rows, len(rows), l_gen, temperature, tis_cap), params)
        dot, nrm = 0.0, 0.0
        for p, gq, mp in zip(params, grads, m):
            gq = gq.double()
            if mode.startswith("preconditioned"):
                st = optimizer.state.get(p, {})
                grp = next(x for x in optimizer.param_groups if any(y is p for y in x["params"]))
                b2, eps = grp["betas"][1], grp["eps"]
                v = st["exp_avg_sq"].double() if "exp_avg_sq" in st else torch.zeros_like(gq)
                t = float(st["step"]) + 1 if "step" in st else 1.0
                v2 = b2 * v + (1 - b2) * gq * gq
                u = gq / (torch.sqrt(v2 / (1 - b2 ** t)) + eps)
            else:
                u = gq
            dot += (u * mp).sum()
            nrm += (u * u).sum()
        parts[g] = (float(dot), float(nrm))
        if mode.endswith("dot"):
            s = dot
        else:
            s = dot / (max(float(torch.sqrt(torch.as_tensor(nrm))), 1e-12) * max(float(m_norm), 1e-12))
        scores[order.index(g)] = float(s)
    if return_m:
        return scores, parts, float(m_norm), m
    return (scores, parts, float(m_norm)) if return_parts else scores
