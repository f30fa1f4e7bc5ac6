"""Llama 2's combined reward R_c, the one implementation that rejection sampling, RRHF, PPO and
evaluation use, and the reward PPO trains on:

    R_c = sigmoid(safety score)       if the prompt is tagged safety or that sigmoid < 0.15
          sigmoid(helpfulness score)  otherwise
    PPO's reward = WHITEN(LOGIT(R_c)) - beta * KL

The formula is kernels/reward_combine.py's: `gated_rewards` runs its torch gate on the stages'
Python floats (in float64), `RewardModelScores.ppo_rewards` its fused pass over a PPO batch. The
threshold is written here only and passed to the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from flywheel.kernels.reward_combine import combine_rewards, gate_reference

SAFETY_THRESHOLD = 0.15  # Llama 2: below this safety score the safety model decides


@dataclass(frozen=True)
class RewardModelScores:
    """Both reward models' raw outputs for a batch of responses, and whether each response's
    prompt is tagged safety: what PPO's score function returns in the weekly loop."""

    helpfulness: torch.Tensor  # [B]
    safety: torch.Tensor  # [B]
    safety_prompt: torch.Tensor  # [B] bool

    @classmethod
    def of(cls, helpfulness: Sequence[float], safety: Sequence[float],
           safety_prompt: Sequence[bool], dtype: torch.dtype = torch.float32
           ) -> RewardModelScores:
        if not len(helpfulness) == len(safety) == len(safety_prompt):
            raise ValueError(f"R_c needs one helpfulness score, one safety score and one safety "
                             f"tag per response; got {len(helpfulness)}, {len(safety)} and "
                             f"{len(safety_prompt)}")
        return cls(torch.tensor(list(helpfulness), dtype=dtype),
                   torch.tensor(list(safety), dtype=dtype),
                   torch.tensor(list(safety_prompt), dtype=torch.bool))

    def gated(self) -> torch.Tensor:
        """R_c [B], in the scores' dtype."""
        return gate_reference(self.helpfulness, self.safety, self.safety_prompt,
                              SAFETY_THRESHOLD)

    def ppo_rewards(self, kl: torch.Tensor, mask: torch.Tensor, beta: float):
        """One pass of the reward-combination kernel on the device of `kl` [B, T] (per-token
        log pi - log pi_0 of the response tokens that `mask` [B, T] marks): returns (score =
        WHITEN(LOGIT(R_c)) over the batch, sequence reward = score - beta * sum KL, token
        rewards = -beta * KL with the score added on each response's last token, R_c), all
        float32."""
        device = kl.device
        return combine_rewards(self.helpfulness.to(device), self.safety.to(device),
                               self.safety_prompt.to(device), kl, mask, beta, SAFETY_THRESHOLD)


def gated_rewards(helpfulness: Sequence[float], safety: Sequence[float],
                  safety_prompt: Sequence[bool]) -> list[float]:
    """R_c of each response from its raw reward-model outputs and its prompt's safety tag,
    computed in float64."""
    return RewardModelScores.of(helpfulness, safety, safety_prompt, torch.float64).gated().tolist()


def gated_reward(helpfulness: float, safety: float, safety_prompt: bool) -> float:
    """R_c of one response (`gated_rewards` for a single one)."""
    return gated_rewards([helpfulness], [safety], [safety_prompt])[0]
