"""records.py -- the records that cross files: sampling settings, samples, rollouts as tensors, the one
method every engine has (Engine), render_prompt (chat messages -> prompt ids) and pack (micro-batches by a
token budget). Only torch. Shapes: N rollouts, T tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class SamplingParams:
    """Sampling settings shared by every engine; defaults: the training sampler (algorithm.md §2.3). top_k 0
    and top_p 1.0 are off; temperature 0 is greedy, with the log-probs of the unscaled logits; seed None
    draws from torch's global generator."""
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = 0

    def __post_init__(self):
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)   # a lone str: one stop
        checks = [(isinstance(self.n, int) and self.n >= 1, "n must be an integer >= 1"),
                  (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
                  (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
                  (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0 (0 = off)"),
                  (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
                   "max_new_tokens must be an integer >= 1"),
                  (all(isinstance(s, str) and s for s in self.stop), "stop must hold non-empty strings")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"SamplingParams: {msg} (got {self})")


@dataclass
class Sample:
    """One sampled response. logprobs[i]: the sampler's log-prob of response_ids[i] under the processed
    (tempered, top-k/top-p filtered) distribution; finish_reason "stop" (EOS or a stop string) or "length".
    As in vLLM, response_ids keep a sampled EOS and end with the token that completed a stop string, while
    `text` (special tokens skipped) is cut just before the stop string."""
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float] | None = None
    finish_reason: str = "stop"
    text: str = ""


@dataclass
class Rollouts:
    """Rollouts as tensors, rows prompt + response, right-padded: input_ids, attention_mask [N, T] long;
    response_mask [N, T] float, 1 on scored response tokens; group_ids [N] long (one id per prompt); rewards
    [N] float; sampler_logprobs [N, T] or None, where logprobs[n, t] = log p(input_ids[n, t] | input_ids[n, <t])."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    group_ids: torch.Tensor
    rewards: torch.Tensor
    sampler_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> "Rollouts":
        """Rows by bool mask or index tensor, trimmed to the longest remaining row."""
        if index.dtype == torch.bool:
            index = index.nonzero().squeeze(-1)
        am = self.attention_mask[index]
        t = int(am.sum(-1).max().item()) if index.numel() else 1
        cut = lambda x: None if x is None else x[index][:, :t]
        return Rollouts(cut(self.input_ids), cut(self.attention_mask), cut(self.response_mask),
                        self.group_ids[index], self.rewards[index], cut(self.sampler_logprobs))

    def widths(self) -> torch.Tensor:
        """[N] attended tokens of each right-padded row (its width once `select` trims it), at least 1."""
        return self.attention_mask.sum(-1).clamp(min=1)

    def to(self, device) -> "Rollouts":
        mv = lambda x: None if x is None else x.to(device)
        return Rollouts(mv(self.input_ids), mv(self.attention_mask), mv(self.response_mask),
                        mv(self.group_ids), mv(self.rewards), mv(self.sampler_logprobs))


def pack(widths: list[int], max_tokens: float, max_batches: int | None = None,
         max_items: int | None = None) -> list[list[int]]:
    """Items (rows, or questions) by width, longest first, cut into batches of <= max_tokens padded tokens
    (size x widest; a wider item alone). max_batches None: the fewest batches of <= max_items (greedy).
    Else at most max_batches (or the fewest possible) with the fewest padded tokens (a dynamic programme
    over the cuts). Each batch lists its items in their original order."""
    n = len(widths)
    order = sorted(range(n), key=lambda i: -widths[i])
    w = [widths[i] for i in order]
    cuts = []                                                      # greedy: the fewest batches
    for i in range(n):
        if not cuts or (len(cuts[-1]) + 1) * w[cuts[-1][0]] > max_tokens or len(cuts[-1]) == max_items:
            cuts.append([])
        cuts[-1].append(i)
    if max_batches is not None and n > 1:
        max_batches = max(max_batches, len(cuts))
        inf = float("inf")
        best = [[0.0] + [inf] * n]                                 # best[k][i]: w[:i] in k batches
        back = [[0] * (n + 1)]
        for k in range(1, max_batches + 1):
            row, arg = [inf] * (n + 1), [0] * (n + 1)
            for i in range(1, n + 1):
                for a in range(i - 1, -1, -1):                       # last batch w[a:i], widest w[a]
                    if i - a > 1 and (i - a) * w[a] > max_tokens:
                        break                                       # only wider and longer from here
                    c = best[k - 1][a] + (i - a) * w[a]
                    if c < row[i]:
                        row[i], arg[i] = c, a
            best.append(row)
            back.append(arg)
        k = min(range(1, max_batches + 1), key=lambda j: (best[j][n], j))
        cuts, i = [], n
        for j in range(k, 0, -1):
            cuts.insert(0, list(range(back[j][i], i)))
            i = back[j][i]
    return [sorted(order[k] for k in b) for b in cuts]


class Engine(Protocol):
    """What the rest of the project calls: chat prompts x n samples -> samples, per prompt in order."""

    def generate(self, prompts: list[list[dict]], params: SamplingParams,
                 seeds: list[int] | None = None) -> list[list[Sample]]: ...


def make_rollouts(samples: list[Sample], group_ids: list[int], rewards: list[float],
                  pad_id: int = 0) -> Rollouts:
    """Pack samples into a right-padded Rollouts record (prompt then response in every row)."""
    n = len(samples)
    t = max((len(s.prompt_ids) + len(s.response_ids) for s in samples), default=1)
    ids = torch.full((n, t), pad_id, dtype=torch.long)
    am = torch.zeros(n, t, dtype=torch.long)
    rm = torch.zeros(n, t, dtype=torch.float32)
    has_lp = n > 0 and all(s.logprobs is not None for s in samples)
    lp = torch.zeros(n, t, dtype=torch.float32) if has_lp else None
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        ids[i, :p + r] = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        am[i, :p + r] = 1
        rm[i, p:p + r] = 1.0
        if has_lp:
            lp[i, p:p + r] = torch.tensor(s.logprobs, dtype=torch.float32)
    return Rollouts(ids, am, rm, torch.as_tensor(group_ids, dtype=torch.long),
                    torch.as_tensor(rewards, dtype=torch.float32), lp)


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Chat messages -> prompt token ids: the chat template's text with add_generation_prompt, encoded
    without special tokens (the template writes them, as vLLM's chat does). Without a template: "role:
    content" blocks, then "assistant:", encoded with the tokenizer's special tokens (e.g. BOS)."""
    if not isinstance(messages, (list, tuple)) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ValueError("a prompt must be a non-empty list of chat messages "
                         "{'role': str, 'content': str}; got " + repr(messages)[:200])
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"
    return list(tokenizer(text)["input_ids"])
