"""toy.py -- the embedded default: a small synthetic world and a tiny anchor model, so that the whole
INFUSER loop runs, and visibly learns, on a laptop CPU in minutes.

The world (why influence matters in it)
  Documents describe farmers: where they live, the colour of their barn, the animal they keep, and a
  little story about a stock of items ("In the morning Tam had 14 pears. Then Tam bought 5 more and later
  sold 3."). One document supports several kinds of questions:
    * two-step questions, self-contained: "Tam has 14 pears. Tam buys 5 more, then sells 3. How many pears
      does Tam have now?" -- the TARGET skill: the dev and test sets are made of exactly such questions;
    * look-up questions: "What color is Tam's barn?" -- off target, and not solvable from the question
      alone (two of the choices have the right type, so a solver scores about 50%: the questions that a
      "chase 50%-solvable questions" reward (SPICE, uncertainty) likes best, and useless for the target).
  The anchor model starts imperfect in both roles, in the ways the real models are:
    * as a solver it knows the arithmetic but, on two-step questions, often stops after the first step or
      flips the second operation (the typical mistakes that the wrong choices are built from), or guesses;
    * as a generator it mixes on-target questions, look-ups and invalid output (prose, empty keys, JSON
      cut short, three choices, a key that is not a choice), and some of its on-target questions carry a
      WRONG key: the value of a typical mistake. Training the solver on such a question rewards the
      mistake and hurts the dev set: its influence is negative.
  So the influence score (cosine of the preconditioned question gradient with the dev gradient) is
  positive for on-target questions with correct keys, about zero for look-ups, negative for wrong keys; a
  generator rewarded by it learns to ask what helps the solver on the dev set. Held-out test questions
  (same skill, disjoint from dev) measure the solver at the end.

The anchor
  A Qwen3ForCausalLM (4 layers, hidden 128, head_dim 32, untied embeddings: servable by vLLM) pretrained
  once, deterministically, on text rendered in both roles' REAL prompt formats: generator input =
  render_prompt(tok, questions.generator_messages(doc)), target = the JSON question; solver input =
  render_prompt(tok, grading.solver_messages(question, choices)), target = "14 + 5 = 19. 19 - 3 = 16.
  \\boxed{B}". The mixtures of good and bad behaviour above are in that text (GENERATOR_MODES, SOLVER_MODES),
  so the anchor's behaviour is a mixture the RL updates can shift. Both roles start from this one anchor.
  The tokenizer (ChatML template; EOS = <|im_end|>) turns every fixed span of the two prompts into ONE
  added token, and the JSON keys of a question into a few more, so a 1.6 KB generator prompt is ~60 tokens;
  the world's own text is byte-level BPE trained on the world. The fixed spans are read from
  questions.py / grading.py at build time, and the anchor's fingerprint records them: change a prompt and
  load_anchor() retrains (and tests/test_toy.py says the shipped copy is stale).

What it does not show: that INFUSER teaches new knowledge (the RL updates here select among behaviours
the anchor already has -- the "sharpening" that RLVR mostly does on real models too), anything about
real benchmarks, or timing at scale. The generator never sees the dev set, as in the paper.

Run:
  python toy.py --pretrain [--out DIR]   # pretrain the anchor (~5 min on 2 cores; deterministic)
  python toy.py --report [--n 4]         # anchor statistics: valid-question rate, dev/test accuracy, ...
  python toy.py --write-world DIR        # documents.jsonl, dev.jsonl, test.jsonl for the generic loop
  python train.py                        # the loop on this world (the default preset, `toy`)
API: build_world, write_world, classify_question, load_anchor, pretrain_anchor, anchor_report.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
SHIPPED_ANCHOR = ROOT / "assets" / "toy_anchor"     # the copy in the repository (python toy.py --pretrain)
CACHE_ANCHOR = ROOT / ".cache" / "toy_anchor"       # where load_anchor() pretrains when that copy is stale
WORLD_VERSION = 1                                   # bump when the world's text or the anchor recipe changes

# ----------------------------------------------------------------------------------------------
# The world's vocabulary

NAMES = ["Tam", "Rin", "Ola", "Bex", "Kip", "Noor", "Ivo", "Lu", "Mara", "Pell", "Sade", "Tove", "Wen",
         "Yara", "Zed", "Ada", "Bo", "Cy", "Dov", "Eli", "Fen", "Gus", "Hal", "Ines", "Jo", "Kai", "Lev",
         "Mo", "Nia", "Otto", "Pia", "Quin", "Ros", "Sol", "Tess", "Uma", "Vic", "Wim", "Xan", "Yul"]
ITEMS = ["pears", "plums", "apples", "eggs", "coins", "stamps", "shells", "beads", "cards", "marbles",
         "buttons", "nuts", "figs", "candles", "pebbles", "ribbons"]
GAIN = {"buys": "bought", "picks": "picked", "finds": "found", "wins": "won"}        # present: past
LOSE = {"sells": "sold", "gives away": "gave away", "loses": "lost", "uses": "used"}
COLORS = ["red", "blue", "green", "white", "black", "yellow", "grey", "brown"]
TOWNS = ["Hollow", "Brindle", "Marsh End", "Oakridge", "Fenwick", "Lowmoor", "Ashby", "Dunmore"]
PETS = ["goat", "cat", "dog", "hen", "duck", "pony", "rabbit", "pig"]
LOOKUPS = {  # attribute: (question, choices of the right type)
    "color": ("What color is {name}'s barn?", COLORS),
    "town": ("In which town does {name} live?", TOWNS),
    "pet": ("Which animal does {name} keep?", PETS),
}


@dataclass
class Farmer:
    """One document's facts: a stock of `item` that starts at `a`, changes by `b` (verb1) then `c` (verb2),
    plus three look-up attributes."""
    name: str
    item: str
    a: int
    verb1: str
    b: int
    verb2: str
    c: int
    color: str
    town: str
    pet: str

    @property
    def values(self) -> dict:
        """The correct answer and the typical mistakes that the wrong choices are made of."""
        return two_step_values(self.a, self.verb1, self.b, self.verb2, self.c)


def _sign(verb: str) -> int:
    return 1 if verb in GAIN else -1


VALUE_KINDS = ("answer", "half", "flip", "start")


def two_step_values(a: int, verb1: str, b: int, verb2: str, c: int) -> dict:
    """answer: both steps; and three typical mistakes: half (stopped after the first step), flip (second
    operation flipped), start (no step at all: the starting count)."""
    s1, s2 = _sign(verb1), _sign(verb2)
    return {"answer": a + s1 * b + s2 * c, "half": a + s1 * b, "flip": a + s1 * b - s2 * c, "start": a}


def random_farmer(rng: random.Random) -> Farmer:
    """A farmer whose four values (answer and three mistakes) are distinct and >= 1."""
    while True:
        f = Farmer(rng.choice(NAMES), rng.choice(ITEMS), rng.randint(10, 20), rng.choice([*GAIN, *LOSE]),
                   rng.randint(2, 9), rng.choice([*GAIN, *LOSE]), rng.randint(2, 9), rng.choice(COLORS),
                   rng.choice(TOWNS), rng.choice(PETS))
        v = list(f.values.values())
        if min(v) >= 1 and len(set(v)) == 4:
            return f


def _more(verb: str) -> str:
    return " more" if verb in GAIN else ""


def document_text(f: Farmer, rng: random.Random) -> str:
    """The document: three attribute sentences and the stock story, in a random order."""
    past = {**GAIN, **LOSE}
    story = (f"In the morning {f.name} had {f.a} {f.item}. Then {f.name} {past[f.verb1]} {f.b}{_more(f.verb1)}"
             f" and later {past[f.verb2]} {f.c}{_more(f.verb2)}.")
    facts = [f"{f.name} lives in {f.town}.", f"{f.name}'s barn is {f.color}.", f"{f.name} keeps a {f.pet}."]
    rng.shuffle(facts)
    facts.insert(rng.randint(0, 3), story)
    return " ".join(facts)


def two_step_question(f: Farmer) -> str:
    """The target skill: a self-contained two-step question about the farmer's stock."""
    return (f"{f.name} has {f.a} {f.item}. {f.name} {f.verb1} {f.b}{_more(f.verb1)}, then {f.verb2} "
            f"{f.c}{_more(f.verb2)}. How many {f.item} does {f.name} have now?")


