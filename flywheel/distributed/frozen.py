"""Frozen models sharded over the ranks at rest and gathered whole while they score.

PPO holds three models it never trains: the reference policy and the two reward models. Kept
whole on every rank (`policy_update.ppo.frozen: replicated`) they cost each rank their full
size; `sharded` keeps 1/N of every parameter on each of the N ranks, and `whole()` all-gathers
one model for the duration of a scoring call, then drops the gathered copy. So a rank holds the
shards of all three plus one model whole, only while that model scores: ZeRO-3's partitioning
applied to inference, gathering a model at a time rather than a layer at a time (which needs
DeepSpeed's module hooks, and every rank running the same forwards; here each rank scores its
own rollouts). Every rank must enter `whole()` together: it is a collective.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from flywheel.distributed.ranks import World


class ShardedFrozen:
    """`model`'s parameters and buffers cut into `w.size` equal shards (the last padded), this
    rank keeping its own; the module's tensors are empty until `whole()`."""

    def __init__(self, model: torch.nn.Module, w: World):
        self.model, self.world = model, w
        self.shards: dict[str, tuple[torch.Tensor, torch.Size, int]] = {}
        for name, t in self._tensors():
            flat = t.detach().reshape(-1)
            size = math.ceil(flat.numel() / w.size)
            padded = torch.nn.functional.pad(flat, (0, size * w.size - flat.numel()))
            self.shards[name] = (padded[w.rank * size : (w.rank + 1) * size].clone(), t.shape,
                                 flat.numel())
            t.data = torch.empty(0, dtype=t.dtype, device=t.device)

    def _tensors(self):
        seen = set()  # a tied head shares the embedding's tensor: shard it once
        for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                yield name, t

    def shard_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s, _, _ in self.shards.values())

    @contextmanager
    def whole(self):
        """The model with all its weights, gathered from every rank's shard."""
        tensors = dict(self._tensors())
        for name, (shard, shape, numel) in self.shards.items():
            parts = [torch.empty_like(shard) for _ in range(self.world.size)]
            torch.distributed.all_gather(parts, shard)
            tensors[name].data = torch.cat(parts)[:numel].view(shape)
        try:
            yield self.model
        finally:
            for t in tensors.values():
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)
