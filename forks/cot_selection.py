"""forks/cot_selection.py -- influence-based selection of chain-of-thought data (Humane et al., arXiv 2510.06108),
on the toy world, built on influence.py (imported, never copied).

    python forks/cot_selection.py            # the whole table: 3 seeds, every estimator x rule x ratio, baselines
    python forks/cot_selection.py --quick    # every path on a small pool, under a minute (a CI test)
    python forks/cot_selection.py --report-only

No code of the paper is public and only its abstract and figure captions are readable, so every step is
labelled [paper] (a readable part of the paper), [reimpl] (the one citable reimplementation, arXiv 2601.14249
App. B.3), [inferred] (our reading where the sources are silent) or [ours]; every unknown is a switch (Settings).

  1. Data [ours]: toy.cot_pool -- worked solutions of two-step questions in the solver's format, a known share
     planted flawed in the world's typical ways (stopped after one step, flipped operation, arithmetic slip,
     right working but wrong letter). Query set = the world's dev questions, held-out test = its test
     questions; the pool is disjoint from both.
  2. Fine-tune the anchor on the whole pool -> theta* [paper: implied by C / I]: cross-entropy on the response
     tokens, AdamW, `epochs` passes [ours: recipe].
  3. C = query questions the anchor answers wrong and theta* right; I = right -> wrong [paper, Figure 1]
     (greedy answers [ours]). The query loss of q is that of theta*'s own greedy answer [inferred; switch
     `query_answer`: "own" or "reference", the worked correct solution].
  4. Per example d: s_C(d), s_I(d), positive = helpful [paper: s_C, s_I; sign ours]. s_C = score of d against
     the gradient of C's query loss; s_I = minus the score against I's (theta*'s own answers there are wrong:
     a d that makes them likelier is harmful). Rank scores r_C, r_I = d's percentile in the pool [paper: rank
     scores enter the pruning; percentile form inferred].
     Estimators: "adam" -- the project's optimizer-aware score, example_influence.example_scores in
     preconditioned_cosine mode with v from theta*'s AdamW [ours]; "dot" -- a plain gradient dot product, no
     curvature [ours: the ablation]; "kronfluence" -- EK-FAC [reimpl], run when kronfluence 1.0.1 is
     importable (an optional extra, never a dependency: `pip install --no-deps kronfluence==1.0.1 einops
     einconv opt-einsum`), every Linear module tracked, damping KRON_DAMPING, rank-4 query gradients.
  5. Pruning [paper / third-party]: "correct" drops the least beneficial (lowest s_C), "incorrect" the most
     harmful (lowest s_I), "combined" half the budget each [inferred], at ratios 10% and 50% [paper].
  6. Retrain from the anchor on each kept set with the same recipe; held-out accuracy (greedy) [ours].
  7. Baselines at the same ratios [third-party]: random (3 draws), mid-perplexity under the anchor (keep the
     examples closest to the median), embedding similarity to the query set (mean-pooled last hidden states of
     the anchor, round-robin over queries), and the rank-surprisal ratio of 2601.14249 [reimpl] (drop the
     highest RSR).

KNOWN GAP: no out-of-distribution test (the anchor never saw three-step working, so every model would score
near chance on it). Results and verdicts: docs/cot_selection.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import example_influence  # noqa: E402
from dugrpo import token_logprobs  # noqa: E402
import toy  # noqa: E402
from grading import mcq_letter, solver_messages  # noqa: E402
from records import SamplingParams  # noqa: E402
from rollout import HFEngine  # noqa: E402

ESTIMATORS = ("adam", "dot")          # + "kronfluence" when it is importable (kronfluence_available)
KRON_DAMPING = 1e-3                    # EK-FAC damping (kronfluence's damping_factor) [ours]
KRON_QUERY_RANK = 4                    # low-rank query gradients [reimpl]


def kronfluence_available() -> bool:
    """kronfluence 1.0.1 is an optional extra: pip install --no-deps kronfluence==1.0.1 einops einconv opt-einsum."""
    import importlib.util
    return importlib.util.find_spec("kronfluence") is not None
RULES = ("correct", "incorrect", "combined")
BASELINES = ("random", "perplexity", "embedding", "rsr")


@dataclass
class Settings:
    pool: int = 800                # worked solutions in the pool
    flawed_share: float = 0.15     # planted flawed traces
    queries: int = 64              # query questions (the world's dev set)
    test: int = 256                # held-out questions (the world's test set)
    epochs: int = 2                # SFT passes over the (kept) pool
    lr: float = 1e-3
    batch: int = 32
    ratios: tuple = (0.1, 0.5)
    seeds: tuple = (1, 2, 3)
    random_draws: int = 3
    query_answer: str = "own"      # the query loss: theta*'s own greedy answer, or "reference"
    reduction: str = "mean"        # per-example loss: mean over response tokens [ours] or "sum" (kronfluence)
    combined: str = "split"        # Combined: half the budget by each score [inferred], or "mean_rank"


QUICK = Settings(pool=48, queries=16, test=24, epochs=1, batch=16, ratios=(0.5,), seeds=(1,), random_draws=1)


# ----------------------------------------------------------------------------------------------
# Data and training

def encode(tok, item: dict, response: str) -> dict:
    prompt, resp = toy._encode(tok, solver_messages(item["question"], item["choices"]), response)
    ids = torch.tensor(prompt + resp)
    return {"input_ids": ids, "response_mask": (torch.arange(len(ids)) >= len(prompt)).float()}


def batch_loss(model, batch: list[dict], reduction: str) -> torch.Tensor:
    """The mean over `batch` of example_influence.sft_loss, in one padded forward."""
    t = max(len(ex["input_ids"]) for ex in batch)
    ids = torch.zeros(len(batch), t, dtype=torch.long)
    am, rm = torch.zeros(len(batch), t, dtype=torch.long), torch.zeros(len(batch), t)
    for i, ex in enumerate(batch):
        n = len(ex["input_ids"])
        ids[i, :n], am[i, :n], rm[i, :n] = ex["input_ids"], 1, ex["response_mask"]
    lp = token_logprobs(model, ids, am, 1.0, rm)
    nll = -torch.where(rm > 0, lp, torch.zeros_like(lp)).sum(-1)
    return (nll / rm.sum(-1) if reduction == "mean" else nll).mean()


def sft(model, examples: list[dict], s: Settings, seed: int):
    """AdamW on the response-token cross-entropy of shuffled minibatches; returns the optimizer."""
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    gen = random.Random(seed)
    model.train()
    for _ in range(s.epochs):
        order = list(range(len(examples)))
        gen.shuffle(order)
        for i in range(0, len(order), s.batch):
            loss = batch_loss(model, [examples[j] for j in order[i:i + s.batch]], s.reduction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return opt


def greedy(model, tok, items: list[dict]) -> list[str]:
    eng = HFEngine(model, tok, progress=False)
    outs = eng.generate([solver_messages(x["question"], x["choices"]) for x in items],
                        SamplingParams(n=1, temperature=0.0, max_new_tokens=64))
    return [o[0].text for o in outs]


def accuracy(model, tok, items: list[dict]) -> tuple[float, list[bool]]:
    right = [mcq_letter(r) == x["answer"] for r, x in zip(greedy(model, tok, items), items)]
    return sum(right) / max(len(right), 1), right


# ----------------------------------------------------------------------------------------------
# Scores and selection

def influence_scores(star, opt, tok, pool_ex, queries, base_right, star_right, star_text, s: Settings, est: str):
    """(s_C, s_I, C, I) for every pool example, by estimator `est` (module docstring, steps 3-4)."""
    C = [i for i, (b, t) in enumerate(zip(base_right, star_right)) if not b and t]
    I_ = [i for i, (b, t) in enumerate(zip(base_right, star_right)) if b and not t]
    if est == "kronfluence":
        q_ex = lambda idx: [encode(tok, queries[i], star_text[i] if s.query_answer == "own" else toy.solver_response(
            queries[i]["question"], queries[i]["choices"], random.Random(i), "correct")) for i in idx]
        s_c, s_i = kronfluence_scores(star, pool_ex, q_ex(C), q_ex(I_), s)
        return s_c, s_i, C, I_
    mode = {"adam": "preconditioned_cosine", "dot": "dot"}[est]

    def query_of(idx):
        if not idx:
            return None
        qs = [encode(tok, queries[i], star_text[i] if s.query_answer == "own" else toy.solver_response(
            queries[i]["question"], queries[i]["choices"], random.Random(i), "correct")) for i in idx]
        return example_influence.loss_gradient(star, lambda: sum(example_influence.sft_loss(star, q, s.reduction) for q in qs))
    loss = lambda m, ex: example_influence.sft_loss(m, ex, s.reduction)
    out = []
    for idx, sign in ((C, 1.0), (I_, -1.0)):
        q = query_of(idx)
        out.append(torch.zeros(len(pool_ex), dtype=torch.float64) if q is None
                   else sign * example_influence.example_scores(star, opt, pool_ex, loss, q, mode=mode))
    return out[0], out[1], C, I_


def kronfluence_scores(star, pool_ex, c_ex, i_ex, s: Settings):
    """(s_C, s_I) by EK-FAC [reimpl: kronfluence, factors fitted on the pool at theta*, rank-4 query gradients,
    s(d) = the mean of d's pairwise scores over the query set]: every Linear module tracked (kronfluence's
    default), the empirical Fisher, damping KRON_DAMPING [ours], the per-example loss as for the other
    estimators. kronfluence's score is grad f_q^T (G + lambda I)^-1 grad l_d with f_q the query loss, so a
    positive score is helpful; s_I is minus it (theta*'s own answers on I are wrong), as for the others."""
    import tempfile
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs

    class SFTTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            return batch_loss(model, batch, s.reduction) * len(batch)

        def compute_measurement(self, batch, model):
            return batch_loss(model, batch, s.reduction) * len(batch)

    class Rows(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]
    task = SFTTask()
    model = prepare_model(copy.deepcopy(star).float().eval(), task)
    with tempfile.TemporaryDirectory() as tmp:
        an = Analyzer(analysis_name="cot", model=model, task=task, cpu=True, output_dir=tmp, disable_tqdm=True)
        kw = DataLoaderKwargs(collate_fn=list)
        an.fit_all_factors("ekfac", Rows(pool_ex), per_device_batch_size=s.batch, dataloader_kwargs=kw,
                           factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True),
                           overwrite_output_dir=True)
        out = []
        for q, sign in ((c_ex, 1.0), (i_ex, -1.0)):
            if not q:
                out.append(torch.zeros(len(pool_ex), dtype=torch.float64))
                continue
            name = "C" if sign > 0 else "I"
            an.compute_pairwise_scores(name, "ekfac", Rows(q), Rows(pool_ex), per_device_query_batch_size=len(q),
                                       per_device_train_batch_size=s.batch, dataloader_kwargs=kw,
                                       score_args=ScoreArguments(damping_factor=KRON_DAMPING,
                                                                 query_gradient_low_rank=KRON_QUERY_RANK),
                                       overwrite_output_dir=True)
            pair = an.load_pairwise_scores(name)["all_modules"]                   # [queries, pool]
            out.append(sign * pair.double().mean(0))
    return out[0], out[1]


