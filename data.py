"""data.py -- the run's data: documents, dev / test questions, pre-generated questions, and the document
order the paper draws them in (DocumentStream). JSONL errors are one line naming file:line:column.

Run: imported by train.py. Tests: tests/test_infuser.py (DocumentStream), tests/test_robust.py (bad files).
"""
from __future__ import annotations

import json
import os
import random

from questions import Question, parse_question
from config import Config, ConfigError
from benchmarks import Item, load_benchmark
from benchmarks import read_jsonl as benchmarks_read_jsonl
from grading import LETTERS, key_letter


def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSONL file (benchmarks.read_jsonl); a missing file or a malformed line is one ConfigError line."""
    if not os.path.isfile(path):
        raise ConfigError(f"file not found: {path}")
    try:
        return [row for _, row in benchmarks_read_jsonl(path)]
    except ValueError as e:
        raise ConfigError(str(e)) from None


def load_documents(spec: str) -> list[dict]:
    if spec == "toy":
        import toy
        return [dict(d) for d in toy.build_world().documents]
    if not spec:
        raise ConfigError("no documents: give --documents=PATH (JSONL with doc_id and text)")
    docs = []
    for n, row in enumerate(read_jsonl(spec), 1):
        text = row.get("text", row.get("content"))
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{spec}: document {n} has no 'text' (or 'content') string")
        docs.append({"doc_id": str(row.get("doc_id", n - 1)), "text": text})
    if not docs:
        raise ConfigError(f"{spec}: no documents")
    return docs


def load_questions(spec: str, cfg: Config, split: str) -> list[Item]:
    """Dev/test MCQs: "toy", a JSONL (question, choices, answer letter or choice text), or a benchmark."""
    if spec == "toy":
        import toy
        w = toy.build_world()
        rows = w.dev if split == "dev" else w.test
        items = [Item(str(r["id"]), r["question"], list(r["choices"]), r["answer"], "mcq") for r in rows]
    elif spec.endswith(".jsonl") or os.path.sep in spec:
        items = []
        for n, r in enumerate(read_jsonl(spec), 1):
            choices = r.get("choices", r.get("options"))
            key = r.get("answer", r.get("answer_letter"))
            if not isinstance(r.get("question"), str) or not isinstance(choices, list) or key is None:
                raise ConfigError(f"{spec}:{n}: a question needs 'question', 'choices' and 'answer'")
            if not 2 <= len(choices) <= len(LETTERS):
                raise ConfigError(f"{spec}:{n}: {len(choices)} choices; a question needs 2 to {len(LETTERS)} "
                                  f"(letters A-Z)")
            letter = key_letter(str(key), [str(c) for c in choices])
            if letter is None:
                raise ConfigError(f"{spec}:{n}: answer {key!r} is neither a letter nor one of the choices")
            items.append(Item(str(r.get("id", n)), r["question"], [str(c) for c in choices], letter, "mcq",
                              source=r.get("data_source")))    # e.g. "mmlu_pro": its answer patterns
    elif spec:
        try:
            items = load_benchmark(spec, data_dir=cfg.data_dir or None)
        except (ValueError, OSError, RuntimeError) as e:
            raise ConfigError(f"--{split}={spec}: {e}") from None
    else:
        raise ConfigError(f"no {split} set: give --{split}=PATH")
    if cfg.dev_limit and split == "dev":
        items = items[:cfg.dev_limit]
    return items


def load_external_questions(path: str) -> dict[int, list[Question]]:
    """Pre-generated questions per iteration (a frozen external generator): JSONL rows with iteration,
    question, choices, ground_truth (choice text) and doc_id; parsed and shuffled like generated ones."""
    by_it: dict[int, list[Question]] = {}
    for n, r in enumerate(read_jsonl(path)):
        raw = json.dumps({"question_text": r.get("question", ""), "choices": r.get("choices", []),
                          "ground_truth": r.get("ground_truth", "")})
        q = parse_question(raw, str(r.get("doc_id", "ext")), n, seed=0)
        by_it.setdefault(int(r.get("iteration", 0)), []).append(q)
    return by_it


class DocumentStream:
    """The paper's document order (algorithm.md §2.1): ids shuffled once with random.Random(seed),
    sequential batches; at the end of an epoch the rest is taken, the order reshuffled with the same RNG and
    the batch filled from its start. state_dict() / load_state_dict() make resume exact."""

    def __init__(self, documents: list[dict], seed: int):
        self.documents, self.rng = documents, random.Random(seed)
        self.order = list(range(len(documents)))
        self.rng.shuffle(self.order)
        self.pos, self.epoch = 0, 0

    def next_batch(self, size: int) -> list[dict]:
        out = []
        while len(out) < size:
            take = self.order[self.pos:self.pos + size - len(out)]
            out += take
            self.pos += len(take)
            if self.pos >= len(self.order):
                self.rng.shuffle(self.order)
                self.pos, self.epoch = 0, self.epoch + 1
        return [self.documents[i] for i in out]

    def state_dict(self) -> dict:
        return {"order": self.order, "pos": self.pos, "epoch": self.epoch, "rng": self.rng.getstate()}

    def load_state_dict(self, s: dict) -> None:
        self.order, self.pos, self.epoch = list(s["order"]), s["pos"], s["epoch"]
        self.rng.setstate((s["rng"][0], tuple(s["rng"][1]), s["rng"][2]))
