"""forks/evolve.py: the preference loss against its float64 definition and against TRL's own DPO loss (when TRL is
importable), the refinement prompt and chain on the toy anchor, the pairs, and every path end to end (--quick)."""
import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "forks"))

import evolve as EV  # noqa: E402
import toy  # noqa: E402
from grading import mcq_letter, solver_messages  # noqa: E402


def test_dpo_loss_is_its_float64_definition_with_its_gradient():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(64, generator=g, dtype=torch.float64) * 30 for _ in range(4))
    pc.requires_grad_(True)
    beta = 0.1
    loss = EV.dpo_loss(pc, pr, rc, rr, beta)
    deltas = [(a - c) - (b - d) for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())]
    # -log sigmoid(x) = log(1 + exp(-x)), written per sign so that neither branch overflows
    nls = lambda x: math.log1p(math.exp(-x)) if x >= 0 else -x + math.log1p(math.exp(x))
    ref = sum(nls(beta * d) for d in deltas) / len(deltas)
    assert loss.dtype == torch.float64 and abs(loss.item() - ref) < 1e-13
    loss.backward()                              # d/d pc = -beta * sigmoid(-beta * delta) / P
    grad = [-beta / (1 + math.exp(beta * d)) / len(deltas) for d in deltas]
    assert max(abs(a - b) for a, b in zip(pc.grad.tolist(), grad)) < 1e-15
    # defaults, equal policy and reference (log 2), and no overflow at huge margins
    z = torch.zeros(3, dtype=torch.float64)
    assert abs(EV.dpo_loss(z, z, z, z).item() - math.log(2)) < 1e-15
    big = torch.tensor([1e5, -1e5], dtype=torch.float64)
    out = EV.dpo_loss(big, torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                      torch.zeros(2, dtype=torch.float64))
    assert abs(out.item() - (0 + 1e4) / 2) < 1e-9                    # beta 0.1 by default: (0 + 10000) / 2


def _trl_dpo():
    pytest.importorskip("trl", reason="TRL is an optional extra (pip install --no-deps trl==1.16.0)")
    from trl import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer
    return DPOConfig, DPOTrainer