_VERBS = "|".join(re.escape(v) for v in [*GAIN, *LOSE])
_TWO_STEP = re.compile(rf"^\s*([A-Z][a-z]+) has (\d+) ([a-z]+)\. \1 ({_VERBS}) (\d+)(?: more)?, then "
                       rf"({_VERBS}) (\d+)(?: more)?\. How many \3 does \1 have now\?\s*$")


def classify_question(question_text: str, choices: list[str] | None, key_text: str) -> dict:
    """Diagnostics for one generated question: {"on_target": bool, "key_correct": bool | None}.
    On target = a self-contained two-step question (the dev skill); its key is correct when it is the
    two-step answer and that answer is one of the choices. key_correct is None for off-target questions
    (a look-up cannot be checked from the question alone)."""
    m = _TWO_STEP.match(question_text or "")
    if not m:
        return {"on_target": False, "key_correct": None}
    a, v1, b, v2, c = int(m[2]), m[4], int(m[5]), m[6], int(m[7])
    answer = str(two_step_values(a, v1, b, v2, c)["answer"])
    listed = [str(x).strip() for x in (choices or [])]
    return {"on_target": True, "key_correct": str(key_text).strip() == answer and answer in listed}


# ----------------------------------------------------------------------------------------------
# The world: documents, dev and test sets

