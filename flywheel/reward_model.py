"""Reward models: a backbone with a scalar head on the last real token, trained with Llama 2's
margin ranking loss  -log(sigmoid(r_chosen - r_rejected - m(strength))).

The backbone is any transformers encoder or decoder (`AutoModel`): by default the policy's own
checkpoint, as Llama 2 does. A checkpoint folder holds the backbone (safetensors), the head
(`head.safetensors`), the tokenizer and `reward_model.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from flywheel.config import RewardModelConfig
from flywheel.devices import compute_device, model_device
from flywheel.errors import FlywheelError
from flywheel.schemas import SAFETY_LABELS, STRENGTHS
from flywheel.training import epoch_batches, make_stepper, plan_steps, report_step
from kernels.last_token import last_token_readout

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


def group_pairs(pairs: list[PreferencePair]) -> list[list[int]]:
    """Indices of `pairs` by prompt (its messages), in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(json.dumps(p.messages, sort_keys=True), []).append(i)
    return list(groups.values())


def _encode_distinct(model, groups: list[list[PreferencePair]], max_length: int):
    """The encoding of each distinct (prompt, response) of `groups` once, with the positions
    of every pair's chosen and rejected response in it and each pair's weight (every group
    weighs 1 / len(groups), shared among its pairs)."""
    where: dict[tuple[int, str], int] = {}
    messages, responses, chosen, rejected, weight = [], [], [], [], []
    for g, group in enumerate(groups):
        for p in group:
            for text in (p.chosen, p.rejected):
                if (g, text) not in where:
                    where[g, text] = len(responses)
                    messages.append(p.messages)
                    responses.append(text)
            chosen.append(where[g, p.chosen])
            rejected.append(where[g, p.rejected])
            weight.append(1 / (len(groups) * len(group)))
    return (model.encode(messages, responses, max_length), torch.tensor(chosen),
            torch.tensor(rejected), torch.tensor(weight))


@dataclass(frozen=True)
class PreferencePair:
    messages: list[dict]
    chosen: str
    rejected: str
    strength: str | None = STRENGTHS[-1]  # None: a pair without one (open-source sets)
    safety_label: str | None = None


class RewardModel(torch.nn.Module):
    def __init__(self, backbone, tokenizer):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.head = torch.nn.Linear(backbone.config.hidden_size, 1)
        torch.nn.init.normal_(self.head.weight, std=1 / math.sqrt(backbone.config.hidden_size + 1))
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_backbone(cls, path: str) -> RewardModel:
        """A fresh head on the checkpoint's backbone, on the CPU: the head's initial weights
        then come from the CPU generator, the same whichever device the model moves to."""
        from transformers import AutoModel

        from flywheel.models import load_tokenizer

        backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        return cls(backbone, load_tokenizer(path))

    @classmethod
    def from_state(cls, backbone_path: str, state: dict) -> RewardModel:
        """A fresh model holding `state` (the full state dict of a trained one, in float32)."""
        model = cls.from_backbone(backbone_path)
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return model

    @classmethod
    def load(cls, path: str, device: torch.device | str | None = None) -> RewardModel:
        """A saved reward model, in eval mode, read on the CPU and moved to `device` (default:
        `compute_device()`, where it is scored)."""
        model = cls.from_backbone(path)
        model.head.load_state_dict(load_file(str(Path(path) / "head.safetensors"), device="cpu"))
        return model.to(compute_device() if device is None else device).eval()

    def save(self, path: str | Path, meta: dict) -> None:
        path = Path(path)
        self.backbone.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        # CPU copies: the file then loads anywhere, whatever device the model trained on
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(path / "head.safetensors"))
        (path / "reward_model.json").write_text(json.dumps(meta, indent=2))

    def encode(self, messages: list[list[dict]], responses: list[str], max_length: int):
        tok = self.tokenizer
        tok.truncation_side = "left"  # keep the end of the response: the reward is read there
        if tok.chat_template:
            texts = [
                tok.apply_chat_template(m + [{"role": "assistant", "content": r}], tokenize=False)
                for m, r in zip(messages, responses)
            ]
            return tok(texts, padding=True, truncation=True, max_length=max_length,
                       add_special_tokens=False, return_tensors="pt")
        prompts = ["\n".join(x["content"] for x in m) for m in messages]
        return tok(prompts, responses, padding=True, truncation="longest_first",
                   max_length=max_length, return_tensors="pt")

    def forward(self, input_ids, attention_mask):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return last_token_readout(hidden, attention_mask, self.head.weight, self.head.bias)

    @torch.no_grad()
    def score(self, messages, responses, max_length=512, batch_size=8) -> list[float]:
        """Whole padded sequences, batch by batch: the simple path, kept as the reference the
        scoring engine (flywheel/scoring.py, which the loop uses) is tested against."""
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