def test_dpo_loss_and_sequence_logprobs_equal_trl_dpo_trainer_loss(tmp_path):
    """TRL's DPOTrainer._compute_loss (1.16, loss_type "sigmoid", reference log-probs precomputed) on a real
    batch of the toy anchor, with TRL's defaults read from its DPOConfig; its model call is served by a
    wrapper that returns the per-token log-probs of the labels (what TRL's fused LM head returns). Our
    sequence_logprobs + dpo_loss on the same pairs must give the same loss."""
    from types import SimpleNamespace
    from collections import defaultdict
    DPOConfig, DPOTrainer = _trl_dpo()
    cfg = DPOConfig(output_dir=str(tmp_path), precompute_ref_log_probs=True, report_to=[], use_cpu=True, bf16=False)
    assert cfg.beta == 0.1 and list(cfg.loss_type) == ["sigmoid"] and cfg.f_divergence_type == "reverse_kl"
    model, tok = toy.load_anchor()
    ref = toy.load_anchor()[0]
    with torch.no_grad():                        # a policy that differs from its reference
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.02)
    world = toy.build_world()
    rng = random.Random(0)
    pairs = []
    for x in world.dev[:4]:
        msgs = EV.refine_messages(x["question"], x["choices"], toy.solver_response(x["question"], x["choices"], rng, "half"))
        pairs.append((EV.encode(tok, msgs, toy.solver_response(x["question"], x["choices"], rng, "correct")),
                      EV.encode(tok, msgs, toy.solver_response(x["question"], x["choices"], rng, "flip"))))
    rows = [c for c, _ in pairs] + [r for _, r in pairs]
    ids, am, rm = EV.pad(rows)

    class FusedHead(torch.nn.Module):            # what TRL's fused_lm_head=True returns, from plain logits
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, labels, use_cache=False, fused_lm_head=True):
            logits = self.m(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
            tgt = labels[:, 1:]
            lp = torch.log_softmax(logits, -1).gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
            lp = torch.where(tgt == -100, torch.zeros_like(lp), lp)
            return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=logits.mean(-1),
                                   is_top1=logits.argmax(-1) == tgt)

    with torch.no_grad():
        ref_lp = EV.sequence_logprobs(ref, rows)
    p = len(pairs)
    wrapper = FusedHead(model).train()
    accel = SimpleNamespace(device=torch.device("cpu"), gather=lambda t: t, gather_for_metrics=lambda t: t)
    shim = SimpleNamespace(model=wrapper, accelerator=accel, aux_loss_enabled=False, ld_alpha=cfg.ld_alpha,
                           precompute_ref_logps=True, f_divergence_type=cfg.f_divergence_type,
                           loss_types=list(cfg.loss_type), loss_weights=cfg.loss_weights or [1.0],
                           beta=cfg.beta, label_smoothing=cfg.label_smoothing, use_weighting=cfg.use_weighting,
                           _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                           _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": ids, "attention_mask": am, "completion_mask": rm.long(),
              "ref_chosen_logps": ref_lp[:p], "ref_rejected_logps": ref_lp[p:]}
    trl_loss = DPOTrainer._compute_loss(shim, wrapper, inputs, return_outputs=False)
    lp = EV.sequence_logprobs(model, rows)
    ours = EV.dpo_loss(lp[:p], lp[p:], ref_lp[:p], ref_lp[p:])
    assert abs(ours.item() - trl_loss.item()) < 1e-5 * max(1.0, abs(trl_loss.item())), (ours, trl_loss)
    assert abs(ours.item() - math.log(2)) > 1e-3                  # the policy differs: not the trivial log 2
    # TRL's own logged log-probs are ours, pair by pair
    assert abs(shim._metrics["train"]["logps/chosen"][0] - lp[:p].mean().item()) < 1e-4


def test_refinement_prompt_and_chain_on_the_toy_anchor():
    model, tok = toy.load_anchor()
    world = toy.build_world()
    x = world.test[0]
    msgs = EV.refine_messages(x["question"], x["choices"], "12+3=15. So 15.\nA) 15 \\boxed{A}")
    user = msgs[-1]["content"]
    assert msgs[:-1] == solver_messages(x["question"], x["choices"])[:-1]      # the solver's system prompt
    assert "Previous answer: 12+3=15. So 15. A) 15 \\boxed{A} " + EV.REFINE_INSTRUCTION in user
    assert x["question"] in user and all(f") {c}" in user for c in x["choices"])
    items = world.test[:6]
    s = EV.Settings(max_new_tokens=48)
    ch = EV.chains(model, tok, items, 2, 2, s, seed=5)
    assert [len(c) for c in ch] == [2] * 6 and all(len(d) == 3 for c in ch for d in c)     # [q][draw][step]
    assert EV.chains(model, tok, items, 2, 2, s, seed=5) == ch                                 # seeded
    assert sum(mcq_letter(t) is not None for c in ch for d in c for t in d) >= 18 // 2   # mostly answers
    ev = EV.evaluate(model, tok, items, EV.Settings(eval_samples=2, refinements=2, max_new_tokens=48), seed=5)
    assert len(ev["curve"]) == 3 and set(ev["acc"]) == set(EV.MODES)
    assert ev["acc"]["direct"] == pytest.approx(ev["curve"][0]) and ev["acc"]["chain"] == pytest.approx(ev["curve"][2])