@dataclass
class World:
    """documents: [{"doc_id", "text"}]; dev / test: [{"id", "question", "choices", "answer"}] (answer = the
    key's letter); farmers: doc_id -> the facts behind each document (for diagnostics)."""
    documents: list[dict]
    dev: list[dict]
    test: list[dict]
    farmers: dict = field(default_factory=dict, repr=False)


def mcq_item(f: Farmer, rng: random.Random, qid: str) -> dict:
    """A dev/test item: the two-step question, the answer and three typical mistakes, shuffled."""
    v = f.values
    choices = [str(v[k]) for k in VALUE_KINDS]
    rng.shuffle(choices)
    return {"id": qid, "question": two_step_question(f), "choices": choices,
            "answer": "ABCD"[choices.index(str(v["answer"]))]}


def build_world(seed: int = 0, n_docs: int = 256, n_dev: int = 64, n_test: int = 256) -> World:
    """The world, deterministic in `seed`. Dev and test questions are distinct and disjoint."""
    rng = random.Random(f"toy-world:{seed}")
    documents, farmers = [], {}
    for i in range(n_docs):
        f = random_farmer(rng)
        doc_id = f"doc{i:04d}"
        documents.append({"doc_id": doc_id, "text": document_text(f, rng)})
        farmers[doc_id] = f
    items, seen = [], set()
    while len(items) < n_dev + n_test:
        f = random_farmer(rng)
        q = two_step_question(f)
        if q not in seen:
            seen.add(q)
            items.append(mcq_item(f, rng, ""))
    dev = [{**x, "id": f"dev{i:04d}"} for i, x in enumerate(items[:n_dev])]
    test = [{**x, "id": f"test{i:04d}"} for i, x in enumerate(items[n_dev:])]
    return World(documents, dev, test, farmers)


def write_world(out_dir, world: World | None = None) -> dict:
    """Write documents.jsonl, dev.jsonl and test.jsonl under out_dir; returns {name: path}."""
    world = world or build_world()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in (("documents", world.documents), ("dev", world.dev), ("test", world.test)):
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


# ----------------------------------------------------------------------------------------------
# The anchor's pretraining text: both roles, real prompts, imperfect behaviour on purpose

# What the anchor's generator writes, and how often: three draws (the pretraining mixture; sampling at
# T = 0.7 sharpens it toward the most frequent choice of each draw).
#   opening: a two-step question, a look-up (valid but off target), prose (no JSON), or the prompt's
#            "same keys with empty strings" (rejected as empty_question);
#   working: for a two-step question, the generator solves it first (see `working`); a slip ("half",
#            "flip") becomes its key: a valid question with a WRONG key;
#   json:    written out fine, or cut short (no_json), with three choices (bad_schema), or with a key that
#            is not one of the choices (invalid_ground_truth).
GENERATOR_OPENING = {"two_step": 0.45, "lookup": 0.30, "prose": 0.15, "empty": 0.10}
GENERATOR_WORKING = {"correct": 0.6, "half": 0.2, "flip": 0.2}
GENERATOR_JSON = {"ok": 0.6, "cut": 0.13, "three_choices": 0.13, "key_not_a_choice": 0.14}
# the kinds of generator output that come out of these draws (tests check each against parse_question)
GENERATOR_MODES = ("target", "wrong_key", "lookup", "prose", "empty", "cut", "three_choices", "key_not_a_choice")


def generator_opening(on_target_share: float | None = None) -> dict:
    """The opening mixture with the scarcity knob (experiments/scarcity.py): `on_target_share` is the share of on-target
    (two-step) questions among the anchor's valid drafts, ignoring the key's correctness. None keeps today's
    mixture (0.45 x 0.6 = 0.27 valid two-step drafts against 0.30 valid look-ups: 47%). Only the two-step
    weight moves; look-ups, prose and empty drafts keep their weights, and a two-step draft keeps its
    working (wrong keys) and JSON mixtures, so a scarcer world has fewer useful drafts and more decoys."""
    if on_target_share is None:
        return dict(GENERATOR_OPENING)
    if not 0 < on_target_share < 1:
        raise ValueError(f"on_target_share must be in (0, 1), got {on_target_share}")
    ok, lookup = GENERATOR_JSON["ok"], GENERATOR_OPENING["lookup"]
    return dict(GENERATOR_OPENING, two_step=lookup * on_target_share / (ok * (1 - on_target_share)))
# What the anchor's solver does on a two-step question (see `working`): both steps, stop after the first,
# flip the second operation, or guess a letter. On a look-up it guesses among the choices of the right type.
SOLVER_MODES = {"correct": 0.35, "half": 0.30, "flip": 0.25, "guess": 0.10}
SOLVER_LOOKUP_SHARE = 0.25                  # share of look-up questions among the solver's pretraining text


def question_json(text: str, choices: list[str], key: str) -> str:
    return json.dumps({"question_text": text, "choices": choices, "ground_truth": key})


