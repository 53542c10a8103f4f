"""runlog.py -- the run's files in out_dir: metrics.jsonl (one line per iteration, written after that
iteration's checkpoint), questions.jsonl (one row per draft), summary.json, config.json, curves.png.

Crash consistency: the checkpoint's history is the record. On --resume from the checkpoint of iteration k
the logs are cut back to iterations <= k (rows of an iteration in flight when the run died go, and are
written again when it reruns), and a metrics line of an iteration <= k that was lost (a kill between the
checkpoint and its line) is restored from the history: every log holds each iteration once. A fresh run
refuses an out_dir that holds another run's files (--overwrite deletes only those).

Run: imported by train.py. Tests: tests/test_robust.py.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from config import Config, ConfigError
from dist import gather_flat, rank_world

# ----------------------------------------------------------------------------------------------
# Logging

WANDB_QUESTIONS = 16             # sample questions per iteration in the wandb table
WANDB_QUESTION_COLUMNS = ("iteration", "status", "question", "choices", "answer", "solver_acc", "influence", "reward")


class Logger:
    """Rank-0 console one-liners, metrics.jsonl always, questions.jsonl, wandb only when asked."""

    def __init__(self, cfg: Config):
        self.rank = rank_world()[0]
        self.dir = Path(cfg.out_dir)
        self.wb = None
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
            if cfg.wandb:
                import wandb
                self.wb = wandb.init(project=cfg.wandb, config=asdict(cfg))

    def resume(self, last: int, history: list[dict]) -> None:
        """Cut metrics.jsonl and questions.jsonl back to iterations <= last; restore lost metrics lines."""
        if self.rank != 0:
            return
        kept = {}
        for m in _log_rows(self.dir / "metrics.jsonl"):
            if m.get("iteration", last + 1) <= last:
                kept.setdefault(m["iteration"], m)
        for m in history:
            kept.setdefault(m["iteration"], m)
        _rewrite(self.dir / "metrics.jsonl", [kept[k] for k in sorted(kept)])
        rows = [r for r in _log_rows(self.dir / "questions.jsonl") if r.get("iteration", last + 1) <= last]
        _rewrite(self.dir / "questions.jsonl", rows)

    def metrics(self, m: dict):
        if self.rank != 0:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(m) + "\n")
        if self.wb is not None:
            self.wb.log({k: v for k, v in m.items() if isinstance(v, (int, float))}, step=m.get("iteration"))
        f = lambda k, fmt="{:.3f}": fmt.format(m[k]) if isinstance(m.get(k), (int, float)) else "-"
        print(f"it {m['iteration']:3d} | valid {f('valid_rate')} ({int(m.get('valid', 0))}/{int(m.get('questions', 0))})"
              f" | dev acc {f('dev_acc')} | q solve {f('question_solve_rate')} | infl {f('influence_mean', '{:+.4f}')}"
              f" | gen R {f('gen_reward_mean', '{:+.4f}')} | {f('time_total', '{:.1f}')}s "
              f"(dev {f('time_dev_rollout', '{:.1f}')} gen {f('time_generation', '{:.1f}')} sol {f('time_solver_rollout', '{:.1f}')}"
              f" grade {f('time_grading', '{:.1f}')} inf {f('time_influence', '{:.1f}')} upd {f('time_generator_update', '{:.1f}')}+{f('time_solver_update', '{:.1f}')})"
              + f" | dup {f('q_duplicate_rate', '{:.2f}')} seen {f('q_seen_rate', '{:.2f}')} signal {f('solver_signal_rate', '{:.2f}')}"
              + "".join(f" | {k.replace('test_acc/', 'test ')} {v:.3f}" for k, v in m.items()
                        if k.startswith("test_acc/") and v is not None)
              + (f" | {m['docs_too_long']} documents too long for the prompt (dropped)" if m.get("docs_too_long") else "")
              + (f" | {m['note']}" if m.get("note") else ""), flush=True)

    def questions(self, records: list[dict]):
        rows = gather_flat(records)
        if self.rank == 0:
            with open(self.dir / "questions.jsonl", "a") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            if self.wb is not None and rows:     # a table of sample questions per iteration: what the generator asks
                import wandb
                show = lambda v: " | ".join(map(str, v)) if isinstance(v, list) else v
                table = wandb.Table(columns=list(WANDB_QUESTION_COLUMNS),
                                    data=[[show(r.get(c)) for c in WANDB_QUESTION_COLUMNS] for r in rows[:WANDB_QUESTIONS]])
                self.wb.log({"sample_questions": table}, step=rows[0]["iteration"])


def _log_rows(path: Path) -> list[dict]:
    """The JSON rows of a log; a line cut short by a crash is dropped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return [r for r in rows if isinstance(r, dict)]


