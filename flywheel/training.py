"""What the reward-model and policy training loops share: the step plan, the optimizer with
linear warmup and cosine decay, and the shuffled batches of each epoch."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import torch


def lr_lambda(steps: int, warmup: int, floor: float = 0.1):
    """Linear warmup, then cosine decay to `floor` times the max learning rate."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def plan_steps(n_examples: int, batch_size: int, epochs: int) -> tuple[int, int]:
    """(optimizer steps, warmup steps): warmup is 3 % of the steps, at least 5, but never more
    than a quarter of a short run."""
    steps = math.ceil(n_examples / batch_size) * epochs
    return steps, min(max(5, math.ceil(0.03 * steps)), max(1, steps // 4))


def adamw_with_schedule(model: torch.nn.Module, lr: float, steps: int, warmup: int):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, warmup))


def epoch_batches(n_examples: int, batch_size: int, epochs: int, seed: int) -> Iterator[list[int]]:
    """Indices of each optimizer step's examples, reshuffled every epoch from `seed`."""
    order = list(range(n_examples))
    for epoch in range(epochs):
        random.Random(seed + epoch).shuffle(order)
        for start in range(0, n_examples, batch_size):
            yield order[start : start + batch_size]
