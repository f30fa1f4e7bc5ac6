"""Last-token read-out: each sequence's last real hidden state (by attention mask), through the
scalar head, on those rows only. A sequence-classification head projects every position and then
gathers; this gathers first, so the head touches one row per sequence.

Works for left or right padding: the last real position is the last 1 in the mask.
"""

import torch


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] 0/1 mask -> [batch] index of the last 1 in each row."""
    seq = attention_mask.shape[1]
    return seq - 1 - attention_mask.flip(1).to(torch.int64).argmax(dim=1)


def last_token_reference(
    hidden: torch.Tensor, attention_mask: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """hidden [batch, seq, d], weight [1, d], bias [1] -> rewards [batch] (float32)."""
    idx = last_token_index(attention_mask)
    rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    return (rows.float() @ weight.float().t() + bias.float()).squeeze(-1)


def last_token_readout(hidden, attention_mask, weight, bias) -> torch.Tensor:
    return last_token_reference(hidden, attention_mask, weight, bias)