def _pick(rng: random.Random, weights: dict) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def lookup_question(f: Farmer, rng: random.Random) -> tuple[str, list[str], str]:
    """An off-target question about one attribute: (text, choices with the key first, key). Two choices
    have the attribute's type, two do not."""
    attr = rng.choice(sorted(LOOKUPS))
    template, pool = LOOKUPS[attr]
    key = getattr(f, attr)
    others = [rng.choice([x for x in pool if x != key]), str(rng.randint(2, 30)), rng.choice(ITEMS)]
    rng.shuffle(others)
    return template.format(name=f.name), [key, *others], key


def working(a: int, verb1: str, b: int, verb2: str, c: int, mode: str) -> tuple[str, int]:
    """A short written calculation and its result: mode "correct" (both steps), "half" (stops after the
    first step) or "flip" (second operation flipped). Both roles write it: the solver before its boxed
    letter, the generator before its JSON (the prompt asks it to solve its question), so a generator that
    slips writes the slip's value as the key."""
    op = lambda verb, flipped=False: "+" if (verb in GAIN) != flipped else "-"
    v = two_step_values(a, verb1, b, verb2, c)
    first = f"{a}{op(verb1)}{b}={v['half']}."
    if mode == "correct":
        text, value = f"{first} {v['half']}{op(verb2)}{c}={v['answer']}.", v["answer"]
    elif mode == "half":
        text, value = first, v["half"]
    elif mode == "flip":
        text, value = f"{first} {v['half']}{op(verb2, True)}{c}={v['flip']}.", v["flip"]
    else:
        raise ValueError(f"unknown working mode {mode!r}")
    return f"{text} So {value}.", value


def generator_response(f: Farmer, rng: random.Random, mode: str | None = None,
                       opening: dict | None = None) -> tuple[str, str]:
    """(mode, response): what the anchor's generator writes for the document about `f` -- drawn from the
    three mixtures above, or of the given kind (one of GENERATOR_MODES). A two-step question comes after
    the generator's working; its choices are listed with the key first (parse_question shuffles them)."""
    if mode is None:
        opening = _pick(rng, opening or GENERATOR_OPENING)
        work, js = _pick(rng, GENERATOR_WORKING), _pick(rng, GENERATOR_JSON)
        mode = opening if opening != "two_step" else (
            js if js != "ok" else "target" if work == "correct" else "wrong_key")
    else:
        work = rng.choice(["half", "flip"]) if mode == "wrong_key" else "correct"
    if mode == "empty":
        return mode, json.dumps({"question_text": "", "choices": [], "ground_truth": ""})
    if mode == "prose":
        return mode, f"This document about {f.name} cannot support a hard question."
    if mode == "lookup":
        text, choices, key = lookup_question(f, rng)
        return mode, f"The document says {key}. {question_json(text, choices, key)}"
    q = two_step_question(f)
    text, key = working(f.a, f.verb1, f.b, f.verb2, f.c, work)
    others = [str(x) for x in f.values.values() if x != key]
    rng.shuffle(others)
    choices = [str(key), *others]
    if mode in ("target", "wrong_key"):
        return mode, f"{text} {question_json(q, choices, str(key))}"
    if mode == "cut":
        js = question_json(q, choices, str(key))
        return mode, text + " " + js[:js.index(', "ground_truth"')]
    if mode == "three_choices":
        return mode, f"{text} {question_json(q, choices[:3], str(key))}"
    if mode == "key_not_a_choice":                                   # an arithmetic slip in the key
        slips = [str(key + d) for d in (-2, -1, 1, 2) if str(key + d) not in choices]
        return mode, f"{text} {question_json(q, choices, rng.choice(slips))}"
    raise ValueError(f"unknown generator mode {mode!r}")


def solver_response(question: str, choices: list[str], rng: random.Random, mode: str | None = None) -> str:
    """What the anchor's solver writes: its working, then it reads the options in order, one line each
    ("A) 11", "B) 15"), until the value it found, then \\boxed{letter} of the last option read. (Reading
    the options makes the letter a local copy; naming the letter of a value in one step is a lookup that a
    tiny model needs far more pretraining for.) A value that is not an option: all read, then a guess."""
    letters = "ABCDEFGH"[:len(choices)]
    m = _TWO_STEP.match(question)
    if m is None:                                   # a look-up: guess among the choices of the right type
        pool = next((p for t, p in LOOKUPS.values() if t.split("{")[0] in question), [])
        value = rng.choice([c for c in choices if c in pool] or choices)
        text = f"I guess. So {value}."
    else:
        mode = mode or _pick(rng, SOLVER_MODES)
        if mode == "guess":
            return f"I guess \\boxed{{{rng.choice(letters)}}}"
        text, value = working(int(m[2]), m[4], int(m[5]), m[6], int(m[7]), mode)
    k = choices.index(str(value)) if str(value) in choices else len(choices) - 1
    read = "".join(f"\n{letters[i]}) {choices[i]}" for i in range(k + 1))
    letter = letters[k] if str(value) in choices else rng.choice(letters)
    return f"{text}{read} \\boxed{{{letter}}}"