def percentile(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double() / max(len(x) - 1, 1)


def prune(s_c: torch.Tensor, s_i: torch.Tensor, rule: str, ratio: float, combined: str = "split") -> list[int]:
    """Indices KEPT after dropping round(ratio * N) examples by `rule` (step 5). Combined: half the budget by
    each score ("split"), or the lowest mean rank score (r_C + r_I) / 2 ("mean_rank")."""
    n, k = len(s_c), round(ratio * len(s_c))
    if rule == "combined" and combined == "mean_rank":
        rule, s_c = "correct", (percentile(s_c) + percentile(s_i)) / 2
    if rule == "correct":
        drop = set(s_c.argsort()[:k].tolist())
    elif rule == "incorrect":
        drop = set(s_i.argsort()[:k].tolist())
    elif rule == "combined":
        drop = set(s_c.argsort()[:k // 2].tolist())
        drop |= set([j for j in s_i.argsort().tolist() if j not in drop][:k - len(drop)])
    else:
        raise ValueError(f"unknown rule {rule!r}")
    return [j for j in range(n) if j not in drop]


def baseline_keep(name: str, anchor, pool_ex, query_ex, ratio: float, draw: int) -> list[int]:
    n, k = len(pool_ex), round(ratio * len(pool_ex))
    if name == "random":
        order = list(range(n))
        random.Random(f"random:{draw}").shuffle(order)
        return sorted(order[k:])
    with torch.no_grad():
        if name == "perplexity":
            nll = torch.tensor([example_influence.sft_loss(anchor, ex).item() for ex in pool_ex])
            far = (nll - nll.median()).abs()
            return sorted(far.argsort()[:n - k].tolist())
        if name == "rsr":
            rsr = torch.tensor([rank_surprisal_ratio(anchor, ex) for ex in pool_ex])
            return sorted(rsr.argsort()[:n - k].tolist())
        if name == "embedding":
            emb = lambda ex: anchor(input_ids=ex["input_ids"][None], output_hidden_states=True).hidden_states[-1][0].mean(0)
            P = torch.nn.functional.normalize(torch.stack([emb(ex) for ex in pool_ex]), dim=-1)
            Q = torch.nn.functional.normalize(torch.stack([emb(ex) for ex in query_ex]), dim=-1)
            ranked = [(-(P @ q)).argsort().tolist() for q in Q]
            keep, pos = [], [0] * len(ranked)
            while len(keep) < n - k:                   # round robin: each query's nearest not yet kept
                for r, order in enumerate(ranked):
                    while pos[r] < n and order[pos[r]] in keep:
                        pos[r] += 1
                    if pos[r] < n and len(keep) < n - k:
                        keep.append(order[pos[r]])
            return sorted(keep)
    raise ValueError(f"unknown baseline {name!r}")


def rank_surprisal_ratio(model, ex) -> float:
    """RSR = sum_k min(rank_k, 100) / sum_k surprisal_k over the response tokens [reimpl], one forward."""
    ids = ex["input_ids"][None]
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    tgt, on = ids[0, 1:], ex["response_mask"][1:] > 0
    lp = logp.gather(-1, tgt[:, None])[:, 0]
    rank = (logp > lp[:, None]).sum(-1).clamp(max=100).float()
    return (rank[on].sum() / (-lp[on]).sum().clamp(min=1e-9)).item()


def flaw_precision_recall(keep: list[int], flawed: set[int], n: int) -> tuple[float, float]:
    dropped = set(range(n)) - set(keep)
    hit = len(dropped & flawed)
    return hit / max(len(dropped), 1), hit / max(len(flawed), 1)


# ----------------------------------------------------------------------------------------------
# One seed, and the whole run

def run_seed(seed: int, s: Settings, out: Path) -> dict:
    """Every method of one seed, each result written as it finishes (resumable)."""
    path = out / f"seed{seed}.json"
    res = json.loads(path.read_text()) if path.is_file() else {"seed": seed, "settings": asdict(s), "runs": {}}
    world = toy.build_world()
    queries, test = world.dev[:s.queries], world.test[:s.test]
    pool = toy.cot_pool(seed, s.pool, s.flawed_share, {x["question"] for x in world.dev + world.test})
    flawed = {i for i, x in enumerate(pool) if x["flaw"]}
    anchor, tok = toy.load_anchor()
    pool_ex = [encode(tok, x, x["response"]) for x in pool]
    query_ex = [encode(tok, x, toy.solver_response(x["question"], x["choices"], random.Random(0), "correct"))
                for x in queries]

    def trained(keep: list[int], tag: str):
        if tag in res["runs"]:
            return res["runs"][tag]
        model = copy.deepcopy(anchor)
        t0 = time.process_time()
        sft(model, [pool_ex[j] for j in keep], s, seed)
        acc, _ = accuracy(model, tok, test)
        p, r = flaw_precision_recall(keep, flawed, len(pool))
        res["runs"][tag] = {"test_acc": acc, "kept": len(keep), "flaw_precision": p, "flaw_recall": r,
                            "sft_cpu_s": time.process_time() - t0}
        path.write_text(json.dumps(res, indent=1))
        return res["runs"][tag]

    full = trained(list(range(len(pool))), "full")
    star = copy.deepcopy(anchor)
    t0 = time.process_time()
    opt = sft(star, pool_ex, s, seed)
    epoch_cpu = (time.process_time() - t0) / s.epochs
    base_acc, base_right = accuracy(anchor, tok, queries)
    star_text = greedy(star, tok, queries)
    star_right = [mcq_letter(t) == x["answer"] for t, x in zip(star_text, queries)]
    res.update(anchor_query_acc=base_acc, star_query_acc=sum(star_right) / len(queries), full_test_acc=full["test_acc"],
               epoch_cpu_s=epoch_cpu)
    for est in ESTIMATORS + (("kronfluence",) if kronfluence_available() else ()):
        t0 = time.process_time()
        s_c, s_i, C, I_ = influence_scores(star, opt, tok, pool_ex, queries, base_right, star_right, star_text, s, est)
        res.setdefault("cost_vs_epoch", {})[est] = (time.process_time() - t0) / max(epoch_cpu, 1e-9)
        res[f"C_I_{est}"] = [len(C), len(I_)]
        res.setdefault("scores", {})[est] = {"s_C": s_c.tolist(), "s_I": s_i.tolist(),
                                             "r_C": percentile(s_c).tolist(), "r_I": percentile(s_i).tolist()}
        for rule in RULES:
            for ratio in s.ratios:
                trained(prune(s_c, s_i, rule, ratio, s.combined), f"{est}/{rule}/{ratio}")
    for name in BASELINES:
        for ratio in s.ratios:
            for draw in range(s.random_draws if name == "random" else 1):
                trained(baseline_keep(name, anchor, pool_ex, query_ex, ratio, draw), f"{name}/{ratio}/{draw}")
    res["flawed"] = sorted(flawed)
    path.write_text(json.dumps(res, indent=1))
    return res


def bootstrap_ci(diffs: list[float], n: int = 10_000) -> tuple[float, float]:
    """95% percentile interval of the mean of the per-seed differences, seeds resampled with replacement."""
    rng = random.Random(0)
    means = sorted(statistics.mean(rng.choices(diffs, k=len(diffs))) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def report(results: list[dict], s: Settings) -> str:
    """Held-out accuracy per method as the mean over seeds, and its difference from random at the same ratio
    (each seed paired with its own random draws' mean: mean, bootstrap 95% interval, per seed); flaw
    precision / recall of the dropped examples."""
    lines = ["| method | ratio | test acc | Δ vs random: mean [95% interval] (per seed) | flaw precision | flaw recall |",
             "|---|---|---|---|---|---|"]
    ests = [e for e in (*ESTIMATORS, "kronfluence") if all(e in r["scores"] for r in results)]
    for ratio in s.ratios:
        rand = [statistics.mean(r["runs"][f"random/{ratio}/{d}"]["test_acc"] for d in range(s.random_draws))
                for r in results]
        methods = [f"{e}/{rule}/{ratio}" for e in ests for rule in RULES] + \
                  [f"{b}/{ratio}/0" for b in BASELINES]
        for m in methods:
            accs = [r["runs"][m]["test_acc"] for r in results]
            d = [a - b for a, b in zip(accs, rand)]
            label = "/".join(m.split("/")[:2]) if m.split("/")[0] in ests else m.split("/")[0]
            label = "random (draw 0)" if label == "random" else label
            lo, hi = bootstrap_ci(d)
            lines.append(f"| {label} | {ratio} | {statistics.mean(accs):.3f} | {statistics.mean(d):+.3f} "
                         f"[{lo:+.3f}, {hi:+.3f}] ({', '.join(f'{x:+.3f}' for x in d)}) "
                         f"| {statistics.mean(r['runs'][m]['flaw_precision'] for r in results):.2f} "
                         f"| {statistics.mean(r['runs'][m]['flaw_recall'] for r in results):.2f} |")
    full = statistics.mean(r["full_test_acc"] for r in results)
    cost = {e: statistics.mean(r["cost_vs_epoch"][e] for r in results) for e in ests}
    lines += ["", f"full pool: test acc {full:.3f}; anchor / theta* on the query set (greedy): "
              + ", ".join(f"{r['anchor_query_acc']:.3f} / {r['star_query_acc']:.3f}" for r in results)
              + "; |C|, |I| per seed: " + ", ".join(str(tuple(r["C_I_adam"])) for r in results)
              + "; estimator cost in SFT epochs (CPU time): " + ", ".join(f"{e} {c:.1f}" for e, c in cost.items())]
    return "\n".join(lines)


def scatter(result: dict, path: Path, est: str = "adam") -> None:
    """s_C against s_I for every pool example of one seed, the planted flawed traces marked (Figure 1's view)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sc, si = result["scores"][est]["s_C"], result["scores"][est]["s_I"]
    bad = set(result["flawed"])
    fig, ax = plt.subplots(figsize=(5, 4))
    for flag, color, name in ((False, "tab:blue", "clean"), (True, "tab:red", "planted flaw")):
        idx = [i for i in range(len(sc)) if (i in bad) == flag]
        ax.scatter([sc[i] for i in idx], [si[i] for i in idx], s=8, c=color, alpha=0.6, label=name)
    ax.set_xlabel("s_C (influence on the questions SFT fixed; + helpful)")
    ax.set_ylabel("s_I (on those it broke; + helpful)")
    ax.set_title(f"seed {result['seed']}, {est}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="every path, small (a CI test)")
    ap.add_argument("--out", type=Path, default=None, help="default runs/cot_selection[_quick]")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    s = QUICK if args.quick else Settings()
    out = args.out or ROOT / "runs" / ("cot_selection_quick" if args.quick else "cot_selection")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    results = [json.loads((out / f"seed{k}.json").read_text()) if args.report_only else run_seed(k, s, out)
               for k in s.seeds]
    text = report(results, s)
    (out / "results.md").write_text(text + "\n")
    scatter(results[0], out / "scatter.png")
    print(text)
    return {"results": results, "report": text}


if __name__ == "__main__":
    main()
