"""forks/evolve.py -- EVOLVE-style self-refinement (Zeng et al., arXiv 2502.05605; earlier "ARIES"), on the toy
world, built on the core (rollout.HFEngine samples, grading.mcq_letter grades, dugrpo.token_logprobs scores).

    python forks/evolve.py            # the whole report: 3 seeds x every method x 3 rounds x 3 inference modes
    python forks/evolve.py --quick    # every path, small, under a minute (a CI test)
    python forks/evolve.py --report-only

No code of the paper is public and its losses are not readable, so every step is labelled [paper] (its
abstract), [inferred] (a third-party summary, ../papers in the project's notes: "the SFT stage also uses prior,
sub-optimal responses; the preference stage favours an improved response given a prior output, DPO-style"),
or [ours]; every unknown is a switch of Settings with its default.

  0. The task [ours]: the toy world's two-step questions (four choices). The solver answers in the format the
     anchor was pretrained on; REFINE_INSTRUCTION asks it, after its previous answer, to check and revise it
     (refine_messages: the question, the previous answer as an assistant turn, the instruction). The anchor has
     never seen that prompt.
  1. Round 0, refinement-aware SFT [inferred]: on `sft_questions` fresh questions, with the world's known
     correct working y_w and one of its known workings y_prev (drawn as the anchor's own mixture: correct,
     stopped after one step, flipped operation, guess), L = -log pi(y_w | x) - log pi(y_w | x, y_prev, I),
     each term the token mean over the response [ours]. Switch `sft_refine` drops the second term.
  2. Rounds 1..R [paper: iterative training + self-refinement-based data collection]: `prompts` fresh
     questions per round; `samples` direct answers each (temperature 1), each followed by a chain of
     `refinements` revisions (each revision sees only the question and the answer before it [ours]).
  3. Scoring [paper: "rule-based selection"]: every response is graded by the rule-based grader (its boxed
     letter against the key: 1 or 0). Never at inference.
  4. Pairs [inferred; chosen = a best-scored, rejected = a worst-scored response, ties broken at random: ours]:
       direct pairs (switch `direct_pairs`): context x; chosen from the whole chain (`direct_chosen` =
       "chain", so refined answers become direct-answer data: the synergy of the paper) or from the direct
       answers only ("direct"); rejected from the direct answers;
       refinement pairs (switch `refine_pairs`): context (x, y_prev, I) with y_prev a wrong direct answer
       ("fix") and, with `refine_prior` = "fix+keep", also a right one ("keep": do not break what is right);
       chosen / rejected a best / worst response of x. A question whose responses all score the same gives no
       pair.
  5. Training [inferred: DPO with a KL-to-reference term]: dpo_loss (TRL 1.16's sigmoid DPO) on sequence
     log-probs summed over the response at temperature 1, beta = 0.1; the reference is the policy at the
     start of each round [ours]; AdamW, `epochs` passes, `batch` pairs per step [ours].
  6. Baselines with the same sampling and training budget [ours]: "iter_dpo" (the paper's named baseline):
     round 0 without the refinement term, then `samples x (refinements + 1)` direct answers per question,
     direct pairs only; "sft": EVOLVE's data, but SFT on each pair's chosen response in its context (rejection
     sampling fine-tuning) instead of DPO. Ablations: evolve without refinement pairs, without direct pairs,
     without the refinement term of round 0.
  7. Inference modes, on the world's test questions and on an out-of-distribution set (starting stocks of
     25-45 where the world's are 10-20) [ours]: "direct" (one answer, temperature 1); "vote" (majority letter
     of refinements + 1 answers: the same number of responses as the chain); "chain" (the answer after
     `refinements` revisions). Each is averaged over `eval_samples` independent draws per question; the
     refinement curve is the accuracy after 0..k revisions.

Results and verdicts: docs/evolve.md; predictions made before the first full run: docs/evolve_preregistration.md.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import toy  # noqa: E402
from dugrpo import token_logprobs  # noqa: E402
from grading import mcq_letter, solver_messages  # noqa: E402
from records import SamplingParams  # noqa: E402
from rollout import HFEngine  # noqa: E402

REFINE_INSTRUCTION = "Check it step by step and revise it."


@dataclass
class Settings:
    rounds: int = 3                # preference rounds after round 0
    prompts: int = 128             # fresh questions per round
    samples: int = 4               # direct answers per question (iter_dpo: samples * (refinements + 1))
    refinements: int = 2           # k: revisions per chain, in training and at inference
    sft_questions: int = 256       # round 0
    sft_epochs: int = 2
    sft_lr: float = 1e-3
    epochs: int = 2                # passes over a round's pairs
    lr: float = 1e-4
    beta: float = 0.1
    batch: int = 16
    temperature: float = 1.0       # sampling, in training and at inference
    max_new_tokens: int = 64
    test: int = 256                # the world's test questions
    ood: int = 128                 # out-of-distribution questions
    eval_samples: int = 2          # independent draws per question and inference mode
    seeds: tuple = (1, 2, 3)
    # the method's switches (METHODS sets them per method)
    loss: str = "dpo"              # "dpo" or "sft" (the rejection-sampling baseline)
    sft_refine: bool = True        # round 0: the refinement term
    direct_pairs: bool = True
    refine_pairs: bool = True
    direct_chosen: str = "chain"   # "chain" or "direct"
    refine_prior: str = "fix+keep"  # "fix+keep" or "fix"
    chain: bool = True             # collect refinement chains (False: only direct answers, same count)


QUICK = Settings(rounds=2, prompts=8, samples=2, sft_questions=8, test=12, ood=8, eval_samples=1, seeds=(1,),
                 batch=8, epochs=1)
METHODS = {
    "evolve": {},
    "iter_dpo": dict(sft_refine=False, refine_pairs=False, direct_chosen="direct", chain=False),
    "sft": dict(loss="sft"),
    "evolve-no_refine_pairs": dict(refine_pairs=False),
    "evolve-no_direct_pairs": dict(direct_pairs=False),
    "evolve-no_sft_refine": dict(sft_refine=False),
}
MODES = ("direct", "vote", "chain")


# ----------------------------------------------------------------------------------------------
# The preference loss and the log-probs it takes

def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Sigmoid DPO (Rafailov et al. 2023; TRL 1.16's loss_type="sigmoid", no label smoothing): inputs are
    sequence log-probs [P] of the chosen and rejected responses (summed over response tokens, temperature 1)
    under the policy and the frozen reference. Delta = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l));
    loss = mean over pairs of -log sigmoid(beta * Delta) (logsigmoid: stable for any |Delta|)."""
    delta = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)      # [P]
    return -F.logsigmoid(beta * delta).mean()