# Worked solutions for supervised fine-tuning (forks/cot_selection.py): two-step questions with their
# solver trace, a known share of them flawed in the world's typical ways. Nothing here is used by the
# default world or the anchor.
COT_FLAWS = ("half", "flip", "slip", "letter")      # stopped after one step, flipped operation, arithmetic
                                                    # slip in the second step, right working but wrong letter


def cot_example(f: Farmer, rng: random.Random, flaw: str | None = None) -> dict:
    """{question, choices, answer (the key letter), response, flaw}: the solver's worked solution of the
    two-step question about `f` -- correct when flaw is None, else with that flaw (COT_FLAWS)."""
    item = mcq_item(f, rng, "")
    q, choices = item["question"], item["choices"]
    if flaw in (None, "half", "flip"):
        response = solver_response(q, choices, rng, mode=flaw or "correct")
    elif flaw == "slip":                            # the second step's result off by 1-3, then read as usual
        text, value = working(f.a, f.verb1, f.b, f.verb2, f.c, "correct")
        wrong = value + rng.choice([-3, -2, -1, 1, 2, 3])
        text = text.replace(f"={value}.", f"={wrong}.").replace(f"So {value}.", f"So {wrong}.")
        letters = "ABCD"
        k = choices.index(str(wrong)) if str(wrong) in choices else len(choices) - 1
        read = "".join(f"\n{letters[i]}) {choices[i]}" for i in range(k + 1))
        letter = letters[k] if str(wrong) in choices else rng.choice([x for x in letters if x != item["answer"]])
        response = f"{text}{read} \\boxed{{{letter}}}"
    elif flaw == "letter":                          # the right working, then another letter boxed
        right = solver_response(q, choices, rng, mode="correct")
        other = rng.choice([x for x in "ABCD" if x != item["answer"]])
        response = right[:right.rindex("\\boxed{")] + f"\\boxed{{{other}}}"
    else:
        raise ValueError(f"unknown flaw {flaw!r}; choose one of {COT_FLAWS}")
    return {**item, "response": response, "flaw": flaw}


def cot_pool(seed: int = 0, n: int = 800, flawed_share: float = 0.15, exclude: set[str] = frozenset()) -> list[dict]:
    """n worked solutions to distinct two-step questions none of which is in `exclude`; round(n * share) of
    them flawed, the flaws in turn (COT_FLAWS), at random positions. Deterministic in `seed`."""
    rng = random.Random(f"toy-cot:{seed}")
    n_bad = round(n * flawed_share)
    flaws = [COT_FLAWS[i % len(COT_FLAWS)] for i in range(n_bad)] + [None] * (n - n_bad)
    rng.shuffle(flaws)
    out, seen = [], set(exclude)
    while len(out) < n:
        f = random_farmer(rng)
        q = two_step_question(f)
        if q in seen:
            continue
        seen.add(q)
        out.append({**cot_example(f, rng, flaws[len(out)]), "id": f"cot{len(out):04d}"})
    return out


def solver_question(rng: random.Random) -> tuple[str, list[str]]:
    """A question as the solver sees it in pretraining: mostly two-step, some look-ups, choices shuffled."""
    f = random_farmer(rng)
    if rng.random() < SOLVER_LOOKUP_SHARE:
        q, choices, _ = lookup_question(f, rng)
    else:
        v = f.values
        q, choices = two_step_question(f), [str(v[k]) for k in VALUE_KINDS]
    rng.shuffle(choices)
    return q, choices


def pretraining_example(rng: random.Random, exclude: set[str], role: str | None = None,
                        opening: dict | None = None) -> tuple[list[dict], str]:
    """One (chat messages, assistant response) pair for `role` ("generator" or "solver"; None: either, at
    random). Questions in `exclude` (the dev and test sets) never appear."""
    from grading import solver_messages
    from questions import generator_messages
    if role == "generator" or (role is None and rng.random() < 0.5):
        f = random_farmer(rng)
        _, resp = generator_response(f, rng, opening=opening)
        return generator_messages(document_text(f, rng)), resp
    while True:
        q, choices = solver_question(rng)
        if q not in exclude:
            return solver_messages(q, choices), solver_response(q, choices, rng)


# ----------------------------------------------------------------------------------------------
# The tokenizer: one token per fixed prompt span, byte-level BPE for the world's text

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
JSON_SPANS = ['{"question_text": "', '", "choices": ["', '", "', '"], "ground_truth": "', '"}', " \\boxed{"]
BPE_VOCAB = 960          # world text: names, items, numbers, verbs (byte alphabet included)
VOCAB_MULTIPLE = 64      # the vocabulary is padded with reserved special tokens to a multiple of this


