"""experiments/ablations.py -- the paper's comparison on the toy world, with seeds (README "Evidence").

    python experiments/ablations.py                  # 7 variants x 3 seeds x {20, 60} iterations (~45 min, 2 cores)
    python experiments/ablations.py --report-only    # redo the report from finished runs
    python experiments/ablations.py --only infuser,spice --seeds 1 2

Every run is `python train.py --preset toy --seed=S <flags of the variant>` in its own process, so each
variant gets the same solver budget: the same iterations, documents per iteration, questions per document and
answers per question (the dev-only reference trains on the 64 dev questions instead). Finished runs (a
summary.json in their directory) are not run again, so an interrupted sweep continues where it stopped.

Each horizon is a whole comparison: runs/ablations/it<N>/<variant>/seed<S>/. Its report
(runs/ablations/it<N>/results.md + results.json + ablations.png) gives
  * held-out TEST accuracy (the test set is disjoint from the dev set the influence score sees) at the end,
    mean +- std over seeds, and its curve (measured every 5 iterations);
  * generator diagnostics from questions.jsonl, classified by toy.classify_question: valid-question rate,
    share of on-target questions among the valid ones, share of wrong keys among the on-target ones,
    first 5 iterations against last 5, and examples of the last iteration's questions;
  * whether the influence score predicted the solver's improvement: across iterations (all seeds of a
    variant pooled), the correlation between the mean influence of the questions the solver trained on and
    the next change of dev accuracy; and the mean score of each kind of question.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {   # name: (flags, what it is)
    "infuser": ([], "INFUSER: preconditioned-cosine influence reward, DuGRPO generator"),
    "fixed_generator": (["--fix_generator"], "the anchor generator, never trained"),
    "spice": (["--generator_reward=spice"], "SPICE-style reward: peaks at 50% solve rate"),
    "uncertainty": (["--generator_reward=uncertainty"], "R-Zero-style reward: min(p, 1-p)"),
    "grpo": (["--generator_normalization=group_std"], "INFUSER with standard GRPO instead of DuGRPO"),
    "cosine": (["--similarity_mode=cosine"], "INFUSER with plain (optimizer-unaware) cosine"),
    "dev_only": (["--dev_only"], "RLVR on the dev set itself (an upper reference, not a competitor)"),
    "dedup": (["--dedup_questions"], "INFUSER with the repeated-question guard (a departure: the paper has none)"),
}
INFLUENCE_VARIANTS = ("infuser", "grpo", "cosine", "dedup")
DIAGNOSTICS = ("q_duplicate_rate", "q_seen_rate", "q_distinct_2", "solver_signal_rate")


def run_one(name: str, seed: int, out: Path, iterations: int, threads: int) -> dict:
    d = out / name / f"seed{seed}"
    if (d / "summary.json").is_file():
        return {"name": name, "seed": seed, "seconds": None, "skipped": True}
    if d.exists():                                   # an interrupted run: start it again from scratch
        for f in sorted(d.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
    d.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "train.py"), "--preset", "toy", f"--seed={seed}",
           f"--iterations={iterations}", "--test_every=5", f"--out_dir={d}", *VARIANTS[name][0]]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(d / "log.txt", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"{name} seed {seed} failed (exit {rc}); see {d / 'log.txt'}")
    return {"name": name, "seed": seed, "seconds": round(time.time() - t0, 1), "skipped": False}


def sweep(names: list[str], seeds: list[int], out: Path, iterations: int, jobs: int) -> None:
    from concurrent.futures import ThreadPoolExecutor
    threads = max(1, (os.cpu_count() or 2) // jobs)
    t0 = time.time()
    with ThreadPoolExecutor(jobs) as pool:
        futs = [pool.submit(run_one, n, s, out, iterations, threads) for s in seeds for n in names]
        for f in futs:
            r = f.result()
            print(f"{r['name']:16s} seed {r['seed']}: " + ("done before" if r["skipped"] else f"{r['seconds']:.0f}s")
                  + f"   ({time.time() - t0:.0f}s elapsed)", flush=True)
    print(f"sweep: {time.time() - t0:.0f}s for {len(futs)} runs, {jobs} at a time, {threads} thread(s) each")


# ----------------------------------------------------------------------------------------------
# The report

def _read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


def _ms(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = statistics.mean(x), statistics.mean(y)
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / (sx * sy) if sx > 0 and sy > 0 else float("nan")


def _ranks(x: list[float]) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])
    r = [0.0] * len(x)
    i = 0
    while i < len(order):                             # average ranks for ties
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def question_kinds(rows: list[dict]) -> dict:
    """Counts of a set of question records: valid, on-target, wrong-key (toy.classify_question)."""
    import toy
    n = len(rows)
    valid = [q for q in rows if q["status"] == "valid"]
    kinds = [toy.classify_question(q["question"], q["choices"], q["ground_truth"]) for q in valid]
    on = [k for k in kinds if k["on_target"]]
    return {"questions": n, "valid_rate": len(valid) / n if n else None,
            "on_target_share": len(on) / len(valid) if valid else None,
            "wrong_key_share": sum(not k["key_correct"] for k in on) / len(on) if on else None,
            "useful_share": sum(bool(k["key_correct"]) for k in on) / n if n else None}


def trained_mix(rows: list[dict]) -> dict:
    """What the solver actually trained on: of the valid questions whose answers had reward variance
    (0 < solve rate < 1, the groups the Dr.GRPO update keeps), the shares of each kind."""
    import toy
    kept = [q for q in rows if q["status"] == "valid" and q.get("solver_acc") not in (None, 0.0, 1.0)]
    kinds = [toy.classify_question(q["question"], q["choices"], q["ground_truth"]) for q in kept]
    n = max(1, len(kinds))
    return {"groups": len(kinds),
            "correct_key": sum(bool(k["on_target"] and k["key_correct"]) for k in kinds) / n,
            "wrong_key": sum(bool(k["on_target"] and not k["key_correct"]) for k in kinds) / n,
            "off_target": sum(not k["on_target"] for k in kinds) / n}


def report(names: list[str], seeds: list[int], out: Path) -> dict:
    import toy
    res: dict = {"variants": {}}
    for name in names:
        runs = []
        for s in seeds:
            d = out / name / f"seed{s}"
            if not (d / "summary.json").is_file():
                continue
            summary = json.loads((d / "summary.json").read_text())
            hist = _read_jsonl(d / "metrics.jsonl")
            qs = _read_jsonl(d / "questions.jsonl")
            its = sorted({q["iteration"] for q in qs})
            first = [q for q in qs if q["iteration"] in its[:5]]
            last = [q for q in qs if q["iteration"] in its[-5:]]
            test_curve = [(-1, summary.get("test_acc_start"))] + \
                [(m["iteration"], m["test_acc"]) for m in hist if m.get("test_acc") is not None] + \
                [(hist[-1]["iteration"], summary.get("test_acc_end"))]
            diag = {k: [m[k] for m in hist if m.get(k) is not None] for k in DIAGNOSTICS}
            runs.append({"seed": s, "summary": summary, "dev_curve": [m.get("dev_acc") for m in hist],
                         "diag": {k: (statistics.mean(x[:5]), statistics.mean(x[-5:])) if x else None
                                  for k, x in diag.items()},
                         "alarms": summary.get("alarms"),
                         "test_curve": test_curve, "first": question_kinds(first) if qs else None,
                         "last": question_kinds(last) if qs else None,
                         "influence": [m.get("influence_mean") for m in hist],
                         "seconds": sum(m.get("time_total", 0.0) for m in hist),
                         "examples": [{k: q[k] for k in ("question", "choices", "ground_truth", "influence",
                                                          "solver_acc")}
                                      | {"kind": toy.classify_question(q["question"], q["choices"], q["ground_truth"])}
                                      for q in qs if q["iteration"] == its[-1] and q["status"] == "valid"][:6]
                         if qs else [],
                         "trained_mix": trained_mix(qs) if qs else None,
                         "scored": [(q["influence"], toy.classify_question(q["question"], q["choices"],
                                                                           q["ground_truth"]))
                                    for q in qs if q["status"] == "valid" and q.get("influence")
                                    and q.get("solver_acc") not in (0.0, 1.0)]})
        if not runs:
            continue
        v = {"what": VARIANTS[name][1], "flags": " ".join(VARIANTS[name][0]) or "(defaults)", "seeds": [r["seed"] for r in runs],
             "test_start": [r["summary"].get("test_acc_start") for r in runs],
             "test_end": [r["summary"].get("test_acc_end") for r in runs],
             "dev_start": [r["summary"].get("dev_acc_start") for r in runs],
             "dev_end": [r["summary"].get("dev_acc_end") for r in runs],
             "train_seconds": [round(r["seconds"], 1) for r in runs],
             "test_curves": [r["test_curve"] for r in runs], "dev_curves": [r["dev_curve"] for r in runs]}
        if all(r["diag"]["q_duplicate_rate"] is not None for r in runs):       # runs logged with diagnostics.py
            v["diagnostics"] = {k: [r["diag"][k] for r in runs] for k in DIAGNOSTICS}
            v["alarms"] = [[(a["iteration"], a["alarm"]) for a in (r["alarms"] or [])] for r in runs]
        if runs[0]["first"] is not None:
            for part in ("first", "last"):
                for k in ("valid_rate", "on_target_share", "wrong_key_share", "useful_share"):
                    v[f"{part}5_{k}"] = [r[part][k] for r in runs]
            v["examples"] = runs[0]["examples"]
            v["trained_mix"] = [r["trained_mix"] for r in runs]
        if name in INFLUENCE_VARIANTS:
            x, y = [], []
            for r in runs:
                dev = r["dev_curve"]
                for t in range(len(dev) - 1):
                    if r["influence"][t] is not None and dev[t] is not None and dev[t + 1] is not None:
                        x.append(r["influence"][t])
                        y.append(dev[t + 1] - dev[t])
            v["influence_vs_next_dev_change"] = {"n": len(x), "pearson": _pearson(x, y),
                                                 "spearman": _pearson(_ranks(x), _ranks(y))}
            by_kind: dict = {}
            for score, k in (p for r in runs for p in r["scored"]):
                kind = "off_target" if not k["on_target"] else ("correct_key" if k["key_correct"] else "wrong_key")
                by_kind.setdefault(kind, []).append(score)
            v["influence_by_kind"] = {k: {"n": len(s), "mean": statistics.mean(s),
                                          "positive_share": sum(x > 0 for x in s) / len(s)}
                                      for k, s in sorted(by_kind.items())}
        res["variants"][name] = v
    # across all runs with a generator: does the mix the solver trained on explain its test gain?
    x, y = [], []
    for v in res["variants"].values():
        for mix, a, b in zip(v.get("trained_mix", []), v["test_start"], v["test_end"]):
            x.append(mix["correct_key"] - mix["wrong_key"])
            y.append(b - a)
    if len(x) > 2:
        res["test_gain_vs_trained_mix"] = {"n": len(x), "pearson": _pearson(x, y),
                                           "spearman": _pearson(_ranks(x), _ranks(y))}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(markdown(res))
    plot(res, out / "ablations.png")
    return res


def markdown(res: dict) -> str:
    V = res["variants"]
    lines = ["| variant | flags | test start | **test end** | Δ test | dev end |", "|---|---|---|---|---|---|"]
    for name, v in V.items():
        delta = [b - a for a, b in zip(v["test_start"], v["test_end"])]
        lines.append(f"| {name} | `{v['flags']}` | {_ms(v['test_start'])} | **{_ms(v['test_end'])}** | "
                     f"{_ms(delta)} | {_ms(v['dev_end'])} |")
    lines += ["", "Generator diagnostics (first 5 iterations → last 5; mean over seeds):", "",
              "| variant | valid rate | on-target share of valid | wrong-key share of on-target | useful share of all |",
              "|---|---|---|---|---|"]
    mean = lambda xs: statistics.mean([x for x in xs if x is not None]) if any(x is not None for x in xs) else float("nan")
    for name, v in V.items():
        if "first5_valid_rate" not in v:
            continue
        cells = [f"{mean(v['first5_' + k]):.2f} → {mean(v['last5_' + k]):.2f}"
                 for k in ("valid_rate", "on_target_share", "wrong_key_share", "useful_share")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any("diagnostics" in v for v in V.values()):
        lines += ["", "Diversity and spread (diagnostics.py; first 5 iterations → last 5; mean over seeds), alarms raised:",
                  "", "| variant | " + " | ".join(DIAGNOSTICS) + " | alarms (iteration, name) per seed |",
                  "|---|" + "---|" * (len(DIAGNOSTICS) + 1)]
        for name, v in V.items():
            if "diagnostics" in v:
                cells = [f"{mean([a for a, _ in v['diagnostics'][k]]):.2f} → {mean([b for _, b in v['diagnostics'][k]]):.2f}"
                         for k in DIAGNOSTICS]
                alarms = "; ".join(f"s{s_}: " + (", ".join(f"{i} {a}" for i, a in al) or "none")
                                   for s_, al in zip(v["seeds"], v["alarms"]))
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {alarms} |")
    lines += ["", "What the solver trained on (valid questions with reward variance, all iterations; mean over seeds):", "",
              "| variant | groups per run | on target, correct key | on target, WRONG key | off target |", "|---|---|---|---|---|"]
    for name, v in V.items():
        if "trained_mix" not in v:
            continue
        tm = v["trained_mix"]
        lines.append(f"| {name} | {statistics.mean(m['groups'] for m in tm):.0f} | " + " | ".join(
            f"{statistics.mean(m[k] for m in tm):.2f}" for k in ("correct_key", "wrong_key", "off_target")) + " |")
    if "test_gain_vs_trained_mix" in res:
        c = res["test_gain_vs_trained_mix"]
        lines += ["", f"Across the {c['n']} runs with a generator, the test gain against (correct-key share − "
                      f"wrong-key share) of the trained groups: Pearson {c['pearson']:+.2f}, Spearman {c['spearman']:+.2f}."]
    lines += ["", "Influence as a predictor (pooled over seeds):", "",
              "| variant | corr(mean influence at t, dev acc change t→t+1): Pearson / Spearman (n) | mean score: correct key / wrong key / off target |",
              "|---|---|---|"]
    for name, v in V.items():
        if "influence_vs_next_dev_change" not in v:
            continue
        c, k = v["influence_vs_next_dev_change"], v["influence_by_kind"]
        f = lambda kind: f"{k[kind]['mean']:+.4f} (n={k[kind]['n']})" if kind in k else "-"
        lines.append(f"| {name} | {c['pearson']:+.2f} / {c['spearman']:+.2f} ({c['n']}) | "
                     f"{f('correct_key')} / {f('wrong_key')} / {f('off_target')} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, v in res["variants"].items():
        pts = {}
        for curve in v["test_curves"]:
            for x, y in curve:
                if y is not None:
                    pts.setdefault(x, []).append(y)
        xs = sorted(pts)
        ls = ":" if name == "dev_only" else "-"
        axes[0].errorbar(xs, [statistics.mean(pts[x]) for x in xs],
                         yerr=[statistics.stdev(pts[x]) if len(pts[x]) > 1 else 0 for x in xs],
                         ls=ls, marker="o", ms=3, capsize=2, label=name)
        devs = [c for c in v["dev_curves"] if c]
        n = min(len(c) for c in devs)
        axes[1].plot(range(n), [statistics.mean(c[i] for c in devs) for i in range(n)], ls=ls, label=name)
    axes[0].set_title("held-out test accuracy (mean ± std over seeds; x = -1: before training)")
    axes[1].set_title("dev accuracy (mean over seeds)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated variants (default: all of " + ", ".join(VARIANTS) + ")")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--iterations", type=int, nargs="+", default=[20, 60],
                   help="training horizons; each is a full comparison in OUT/it<N>/")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (threads are split between them)")
    p.add_argument("--out", default=str(ROOT / "runs" / "ablations"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    for iterations in args.iterations:
        out = Path(args.out) / f"it{iterations}"
        print(f"== {iterations} iterations -> {out}", flush=True)
        if not args.report_only:
            sweep(names, args.seeds, out, iterations, args.jobs)
        res = report(names, args.seeds, out)
        print(markdown(res))
        print(f"-> {out / 'results.md'}, {out / 'results.json'}, {out / 'ablations.png'}", flush=True)


if __name__ == "__main__":
    main()
