"""Rank 0's peak host memory while saving a checkpoint, against the size of the full optimizer state.

    torchrun --standalone --nproc_per_node=2 experiments/checkpoint_memory.py [hidden] [layers]

Builds two Qwen3 models of the given size (default hidden 1024, 8 layers, vocab 32,000: ~130M parameters
each), shards them with FSDP2 on gloo, takes one AdamW step each, then calls train.save_checkpoint with
the HF export streamed in 64 MiB files. Peak memory is the kernel's peak-RSS mark (VmHWM, reset with
/proc/self/clear_refs just before the save) minus the RSS before it, on every rank.
"""
import json
import os
import sys
import tempfile

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import infuser  # noqa: E402
import plan  # noqa: E402
import checkpoint  # noqa: E402
import rollout  # noqa: E402
import train  # noqa: E402
from data import DocumentStream  # noqa: E402
from tiny_model import byte_tokenizer  # noqa: E402


def main(hidden: int, layers: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from transformers import Qwen3Config, Qwen3ForCausalLM
    out = tempfile.mkdtemp() if rank == 0 else None
    holder = [out]
    dist.broadcast_object_list(holder)
    cfg = train.parse_config(["--preset", "tiny", f"--out_dir={holder[0]}"])
    roles = {}
    for name in ("generator", "solver"):
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(Qwen3Config(hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                                             num_attention_heads=8, num_key_value_heads=4, head_dim=hidden // 8,
                                             vocab_size=32000, tie_word_embeddings=False))
        rollout.prepare_model(model, cfg, torch.device("cpu"))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        roles[name] = infuser.Role(name, model, opt, None, byte_tokenizer(), None)
    n_params = sum(p.numel() for p in roles["solver"].model.parameters())
    full_optim = 2 * 2 * n_params * 4              # two roles x (exp_avg + exp_avg_sq) x fp32
    checkpoint.EXPORT_SHARD_BYTES = 64 * 2 ** 20
    rss0 = plan._rss_reset()
    checkpoint.save_checkpoint(cfg, 0, roles, DocumentStream([], 0), {"history": []})
    peak = plan._rss_peak() - rss0
    peaks = [None] * world
    dist.all_gather_object(peaks, peak)
    if rank == 0:
        print(json.dumps({"params_per_model": n_params, "full_optimizer_state_mib": round(full_optim / 2 ** 20),
                          "full_model_mib": round(n_params * 4 / 2 ** 20),
                          "save_peak_rss_increase_mib": [round(p / 2 ** 20) for p in peaks]}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1024, int(sys.argv[2]) if len(sys.argv) > 2 else 8)
