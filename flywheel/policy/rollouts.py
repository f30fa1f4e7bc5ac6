"""PPO's rollouts: from the actor with transformers, or from a vLLM engine that follows its
weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from flywheel.policy.sampling import render_prompts


@dataclass
class Rollout:
    prompts: list
    input_ids: torch.Tensor  # [B, P + R], prompts left-padded to P
    attention: torch.Tensor  # [B, P + R]
    response_mask: torch.Tensor  # [B, R]: response tokens up to and including the end token
    prompt_width: int

    @property
    def positions(self) -> torch.Tensor:
        return (self.attention.cumsum(-1) - 1).clamp(min=0)

    def prompt_ids(self) -> list[list[int]]:
        """Each prompt's token ids, without its left padding."""
        width = self.prompt_width
        return [p[m.bool()].tolist() for p, m in zip(self.input_ids[:, :width],
                                                     self.attention[:, :width])]

    def response_ids(self) -> list[list[int]]:
        resp = self.input_ids[:, self.prompt_width:]
        return [r[m.bool()].tolist() for r, m in zip(resp, self.response_mask)]

    def responses(self, tokenizer) -> list[str]:
        return [tokenizer.decode(ids, skip_special_tokens=True) for ids in self.response_ids()]

    def to(self, device) -> Rollout:
        return Rollout(self.prompts, self.input_ids.to(device), self.attention.to(device),
                       self.response_mask.to(device), self.prompt_width)


def _prompt_ids(tokenizer, prompt) -> list[int]:
    """A prompt as text, chat messages, or a dict with its "messages"."""
    text = tokenizer.apply_chat_template(_messages(prompt), tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def rollout(policy, tokenizer, prompts: Sequence, max_new_tokens: int,
            temperature: float) -> Rollout:
    """The policy's sampled answers (transformers generate; the weekly loop's stage uses vLLM
    with the updated weights loaded); temperature 0 decodes greedily."""
    ids = [_prompt_ids(tokenizer, p) for p in prompts]
    width = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id
    device = next(policy.parameters()).device
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
    attention = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids],
                             device=device)
    was_training = policy.training
    policy.eval()
    # temperature 0: greedy (vLLM's convention too)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    out = policy.generate(input_ids=input_ids, attention_mask=attention,
                          **(sampling if temperature > 0 else {"do_sample": False}),
                          max_new_tokens=max_new_tokens, pad_token_id=pad,
                          eos_token_id=tokenizer.eos_token_id)
    policy.train(was_training)
    resp = out[:, width:]
    is_end = resp == tokenizer.eos_token_id
    # tokens up to and including the first end token
    after_end = (is_end.cumsum(-1) - is_end.long()) > 0
    mask = (~after_end).long()
    return Rollout(list(prompts), out, torch.cat([attention, mask], -1), mask, width)


def _rollout_of(prompts: Sequence, prompt_ids: list[list[int]],
                response_ids: list[list[int]], pad: int, eos: int) -> Rollout:
    """A Rollout from token ids: prompts left-padded, responses right-padded, each response
    masked up to and including its first end token."""
    width = max(len(i) for i in prompt_ids)
    length = max(1, max(len(r) for r in response_ids))
    ids, att, mask = [], [], []
    for p, r in zip(prompt_ids, response_ids):
        end = next((j + 1 for j, t in enumerate(r) if t == eos), len(r))
        r = r[:end]
        ids.append([pad] * (width - len(p)) + p + r + [pad] * (length - len(r)))
        mask.append([1] * len(r) + [0] * (length - len(r)))
        att.append([0] * (width - len(p)) + [1] * len(p) + mask[-1])
    return Rollout(list(prompts), torch.tensor(ids), torch.tensor(att), torch.tensor(mask),
                   width)