@functools.lru_cache(maxsize=1)
def _template_tokenizer():
    from tiny_model import byte_tokenizer
    return byte_tokenizer()


def _render(messages: list[dict]) -> str:
    """The ChatML text of a prompt (rollout's template), as render_prompt will tokenize it."""
    return _template_tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_spans() -> list[str]:
    """Every fixed span of the two roles' prompts (the text between documents, questions, choices and the
    chat template's special tokens), read from questions.py and grading.py; sorted."""
    from grading import solver_messages
    from questions import generator_messages
    hole = "\x00"                                            # stands for the variable text
    texts = [_render(generator_messages(hole))]
    texts += [_render(solver_messages(hole, [hole] * n)) for n in range(4, 9)]
    cut = "|".join(map(re.escape, [hole, *SPECIAL_TOKENS]))
    return sorted({piece for t in texts for piece in re.split(cut, t) if piece})


def _split_out(text: str, spans: list[str]) -> list[str]:
    """The pieces of `text` that the BPE model sees (text between added tokens), longest span first."""
    cut = "|".join(map(re.escape, sorted([*spans, *SPECIAL_TOKENS], key=len, reverse=True)))
    return [p for p in re.split(cut, text) if p]


def build_tokenizer(texts: list[str]):
    """A PreTrainedTokenizerFast with a ChatML template: special tokens, the fixed prompt spans and JSON
    spans as added tokens, and a byte-level BPE (BPE_VOCAB) trained on the world text in `texts`.
    EOS = <|im_end|> (ends an assistant turn), pad = <|pad|>. Deterministic in `texts`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from tiny_model import CHATML_TEMPLATE
    spans = prompt_spans() + JSON_SPANS
    tok = Tokenizer(models.BPE())
    # numbers are split from the space before them, so that 16 is the same token in a document, a question,
    # a choice and a calculation (copying and matching it is then one step for a tiny model)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator((p for t in texts for p in _split_out(t, spans)), trainer)
    tok.add_tokens([AddedToken(s, normalized=False) for s in spans])
    n = tok.get_vocab_size()
    pad = -n % VOCAB_MULTIPLE
    tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(pad)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
                                   chat_template=CHATML_TEMPLATE)


# ----------------------------------------------------------------------------------------------
# Pretraining the anchor (once; deterministic; cached)

ANCHOR_CONFIG = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=32, intermediate_size=384, tie_word_embeddings=False)
PRETRAIN = dict(steps=2400, batch_size=32, lr=3e-3, warmup=100, weight_decay=0.01, tokenizer_texts=4000)


def anchor_fingerprint() -> str:
    """Hash of what the anchor depends on: world version, prompts (their fixed spans), model and recipe."""
    blob = json.dumps([WORLD_VERSION, prompt_spans(), JSON_SPANS, GENERATOR_OPENING, GENERATOR_WORKING,
                       GENERATOR_JSON, SOLVER_MODES, SOLVER_LOOKUP_SHARE,
                       ANCHOR_CONFIG, PRETRAIN], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _encode(tokenizer, messages: list[dict], response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids + EOS), exactly as the loop will see them."""
    from records import render_prompt
    resp = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return render_prompt(tokenizer, messages), resp


