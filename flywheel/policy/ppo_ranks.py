"""PPO's step spread over ranks, so that N ranks take the step one rank would.

Every rank draws the same global batch of prompts (the same seeded generator) and samples,
scores and computes advantages for its contiguous shard of it (`shard`). What one rank computes
over the whole batch is computed here over all ranks: the whitening of the reward (WHITEN(LOGIT
(R_c)), from every rank's reward-model scores) and of the advantages, and each minibatch's
token count, by which every rank divides its share of the minibatch's loss. The minibatches are
cut from the global batch in the same shuffled order as on one rank; each rank takes the rows
of a minibatch it holds, or a stand-in row with no tokens when it holds none (every rank
steps together: the optimizer step reduces the gradients over the ranks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from flywheel.distributed.ranks import World, all_gather, all_sum
from flywheel.kernels.reward_combine import token_rewards
from flywheel.policy.ppo_losses import whiten
from flywheel.reward.combined import RewardModelScores


def shard(items: Sequence, w: World) -> tuple[int, list]:
    """(offset, this rank's contiguous shard of `items`): sizes differ by one at most, so with
    at least as many items as ranks every rank has some."""
    lo, hi = w.rank * len(items) // w.size, (w.rank + 1) * len(items) // w.size
    return lo, list(items[lo:hi])


def whiten_across(x: torch.Tensor, mask: torch.Tensor, w: World,
                  eps: float = 1e-8) -> torch.Tensor:
    """ppo_losses.whiten over the entries `mask` selects on every rank."""
    if w.size == 1:
        return whiten(x, mask, eps=eps)
    m = mask.to(x.dtype)
    total, count = all_sum([(x * m).sum().item(), m.sum().item()], w)
    mean = total / max(count, 1)
    (sq,) = all_sum([(((x - mean) ** 2) * m).sum().item()], w)
    return (x - mean) * (1.0 / math.sqrt(sq / max(count, 1) + eps)) * m


def combined_rewards_across(out: RewardModelScores, kl: torch.Tensor, mask: torch.Tensor,
                            beta: float, w: World) -> tuple[torch.Tensor, torch.Tensor]:
    """(R_c [B], token rewards [B, R]) of this rank's rollouts, the score whitened over every
    rank's: the reward models' [B] scores are gathered (a few floats per rollout), the
    reward-combination kernel's score pass runs on the whole batch, and its token pass on this
    rank's KL. On one rank: the kernel's single fused pass."""
    if w.size == 1:
        _, _, tok, r_c = out.ppo_rewards(kl, mask, beta)
        return r_c, tok
    parts = all_gather((out.helpfulness.tolist(), out.safety.tolist(),
                        out.safety_prompt.tolist()), w)
    whole = RewardModelScores.of([h for p in parts for h in p[0]], [s for p in parts for s in p[1]],
                                 [t for p in parts for t in p[2]], out.helpfulness.dtype)
    n = sum(len(p[0]) for p in parts)
    none = torch.zeros(n, 1, device=kl.device)
    score, _, _, r_c = whole.ppo_rewards(none, none, beta)  # no KL: the score pass alone
    lo = sum(len(p[0]) for p in parts[: w.rank])
    rows = slice(lo, lo + len(out.helpfulness))
    return r_c[rows], token_rewards(score[rows], kl, mask, beta)[1]


class Minibatches:
    """The rows of each minibatch this rank holds, and each minibatch's tokens on all ranks."""

    def __init__(self, order: list[int], size: int, offset: int, mask: torch.Tensor, w: World):
        self.order, self.size, self.offset, self.rows_here = order, size, offset, mask.shape[0]
        self.tokens = [t for part in all_gather(mask.sum(-1).tolist(), w) for t in part]

    def __iter__(self):
        """(local row indices, whether they are a stand-in, the minibatch's token count)."""
        for m in range(0, len(self.order), self.size):
            rows = self.order[m : m + self.size]
            local = [g - self.offset for g in rows
                     if self.offset <= g < self.offset + self.rows_here]
            yield local or [0], not local, float(sum(self.tokens[g] for g in rows))
