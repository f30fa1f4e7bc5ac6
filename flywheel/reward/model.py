"""Reward models: a backbone with a scalar head, read out on the last real token (a decoder) or
the mean of the tokens (an encoder; flywheel/reward/pooling.py), trained with Llama 2's margin
ranking loss  -log(sigmoid(r_chosen - r_rejected - m(strength))).

The backbone is any transformers encoder or decoder (`AutoModel`): by default the policy's own
checkpoint, as Llama 2 does. A checkpoint folder holds the backbone (safetensors), the head
(`head.safetensors`), the tokenizer and `reward_model.json` (with the model's `pooling`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flywheel.devices import compute_device, model_device
from flywheel.lake.schemas import STRENGTHS
from flywheel.models import load_tokenizer
from flywheel.reward.pooling import LEGACY_POOLING, readout, resolve_pooling
from flywheel.reward.text import pad_id_of, pad_ids, reward_ids

# Margin per strength level, significantly better first (Llama 2, section 3.2.2).
MARGINS = {
    "none": (0.0, 0.0, 0.0, 0.0),
    "small": (1.0, 2 / 3, 1 / 3, 0.0),
    "large": (3.0, 2.0, 1.0, 0.0),
}


def margin_of(strength: str | None, table: str) -> float:
    """The margin of a strength level; 0 for a pair without one (open-source sets such as
    HH-RLHF carry no strength)."""
    if strength is None:
        return 0.0
    return MARGINS[table][STRENGTHS.index(strength)]


def ranking_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor,
                 center: float = 0.0, weight: torch.Tensor | None = None):
    """Llama 2's margin ranking loss, plus `center` x mean((r_chosen + r_rejected)^2) to keep
    the scores centred on 0 (0: none, as Llama 2). `weight`: per-pair weights summing to 1 in
    place of the plain mean (grouped by prompt: 1 / (prompts x the prompt's pairs))."""
    def mean(x):
        return x.mean() if weight is None else (x * weight).sum()

    loss = mean(-torch.nn.functional.logsigmoid(r_chosen - r_rejected - margin))
    if center:
        loss = loss + center * mean((r_chosen + r_rejected).pow(2))
    return loss


@dataclass(frozen=True)
class PreferencePair:
    messages: list[dict]
    chosen: str
    rejected: str
    strength: str | None = STRENGTHS[-1]  # None: a pair without one (open-source sets)
    safety_label: str | None = None


class RewardModel(torch.nn.Module):
    def __init__(self, backbone, tokenizer, pooling: str = "auto"):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.head = torch.nn.Linear(backbone.config.hidden_size, 1)
        torch.nn.init.normal_(self.head.weight, std=1 / math.sqrt(backbone.config.hidden_size + 1))
        torch.nn.init.zeros_(self.head.bias)
        self.pooling = resolve_pooling(pooling, backbone)  # last, mean or first

    @classmethod
    def from_backbone(cls, path: str, pooling: str = "auto") -> RewardModel:
        """A fresh head on the checkpoint's backbone, on the CPU: the head's initial weights
        then come from the CPU generator, the same whichever device the model moves to."""
        from transformers import AutoModel


        backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        return cls(backbone, load_tokenizer(path), pooling)

    @classmethod
    def from_state(cls, backbone_path: str, state: dict, pooling: str = "auto") -> RewardModel:
        """A fresh model holding `state` (the full state dict of a trained one, in float32)."""
        model = cls.from_backbone(backbone_path, pooling)
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return model

    @classmethod
    def load(cls, path: str, device: torch.device | str | None = None) -> RewardModel:
        """A saved reward model, in eval mode, read on the CPU and moved to `device` (default:
        `compute_device()`, where it is scored). Its pooling is the one it recorded; a model
        saved before the choice existed reads out on its last token, as it was trained."""
        meta_file = Path(path) / "reward_model.json"
        meta = json.loads(meta_file.read_text() or "{}") if meta_file.exists() else {}
        model = cls.from_backbone(path, meta.get("pooling", LEGACY_POOLING))
        model.head.load_state_dict(load_file(str(Path(path) / "head.safetensors"), device="cpu"))
        return model.to(compute_device() if device is None else device).eval()

    def save(self, path: str | Path, meta: dict) -> None:
        path = Path(path)
        self.backbone.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        # CPU copies: the file then loads anywhere, whatever device the model trained on
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(path / "head.safetensors"))
        (path / "reward_model.json").write_text(json.dumps({**meta, "pooling": self.pooling},
                                                           indent=2))

    def encode(self, messages: list[list[dict]], responses: list[str], max_length: int):
        """Right-padded `input_ids` and `attention_mask` of each (conversation, response) as
        the model reads it (flywheel/reward/text.py)."""
        return self.pad(reward_ids(self.tokenizer, messages, responses, max_length))

    def pad(self, seqs: list[list[int]], device=None) -> dict[str, torch.Tensor]:
        ids, mask = pad_ids(seqs, pad_id_of(self.tokenizer), device)
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, input_ids, attention_mask):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return readout(hidden, attention_mask, self.head.weight, self.head.bias, self.pooling)

    @torch.no_grad()
    def score(self, messages, responses, max_length=512, batch_size=8) -> list[float]:
        """Whole padded sequences, batch by batch: the simple path, kept as the reference the
        scoring engine (flywheel/reward/scoring.py, which the loop uses) is tested against."""
        self.eval()
        device = model_device(self)
        order = sorted(range(len(responses)), key=lambda i: len(responses[i]))
        out = [0.0] * len(responses)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            enc = self.encode([messages[j] for j in idx], [responses[j] for j in idx], max_length)
            rewards = self(enc["input_ids"].to(device), enc["attention_mask"].to(device))
            for j, r in zip(idx, rewards.tolist()):
                out[j] = r
        return out
