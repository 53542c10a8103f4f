"""diagnostics.py -- what a researcher watches during a run: every per-iteration metric, computed in one place
from the iteration's records with one packed reduction over ranks, and the alarms read from the history.

Self-play runs fail in known ways (R-Zero, R-Diverse, R-Few, SGS): the generator collapses onto a few
templates or hacks its reward, and the solver's gains rise and then fall. The paper's code logs none of it.
`iteration_metrics` gives, besides the counts and means the loop always logged:
  q_duplicate_rate   share of valid questions whose normalised text equals another valid one of the iteration
                     (the n_gen drafts of one document may agree: a document with one question gives 1.0)
  q_cross_doc_duplicate_rate   the same, counting only equal questions drafted from another document: one
                     question for many documents is the template collapse of self-play (the alarm reads it)
  q_seen_rate        share equal to a valid question of an earlier iteration (`seen`: hashes, checkpointed)
  q_distinct_2       distinct word bigrams / all word bigrams over the iteration's valid questions
  q_key_entropy      entropy (bits) of the answer-key letter over the multiple-choice valid questions
  q_solve_hist       shares of valid questions by solver solve rate, 5 bins [0, .2), ..., [.8, 1]
  solver_signal_rate share of valid-question groups whose rewards vary (the groups the solver trains on)
  dev_signal_rate    the same for the dev groups (the dev gradient is zero without them)
  gen_resp_len, gen_trunc_rate, gen_reward_std, solver_resp_len, solver_trunc_rate,
  tokens_per_s/<phase> generated tokens of all ranks / the phase's slowest rank's seconds
Every rank sends one payload (dist.gather, one all_gather_object) and computes the same numbers from the
payloads sorted by global id, so 1 rank and N ranks log identical values (tests/test_diagnostics.py), and adds
the iteration's valid questions to `seen`.

`alarms` turns them into one console line each when a threshold is crossed (config keys alarm_*).
"""
from __future__ import annotations

import math
from typing import NamedTuple

from dist import gather
from questions import REJECT_REASONS, normalise, question_hash

def _entropy_bits(counts: list[int]) -> float:
    n = sum(counts)
    return -sum(c / n * math.log2(c / n) for c in counts if c) if n else 0.0


def _rate(a: float, b: float) -> float:
    return a / b if b else 0.0


class _ValidRow(NamedTuple):          # one valid question, as a rank sends it
    gid: int
    text: str
    n_choices: int | None                # None: free-form
    key: str
    correct: tuple                       # its solver rollouts' correctness
    influence: float
    rewards_vary: bool
    doc_id: str


class _DraftRow(NamedTuple):          # one draft, as a rank sends it
    gid: int
    rejected: str | None
    resp_len: int | None                 # None: a pre-generated question (no sample)
    truncated: bool
    reward: float | None
    doc_gid: int | None
    kept: bool


def metrics_line(cfg, rec, seen: set[int]) -> dict:
    """The metrics line of one iteration from its records (infuser.Iteration), the same on every rank:
    the phase times (grading timed apart from the rollouts), every diagnostic, the PPO statistics, notes."""
    times = dict(rec.seconds)
    for phase, g in (("dev_rollout", rec.dev), ("solver_rollout", rec.sol)):
        s = g.grade_seconds if g is not None else 0.0
        times[phase] -= s
        times["grading"] = times.get("grading", 0.0) + s
    m = {"iteration": rec.it, **{f"time_{k}": v for k, v in times.items()}, "time_total": sum(times.values())}
    m.update(iteration_metrics(cfg, rec.dev, rec.drafts, rec.valid, rec.sol, rec.scores, seen, times,
                               rec.docs_too_long))
    m.update({f"gen_{k}": v for k, v in rec.gen_stats.items()})
    m.update({f"solver_{k}": v for k, v in rec.solver_stats.items()})
    if rec.scores is not None and m["valid"] and not m.get("dev_signal_groups"):
        m["note"] = "no dev question with reward variance: all influence scores are 0"
    if rec.trains_generator and "gen_docs_kept" in m and not rec.order:
        m["note_generator"] = "every document's rewards were constant: generator update skipped"
    return m


def question_log(rec) -> list[dict]:
    """One record per draft of this rank (questions.jsonl)."""
    acc, out = rec.sol.by_group(), []
    for d in rec.drafts:
        q = d.question
        a = acc.get(q.gid) if q.rejected is None else None
        out.append({"iteration": rec.it, "doc_id": q.doc_id, "qid": q.qid, "status": q.rejected or "valid",
                    "question": q.text, "choices": q.choices, "ground_truth": q.ground_truth, "answer": q.answer,
                    "solver_acc": (sum(a) / len(a)) if a else None,
                    "influence": (rec.scores or {}).get(q.gid) if q.rejected is None else None,
                    "reward": d.reward, "advantage": d.advantage,
                    "response": d.sample.text if d.sample is not None else None})
    return out


