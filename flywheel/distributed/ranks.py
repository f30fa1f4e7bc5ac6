"""This process's place among a training step's ranks, and its share of each global batch.

Data parallel the way one rank would train: every rank walks the same seeded order of the data
(`training.epoch_batches`), and each step's examples are cut into one contiguous shard per rank.
The micro-batch losses are weighted by their share of the step's examples, so the gradients
summed over the ranks are those of one rank taking the whole step: N ranks see the same global
batches, and end on the same weights, as one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that saves and reports."""
        return self.rank == 0


def world() -> World:
    """This process's rank among the training ranks (one rank when no process group is up)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    import os

    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


@dataclass(frozen=True)
class Micro:
    """One micro-batch of a rank: its items and its weight, their share of the step's items
    (0 for a stand-in: see `rank_micro_batches`)."""

    items: list
    weight: float
    last: bool


def rank_micro_batches(step_items: Sequence[T], micro_size: int, w: World) -> list[Micro]:
    """This rank's micro-batches of one step: the step's items cut into `w.size` contiguous
    shards of ceil(n / size) items, each shard into micro-batches of at most `micro_size`. Every
    rank gets the same number of micro-batches, because under ZeRO-3 each forward gathers the
    weights from all ranks: a rank short of items (the short last step of an epoch) runs
    stand-ins, copies of the step's first item with weight 0, which add nothing to the
    gradient. The weights of all ranks' micro-batches sum to 1."""
    n = len(step_items)
    if n == 0:
        raise ValueError("a training step needs at least one item")
    shard = math.ceil(n / w.size)
    count = math.ceil(shard / micro_size)
    mine = list(step_items[w.rank * shard : (w.rank + 1) * shard])
    out = []
    for m in range(count):
        items = mine[m * micro_size : (m + 1) * micro_size]
        weight = len(items) / n
        if not items:
            items = [step_items[0]]
        out.append(Micro(items, weight, m == count - 1))
    return out


def all_sum(values: Sequence[float], w: World | None = None) -> list[float]:
    """The sums over the ranks of each of `values` (the values themselves on one rank)."""
    w = w or world()
    if w.size == 1:
        return [float(v) for v in values]
    # NCCL reduces tensors on the GPU, gloo on the CPU
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def all_gather(obj, w: World | None = None) -> list:
    """Every rank's `obj`, in rank order ([obj] on one rank)."""
    w = w or world()
    if w.size == 1:
        return [obj]
    out = [None] * w.size
    torch.distributed.all_gather_object(out, obj)
    return out


def sum_gradients(params, w: World) -> None:
    """Sum each parameter's gradient over the ranks (plain PyTorch on several ranks; DeepSpeed
    reduces its own), one flat buffer per dtype and device."""
    grads = [p.grad for p in params if p.grad is not None]
    if w.size == 1 or not grads:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    groups: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.dtype, g.device), []).append(g)
    for group in groups.values():
        flat = _flatten_dense_tensors(group)
        torch.distributed.all_reduce(flat)
        for g, summed in zip(group, _unflatten_dense_tensors(flat, group)):
            g.copy_(summed)
