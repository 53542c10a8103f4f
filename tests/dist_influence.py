"""Run by tests/test_influence.py under `torchrun --standalone --nproc_per_node=2` (gloo, FSDP2).

Optional argv[4] = token budget per forward (small values split questions over forwards and ranks),
argv[5] = "ckpt" for activation checkpointing, argv[6] = "float64" for a float64 model. Builds the same tiny solver as the single-process test, shards it with fully_shard, takes a few identical
AdamW steps, then scores the questions of this rank's share of the rollouts. Rank 0 writes
{group id: score} for all ranks and the parameter checksums to the JSON path given as argv[1].
"""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import influence  # noqa: E402
from rollout import set_activation_checkpointing  # noqa: E402
from influence_cases import build_case  # noqa: E402


def main(out_path, mode, tied, max_tokens=32768, ckpt=False, dtype=torch.float32):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model, opt_steps, dev, gen = build_case(tied=tied, dtype=dtype)
    if ckpt:                                    # non-reentrant activation checkpointing, as train.py sets it
        set_activation_checkpointing(model)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt_steps(model, opt)                       # identical data on every rank -> identical state
    before = {n: p.full_tensor().clone() for n, p in model.named_parameters()}
    mine = lambda r: r.select(torch.isin(r.group_ids, torch.unique(r.group_ids)[rank::world]))
    d, g = mine(dev), mine(gen)
    scores = influence.influence_scores(model, opt, d, g, mode=mode, chunk_questions=2, max_tokens=max_tokens)
    ids = torch.unique(g.group_ids).tolist()
    allpairs = [None] * world
    dist.all_gather_object(allpairs, list(zip(ids, scores.tolist())))
    unchanged = all(torch.equal(before[n], p.full_tensor()) for n, p in model.named_parameters())
    grads_none = all(p.grad is None for p in model.parameters())
    if rank == 0:
        pairs = {int(k): v for part in allpairs for k, v in part}
        with open(out_path, "w") as f:
            json.dump({"scores": pairs, "unchanged": unchanged, "grads_none": grads_none}, f)
    dist.barrier()                              # no rank tears gloo down while another still works
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] == "tied", int(sys.argv[4]) if len(sys.argv) > 4 else 32768,
         len(sys.argv) > 5 and sys.argv[5] == "ckpt",
         torch.float64 if len(sys.argv) > 6 and sys.argv[6] == "float64" else torch.float32)