class VLLMRollouts:
    """Rollouts sampled by a vLLM engine that follows the policy being trained (a
    `VLLMSampler(..., weight_sync=True)`). `sync(policy)` writes the policy's weights as
    safetensors to a scratch folder and has every engine worker reload them in place
    (flywheel/policy/vllm_worker.py; no engine restart), then drops the engine's prefix cache, whose
    keys and values the old weights computed. Each reload's seconds are kept in
    `reload_seconds`."""

    def __init__(self, sampler, tokenizer, scratch: str):
        self.sampler, self.tokenizer, self.scratch = sampler, tokenizer, scratch
        self.reload_seconds: list[float] = []
        self.generate_seconds: list[float] = []

    def sync(self, policy) -> None:
        import time

        from safetensors.torch import save_file

        t0 = time.perf_counter()
        # the state dict as safetensors (not save_pretrained, which writes on rank 0 only, when
        # each rank's engine needs its own copy); a tied head shares the embedding's tensor and
        # is left out: the reload ties it again (vllm_worker.py)
        state, seen = {}, set()
        for name, tensor in policy.state_dict().items():
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                state[name] = tensor.detach().contiguous()
        Path(self.scratch).mkdir(parents=True, exist_ok=True)
        save_file(state, f"{self.scratch}/model.safetensors", metadata={"format": "pt"})
        llm = self.sampler.llm
        llm.collective_rpc("flywheel_reload_weights", args=(self.scratch,))
        llm.reset_prefix_cache()
        self.reload_seconds.append(time.perf_counter() - t0)

    def close(self) -> None:
        self.sampler.close()

    def __call__(self, prompts: Sequence, max_new_tokens: int, temperature: float) -> Rollout:
        import time

        from vllm import SamplingParams


        t0 = time.perf_counter()
        msgs = [_messages(p) for p in prompts]
        params = SamplingParams(n=1, temperature=temperature, top_p=1.0,
                                max_tokens=max_new_tokens)
        outs = self.sampler.llm.generate(render_prompts(self.tokenizer, msgs), params,
                                         use_tqdm=False)
        tok = self.tokenizer
        ro = _rollout_of(prompts, [list(o.prompt_token_ids) for o in outs],
                         [list(o.outputs[0].token_ids) for o in outs], tok.pad_token_id,
                         tok.eos_token_id)
        self.generate_seconds.append(time.perf_counter() - t0)
        return ro


class NodeRollouts:
    """PPO's rollouts on several ranks from one vLLM engine per node (`policy_update.ppo.
    rollout_engines: per_node`): the engine lives on the node's first rank, across
    `sampling.tensor_parallel_size` of its GPUs; every rank of the node sends it its prompts
    (torch.distributed gather over the node's group), it samples them in one batch and sends
    each rank its answers back. After an update the first rank writes the actor's weights and
    its engine reloads them (the actor's weights are whole on every rank: ZeRO stage 2 or
    lower). Every rank of the node must call both methods together, with or without prompts."""

    collective = True

    def __init__(self, engine: VLLMRollouts | None, tokenizer, group, leader: int):
        self.engine, self.tokenizer, self.group, self.leader = engine, tokenizer, group, leader
        self.reload_seconds = engine.reload_seconds if engine else []
        self.generate_seconds = engine.generate_seconds if engine else []

    def sync(self, policy) -> None:
        if self.engine is not None:
            self.engine.sync(policy)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    def __call__(self, prompts: Sequence, max_new_tokens: int,
                 temperature: float) -> Rollout | None:
        dist = torch.distributed
        size = dist.get_world_size(self.group)
        asked = [None] * size if self.engine is not None else None
        dist.gather_object(list(prompts), asked, dst=self.leader, group=self.group)
        answers = None
        if self.engine is not None:
            flat = [p for part in asked for p in part]
            ro = self.engine(flat, max_new_tokens, temperature) if flat else None
            pairs = list(zip(ro.prompt_ids(), ro.response_ids())) if ro else []
            answers, start = [], 0
            for part in asked:
                answers.append(pairs[start : start + len(part)])
                start += len(part)
        mine = [None]
        dist.scatter_object_list(mine, answers, src=self.leader, group=self.group)
        if not prompts:
            return None
        tok = self.tokenizer
        return _rollout_of(prompts, [p for p, _ in mine[0]], [r for _, r in mine[0]],
                           tok.pad_token_id, tok.eos_token_id)


def _messages(prompt) -> list[dict]:
    if isinstance(prompt, dict):
        prompt = prompt["messages"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return prompt