def _rewrite(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


RUN_FILES = ("metrics.jsonl", "questions.jsonl", "summary.json", "config.json", "curves.png")


def claim_out_dir(cfg: Config) -> list[Path]:
    """Before anything is built: out_dir must be a writable directory, and a fresh run must not mix its
    files with another run's. Returns the other run's files to delete (with --overwrite)."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out_dir={out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out_dir={out} is not writable ({e.strerror or e})") from None
    if cfg.resume not in ("", "false", "0"):
        return []
    theirs = [out / n for n in RUN_FILES if (out / n).exists()] + sorted(out.glob("ckpt_*")) + \
        sorted(out.glob(".tmp_ckpt_*"))
    if theirs and not cfg.overwrite:
        n_ckpt = sum(p.name.startswith("ckpt_") for p in theirs)
        raise ConfigError(f"--out_dir={out} holds another run's files ({', '.join(p.name for p in theirs[:3])}"
                          f"{', ...' if len(theirs) > 3 else ''}; {n_ckpt} checkpoints): continue it with "
                          f"--resume, delete them with --overwrite, or choose another --out_dir")
    return theirs



def plot_curves(out_dir: str, history: list[dict], summary: dict) -> str | None:
    """curves.png. Row 1: the solver's accuracy (dev, its own questions, every held-out set), the valid-question
    rate, the generator's signal. Row 2: the questions' diversity (duplicate, seen, distinct-2), the solver's
    spread (signal rates; the solve-rate histogram over iterations as a heat map)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    its = [m["iteration"] for m in history]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2))

    def lines(ax, keys, title):
        for k in keys:
            ys = [m.get(k) for m in history]
            if any(y is not None for y in ys):
                ax.plot(its, [y if y is not None else float("nan") for y in ys], marker="o", ms=3, label=k)
        ax.set_title(title)
        ax.set_xlabel("iteration")
    lines(axes[0][0], ["dev_acc", "question_solve_rate"], "solver accuracy")
    lines(axes[0][1], ["valid_rate"], "valid-question rate")
    lines(axes[0][2], ["influence_mean", "gen_reward_mean"], "generator signal")
    lines(axes[1][0], ["q_duplicate_rate", "q_cross_doc_duplicate_rate", "q_seen_rate", "q_distinct_2"],
          "question diversity")
    lines(axes[1][1], ["solver_signal_rate", "dev_signal_rate"], "groups with reward variance")
    names = [k.split("/", 1)[1] for k in summary if k.startswith("test_acc_start/")] or \
        sorted({k.split("/", 1)[1] for m in history for k in m if k.startswith("test_acc/")})
    for name in names:                     # each held-out set: before iteration 0 (x = -1), every K, after the last
        pts = ([(-1, summary[f"test_acc_start/{name}"])] if summary.get(f"test_acc_start/{name}") is not None else []) + \
            [(m["iteration"], m[f"test_acc/{name}"]) for m in history if m.get(f"test_acc/{name}") is not None] + \
            ([(its[-1], summary[f"test_acc_end/{name}"])] if summary.get(f"test_acc_end/{name}") is not None and its else [])
        if pts:
            axes[0][0].plot(*zip(*pts), ls="--", marker="s", ms=4, label=f"held-out {name}")
    hist = [m.get("q_solve_hist") or [float("nan")] * 5 for m in history]
    ax = axes[1][2]
    if its:
        im = ax.imshow(list(zip(*hist)), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
                       extent=(its[0] - 0.5, its[-1] + 0.5, 0, 1))
        fig.colorbar(im, ax=ax, label="share of valid questions")
    ax.set_title("solver solve rate of the valid questions")
    ax.set_xlabel("iteration")
    ax.set_ylabel("solve rate (5 bins)")
    for ax in axes.flat[:5]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
