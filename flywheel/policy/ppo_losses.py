"""PPO's pieces as tensors: whitening, GAE, the clipped objective, the value loss, the entropy.
The KL-penalised token rewards are kernels/reward_combine.py's."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, count: float | None = None
                ) -> torch.Tensor:
    """The mean of the entries `mask` selects; with `count`, their sum divided by it instead
    (a rank's share of a mean over a minibatch spread over ranks: `count` is the minibatch's
    tokens on all ranks, so the shares sum to the mean)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / (mask.sum().clamp(min=1) if count is None else max(count, 1))


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the entries `mask` selects (all when None); population variance.
    `shift_mean=False` scales only (the mean is added back)."""
    mask = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (a contiguous run from the left of
    each row; `mask` 0 after it). Returns (advantages, returns = advantages + values)."""
    mask = mask.to(values.dtype)
    B, T = rewards.shape
    adv = torch.zeros_like(values)
    zeros = torch.zeros(B, dtype=values.dtype, device=values.device)
    running = zeros
    for t in reversed(range(T)):
        nxt = mask[:, t + 1] if t + 1 < T else zeros
        next_value = values[:, t + 1] * nxt if t + 1 < T else zeros
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running * nxt
        adv[:, t] = running
    adv = adv * mask
    return adv, (adv + values) * mask


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float = 0.2, count: float | None = None
                ) -> tuple[torch.Tensor, dict]:
    """PPO's clipped objective, as a loss (mean over response tokens); with the share of tokens
    whose ratio was clipped and the approximate KL between the old and new policy. `count`:
    see `masked_mean`."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask, count)
    with torch.no_grad():
        clip_frac = masked_mean((clipped < unclipped).float(), mask, count)
        approx_kl = masked_mean(0.5 * (logp - old_logp) ** 2, mask, count)
    return loss, {"clip_fraction": clip_frac.item(), "approx_kl": approx_kl.item()}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip: float = 0.2, count: float | None = None
               ) -> torch.Tensor:
    """0.5 * max((v - R)^2, (v_clipped - R)^2), v_clipped within `clip` of the rollout's value."""
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2,
                                           (v_clipped - returns) ** 2), mask, count)


def entropy(logits: torch.Tensor, mask: torch.Tensor, count: float | None = None
            ) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), -1)
    return masked_mean(-(logp.exp() * logp).sum(-1), mask, count)
