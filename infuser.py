"""infuser.py -- the INFUSER loop: one iteration as seven phases, and the PPO update both roles share.

`run_iteration` runs the phases of README "What INFUSER computes" (algorithm.md §1.4), top to bottom:
  1 dev_rollouts       the solver answers every dev question n_solver times, graded (None counts as 0)
  2 draft_questions    the generator writes n_gen drafts per document, each parsed into a Question or a
                       counted rejection (questions.py)
  3 solver_rollouts    the solver answers each valid question n_solver times, graded against the key
  4 influence_phase    s_q on the PRE-update solver (influence.py, eq. 4-7); zero-variance questions score 0
  5 generator_rewards  R = s_q (invalid: gen_invalid_penalty); constant documents dropped; DuGRPO (eq. 2)
  6 generator_update   PPO-clip x token TIS over the global token-mean normaliser, grad clip (eq. 3)
  7 solver_update      Dr.GRPO over the non-constant question groups, stratified by document (eq. 1, 3)
Baselines and ablations are config values (config.py), not code paths. The iteration returns its records
(Iteration); diagnostics.py turns them into metrics. Each rank takes every world-th document and dev
question; seeds derive from global ids, so any number of ranks draws the same samples.
"""
from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

import dugrpo
import influence
from dist import all_sum, exclusive_offset, full, gather, gather_flat, rank_world, sharded
from grading import solver_messages
from questions import Document, Question, generator_messages, parse_question, question_hash
from records import Engine, Rollouts, Sample, SamplingParams, make_rollouts, pack, render_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def seed_for(*parts) -> int:
    """A stable 63-bit seed from any parts (run seed, iteration, role, global id, ...)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


# ----------------------------------------------------------------------------------------------
# The records that flow between phases

@dataclass
class Role:
    """One of the two co-evolving copies: the trained model, its AdamW, an engine (records.Engine) and `sync`,
    which pushes the latest weights into the engine before every rollout (None: it samples the model itself)."""
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    engine: Engine
    tokenizer: PreTrainedTokenizerBase
    sync: Callable[[], None] | None = None

    def sample(self, prompts: list[list[dict]], params: SamplingParams, seeds: list[int]) -> list[list[Sample]]:
        if hasattr(self.engine, "sleep"):        # vLLM with a sleep mode holds memory only while it samples
            self.engine.wake_up()
        if self.sync is not None:
            self.sync()
        out = self.engine.generate(prompts, params, seeds=seeds)   # even with no prompts: a collective
        if hasattr(self.engine, "sleep"):
            self.engine.sleep()
        return out


@dataclass
class Graded:
    """Rollout groups: the samples of a set of prompts (group = one prompt's global id) with their grades."""
    samples: list[Sample] = field(default_factory=list)      # flat, prompt-major
    group_ids: list[int] = field(default_factory=list)
    correct: list[float] = field(default_factory=list)       # 1/0 (None counted as 0)
    rewards: list[float] = field(default_factory=list)       # correct (+ mid-EOS penalty)
    grade_seconds: float = 0.0                                # time spent in grade(), timed apart

    def rollouts(self, pad_id: int, rewards: list[float] | None = None) -> Rollouts:
        return make_rollouts(self.samples, self.group_ids, self.rewards if rewards is None else rewards, pad_id)

    def by_group(self) -> dict[int, list[float]]:
        out = {}
        for g, c in zip(self.group_ids, self.correct):
            out.setdefault(g, []).append(c)
        return out


@dataclass
class Draft:
    """One generator sample and what became of it: its Question, then its reward and advantage."""
    doc: Document | None                      # None for a pre-generated question
    sample: Sample | None
    question: Question
    reward: float | None = None
    advantage: float | None = None
    kept: bool = False                        # its document's rewards vary: it is trained on


@dataclass
class Iteration:
    """What one iteration did, for diagnostics.py (the metrics line, the question log); seconds per phase."""
    it: int
    dev: Graded | None
    drafts: list[Draft]
    valid: list[Question]
    sol: Graded
    scores: dict[int, float] | None           # None when the run computes no influence
    gen_stats: dict
    solver_stats: dict
    seconds: dict[str, float]
    docs_too_long: int
    trains_generator: bool
    order: list[int]                          # the documents the generator update trained on


@contextmanager
def timed(seconds: dict[str, float], name: str):
    t0 = time.time()
    yield
    seconds[name] = seconds.get(name, 0.0) + time.time() - t0


def solve(role: Role, cfg, items: list, gids: list[int], it: int, tag: str) -> Graded:
    """The solver answers each item (a Question or a benchmarks.Item) cfg.n_solver times, graded."""
    params = SamplingParams(n=cfg.n_solver, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.solver_max_new_tokens, seed=None)
    prompts = [solver_messages(x.text, x.choices) for x in items]
    outs = role.sample(prompts, params, [seed_for(cfg.seed, it, tag, g) for g in gids])
    eos, out, tick = role.tokenizer.eos_token_id, Graded(), time.perf_counter()
    for x, g, samples in zip(items, gids, outs):
        for s in samples:
            score = x.grade(s.text)        # a benchmark item grades by its own rules (benchmarks.Item)
            r = c = 1.0 if score == 1.0 else 0.0
            # algorithm.md §2.6: no extractable answer although the model stopped by itself (EOS)
            if cfg.solver_mid_eos_penalty and score is None and s.finish_reason == "stop" \
                    and s.response_ids and s.response_ids[-1] == eos:
                r += cfg.solver_mid_eos_penalty
            out.samples.append(s)
            out.group_ids.append(g)
            out.correct.append(c)
            out.rewards.append(r)
    out.grade_seconds = time.perf_counter() - tick
    return out


def question_reward(kind: str, correct: list[float], score: float) -> float:
    """Reward of one valid question from its solver rollouts' correctness and its influence score."""
    p = sum(correct) / len(correct)
    if kind == "influence":
        return score
    if kind == "spice":                   # SPICE-style: peaks at a 50% solve rate (algorithm.md §5.3)
        return math.exp(-((p * (1 - p) - 0.25) ** 2) / 0.02)
    if kind == "uncertainty":             # R-Zero-style: min(p, 1 - p)
        return min(p, 1.0 - p)
    raise ValueError(f"unknown generator_reward {kind!r}: influence | spice | uncertainty")


# ----------------------------------------------------------------------------------------------
# The PPO update shared by both roles (eq. 3; algorithm.md §3.6-3.8, §6)

def stratify_by_doc(groups: list[tuple[int, str]]) -> list[int]:
    """[(group id, doc id)] -> group ids, each document's spread evenly (algorithm.md §3.7): the j-th of its
    k questions goes to position (j + 0.5) / k; ties keep first-seen document order."""
    by_doc, first = {}, {}
    for i, (g, d) in enumerate(groups):
        by_doc.setdefault(d, []).append(g)
        first.setdefault(d, i)
    keyed = [((j + 0.5) / len(gs), first[d], j, g) for d, gs in by_doc.items() for j, g in enumerate(gs)]
    return [g for *_, g in sorted(keyed)]


def micro_step(model, cfg, mb: Rollouts, adv: torch.Tensor, lp_old: torch.Tensor | None, normaliser: float,
               scale: float):
    """One micro-batch: forward, the loss of eq. (3), backward into .grad (times `scale`).
    lp_old None = on-policy (pi_old is this forward's detached log-probs). Returns (loss, stats)."""
    lp = dugrpo.token_logprobs(model, mb.input_ids, mb.attention_mask, cfg.temperature, mb.response_mask)
    lp_old = lp.detach() if lp_old is None else lp_old
    loss, st = dugrpo.policy_loss(lp, lp_old, adv, mb.response_mask, normaliser,
                                  sampler_logprobs=mb.sampler_logprobs, tis_cap=cfg.tis_cap,
                                  clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip)
    (loss * scale).backward()
    return loss, st


def micro_batches(cfg, widths: list[int]) -> list[list[int]]:
    """A minibatch's rows (their widths) per forward/backward: micro_batch rows in order; or, with
    micro_batch_tokens, rows by length under that budget, in no more passes than micro_batch rows need,
    with the least padding (records.pack)."""
    n = len(widths)
    if cfg.micro_batch_tokens:
        return pack(widths, cfg.micro_batch_tokens, math.ceil(n / cfg.micro_batch))
    return [list(range(i, min(i + cfg.micro_batch, n))) for i in range(0, n, cfg.micro_batch)]


def ppo_update(role: Role, cfg, rollouts: Rollouts, advantages: torch.Tensor, group_order: list[int]) -> dict:
    """PPO over `rollouts` (this rank's rows) in minibatches of cfg.ppo_minibatch_groups whole groups, in
    the global `group_order`. Each loss is divided by dugrpo.token_mean_normaliser: groups per minibatch x
    group size x the whole update's mean response length, so a partial last minibatch weighs less
    (algorithm.md §3.6); under FSDP2, times the world size (FSDP averages gradients). Returns statistics."""
    model, opt = role.model, role.optimizer
    device = next(model.parameters()).device
    n_rows, n_tok = all_sum([len(rollouts), rollouts.response_mask.sum().item()])
    if n_rows == 0:
        return {}
    group_size = cfg.n_solver if role.name == "solver" else cfg.n_gen
    normaliser = dugrpo.token_mean_normaliser(None, cfg.ppo_minibatch_groups * group_size, (n_tok, n_rows))
    scale = float(rank_world()[1]) if sharded(model.parameters()) else 1.0
    minibatches = [group_order[i:i + cfg.ppo_minibatch_groups]
                   for i in range(0, len(group_order), cfg.ppo_minibatch_groups)]
    gid, width = rollouts.group_ids, rollouts.widths()
    rows_of = [torch.isin(gid, torch.tensor(mb, dtype=gid.dtype)).nonzero().squeeze(-1) for mb in minibatches]
    packs = [[rows[b] for b in micro_batches(cfg, width[rows].tolist())] for rows in rows_of]
    # every rank runs the same number of forward/backward passes (FSDP2 collectives inside)
    passes = [max(counts) for counts in zip(*gather([len(p) for p in packs]))]

    def micro(i, k):             # (micro-batch, advantages, its rows, weight); weight 0 = a filler pass
        if k >= len(packs[i]):
            filler = rollouts.select(torch.zeros(1, dtype=torch.long)) if len(rollouts) else influence.filler()
            return filler, torch.zeros(1), None, 0.0
        part = packs[i][k]
        return rollouts.select(part), advantages[part], part, 1.0

    old = None
    if not (len(minibatches) == 1 and cfg.ppo_epochs == 1):      # off-policy: recompute pi_old (§3.8)
        old = torch.zeros_like(rollouts.response_mask, dtype=dugrpo.acc_dtype(next(model.parameters()).dtype))
        with torch.no_grad():
            for i, n_pass in enumerate(passes):
                for k in range(n_pass):
                    mb, _, part, _ = micro(i, k)
                    lp = dugrpo.token_logprobs(model, mb.input_ids.to(device), mb.attention_mask.to(device),
                                               cfg.temperature, mb.response_mask.to(device)).cpu()
                    if part is not None:
                        old[part, :lp.shape[1]] = lp
    model.train()
    per_pass, gnorms = [], []            # this rank's (response tokens, loss, statistics) per pass
    for _ in range(cfg.ppo_epochs):
        for i, n_pass in enumerate(passes):
            opt.zero_grad(set_to_none=True)
            for k in range(n_pass):
                mb, adv, part, weight = micro(i, k)
                mb = mb.to(device)
                lp_old = None if old is None or part is None else old[part, :mb.input_ids.shape[1]].to(device)
                loss, st = micro_step(model, cfg, mb, adv.to(device), lp_old, normaliser, scale * weight)
                if weight:
                    per_pass.append((mb.response_mask.sum().item(), loss.item(), {n: v.item() for n, v in st.items()}))
            gnorm = full(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            if torch.isfinite(gnorm):
                opt.step()                         # a non-finite norm skips the step (algorithm.md §3.7)
            opt.zero_grad(set_to_none=True)
            gnorms.append(gnorm.item())            # the global norm: the same on every rank
    every = gather_flat(per_pass)     # token-weighted means over every rank's passes; the loss a sum
    total = sum(n for n, _, _ in every)
    out = {k: sum(n * st[k] for n, _, st in every) / max(total, 1e-12) for k in sorted(every[0][2]) if k != "tis_max"}
    return {**out, "loss": sum(loss for _, loss, _ in every), "tis_max": max(st["tis_max"] for *_, st in every),
            "grad_norm": sum(gnorms) / max(len(gnorms), 1), "steps": len(minibatches) * cfg.ppo_epochs}


# ----------------------------------------------------------------------------------------------
# One iteration: the seven phases

def uses_influence(cfg) -> bool:
    return cfg.generator_reward == "influence" and not cfg.fix_generator and not cfg.dev_only


def trains_generator(cfg) -> bool:
    return not cfg.dev_only and not cfg.fix_generator and not cfg.question_source


def dev_rollouts(cfg, it, solver: Role, items: list, gids: list[int]) -> Graded | None:
    if cfg.skip_dev_rollout and not cfg.dev_only and not uses_influence(cfg):
        return None
    return solve(solver, cfg, items, gids, it, "dev")


def draft_questions(cfg, it, generator: Role, docs: list[Document]) -> tuple[list[Draft], int]:
    """n_gen drafts per document, and the number of documents dropped for a prompt too long (§2.1)."""
    prompts = [generator_messages(d.text, cfg.question_route) for d in docs]
    fits = [len(render_prompt(generator.tokenizer, p)) <= cfg.max_prompt_tokens for p in prompts]
    docs, prompts = [d for d, ok in zip(docs, fits) if ok], [p for p, ok in zip(prompts, fits) if ok]
    params = SamplingParams(n=cfg.n_gen, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.gen_max_new_tokens, seed=None)
    outs = generator.sample(prompts, params, [seed_for(cfg.seed, it, "gen", d.gid) for d in docs])
    drafts = []
    for d, samples in zip(docs, outs):
        for k, s in enumerate(samples):
            gid = d.gid * cfg.n_gen + k                      # the same on any number of ranks
            q = parse_question(s.text, d.doc_id, gid, seed_for(cfg.seed, it), cfg.question_route)
            q.gid = gid
            drafts.append(Draft(d, s, q))
    return drafts, len(fits) - len(docs)


def solver_rollouts(cfg, it, solver: Role, drafts: list[Draft]) -> tuple[list[Question], Graded]:
    questions = [d.question for d in drafts]
    for q in questions:
        if q.rejected is None and len(render_prompt(solver.tokenizer, solver_messages(q.text, q.choices))) \
                > cfg.max_prompt_tokens:
            q.rejected = "prompt_too_long"
    valid = [q for q in questions if q.rejected is None]
    sol = solve(solver, cfg, valid, [q.gid for q in valid], it, "q") if valid or rank_world()[1] > 1 else Graded()
    return valid, sol


def influence_phase(cfg, solver: Role, dev: Graded | None, sol: Graded, valid: list[Question]) -> dict[int, float]:
    """{question gid: influence score} on the pre-update solver with its current AdamW state."""
    scores = {q.gid: 0.0 for q in valid}
    if not uses_influence(cfg):
        return scores
    if all_sum([len(valid)])[0] > 0:                     # global: every rank takes the same branch
        pad = _pad_id(solver.tokenizer)                # rewards: correctness only (no mid-EOS penalty here)
        s = influence.influence_scores(solver.model, solver.optimizer, dev.rollouts(pad, rewards=dev.correct),
                                       sol.rollouts(pad, rewards=sol.correct), mode=cfg.similarity_mode,
                                       temperature=cfg.temperature, tis_cap=cfg.tis_cap,
                                       chunk_questions=cfg.influence_chunk, max_tokens=cfg.influence_tokens)
        scores.update(zip(sorted(set(sol.group_ids)), s.tolist()))
    return scores


def generator_rewards(cfg, drafts: list[Draft], sol: Graded, scores: dict[int, float],
                      seen: set[int] | None = None) -> list[int]:
    """Fills each draft's reward, advantage and kept flag; returns the kept documents' gids (the global
    group order of the generator update). Rewards of all ranks: R [N_drafts], doc gids G [N_drafts]."""
    acc = sol.by_group()
    repeated = repeated_questions(drafts, seen) if cfg.dedup_questions else set()
    for d in drafts:
        q = d.question
        d.reward = (question_reward(cfg.generator_reward, acc[q.gid], scores[q.gid])
                    if q.rejected is None and q.gid not in repeated else cfg.gen_invalid_penalty)
    every = gather_flat([(d.doc.gid, d.reward) for d in drafts])
    if not every:
        return []
    G, R = torch.tensor([g for g, _ in every]), torch.tensor([r for _, r in every], dtype=torch.float64)
    keep = dugrpo.varying_groups(R, G)
    adv = torch.zeros_like(R)
    if keep.any():
        adv[keep] = dugrpo.group_advantages(R[keep], G[keep], cfg.generator_normalization)
    mine = exclusive_offset(len(drafts))
    for d, a, k in zip(drafts, adv[mine:mine + len(drafts)].float().tolist(), keep[mine:mine + len(drafts)].tolist()):
        d.advantage, d.kept = a, k
    return sorted(set(G[keep].tolist()))


def generator_update(cfg, generator: Role, drafts: list[Draft], order: list[int]) -> dict:
    if not order:                                        # every document's rewards were constant
        return {}
    kept = [d for d in drafts if d.kept]
    roll = make_rollouts([d.sample for d in kept], [d.doc.gid for d in kept], [d.reward for d in kept],
                         _pad_id(generator.tokenizer))
    return ppo_update(generator, cfg, roll, torch.tensor([d.advantage for d in kept], dtype=torch.float32), order)


def solver_update(cfg, solver: Role, train: Graded | None, valid: list[Question]) -> dict:
    """Dr.GRPO over the groups whose rewards vary, in document-stratified minibatches."""
    if cfg.fix_solver or train is None:
        return {}
    roll = train.rollouts(_pad_id(solver.tokenizer))
    roll = roll.select(dugrpo.varying_groups(roll.rewards, roll.group_ids))
    doc_of = {q.gid: q.doc_id for q in valid}
    # sorted by global id, so that "first-seen document" (stratify's tie-break) is rank-independent
    meta = sorted(gather_flat([(g, doc_of.get(g, "dev")) for g in sorted(set(roll.group_ids.tolist()))]))
    order = stratify_by_doc(meta)
    if not order:                                        # global: every rank takes the same branch
        return {"groups_trained": 0}
    adv = dugrpo.group_advantages(roll.rewards, roll.group_ids, cfg.solver_normalization)
    return {**ppo_update(solver, cfg, roll, adv, order), "groups_trained": len(order)}


def repeated_questions(drafts: list[Draft], seen: set[int] | None) -> set[int]:
    """gids of the valid questions (of all ranks) whose normalised text was asked before: in an earlier
    iteration (`seen`) or by a lower gid of this one. The --dedup_questions guard (a departure from the paper)."""
    pairs = sorted(gather_flat([(d.question.gid, question_hash(d.question.text)) for d in drafts
                                if d.question.rejected is None]))
    first, out = set(seen or ()), set()
    for gid, h in pairs:
        if h in first:
            out.add(gid)
        first.add(h)
    return out


def run_iteration(cfg, it: int, generator: Role, solver: Role, batch: list[dict], dev_items: list,
                  external_questions: list[Question] | None = None, seen: set[int] | None = None) -> Iteration:
    """One INFUSER iteration over the global batch of documents ({"doc_id", "text"}), the whole dev set and
    (question_source) pre-generated questions that replace phase 2; each rank takes its share of all three.
    seen: hashes of earlier iterations' valid questions (--dedup_questions). Returns this rank's records."""
    rank, world = rank_world()
    docs = [Document(d["doc_id"], d["text"], j) for j, d in enumerate(batch)][rank::world]
    seconds, too_long = {}, 0
    with timed(seconds, "dev_rollout"):
        dev = dev_rollouts(cfg, it, solver, dev_items[rank::world], list(range(len(dev_items)))[rank::world])
    with timed(seconds, "generation"):
        drafts = []
        if external_questions is not None:
            for j, q in enumerate(external_questions):
                q.gid = j
            drafts = [Draft(None, None, q) for q in external_questions[rank::world]]
        elif not cfg.dev_only:
            drafts, too_long = draft_questions(cfg, it, generator, docs)
    with timed(seconds, "solver_rollout"):
        valid, sol = solver_rollouts(cfg, it, solver, drafts)
    with timed(seconds, "influence"):
        scores = influence_phase(cfg, solver, dev, sol, valid)
    with timed(seconds, "rewards"):
        trains = trains_generator(cfg) and external_questions is None
        order = generator_rewards(cfg, drafts, sol, scores, seen) if trains else []
    with timed(seconds, "generator_update"):
        gen_stats = generator_update(cfg, generator, drafts, order)
    with timed(seconds, "solver_update"):
        solver_stats = solver_update(cfg, solver, dev if cfg.dev_only else sol, valid)
    return Iteration(it, dev, drafts, valid, sol, scores if uses_influence(cfg) else None, gen_stats,
                     solver_stats, seconds, too_long, trains, order)


def _pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