def iteration_metrics(cfg, dev, drafts: list, valid: list, sol, scores: dict | None, seen: set[int],
                      seconds: dict[str, float], docs_too_long: int = 0) -> dict:
    """Every diagnostic of one iteration (module docstring). dev / sol: infuser.Graded (dev may be None);
    drafts: this rank's infuser.Draft records (rewards filled when the generator trains); valid: this rank's
    valid questions; scores: {gid: influence}, None when the run computes no influence; seen: hashes of the
    valid questions of earlier iterations, to which this iteration's are added; seconds: {phase: this rank's
    seconds}."""
    sol_by, sol_rewards = sol.by_group(), {}
    for g, r in zip(sol.group_ids, sol.rewards):
        sol_rewards.setdefault(g, []).append(r)
    mine = {
        "dev": [(g, tuple(c)) for g, c in dev.by_group().items()] if dev is not None else None,
        "dev_tokens": sum(len(s.response_ids) for s in dev.samples) if dev is not None else 0,
        "valid": [_ValidRow(q.gid, q.text, len(q.choices) if q.choices else None, q.answer,
                            tuple(sol_by.get(q.gid, ())), (scores or {}).get(q.gid, 0.0),
                            len(set(sol_rewards.get(q.gid, ()))) > 1, q.doc_id) for q in valid],
        "drafts": [_DraftRow(d.question.gid, d.question.rejected,
                             None if d.sample is None else len(d.sample.response_ids),
                             d.sample is not None and d.sample.finish_reason == "length", d.reward,
                             None if d.doc is None else d.doc.gid, d.kept) for d in drafts],
        "sol": [(len(s.response_ids), s.finish_reason == "length") for s in sol.samples],
        "seconds": seconds, "docs_too_long": docs_too_long,
    }
    parts = gather(mine)                                   # the iteration's one reduction for metrics
    merged = lambda key: sorted((x for p in parts for x in (p[key] or [])), key=lambda r: r[0])
    drafts_all, valid_all, sol_all = merged("drafts"), merged("valid"), [x for p in parts for x in p["sol"]]
    m = {}
    # --- the generator's drafts ---------------------------------------------------------------------
    n_q, n_v = len(drafts_all), len(valid_all)
    m.update(questions=n_q, valid=n_v, valid_rate=_rate(n_v, n_q),
             docs_too_long=sum(p["docs_too_long"] for p in parts))
    m.update({f"reject_{r}": sum(d.rejected == r for d in drafts_all) for r in REJECT_REASONS})
    sampled = [d for d in drafts_all if d.resp_len is not None]
    m.update(gen_resp_len=_rate(sum(d.resp_len for d in sampled), len(sampled)),
             gen_trunc_rate=_rate(sum(d.truncated for d in sampled), len(sampled)))
    rewards = [d.reward for d in drafts_all if d.reward is not None]
    if rewards:
        mean = sum(rewards) / len(rewards)
        m.update(gen_reward_mean=mean, gen_reward_std=math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)),
                 gen_docs_kept=len({d.doc_gid for d in drafts_all if d.kept}))
    # --- what the valid questions look like -----------------------------------------------------------
    hashes = [question_hash(v.text) for v in valid_all]
    count: dict[int, int] = {}
    docs_of: dict[int, set] = {}
    for h, v in zip(hashes, valid_all):
        count[h] = count.get(h, 0) + 1
        docs_of.setdefault(h, set()).add(v.doc_id)
    bigrams = [b for v in valid_all for w in [normalise(v.text).split()] for b in zip(w, w[1:])]
    keys = [v.key for v in valid_all if v.n_choices]                   # multiple choice: the key's letter
    m.update(q_duplicate_rate=_rate(sum(count[h] > 1 for h in hashes), n_v),
             q_cross_doc_duplicate_rate=_rate(sum(len(docs_of[h]) > 1 for h in hashes), n_v),
             q_seen_rate=_rate(sum(h in seen for h in hashes), n_v),
             q_distinct_2=_rate(len(set(bigrams)), len(bigrams)),
             q_key_entropy=_entropy_bits([keys.count(k) for k in sorted(set(keys))]))
    seen.update(hashes)
    # --- the solver on them ------------------------------------------------------------------------
    rates = [sum(v.correct) / len(v.correct) for v in valid_all if v.correct]
    hist = [0] * 5
    for r in rates:
        hist[min(int(r * 5), 4)] += 1
    ok = sum(x for v in valid_all for x in v.correct)
    m.update(question_solve_rate=_rate(ok, sum(len(v.correct) for v in valid_all)),
             q_solve_hist=[_rate(h, len(rates)) for h in hist],
             solver_signal_rate=_rate(sum(v.rewards_vary for v in valid_all), n_v),
             solver_resp_len=_rate(sum(x[0] for x in sol_all), len(sol_all)),
             solver_trunc_rate=_rate(sum(x[1] for x in sol_all), len(sol_all)))
    signal = [v.influence for v in valid_all if len(set(v.correct)) > 1] if scores is not None else []
    if signal:
        mean = sum(signal) / len(signal)
        std = math.sqrt(sum((s - mean) ** 2 for s in signal) / (len(signal) - 1)) if len(signal) > 1 else 0.0
        m.update(influence_mean=mean, influence_std=std, influence_pos_frac=sum(s > 0 for s in signal) / len(signal))
    # --- the dev set -------------------------------------------------------------------------------
    if parts[0]["dev"] is not None:
        dev_all = merged("dev")
        m.update(dev_acc=_rate(sum(sum(c) for _, c in dev_all), sum(len(c) for _, c in dev_all)),
                 dev_signal_groups=sum(len(set(c)) > 1 for _, c in dev_all))
        m["dev_signal_rate"] = _rate(m["dev_signal_groups"], len(dev_all))
    # --- throughput: generated tokens of all ranks over the slowest rank's seconds ----------------------
    tokens = {"dev_rollout": sum(p["dev_tokens"] for p in parts),
              "generation": sum(d.resp_len or 0 for d in drafts_all), "solver_rollout": sum(x[0] for x in sol_all)}
    for phase, n in tokens.items():
        secs = max(p["seconds"].get(phase, 0.0) for p in parts)
        m[f"tokens_per_s/{phase}"] = _rate(n, secs)
    return m


