"""Llama 2's combined reward R_c and the reward PPO trains on."""

from __future__ import annotations

import math

import torch

from flywheel.kernels.reward_combine import combine_rewards
from flywheel.reward.scoring import Group


def combine(groups: list[Group], helpfulness: list[list[float]], safety: list[list[float]],
            kl: list[list[torch.Tensor]] | None = None, beta: float = 0.0):
    """Llama 2's PPO reward for every response, flattened group by group, in one pass of the
    reward-combination kernel (kernels/reward_combine.py): returns (score, sequence reward,
    token rewards, token mask) where score = WHITEN(LOGIT(R_c)) over the batch. `kl` holds the
    per-token KL estimates of each response (log pi - log pi_0); without it the KL is zero.
    Everything is computed, and returned, on the device of the KL tensors (the policy's), else
    on the CPU."""
    if kl is None:
        kl = [[torch.zeros(1) for _ in g.responses] for g in groups]
    flat = [t.float() for g in kl for t in g]
    device = flat[0].device if flat else torch.device("cpu")
    r_h = torch.tensor([s for g in helpfulness for s in g], dtype=torch.float32, device=device)
    r_s = torch.tensor([s for g in safety for s in g], dtype=torch.float32, device=device)
    tags = torch.tensor([int(g.safety) for g in groups for _ in g.responses], dtype=torch.int32,
                        device=device)
    width = max(len(t) for t in flat) if flat else 1
    kl_t = torch.zeros(len(flat), width, device=device)
    lengths = torch.tensor([len(t) for t in flat], dtype=torch.long, device=device)
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).to(torch.int32)
    for i, t in enumerate(flat):  # copies on the device: no transfer per row
        kl_t[i, : len(t)] = t
    score, seq, tok = combine_rewards(r_h, r_s, tags, kl_t, mask, beta)
    return score, seq, tok, mask


SAFETY_THRESHOLD = 0.15  # Llama 2: below this safety score the safety model decides


def gated_reward(helpfulness: float, safety: float, safety_prompt: bool) -> float:
    """Llama 2's R_c on raw reward-model outputs: the sigmoid of the safety score if the prompt
    is tagged safety or that sigmoid is below 0.15, else the sigmoid of the helpfulness score."""
    s_safe = _sigmoid(safety)
    if safety_prompt or s_safe < SAFETY_THRESHOLD:
        return s_safe
    return _sigmoid(helpfulness)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)  # no overflow for very negative scores
    return e / (1 + e)
