"""dist.py -- the distributed helpers every file shares, plain torch.distributed; each is a no-op at world
size 1. The loop gathers only small Python objects (counts, ids, scores); gradients are reduced by FSDP2 or,
for a replicated model, by `all_reduce_`. Under FSDP2 a parameter or gradient is a DTensor: `local` is this
rank's shard, `full` the whole tensor (a collective every rank joins, in the same order)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def print0(*a, **k) -> None:
    if rank_world()[0] == 0:
        print(*a, **k, flush=True)


def gather(x) -> list:
    """[x of rank 0, x of rank 1, ...]. Under the memory plan's fake process group (train.py --plan) no
    data moves: every rank is taken to hold x."""
    world = rank_world()[1]
    if world == 1:
        return [x]
    if dist.get_backend() == "fake":
        return [x] * world
    out = [None] * world
    dist.all_gather_object(out, x)
    return out


def gather_flat(items: list) -> list:
    """Every rank's items in one list, rank 0's first."""
    return [x for part in gather(items) for x in part]


def all_reduce_(t: torch.Tensor, op=None) -> torch.Tensor:
    """In place: the sum (or `op`) of t over ranks."""
    if rank_world()[1] > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def all_sum(values: list[float]) -> list[float]:
    """Elementwise sum over ranks of a short list of numbers, in float64."""
    return all_reduce_(torch.tensor(values, dtype=torch.float64)).tolist()


def max_over_ranks(n: int) -> int:
    return int(all_reduce_(torch.tensor([n]), dist.ReduceOp.MAX if rank_world()[1] > 1 else None).item())


def exclusive_offset(n_local: int) -> int:
    """Sum of n_local over lower ranks: turns a rank's local indices into global ones."""
    return sum(gather(n_local)[:rank_world()[0]])


def sharded(tensors) -> bool:
    """True when the tensors (parameters, gradients) are FSDP2 DTensor shards."""
    return any(hasattr(t, "full_tensor") for t in tensors)


def local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def full(t):
    return t.full_tensor() if t is not None and hasattr(t, "full_tensor") else t
