"""example_influence.py -- INFUSER's optimizer-aware score for any per-example loss (influence.py scores
generated questions under the policy-gradient loss; this scores, e.g., supervised chain-of-thought examples
under cross-entropy), in its plain form: one backward per example.

  loss_gradient(model, loss)                    {name: d loss() / d parameter}
  example_scores(model, optimizer, examples, loss, query, mode)   one score per example (influence.MODES)
  sft_loss(model, example)                      cross-entropy on an example's response tokens

Run: imported by forks/cot_selection.py. Tests: tests/test_influence.py (against a float64 loop).
"""
from __future__ import annotations

import torch

from dugrpo import acc_dtype, token_logprobs
from influence import MODES, _training, adamw_state, precondition


def loss_gradient(model, loss) -> dict[str, torch.Tensor]:
    """{parameter name: d loss() / d parameter}, accumulation dtype, for a scalar `loss()` (one process)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(loss(), list(params.values()), allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g).detach().to(acc_dtype(p.dtype))
            for (n, p), g in zip(params.items(), grads)}


def example_scores(model, optimizer, examples, loss, query: dict[str, torch.Tensor], *,
                   mode: str = "preconditioned_cosine") -> torch.Tensor:
    """score(d) for each example d: the similarity (MODES) of u_d with `query`, where u_d is the gradient of
    `loss(model, d)` preconditioned as INFUSER's g_q is (AdamW's direction if its next gradient were d's; the
    state read from `optimizer`), or the raw gradient in "dot" / "cosine". `query`: {name: gradient}, e.g.
    loss_gradient of a query set's loss. One backward per example (the plain definition, as plain_scores);
    float64 scores [len(examples)]; the model's .grad is left as it was. Sign: a positive score means a step
    on d (along -u_d) lowers the query loss."""
    if mode not in MODES:
        raise ValueError(f"unknown influence mode {mode!r}; choose one of {MODES}")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    q_norm = sum(query[n].double().pow(2).sum() for n in params).sqrt().item()
    scores = torch.zeros(len(examples), dtype=torch.float64)
    with _training(model):
        for i, example in enumerate(examples):
            grads = loss_gradient(model, lambda: loss(model, example))
            dot = norm2 = 0.0
            for n, p in params.items():
                u = grads[n]
                if mode.startswith("preconditioned"):
                    v, step, beta2, eps = adamw_state(optimizer, p)
                    u = precondition(u, v, step, beta2, eps)
                dot += (u * query[n].to(u.dtype)).sum().double().item()
                norm2 += u.double().pow(2).sum().item()
            scores[i] = dot if mode.endswith("dot") else dot / (max(norm2 ** 0.5, 1e-12) * max(q_norm, 1e-12))
    return scores


def sft_loss(model, example, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of a supervised example on its response tokens at temperature 1: `example` holds
    input_ids [T] and response_mask [T] (1 on response tokens); "mean" over them (or "sum")."""
    ids, rm = example["input_ids"].unsqueeze(0), example["response_mask"].unsqueeze(0).float()
    lp = token_logprobs(model, ids, torch.ones_like(ids), 1.0, rm)
    nll = -(torch.where(rm > 0, lp, torch.zeros_like(lp))).sum()
    return nll / rm.sum() if reduction == "mean" else nll