def _batch(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input_ids [B, T], attention_mask [B, T], labels [B, T] (-100 outside responses)."""
    t = max(len(p) + len(r) for p, r in pairs)
    ids = torch.full((len(pairs), t), pad_id, dtype=torch.long)
    am = torch.zeros(len(pairs), t, dtype=torch.long)
    labels = torch.full((len(pairs), t), -100, dtype=torch.long)
    for i, (p, r) in enumerate(pairs):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        am[i, :len(p) + len(r)] = 1
        labels[i, len(p):len(p) + len(r)] = torch.tensor(r)
    return ids, am, labels


def pretrain_anchor(out_dir=None, seed: int = 0, log_every: int = 100, save_every: int = 0,
                    on_target_share: float | None = None, **overrides):
    """Pretrain the anchor from scratch on the role-formatted world text and save it (model, tokenizer,
    anchor.json with the fingerprint and timing) to out_dir (default: the cache). Returns (model, tok).
    Deterministic on a given machine and thread count; `overrides` change PRETRAIN entries (tests use a
    few steps). `on_target_share` sets the scarcity knob (`generator_opening`); None is today's world."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    opening = generator_opening(on_target_share)
    from rollout import save_model
    cfg = {**PRETRAIN, **overrides}
    t_start = time.time()
    world = build_world()
    exclude = {x["question"] for x in world.dev + world.test}
    rng = random.Random(f"toy-anchor:{seed}")
    texts = [_render(m) + r for m, r in (pretraining_example(rng, exclude, opening=opening)
                                         for _ in range(cfg["tokenizer_texts"]))]
    tok = build_tokenizer(texts)

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), max_position_embeddings=512, bos_token_id=None, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, attn_implementation="sdpa", **ANCHOR_CONFIG)).float()
    model.generation_config.eos_token_id = tok.eos_token_id     # HFEngine stops at the end of the turn
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.98),
                            weight_decay=cfg["weight_decay"])
    steps, warm = cfg["steps"], cfg["warmup"]
    # linear warm-up, then cosine decay to 10% of the peak
    lr_at = lambda s: cfg["lr"] * min(1.0, (s + 1) / warm) * (0.55 + 0.45 * torch.cos(
        torch.tensor(torch.pi * s / steps)).item())
    model.train()
    last = {}
    for step in range(steps):
        role = ("generator", "solver")[step % 2]           # one role per batch: rows of similar length
        pairs = [_encode(tok, *pretraining_example(rng, exclude, role, opening)) for _ in range(cfg["batch_size"])]
        ids, am, labels = _batch(pairs, tok.pad_token_id)                         # [B, T] each
        loss = model(input_ids=ids, attention_mask=am, labels=labels).loss        # mean over response tokens
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        last[role] = loss.item()
        if log_every and (step % log_every == 1 or step == steps - 1):
            print(f"pretrain step {step + 1:5d}/{steps}  loss: generator {last['generator']:.4f}  "
                  f"solver {last['solver']:.4f}  {time.time() - t_start:6.1f}s", flush=True)
        if save_every and step % save_every == save_every - 1 and step < steps - 1:
            save_model(model, tok, Path(out_dir or CACHE_ANCHOR) / f"step{step + 1}")
            model.train()
    model.eval()
    out = Path(out_dir) if out_dir is not None else CACHE_ANCHOR
    save_model(model, tok, out)
    custom = {**overrides, **({} if on_target_share is None else {"on_target_share": on_target_share})}
    meta = {"fingerprint": anchor_fingerprint() if not custom else "custom:" + json.dumps(custom),
            "world_version": WORLD_VERSION, "seed": seed, "pretrain": cfg, "config": ANCHOR_CONFIG,
            "generator_opening": opening,
            "seconds": round(time.time() - t_start, 1), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    (out / "anchor.json").write_text(json.dumps(meta, indent=1) + "\n")
    return model, tok


def _anchor_meta(d: Path) -> dict:
    try:
        return json.loads((Path(d) / "anchor.json").read_text())
    except (OSError, ValueError):
        return {}


def anchor_path(cache_dir=None, pretrain_if_missing: bool = True) -> Path:
    """The directory of a current anchor (model + tokenizer + anchor.json): the shipped copy
    (assets/toy_anchor) or the cache (.cache/toy_anchor), or `cache_dir` if given, whichever has the current
    fingerprint; otherwise the anchor is pretrained into the cache (or cache_dir) first."""
    fp = anchor_fingerprint()
    places = [Path(cache_dir)] if cache_dir is not None else [SHIPPED_ANCHOR, CACHE_ANCHOR]
    for d in places:
        if _anchor_meta(d).get("fingerprint") == fp and (d / "config.json").is_file():
            return d
    if not pretrain_if_missing:
        raise FileNotFoundError(f"no current toy anchor in {', '.join(map(str, places))} "
                                f"(fingerprint {fp}); run: python toy.py --pretrain")
    out = places[-1]
    print(f"toy.py: no current anchor (prompts or recipe changed?); pretraining one into {out} "
          f"(once, a few minutes on a CPU)", flush=True)
    pretrain_anchor(out)
    return out


def load_anchor(cache_dir=None):
    """(model, tokenizer) of the toy anchor, fp32, eval mode; pretrained first if no current copy exists."""
    from rollout import load_model
    return load_model(anchor_path(cache_dir))


# ----------------------------------------------------------------------------------------------
# Measuring an anchor (or any checkpoint) on this world

def anchor_report(model, tokenizer, world: World | None = None, n_docs: int = 128, n_gen: int = 1,
                  n_solver: int = 4, seed: int = 0) -> dict:
    """Generator: valid-question rate (infuser.parse_question), reject reasons, on-target and wrong-key
    shares, solver accuracy on its questions. Solver: dev and test accuracy (avg over n_solver samples).
    All sampled with rollout.HFEngine at temperature 0.7, through the real prompts; plus token lengths
    and sampling throughput."""
    from collections import Counter
    from grading import grade, solver_messages
    from questions import generator_messages, parse_question
    from records import SamplingParams
    from rollout import HFEngine
    world = world or build_world()
    engine = HFEngine(model, tokenizer, progress=False)
    rep = {}

    def run(prompts, n, max_new):
        t = time.time()
        out = engine.generate(prompts, SamplingParams(n=n, temperature=0.7, max_new_tokens=max_new, seed=seed))
        dt = time.time() - t
        flat = [s for per in out for s in per]
        toks = sum(len(s.response_ids) for s in flat)
        stats = {"samples": len(flat), "seconds": round(dt, 2), "samples_per_s": round(len(flat) / dt, 1),
                 "tokens_per_s": round(toks / dt, 1), "prompt_tokens_mean": round(sum(
                     len(s.prompt_ids) for s in flat) / len(flat), 1),
                 "prompt_tokens_max": max(len(s.prompt_ids) for s in flat),
                 "response_tokens_mean": round(toks / len(flat), 1),
                 "response_tokens_max": max(len(s.response_ids) for s in flat),
                 "truncated": sum(s.finish_reason == "length" for s in flat) / len(flat)}
        return out, stats

    docs = world.documents[:n_docs]
    out, rep["generator_sampling"] = run([generator_messages(d["text"]) for d in docs], n_gen, 96)
    questions = [parse_question(s.text, d["doc_id"], j, seed=seed)
                 for d, per in zip(docs, out) for j, s in enumerate(per)]
    valid = [q for q in questions if q.rejected is None]
    kinds = [classify_question(q.text, q.choices, q.ground_truth) for q in valid]
    on = [k for k in kinds if k["on_target"]]
    rep["generator"] = {
        "valid_rate": len(valid) / len(questions),
        "rejected": dict(Counter(q.rejected for q in questions if q.rejected)),
        "on_target_share_of_valid": len(on) / max(1, len(valid)),
        "wrong_key_share_of_on_target": sum(not k["key_correct"] for k in on) / max(1, len(on)),
        "on_target_correct_key_share_of_all": sum(k["key_correct"] for k in on) / len(questions)}

    def accuracy(items, n):
        out, stats = run([solver_messages(x["question"], x["choices"]) for x in items], n, 48)
        g = [grade(s.text, x["answer"], x["choices"]) for x, per in zip(items, out) for s in per]
        per_item = [sum((gi or 0.0) for gi in g[i * n:(i + 1) * n]) / n for i in range(len(items))]
        return {"accuracy": sum(gi or 0.0 for gi in g) / len(g), "no_answer": sum(gi is None for gi in g) / len(g),
                "per_item": per_item}, stats

    dev, rep["solver_sampling"] = accuracy(world.dev, n_solver)
    test, _ = accuracy(world.test, n_solver)
    rep["solver"] = {"dev_accuracy": dev["accuracy"], "test_accuracy": test["accuracy"],
                     "dev_no_answer": dev["no_answer"], "test_no_answer": test["no_answer"]}
    # the solver on the generator's own questions, by kind: what influence and solve-rate rewards see
    groups = {"on_target_correct_key": [], "on_target_wrong_key": [], "off_target": []}
    for q, k in zip(valid, kinds):
        name = "off_target" if not k["on_target"] else (
            "on_target_correct_key" if k["key_correct"] else "on_target_wrong_key")
        groups[name].append({"question": q.text, "choices": q.choices, "answer": q.answer})
    for name, items in groups.items():
        if items:
            r, _ = accuracy(items, n_solver)
            rep["solver"][f"solve_rate_{name}"] = r["accuracy"]
            rep["solver"][f"mixed_groups_{name}"] = sum(0 < p < 1 for p in r["per_item"]) / len(items)
    return rep


def main(argv=None):
    p = argparse.ArgumentParser(description="The toy world and its anchor (see the docstring).")
    p.add_argument("--pretrain", action="store_true", help="pretrain the anchor (deterministic)")
    p.add_argument("--out", default=None, help="where --pretrain writes (default: assets/toy_anchor)")
    p.add_argument("--on-target-share", type=float, default=None,
                   help="--pretrain a scarcer anchor: share of on-target drafts among its valid ones (experiments/scarcity.py)")
    p.add_argument("--report", action="store_true", help="measure the anchor (or --model) on the world")
    p.add_argument("--model", default=None, help="a checkpoint directory to --report on instead")
    p.add_argument("--n", type=int, default=4, help="solver samples per question for --report")
    p.add_argument("--docs", type=int, default=128, help="documents sampled for --report")
    p.add_argument("--write-world", default=None, metavar="DIR", help="write documents/dev/test JSONL")
    args = p.parse_args(argv)
    if args.write_world:
        for name, path in write_world(args.write_world).items():
            print(f"{name}: {path}")
    if args.pretrain:
        if args.on_target_share is not None and args.out is None:
            p.error("--on-target-share needs --out (the shipped anchor stays today's)")
        pretrain_anchor(args.out or SHIPPED_ANCHOR, on_target_share=args.on_target_share)
    if args.report:
        from rollout import load_model
        model, tok = load_model(args.model) if args.model else load_anchor()
        print(json.dumps(anchor_report(model, tok, n_docs=args.docs, n_solver=args.n), indent=1))
    if not (args.write_world or args.pretrain or args.report):
        p.print_help()


if __name__ == "__main__":
    main()