def train_reward_model(
    backbone_path: str, pairs: list[PreferencePair], cfg: RewardModelConfig, desc="reward model"
) -> tuple[RewardModel, dict]:
    """One run of the margin ranking loss over `pairs`; returns the model and training metrics."""
    if not pairs:
        raise FlywheelError("no preference pairs to train the reward model on")
    torch.manual_seed(cfg.seed)
    model = RewardModel.from_backbone(backbone_path)
    if not cfg.deepspeed:  # a DeepSpeed engine places the model on its local rank's device
        model.to(compute_device())
    model.train()
    # a batch element: one pair, or with group_by_prompt all of one prompt's pairs
    elements = (group_pairs(pairs) if cfg.group_by_prompt else [[i] for i in range(len(pairs))])
    steps, warmup = plan_steps(len(elements), cfg.batch_size, cfg.epochs)
    micro_steps = math.ceil(min(cfg.batch_size, len(elements)) / cfg.micro_batch_size)
    stepper = make_stepper(model, cfg.learning_rate, steps, warmup, micro_steps, cfg.deepspeed)
    device = stepper.device
    losses, correct, seen = [], 0, 0
    bar = tqdm(total=steps, desc=desc, unit="step")
    for idx in epoch_batches(len(elements), cfg.batch_size, cfg.epochs, cfg.seed):
        batch = [[pairs[i] for i in elements[e]] for e in idx]
        step_loss = 0.0
        for m in range(0, len(batch), cfg.micro_batch_size):
            micro_groups = batch[m : m + cfg.micro_batch_size]
            micro = [p for group in micro_groups for p in group]
            enc, at_chosen, at_rejected, weight = _encode_distinct(model, micro_groups,
                                                                   cfg.max_length)
            rewards = stepper.module(enc["input_ids"].to(device),
                                     enc["attention_mask"].to(device)).float()
            margin = torch.tensor([margin_of(p.strength, cfg.margin) for p in micro],
                                  device=device)
            r_chosen, r_rejected = rewards[at_chosen.to(device)], rewards[at_rejected.to(device)]
            loss = ranking_loss(r_chosen, r_rejected, margin, cfg.center_coefficient,
                                weight.to(device))
            n = len(micro_groups)
            if not torch.isfinite(loss):
                raise FlywheelError(
                    f"reward-model loss became {loss.item()} at step {len(losses) + 1}; "
                    f"lower reward_model.learning_rate (now {cfg.learning_rate}) or check "
                    "the data for empty responses"
                )
            stepper.backward(loss, n / len(batch))
            step_loss += loss.item() * n / len(batch)
            correct += int((r_chosen > r_rejected).sum())
            seen += len(micro)
        stepper.step()
        losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", acc=f"{correct / seen:.2f}")
        report_step(desc, len(losses), steps)
    bar.close()
    if cfg.deepspeed:  # ZeRO-3 holds shards: gather the full weights into the model
        model = RewardModel.from_state(backbone_path, stepper.state_dict_for_save())
        del stepper
        model.to(device)  # scored next, where it trained
    return model.eval(), {
        "steps": steps,
        "warmup_steps": warmup,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "train_accuracy_running": correct / seen,
    }


def evaluate(model: RewardModel, pairs: list[PreferencePair], max_length: int = 512,
             engine=None) -> tuple[dict, list[bool]]:
    """Score both responses of every pair through the scoring engine (the pair's prompt runs
    once for both where the backbone allows it). Returns (summary, hits): hits[i] is whether
    pair i's chosen response scored above its rejected one; the summary is
    `summarise(pairs, hits)`. `engine`: a configured ScoringEngine (default: one with
    `max_length` and the default token budget)."""
    from flywheel.scoring import Group, ScoringEngine

    if not pairs:
        return summarise([], []), []
    engine = engine or ScoringEngine(max_length=max_length)
    scores = engine.rewards(model, [Group(p.messages, [p.chosen, p.rejected]) for p in pairs],
                            desc="evaluating")
    hits = [c > r for c, r in scores]
    return summarise(pairs, hits), hits


def summarise(pairs: list[PreferencePair], hits: list[bool]) -> dict:
    """Accuracy overall, per strength bucket and per safety label (the buckets of Llama 2's
    Table 8); a bucket with no pairs is left out."""
    def bucket(key, levels):
        out = {}
        for level in levels:
            sel = [h for h, p in zip(hits, pairs) if getattr(p, key) == level]
            if sel:
                out[level] = {"accuracy": sum(sel) / len(sel), "n": len(sel)}
        return out

    return {
        "accuracy": sum(hits) / len(hits) if hits else None,
        "n": len(hits),
        "by_strength": bucket("strength", STRENGTHS),
        "by_safety_label": bucket("safety_label", SAFETY_LABELS),
    }


def accuracy(model: RewardModel, pairs: list[PreferencePair], max_length: int = 512) -> dict:
    """Accuracy overall, per strength bucket and per safety label: the share of pairs scored
    chosen > rejected."""
    return evaluate(model, pairs, max_length)[0]
