"""experiments/scarcity.py -- the scarcity sweep, preregistered in docs/preregistration.md.

    python experiments/scarcity.py                 # anchors (if missing), every run, the report
    python experiments/scarcity.py --report-only   # the report from the finished runs
    python experiments/scarcity.py --levels scarcest --only infuser,fixed_generator --seeds 1 2

Levels (toy.generator_opening): the shipped anchor (today), and anchors pretrained with 20% and 6%
on-target drafts among the valid ones (`python toy.py --pretrain --on-target-share S --out DIR`, built here
when missing). Variants: INFUSER, fixed generator, SPICE, uncertainty at every level; plain cosine and GRPO
at the scarcest. Seeds 1-5, 60 iterations, the same solver budget and learning rates for every variant
(experiments/ablations.py's run settings, plus --model=ANCHOR). Resumable: a run with a summary.json is not
run again; an interrupted one starts over. Runs go to runs/scarcity/<level>/<variant>/seed<S>/, the report
to runs/scarcity/results.md and results.json: mean ± std, the paired difference INFUSER - each baseline
per level with a bootstrap 95% interval, test-accuracy curves, the generator diagnostics, and each
preregistered prediction marked held / failed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))
from ablations import VARIANTS, _ms, _read_jsonl, question_kinds, trained_mix  # noqa: E402

LEVELS = {"today": (None, ROOT / "assets" / "toy_anchor"),
          "scarce": (0.20, ROOT / "assets" / "toy_anchor_s20"),
          "scarcest": (0.06, ROOT / "assets" / "toy_anchor_s06")}
MAIN = ("infuser", "fixed_generator", "spice", "uncertainty")
EXTRA_AT_SCARCEST = ("cosine", "grpo")
ITERATIONS = 60


def ensure_anchor(level: str) -> Path:
    share, path = LEVELS[level]
    if share is not None and not (path / "model.safetensors").is_file():
        print(f"pretraining the {level} anchor (on-target share {share}) into {path}", flush=True)
        subprocess.check_call([sys.executable, str(ROOT / "toy.py"), "--pretrain", "--on-target-share", str(share),
                               "--out", str(path)], cwd=ROOT)
    return path


def runs_of(levels, only, seeds):
    """Level by level (in the order given), seed by seed, so that a sweep stopped early has whole seeds."""
    for level in levels:
        for s in seeds:
            for name in MAIN + (EXTRA_AT_SCARCEST if level == "scarcest" else ()):
                if not only or name in only:
                    yield level, name, s


def run_one(level: str, name: str, seed: int, out: Path, threads: int) -> dict:
    d = out / level / name / f"seed{seed}"
    if (d / "summary.json").is_file():
        return {"level": level, "name": name, "seed": seed, "seconds": None}
    cmd = [sys.executable, str(ROOT / "train.py"), "--preset", "toy", f"--model={LEVELS[level][1]}",
           f"--seed={seed}", f"--iterations={ITERATIONS}", "--test_every=5", f"--out_dir={d}", "--overwrite",
           *VARIANTS[name][0]]
    d.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(d.parent / f"seed{seed}.log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"{level}/{name} seed {seed} failed (exit {rc}); see {d.parent / f'seed{seed}.log'}")
    return {"level": level, "name": name, "seed": seed, "seconds": round(time.time() - t0, 1)}


def sweep(todo: list, out: Path, jobs: int) -> None:
    from concurrent.futures import ThreadPoolExecutor
    threads = max(1, (os.cpu_count() or 2) // jobs)
    t0 = time.time()
    with ThreadPoolExecutor(jobs) as pool:
        for r in pool.map(lambda x: run_one(*x, out, threads), todo):
            print(f"{r['level']:9s} {r['name']:16s} seed {r['seed']}: "
                  + ("done before" if r["seconds"] is None else f"{r['seconds']:.0f}s")
                  + f"   ({time.time() - t0:.0f}s elapsed)", flush=True)
    print(f"sweep: {time.time() - t0:.0f}s for {len(todo)} runs, {jobs} at a time")


# ----------------------------------------------------------------------------------------------
# The report

def bootstrap_ci(diffs: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of `diffs`, resampling the seeds with replacement."""
    rng = random.Random(seed)
    means = sorted(statistics.mean(rng.choices(diffs, k=len(diffs))) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def final_test(d: Path) -> float | None:
    p = d / "summary.json"
    return json.loads(p.read_text()).get("test_acc_end") if p.is_file() else None


def report(levels, seeds, out: Path) -> dict:
    res: dict = {"levels": {}}
    for level in levels:
        names = MAIN + (EXTRA_AT_SCARCEST if level == "scarcest" else ())
        lv = res["levels"][level] = {"variants": {}, "paired": {}}
        for name in names:
            acc = {s: final_test(out / level / name / f"seed{s}") for s in seeds}
            curves, diag = [], {"first5": [], "last5": []}
            for s in seeds:
                d = out / level / name / f"seed{s}"
                m = _read_jsonl(d / "metrics.jsonl")
                curves.append([(r["iteration"], r["test_acc"]) for r in m if r.get("test_acc") is not None])
                q = _read_jsonl(d / "questions.jsonl")
                if q:
                    last = max(r["iteration"] for r in q)
                    diag["first5"].append(question_kinds([r for r in q if r["iteration"] < 5]))
                    diag["last5"].append(question_kinds([r for r in q if r["iteration"] > last - 5]))
            mean_of = lambda rows, k: statistics.mean([r[k] for r in rows if r.get(k) is not None]) \
                if any(r.get(k) is not None for r in rows) else None
            lv["variants"][name] = {
                "test_acc": acc, "mean_std": _ms([a for a in acc.values() if a is not None]), "curves": curves,
                "diagnostics": {w: {k: mean_of(rows, k) for k in ("on_target_share", "wrong_key_share", "useful_share")}
                                for w, rows in diag.items()}}
        inf = lv["variants"]["infuser"]["test_acc"]
        for name in names[1:]:
            other = lv["variants"][name]["test_acc"]
            diffs = [inf[s] - other[s] for s in seeds if inf[s] is not None and other[s] is not None]
            if len(diffs) >= 2:
                lo, hi = bootstrap_ci(diffs)
                lv["paired"][name] = {"n": len(diffs), "mean": statistics.mean(diffs), "ci95": [lo, hi]}
    res["predictions"] = verdicts(res)
    return res


def why(level: str, names, seeds, out: Path) -> dict:
    """The P1 analysis: per variant, over all iterations and seeds, the generator's reward (for INFUSER
    its influence score) by question kind -- on target with the right key, on target with a wrong key,
    valid but off target (look-ups) -- and what the solver trained on (trained_mix: the valid questions
    whose answers had reward variance). Does the reward rank the useful questions first, and how many are
    there to rank?"""
    import toy
    rows = {}
    for name in names:
        by_kind, counts, mixes = {"right_key": [], "wrong_key": [], "off_target": []}, [0, 0, 0], []
        for s in seeds:
            q = _read_jsonl(out / level / name / f"seed{s}" / "questions.jsonl")
            for r in q:
                if r["status"] != "valid":
                    continue
                k = toy.classify_question(r["question"], r["choices"], r["ground_truth"])
                kind = "off_target" if not k["on_target"] else ("right_key" if k["key_correct"] else "wrong_key")
                counts[list(by_kind).index(kind)] += 1
                if r.get("reward") is not None:
                    by_kind[kind].append(r["reward"])
            if q:
                mixes.append(trained_mix(q))
        mean = lambda xs: statistics.mean(xs) if xs else None
        rows[name] = {"valid": dict(zip(by_kind, counts)),
                      "mean_reward": {k: mean(v) for k, v in by_kind.items()},
                      "trained_on": {k: mean([m[k] for m in mixes]) for k in ("groups", "correct_key", "wrong_key", "off_target")}}
    return rows


def why_markdown(level: str, rows: dict) -> str:
    f = lambda x, d=4: "-" if x is None else f"{x:+.{d}f}"
    out = [f"## Rewards by question kind ({level}, all iterations, seeds pooled)", "",
           "| variant | valid drafts: right key / wrong key / off target | mean reward: right key | wrong key "
           "| off target | solver trained on (groups/run; right / wrong / off) |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        v, m, t = r["valid"], r["mean_reward"], r["trained_on"]
        out.append(f"| {name} | {v['right_key']} / {v['wrong_key']} / {v['off_target']} | {f(m['right_key'])} "
                   f"| {f(m['wrong_key'])} | {f(m['off_target'])} | {t['groups'] or 0:.0f}; "
                   f"{t['correct_key'] or 0:.2f} / {t['wrong_key'] or 0:.2f} / {t['off_target'] or 0:.2f} |")
    return "\n".join(out) + "\n"


def verdicts(res: dict) -> dict:
    """Each preregistered prediction held / failed / open (a level or a run missing)."""
    lv = res["levels"]
    above = lambda p: p is not None and p["ci95"][0] > 0
    contains0 = lambda p: p is not None and p["ci95"][0] <= 0 <= p["ci95"][1]
    get = lambda level, name: lv.get(level, {}).get("paired", {}).get(name)
    out = {}
    p1 = [get("scarcest", n) for n in ("fixed_generator", "spice", "uncertainty")]
    out["P1"] = "open" if None in p1 else ("held" if all(map(above, p1)) else "failed")
    m = [get(level, "fixed_generator") for level in ("scarcest", "scarce", "today")]
    out["P2"] = "open" if None in m else ("held" if m[0]["mean"] > m[1]["mean"] > m[2]["mean"] else "failed")
    p3 = [get("today", n) for n in ("fixed_generator", "spice", "uncertainty")]
    out["P3"] = "open" if None in p3 else ("held" if all(map(contains0, p3)) else "failed")
    c = get("scarcest", "cosine")
    out["P4"] = "open" if c is None else ("held" if above(c) else "failed")
    g = get("scarcest", "grpo")
    out["P5"] = "open" if g is None else ("held" if g["mean"] >= 0 else "failed")
    return out


def markdown(res: dict) -> str:
    lines = ["# Scarcity sweep (predictions: docs/preregistration.md)", ""]
    for level, lv in res["levels"].items():
        lines += [f"## {level}", "", "| variant | test acc (mean ± std) | on-target share first 5 → last 5 | "
                  "wrong-key share | useful share | INFUSER − it [95% CI] |", "|---|---|---|---|---|---|"]
        for name, v in lv["variants"].items():
            f = lambda w, k: "-" if v["diagnostics"][w][k] is None else f"{v['diagnostics'][w][k]:.2f}"
            p = lv["paired"].get(name)
            pd = "" if p is None else f"{p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
            lines.append(f"| {name} | {v['mean_std']} | {f('first5', 'on_target_share')} → {f('last5', 'on_target_share')}"
                         f" | {f('first5', 'wrong_key_share')} → {f('last5', 'wrong_key_share')}"
                         f" | {f('first5', 'useful_share')} → {f('last5', 'useful_share')} | {pd} |")
        lines.append("")
    lines += ["## Predictions", ""] + [f"- {k}: {v}" for k, v in res["predictions"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levels", default=",".join(LEVELS))
    p.add_argument("--only", default="", help="comma-separated variants")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / "scarcity"))
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    levels = [x for x in a.levels.split(",") if x]
    if unknown := set(levels) - set(LEVELS):
        p.error(f"unknown level(s) {', '.join(sorted(unknown))}; choose from {', '.join(LEVELS)}")
    out = Path(a.out)
    if not a.report_only:
        for level in levels:
            ensure_anchor(level)
        sweep(list(runs_of(levels, set(filter(None, a.only.split(","))), a.seeds)), out, a.jobs)
    res = report(levels, a.seeds, out)
    text = markdown(res)
    for level in levels:                            # the P1 analysis, per level
        res["levels"][level]["why"] = why(level, list(res["levels"][level]["variants"]), a.seeds, out)
        text += "\n" + why_markdown(level, res["levels"][level]["why"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