def test_points(history: list[dict], summary: dict) -> dict[str, list[float]]:
    """{test set: its held-out accuracies so far, in order}: the start (summary), then every test_every."""
    names = [k.split("/", 1)[1] for k in summary if k.startswith("test_acc_start/")]
    return {n: [summary[f"test_acc_start/{n}"]] + [m[f"test_acc/{n}"] for m in history if f"test_acc/{n}" in m]
            for n in names}


def alarms(cfg, history: list[dict], summary: dict) -> list[tuple[str, str]]:
    """[(name, message)] of the alarms whose condition holds at the last iteration of `history` and did not at
    the one before (raised once per crossing, not every iteration). Held-out accuracies: test_points."""
    def active(m: dict | None, tests: dict[str, list[float]]) -> dict[str, str]:
        out = {}
        if m is not None and m.get("valid", 0):
            if m.get("q_cross_doc_duplicate_rate", 0.0) > cfg.alarm_duplicate_rate:
                out["duplicates"] = (f"q_cross_doc_duplicate_rate {m['q_cross_doc_duplicate_rate']:.2f} > "
                                     f"{cfg.alarm_duplicate_rate} (alarm_duplicate_rate): the generator asks the "
                                     f"same question of different documents")
            if m.get("q_seen_rate", 0.0) > cfg.alarm_seen_rate:
                out["seen"] = (f"q_seen_rate {m['q_seen_rate']:.2f} > {cfg.alarm_seen_rate} (alarm_seen_rate): "
                               f"the generator repeats questions of earlier iterations (a document read again repeats its own too)")
            if m.get("solver_signal_rate", 1.0) < cfg.alarm_signal_rate:
                out["solver_signal"] = (f"solver_signal_rate {m['solver_signal_rate']:.2f} < {cfg.alarm_signal_rate}"
                                        f" (alarm_signal_rate): almost no question splits the solver's answers, "
                                        f"so it has little left to learn from")
        k = cfg.alarm_test_drops
        for name, ts in tests.items():
            if k and len(ts) > k and all(ts[-i] < ts[-i - 1] for i in range(1, k + 1)):
                out[f"test_falling/{name}"] = (f"held-out accuracy on {name} fell at {k} consecutive measurements "
                                               f"({' > '.join(f'{t:.3f}' for t in ts[-k - 1:])}) (alarm_test_drops)")
        return out
    if not history:
        return []
    now = active(history[-1], test_points(history, summary))
    before = active(history[-2] if len(history) > 1 else None, test_points(history[:-1], summary))
    return [(name, msg) for name, msg in now.items() if name not in before]
