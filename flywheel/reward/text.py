"""The tokens a reward model reads for a (conversation, response): the one place that formats
them, for training (`RewardModel.encode`, flywheel/reward/train.py) and for the scoring engine
(flywheel/reward/scoring.py) alike.

- A tokenizer with a chat template: the conversation with the response as the assistant's turn,
  through the template, truncated from the left (the reward is read at the end).
- Without one (a sentence encoder such as all-MiniLM-L6-v2): the conversation with its role
  markers, "User: ...\\nAssistant: ...\\nUser: ...\\nAssistant:", as the first segment and the
  response as the second ([CLS] conversation [SEP] response [SEP] for BERT), truncated from the
  left, longest segment first, so that both the end of the conversation and of the response
  are kept.
"""

from __future__ import annotations

import torch

ROLE_MARKERS = {"system": "System", "user": "User", "assistant": "Assistant"}


def marked_conversation(messages: list[dict]) -> str:
    """The conversation with a role marker on every turn, ending with the assistant's marker
    that the response follows."""
    turns = [f"{ROLE_MARKERS.get(m['role'], m['role'].capitalize())}: {m['content']}"
             for m in messages]
    return "\n".join(turns + [f"{ROLE_MARKERS['assistant']}:"])


def chat_text(tokenizer, messages: list[dict], response: str | None = None) -> str:
    """The chat template's text of the conversation and `response` as the assistant's turn;
    without a response, the prompt up to the assistant's turn (the generation prompt)."""
    if response is None:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    return tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": response}], tokenize=False)


def reward_ids(tokenizer, messages: list[list[dict]], responses: list[str],
               max_length: int | None) -> list[list[int]]:
    """Token ids of each (conversation, response), unpadded, at most `max_length` tokens
    (None: untruncated), truncated from the left."""
    if not responses:
        return []
    tokenizer.truncation_side = "left"  # keep the response's end: the reward is read there
    trunc = {"truncation": max_length is not None, "max_length": max_length}
    if tokenizer.chat_template:
        texts = [chat_text(tokenizer, m, r) for m, r in zip(messages, responses)]
        return tokenizer(texts, add_special_tokens=False, **trunc)["input_ids"]
    if max_length is not None:
        trunc["truncation"] = "longest_first"
    prompts = [marked_conversation(m) for m in messages]
    return tokenizer(prompts, responses, **trunc)["input_ids"]


def pad_ids(seqs: list[list[int]], pad_id: int,
            device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [len(seqs), longest] and their 0/1 mask, on `device` (default: the
    CPU)."""
    width = max(len(s) for s in seqs)
    # filled on the CPU, then copied over in one transfer rather than one per row
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