def test_pairs_choose_best_and_worst_and_respect_every_switch():
    _, tok = toy.load_anchor()
    x = toy.build_world().test[1]
    key = x["answer"]
    wrong = next(c for c in "ABCD" if c != key)
    R = lambda letter, tag: f"{tag} \\boxed{{{letter}}}"
    # two draws: direct wrong -> refined right -> refined right; direct right -> wrong -> wrong
    ch = [[[R(wrong, "d0"), R(key, "r01"), R(key, "r02")], [R(key, "d1"), R(wrong, "r11"), R(wrong, "r12")]]]
    dec = lambda row: tok.decode(row["input_ids"][row["response_mask"] > 0], skip_special_tokens=True)
    ctx = lambda row: tok.decode(row["input_ids"][row["response_mask"] == 0], skip_special_tokens=True)
    s = EV.Settings()
    pairs, stats = EV.make_pairs(tok, [x], ch, s, 0)
    assert (stats["direct"], stats["fix"], stats["keep"]) == (1, 1, 1) and len(pairs) == 3
    for c, r in pairs:
        assert mcq_letter(dec(c)) == key and mcq_letter(dec(r)) == wrong
    direct_ctx, fix_ctx, keep_ctx = (ctx(c) for c, _ in pairs)
    assert "Previous answer" not in direct_ctx and "Previous answer: d0" in fix_ctx and "Previous answer: d1" in keep_ctx
    assert dec(pairs[0][1]).startswith("d0")            # the rejected direct answer is a direct answer
    # switches
    assert [k for k in EV.make_pairs(tok, [x], ch, EV.Settings(refine_prior="fix"), 0)[1]] == ["direct", "fix", "questions", "sampled_acc"]
    assert EV.make_pairs(tok, [x], ch, EV.Settings(refine_pairs=False), 0)[1].get("fix") is None
    assert EV.make_pairs(tok, [x], ch, EV.Settings(direct_pairs=False), 0)[1].get("direct") is None
    # chosen from the direct answers only: d1 (right) over d0 (wrong)
    pd, _ = EV.make_pairs(tok, [x], ch, EV.Settings(direct_chosen="direct", refine_pairs=False), 0)
    assert dec(pd[0][0]).startswith("d1")
    # every response scores the same: no pair
    same = [[[R(key, "a"), R(key, "b")], [R(key, "c"), R(key, "d")]]]
    assert EV.make_pairs(tok, [x], same, s, 0)[0] == []


def test_round0_rows_hold_the_direct_and_the_refinement_terms():
    _, tok = toy.load_anchor()
    items = EV.fresh_questions("t", 5, set())
    rows = EV.round0_rows(tok, items, EV.Settings(), 0)
    assert len(rows) == 10 and len(EV.round0_rows(tok, items, EV.Settings(sft_refine=False), 0)) == 5
    for x, (d, r) in zip(items, zip(rows[0::2], rows[1::2])):
        resp = lambda row: tok.decode(row["input_ids"][row["response_mask"] > 0], skip_special_tokens=True)
        assert resp(d) == resp(r) and mcq_letter(resp(d)) == x["answer"]            # y_w, twice
    ood = EV.fresh_questions("o", 20, set(), start=(25, 45))
    assert all(25 <= int(q["question"].split(" has ")[1].split()[0]) <= 45 for q in ood)


def test_quick_runs_every_path(tmp_path):
    out = EV.main(["--quick", "--out", str(tmp_path)])
    res = json.loads((tmp_path / "seed1.json").read_text())
    for name in EV.METHODS:
        assert res["train"][name]["rounds_done"] == EV.QUICK.rounds
        for r in range(EV.QUICK.rounds + 1):
            assert set(res["evals"][f"{name}/{r}"]["test"]["acc"]) == set(EV.MODES)
    assert res["train"]["iter_dpo"]["1"].get("fix") is None and res["train"]["evolve"]["1"]["questions"] == EV.QUICK.prompts
    assert "P1 anchor: chain - direct" in out["report"] and "P7 evolve/2: vote - chain" in out["report"]
    assert (tmp_path / "refinement_curve.png").stat().st_size > 10_000
    again = EV.main(["--quick", "--out", str(tmp_path), "--report-only"])       # resumable: nothing recomputed
    assert again["report"] == out["report"]
