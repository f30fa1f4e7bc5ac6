"""Sentence embeddings: unit-norm mean-pooled hidden states of an encoder (the packaged
all-MiniLM-L6-v2 by default), on `compute_device()`. What the proxy judge's relevance and the
refusal classifier's features read."""

from __future__ import annotations

import torch

from flywheel.devices import compute_device, model_device


class Embedder:
    def __init__(self, path: str, batch_size: int = 32, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(compute_device()).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """One row per text (its first `max_length` tokens), on the model's device."""
        device = model_device(self.model)
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        if not out:
            return torch.empty(0, self.model.config.hidden_size, device=device)
        return torch.cat(out)