def refine_messages(question: str, choices: list[str], previous: str) -> list[dict]:
    """The refinement prompt [ours]: the solver's own prompt, its question followed by the previous answer
    (whitespace collapsed) and REFINE_INSTRUCTION. One user turn, not a second turn after an assistant one, so
    that the prompt ends as the solver's does (docs/evolve.md says what the second-turn form gave)."""
    return solver_messages(f"{question} Previous answer: {' '.join(previous.split())} {REFINE_INSTRUCTION}", choices)


def encode(tok, messages: list[dict], response: str) -> dict:
    prompt, resp = toy._encode(tok, messages, response)
    ids = torch.tensor(prompt + resp)
    return {"input_ids": ids, "response_mask": (torch.arange(len(ids)) >= len(prompt)).float()}


def pad(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input_ids, attention_mask, response_mask [B, T]."""
    t = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    am, rm = torch.zeros(len(rows), t, dtype=torch.long), torch.zeros(len(rows), t)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], am[i, :n], rm[i, :n] = r["input_ids"], 1, r["response_mask"]
    return ids, am, rm


def sequence_logprobs(model, rows: list[dict]) -> torch.Tensor:
    """log pi(response | prompt) [B]: token log-probs at temperature 1, summed over the response tokens."""
    ids, am, rm = pad(rows)
    lp = token_logprobs(model, ids, am, 1.0, rm)                                  # [B, T]
    return torch.where(rm > 0, lp, torch.zeros_like(lp)).sum(-1)


def sft_loss(model, rows: list[dict]) -> torch.Tensor:
    """Mean over rows of the response's token-mean negative log-likelihood."""
    ids, am, rm = pad(rows)
    lp = token_logprobs(model, ids, am, 1.0, rm)
    return (-torch.where(rm > 0, lp, torch.zeros_like(lp)).sum(-1) / rm.sum(-1)).mean()


# ----------------------------------------------------------------------------------------------
# Questions, sampling, grading

def fresh_questions(tag: str, n: int, exclude: set[str], start: tuple[int, int] | None = None) -> list[dict]:
    """n distinct two-step questions (toy.mcq_item) not in `exclude`, deterministic in `tag`. `start`: the
    range of the starting stock (None: the world's own, 10-20)."""
    rng = random.Random(f"evolve:{tag}")
    out, seen = [], set(exclude)
    while len(out) < n:
        f = toy.random_farmer(rng)
        if start is not None:
            f = replace(f, a=rng.randint(*start))
            v = list(f.values.values())
            if min(v) < 1 or len(set(v)) < 4:
                continue
        q = toy.two_step_question(f)
        if q not in seen:
            seen.add(q)
            out.append(toy.mcq_item(f, rng, f"{tag}:{len(out)}"))
    return out


def correct(text: str, item: dict) -> int:
    """The rule-based grader: 1 when the boxed letter is the key."""
    return int(mcq_letter(text) == item["answer"])


def sample(model, tok, prompts: list[list[dict]], n: int, s: Settings, seed: int) -> list[list[str]]:
    eng = HFEngine(model, tok, progress=False)
    params = SamplingParams(n=n, temperature=s.temperature, max_new_tokens=s.max_new_tokens, seed=seed)
    return [[x.text for x in out] for out in eng.generate(prompts, params)]


def chains(model, tok, items: list[dict], n: int, k: int, s: Settings, seed: int) -> list[list[list[str]]]:
    """[question][draw][step]: n direct answers per question, each revised k times."""
    direct = sample(model, tok, [solver_messages(x["question"], x["choices"]) for x in items], n, s, seed)
    out = [[[d] for d in ds] for ds in direct]
    for step in range(1, k + 1):
        flat = [(i, j) for i in range(len(items)) for j in range(n)]
        prompts = [refine_messages(items[i]["question"], items[i]["choices"], out[i][j][-1]) for i, j in flat]
        for (i, j), r in zip(flat, sample(model, tok, prompts, 1, s, seed * 1000 + step)):
            out[i][j].append(r[0])
    return out


def majority(texts: list[str]) -> str | None:
    """The most frequent boxed letter (ties: the first seen); None when no response has one."""
    letters = [x for x in map(mcq_letter, texts) if x is not None]
    return collections.Counter(letters).most_common(1)[0][0] if letters else None


def evaluate(model, tok, items: list[dict], s: Settings, seed: int) -> dict:
    """Per inference mode, the per-question accuracy (mean over eval_samples draws), and the refinement curve."""
    k, n = s.refinements, s.eval_samples
    ch = chains(model, tok, items, n, k, s, seed)
    votes = sample(model, tok, [solver_messages(x["question"], x["choices"]) for x in items], n * (k + 1), s,
                   seed + 7)
    per_q = {m: [] for m in MODES}
    curve = [[] for _ in range(k + 1)]
    for x, c, v in zip(items, ch, votes):
        per_q["direct"].append(statistics.mean(correct(d[0], x) for d in c))
        per_q["chain"].append(statistics.mean(correct(d[-1], x) for d in c))
        per_q["vote"].append(statistics.mean(int(majority(v[g * (k + 1):(g + 1) * (k + 1)]) == x["answer"])
                                             for g in range(n)))
        for t in range(k + 1):
            curve[t].append(statistics.mean(correct(d[t], x) for d in c))
    return {"per_question": per_q, "acc": {m: statistics.mean(v) for m, v in per_q.items()},
            "curve": [statistics.mean(c) for c in curve]}


# ----------------------------------------------------------------------------------------------
# Data for training: round 0 and the preference rounds

def round0_rows(tok, items: list[dict], s: Settings, seed: int) -> list[dict]:
    """Step 1: (x -> y_w) and, with sft_refine, ((x, y_prev, I) -> y_w) rows."""
    rng = random.Random(f"evolve-sft:{seed}")
    rows = []
    for x in items:
        y_w = toy.solver_response(x["question"], x["choices"], rng, "correct")
        rows.append(encode(tok, solver_messages(x["question"], x["choices"]), y_w))
        if s.sft_refine:
            y_prev = toy.solver_response(x["question"], x["choices"], rng)        # the anchor's own mixture
            rows.append(encode(tok, refine_messages(x["question"], x["choices"], y_prev), y_w))
    return rows


def make_pairs(tok, items: list[dict], ch: list[list[list[str]]], s: Settings, seed: int) -> tuple[list, dict]:
    """Step 4: [(chosen row, rejected row)] and counts."""
    rng = random.Random(f"evolve-pairs:{seed}")
    pairs, stats = [], collections.Counter()
    for x, c in zip(items, ch):
        direct = [d[0] for d in c]
        pool = [r for d in c for r in d]
        score = {r: correct(r, x) for r in pool}
        best_of = lambda rs: rng.choice([r for r in rs if score[r] == max(score[q] for q in rs)])
        worst_of = lambda rs: rng.choice([r for r in rs if score[r] == min(score[q] for q in rs)])
        x_msgs = solver_messages(x["question"], x["choices"])
        if s.direct_pairs:
            w, lose = best_of(pool if s.direct_chosen == "chain" else direct), worst_of(direct)
            if score[w] > score[lose]:
                pairs.append((encode(tok, x_msgs, w), encode(tok, x_msgs, lose)))
                stats["direct"] += 1
        if s.refine_pairs and min(score.values()) < max(score.values()):
            priors = [("fix", [d for d in direct if not score[d]])]
            if s.refine_prior == "fix+keep":
                priors.append(("keep", [d for d in direct if score[d]]))
            for kind, candidates in priors:
                if candidates:
                    ctx = refine_messages(x["question"], x["choices"], rng.choice(candidates))
                    pairs.append((encode(tok, ctx, best_of(pool)), encode(tok, ctx, worst_of(pool))))
                    stats[kind] += 1
    stats["questions"] = len(items)
    stats["sampled_acc"] = statistics.mean(correct(d[0], x) for x, c in zip(items, ch) for d in c)
    return pairs, dict(stats)


def train_sft(model, rows: list[dict], epochs: int, lr: float, batch: int, seed: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen, losses = random.Random(seed), []
    model.train()
    for _ in range(epochs):
        order = list(range(len(rows)))
        gen.shuffle(order)
        for i in range(0, len(order), batch):
            loss = sft_loss(model, [rows[j] for j in order[i:i + batch]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    return statistics.mean(losses) if losses else float("nan")


def train_dpo(model, pairs: list[tuple[dict, dict]], s: Settings, seed: int) -> dict:
    """Step 5: the reference is the policy as it enters the round; its log-probs are computed once."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref_lp = [sequence_logprobs(ref, [c, r]) for c, r in pairs]               # [2] per pair
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0)
    gen, losses, acc = random.Random(seed), [], []
    model.train()
    for _ in range(s.epochs):
        order = list(range(len(pairs)))
        gen.shuffle(order)
        for i in range(0, len(order), s.batch):
            idx = order[i:i + s.batch]
            lp = sequence_logprobs(model, [pairs[j][0] for j in idx] + [pairs[j][1] for j in idx])   # [2P]
            ref_c = torch.stack([ref_lp[j][0] for j in idx])
            ref_r = torch.stack([ref_lp[j][1] for j in idx])
            loss = dpo_loss(lp[:len(idx)], lp[len(idx):], ref_c, ref_r, s.beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            acc.append(((lp[:len(idx)] - ref_c) > (lp[len(idx):] - ref_r)).float().mean().item())
    model.eval()
    return {"loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "reward_acc_last_epoch": statistics.mean(acc[-max(1, len(acc) // s.epochs):]) if acc else None}


# ----------------------------------------------------------------------------------------------
# One seed, resumable: every model's evaluation is written as it finishes, and the latest model of each
# method is saved after each round

def run_seed(seed: int, s: Settings, out: Path, methods: list[str]) -> dict:
    path = out / f"seed{seed}.json"
    res = json.loads(path.read_text()) if path.is_file() else {"seed": seed, "settings": asdict(s), "evals": {},
                                                                "train": {}}
    save = lambda: path.write_text(json.dumps(res, indent=1))
    world = toy.build_world()
    held = {x["question"] for x in world.dev + world.test}
    test = world.test[:s.test]
    ood = fresh_questions(f"ood:{seed}", s.ood, held, start=(25, 45))
    anchor, tok = toy.load_anchor()

    def evaluated(model, tag: str):
        if tag not in res["evals"]:
            t0 = time.process_time()
            res["evals"][tag] = {"test": evaluate(model, tok, test, s, seed), "ood": evaluate(model, tok, ood, s, seed),
                                 "cpu_s": time.process_time() - t0}
            save()
        return res["evals"][tag]

    evaluated(anchor, "anchor")
    sft_items = fresh_questions(f"sft:{seed}", s.sft_questions, held)
    round_items = [fresh_questions(f"round{r}:{seed}", s.prompts, held) for r in range(1, s.rounds + 1)]
    for name in methods:
        m = replace(s, **METHODS[name])
        ckpt = out / f"seed{seed}_{name}.pt"
        done = res["train"].get(name, {}).get("rounds_done", -1)
        model = copy.deepcopy(anchor)
        if done >= 0:
            model.load_state_dict(torch.load(ckpt, weights_only=True))
        if done < 0:                                                     # round 0, shared where it is the same
            r0 = f"round0/{'refine' if m.sft_refine else 'direct'}"
            src = out / f"seed{seed}_{r0.replace('/', '_')}.pt"
            if src.is_file():
                model.load_state_dict(torch.load(src, weights_only=True))
            else:
                loss = train_sft(model, round0_rows(tok, sft_items, m, seed), m.sft_epochs, m.sft_lr, m.batch, seed)
                torch.save(model.state_dict(), src)
                res["train"][r0] = {"sft_loss": loss}
            evaluated(model, r0)
            res["evals"][f"{name}/0"] = res["evals"][r0]
            done = 0
        for r in range(done + 1, s.rounds + 1):
            t0 = time.process_time()
            items = round_items[r - 1]
            ch = chains(model, tok, items, m.samples if m.chain else m.samples * (m.refinements + 1),
                        m.refinements if m.chain else 0, m, seed * 100 + r)
            pairs, stats = make_pairs(tok, items, ch, m, seed * 100 + r)
            if m.loss == "sft":
                rows = [c for c, _ in pairs]
                stats["sft_loss"] = train_sft(model, rows, m.epochs, m.sft_lr, m.batch, seed * 100 + r)
            elif pairs:
                stats.update(train_dpo(model, pairs, m, seed * 100 + r))
            stats["train_cpu_s"] = time.process_time() - t0
            evaluated(model, f"{name}/{r}")
            torch.save(model.state_dict(), ckpt)
            res["train"].setdefault(name, {})[str(r)] = stats
            res["train"][name]["rounds_done"] = r
            save()
            print(f"seed {seed} {name} round {r}: {stats.get('direct', 0)} direct + {stats.get('fix', 0)} fix + "
                  f"{stats.get('keep', 0)} keep pairs; test " + ", ".join(
                      f"{k} {v:.3f}" for k, v in res["evals"][f"{name}/{r}"]["test"]["acc"].items()), flush=True)
    return res


# ----------------------------------------------------------------------------------------------
# The report

def paired_interval(a: list[list[float]], b: list[list[float]], n: int = 2000) -> tuple[float, float, float]:
    """Mean of a - b, and a 95% bootstrap interval, paired by question: a, b are [seed][question] accuracies;
    each resample draws questions with replacement within every seed (seeds share the test questions)."""
    rng = random.Random(0)
    d = [[x - y for x, y in zip(sa, sb)] for sa, sb in zip(a, b)]
    mean = statistics.mean(statistics.mean(ds) for ds in d)
    boots = []
    for _ in range(n):
        boots.append(statistics.mean(statistics.mean(rng.choices(ds, k=len(ds))) for ds in d))
    boots.sort()
    return mean, boots[int(0.025 * n)], boots[int(0.975 * n) - 1]


def report(results: list[dict], s: Settings, methods: list[str]) -> str:
    acc = lambda tag, split, mode: statistics.mean(r["evals"][tag][split]["acc"][mode] for r in results)
    pq = lambda tag, split, mode: [r["evals"][tag][split]["per_question"][mode] for r in results]
    lines = ["| model | round | test: direct | vote | chain | OOD: direct | vote | chain |", "|---|---|---|---|---|---|---|---|"]
    lines.append("| anchor | - | " + " | ".join(f"{acc('anchor', sp, m):.3f}" for sp in ("test", "ood") for m in MODES) + " |")
    for name in methods:
        for r in range(s.rounds + 1):
            lines.append(f"| {name} | {r} | " + " | ".join(f"{acc(f'{name}/{r}', sp, m):.3f}"
                                                            for sp in ("test", "ood") for m in MODES) + " |")
    lines += ["", "Paired differences (mean over seeds and questions; 95% bootstrap interval over questions; "
              "per seed):", ""]

    def diff(label, ta, ma, tb, mb, split="test"):
        a, b = pq(ta, split, ma), pq(tb, split, mb)
        mean, lo, hi = paired_interval(a, b)
        per_seed = ", ".join(f"{statistics.mean(x) - statistics.mean(y):+.3f}" for x, y in zip(a, b))
        lines.append(f"- {label} [{split}]: {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] ({per_seed})")
    last = s.rounds
    ev, it = f"evolve/{last}", f"iter_dpo/{last}"
    diff("P1 anchor: chain - direct", "anchor", "chain", "anchor", "direct")
    if "evolve" in methods:
        diff(f"P2 evolve round {last}: chain - direct", ev, "chain", ev, "direct")
    if "evolve" in methods and "iter_dpo" in methods:
        for split in ("test", "ood"):
            diff(f"P3 chain: evolve - iter_dpo, round {last}", ev, "chain", it, "chain", split)
        diff(f"P3' vote: evolve - iter_dpo, round {last}", ev, "vote", it, "vote")
        diff(f"P4 direct: evolve - iter_dpo, round {last}", ev, "direct", it, "direct")
        for name in ("evolve", "iter_dpo"):
            diff(f"P5 {name} round {last}: chain - direct", f"{name}/{last}", "chain", f"{name}/{last}", "direct", "ood")
        for name in methods:
            if name.startswith("evolve-") or name == "sft":
                diff(f"P6 chain: evolve - {name}, round {last}", ev, "chain", f"{name}/{last}", "chain")
    for tag in ["anchor"] + [f"{name}/{last}" for name in methods]:
        diff(f"P7 {tag}: vote - chain", tag, "vote", tag, "chain")
    return "\n".join(lines)


def plot_curves(results: list[dict], s: Settings, path: Path, methods: list[str]) -> None:
    """The refinement curve: test accuracy after 0..k revisions, anchor and every round, one panel per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [m for m in ("evolve", "iter_dpo", "sft") if m in methods]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.4), sharey=True, squeeze=False)
    steps = list(range(s.refinements + 1))
    for ax, name in zip(axes[0], shown):
        tags = [("anchor", "anchor")] + [(f"{name}/{r}", f"round {r}") for r in range(s.rounds + 1)]
        for i, (tag, label) in enumerate(tags):
            ys = [statistics.mean(r["evals"][tag]["test"]["curve"][t] for r in results) for t in steps]
            ax.plot(steps, ys, marker="o", label=label, color=plt.cm.viridis(i / max(len(tags) - 1, 1)))
        ax.set_title(name)
        ax.set_xlabel("refinements")
        ax.set_xticks(steps)
    axes[0][0].set_ylabel("test accuracy (temperature 1)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="every path, small (a CI test)")
    ap.add_argument("--out", type=Path, default=None, help="default runs/evolve[_quick]")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from: " + ", ".join(METHODS))
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: Settings.seeds)")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    s = QUICK if args.quick else Settings()
    if args.seeds:
        s = replace(s, seeds=tuple(int(x) for x in args.seeds.split(",")))
    out = args.out or ROOT / "runs" / ("evolve_quick" if args.quick else "evolve")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    results = []
    for k in s.seeds:
        if args.report_only:
            p = out / f"seed{k}.json"
            if not p.is_file():
                ap.error(f"{p} is missing: run without --report-only first")
            results.append(json.loads(p.read_text()))
        else:
            results.append(run_seed(k, s, out, methods))
    text = report(results, s, methods)
    (out / "results.md").write_text(text + "\n")
    plot_curves(results, s, out / "refinement_curve.png", methods)
    print(text)
    return {"results": results, "report": text}


if __name__ == "__main__":
    main()
