"""How a reward model turns its backbone's hidden states into one score: which position(s) it
reads (`pooling`), then the scalar head. Training (`RewardModel.forward`) and the scoring engine
(flywheel/reward/scoring.py) both read out through `readout`, so a model scores the same
sequence the same way wherever it is scored.

- `last`: the last real token (kernels/last_token.py, with the backbone's final RMSNorm fused
  when the scoring engine defers it). Right for a causal decoder, whose last state is the only
  one that has seen the whole sequence (Llama 2's reward models).
- `mean`: the mean of the real tokens' states (attention-masked). Right for a bidirectional
  encoder such as BERT, pretrained without any meaning on its last ([SEP]) token; sentence
  encoders such as all-MiniLM-L6-v2 were trained with mean pooling.
- `first`: the first token ([CLS] for BERT).
- `auto`: `last` for a causal decoder, `mean` otherwise (probed, `is_causal`).

A saved model records its pooling in reward_model.json; a model saved before there was a choice
has none and reads out on its last token, as it was trained.
"""

from __future__ import annotations

import inspect

import torch

from flywheel.devices import model_device
from flywheel.errors import ConfigError
from flywheel.kernels.last_token import last_token_readout

POOLINGS = ("last", "mean", "first")
LEGACY_POOLING = "last"  # what a saved model without a `pooling` field was trained with


def is_causal(backbone) -> bool:
    """Whether a prefix's hidden states do not depend on what follows it (a causal decoder),
    probed once per model with two short forwards: a saved backbone names only its base class
    (`LlamaModel`, `BertModel`), and BERT's config can claim a causal LM head too."""
    known = getattr(backbone, "_flywheel_is_causal", None)
    if known is not None:
        return known
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]], device=model_device(backbone))
    ids = ids % backbone.config.vocab_size
    was_training = backbone.training
    backbone.eval()  # dropout would make the two forwards differ
    with torch.no_grad():
        short = backbone(input_ids=ids[:, :3]).last_hidden_state
        long = backbone(input_ids=ids).last_hidden_state[:, :3]
    backbone.train(was_training)
    causal = bool(torch.allclose(short, long, atol=1e-4, rtol=1e-3))
    backbone._flywheel_is_causal = causal
    return causal


def takes_cache(backbone) -> bool:
    return "past_key_values" in inspect.signature(backbone.forward).parameters


def resolve_pooling(pooling: str, backbone) -> str:
    """`pooling` as one of POOLINGS: `auto` is `last` for a causal decoder, `mean` otherwise."""
    if pooling == "auto":
        return "last" if is_causal(backbone) else "mean"
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown reward-model pooling {pooling!r}; set reward_model.pooling "
                          f"to auto or one of {', '.join(POOLINGS)}")
    return pooling


def mean_rows(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """hidden [batch, seq, d], 0/1 mask [batch, seq] -> the mean of each row's real states
    [batch, d] (float32)."""
    mask = attention_mask.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def readout(hidden: torch.Tensor, attention_mask: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor, pooling: str, norm_weight: torch.Tensor | None = None,
            eps: float = 1e-6) -> torch.Tensor:
    """Rewards [batch] (float32) from hidden [batch, seq, d], the mask and the scalar head
    (weight [1, d], bias [1]). `norm_weight`: a final RMSNorm the backbone skipped, applied
    on the rows read (`last` only: the scoring engine defers the norm for that pooling
    alone)."""
    if pooling == "last":
        return last_token_readout(hidden, attention_mask, weight, bias, norm_weight, eps)
    if norm_weight is not None:
        raise ValueError(f"a deferred final norm is applied by the last-token read-out only, "
                         f"not with {pooling!r} pooling")
    if pooling == "mean":
        rows = mean_rows(hidden, attention_mask)
    elif pooling == "first":  # the first real position: left padding reads no pad state
        first = attention_mask.to(torch.int64).argmax(dim=1)
        rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), first].float()
    else:
        raise ConfigError(f"unknown reward-model pooling {pooling!r}; use one of "
                          f"{', '.join(POOLINGS)}")
    return (rows @ weight.float().t() + bias.float()).squeeze(-1)
