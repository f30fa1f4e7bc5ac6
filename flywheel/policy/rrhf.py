"""RRHF: a ranking loss over a prompt's K scored samples plus fine-tuning on the best.

RRHF (Yuan et al. 2023): for K scored responses to a prompt, length-normalised log-probabilities
p_i = (1/|y_i|) sum_t log pi(y_i,t); loss = sum over pairs with r_i < r_j of max(0, p_i - p_j),
plus the negative log-likelihood of the best response per token. The log-probs of the response
tokens come from the policy's last hidden states and its output head through
`kernels.head_logprobs`, forward and backward, so no [tokens, vocab] logits are made; under
ZeRO-3, whose output head is a shard outside the model's forward, from the full logits through
`kernels.token_logprobs` instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flywheel.devices import compute_device
from flywheel.distributed.launch import policy_on_ranks
from flywheel.distributed.ranks import all_sum, rank_micro_batches, world
from flywheel.errors import FlywheelError
from flywheel.kernels.head_logprobs import head_logprobs
from flywheel.kernels.token_logprobs import token_logprobs
from flywheel.models import load_causal_lm, load_tokenizer
from flywheel.policy.finetune import save_policy, tokenize_sft
from flywheel.training import epoch_batches, make_stepper, plan_steps, report_step


def rrhf_finetune_on_ranks(policy_path: str, groups: list[tuple], cfg, out_dir: str | Path) -> dict:
    """`rrhf_finetune` on the ranks `cfg.resources` plans: in this process for one rank, else
    on ranks torchrun starts (flywheel/distributed/launch.py), rank 0's saved policy copied to
    `out_dir`.
    The metrics then carry each rank's peak memory and optimizer state."""
    if cfg.resources.world_size() == 1:
        return rrhf_finetune(policy_path, groups, cfg, out_dir)
    inputs = {"policy_path": policy_path, "groups": groups, "cfg": cfg}
    return policy_on_ranks("rrhf", inputs, cfg.resources, out_dir)


def rrhf_finetune(policy_path: str, groups: list[tuple], cfg, out_dir: str | Path) -> dict:
    """RRHF: per prompt (messages, K responses, their rewards) or (messages, K responses, their
    rewards, K `end` flags), the ranking loss over the responses' length-normalised
    log-probabilities plus the per-token NLL of the best one (`rrhf_loss`), averaged
    over the prompts of a step. A response whose flag is False (the token limit cut it off) is
    scored and learned without the end of its turn, as in `finetune`. Saves the policy to
    `out_dir` (on several ranks: each takes its share of every step's prompts, rank 0 saves).
    `cfg`: RRHFConfig."""

    for g in groups:
        if not len(g[1]) == len(g[2]) == (len(g[3]) if len(g) > 3 else len(g[1])):
            raise FlywheelError(f"RRHF: a prompt has {len(g[1])} responses, {len(g[2])} rewards"
                                + (f" and {len(g[3])} end flags" if len(g) > 3 else "")
                                + "; give one of each per response")
    groups = [g for g in groups if len(g[1]) >= 2]
    if not groups:
        raise FlywheelError("RRHF needs at least two scored samples per prompt; raise "
                            "rejection_sampling.k")
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(policy_path)
    model = load_causal_lm(policy_path, "float32", None if cfg.deepspeed else compute_device())
    model.train()
    if getattr(model.get_output_embeddings(), "bias", None) is not None:
        raise FlywheelError("RRHF reads log-probs off the output head's weight and this "
                            "policy's head has a bias; use a policy whose head has none "
                            "(Llama, Qwen, SmolLM)")
    data = [([tokenize_sft(tok, g[0], r, cfg.max_length, end)
              for r, end in zip(g[1], g[3] if len(g) > 3 else [True] * len(g[1]))], g[2])
            for g in groups]
    steps, warmup = plan_steps(len(data), cfg.batch_size, cfg.epochs)
    full_step = range(min(cfg.batch_size, len(data)))
    stepper = make_stepper(model, cfg.learning_rate, steps, warmup,
                           len(rank_micro_batches(full_step, 1, world())), cfg.deepspeed,
                           "policy_update.rrhf.deepspeed")
    device, w = stepper.device, stepper.world
    losses, ranks = [], []
    bar = tqdm(total=steps, desc="rrhf", unit="step", disable=not w.main)
    start = time.perf_counter()
    for idx in epoch_batches(len(data), cfg.batch_size, cfg.epochs, cfg.seed):
        step_loss = step_rank = 0.0
        for micro in rank_micro_batches(idx, 1, w):  # one prompt's K responses at a time
            encoded, rewards = data[micro.items[0]]
            width = max(len(ids) for ids, _ in encoded)
            pad = tok.pad_token_id
            ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in encoded], device=device)
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in encoded],
                                  device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in encoded],
                                device=device)
            sums = (logits_logprob_sums if stepper.partitioned else response_logprob_sums)(
                stepper.module if stepper.partitioned else stepper.model, ids, mask, labels)
            loss, st = rrhf_loss(sums, (labels[:, 1:] != -100).sum(-1),
                                 torch.tensor(rewards, dtype=torch.float32, device=device),
                                 cfg.ft_weight)
            if not torch.isfinite(loss):
                raise FlywheelError(f"RRHF loss became {loss.item()}; lower "
                                    f"policy_update.rrhf.learning_rate (now {cfg.learning_rate})")
            stepper.backward(loss, micro.weight, micro.last)
            step_loss += loss.item() * micro.weight
            step_rank += st["rank_loss"] * micro.weight
        stepper.step()
        step_loss, step_rank = all_sum([step_loss, step_rank], w)
        losses.append(step_loss)
        ranks.append(step_rank)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        report_step("rrhf", len(losses), steps)
    bar.close()
    seconds_per_step = (time.perf_counter() - start) / steps  # before saving
    save_policy(stepper, policy_path, tok, out_dir)
    return {"optimizer_state_bytes": stepper.optimizer_state_bytes(),  # this rank's
            "seconds_per_step": seconds_per_step,  # this rank's, the step loop only
            "steps": steps, "prompts": len(data), "loss_first": losses[0],
            "loss_last": losses[-1], "rank_loss_first": ranks[0], "rank_loss_last": ranks[-1]}


def response_logprob_sums(model, ids: torch.Tensor, mask: torch.Tensor,
                          labels: torch.Tensor) -> torch.Tensor:
    """[K] summed log-probs under the causal LM `model` of each row's labelled tokens (labels
    -100 elsewhere), differentiable: the backbone's last hidden states and the output head
    through kernels.head_logprobs, on the labelled positions only."""
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    lp = head_logprobs(hidden[keep], model.get_output_embeddings().weight, target[keep])
    return torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(
        0, keep.nonzero()[:, 0], lp)


def logits_logprob_sums(model, ids: torch.Tensor, mask: torch.Tensor,
                        labels: torch.Tensor) -> torch.Tensor:
    """`response_logprob_sums` through the model's whole forward and its [tokens, vocab]
    logits (kernels.token_logprobs): under ZeRO-3 the output head's weight is a shard outside
    the module's own forward, so `head_logprobs` cannot read it; the forward gathers it."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    lp = token_logprobs(logits[keep], target[keep])
    return torch.zeros(ids.shape[0], dtype=lp.dtype, device=lp.device).index_add(
        0, keep.nonzero()[:, 0], lp)


def rrhf_loss(logp_sums: torch.Tensor, lengths: torch.Tensor, rewards: torch.Tensor,
              ft_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """RRHF over one prompt's K responses: `logp_sums` [K] summed response log-probs, `lengths`
    [K] response tokens, `rewards` [K]. Ranking loss on length-normalised scores plus the
    per-token NLL of the best response."""
    p = logp_sums / lengths.clamp(min=1).to(logp_sums.dtype)
    worse = rewards[:, None] < rewards[None, :]  # [i, j]: i ranked below j
    rank = (torch.relu(p[:, None] - p[None, :]) * worse).sum()
    best = int(torch.argmax(rewards))
    ft = -p[best]
    return rank + ft_weight * ft, {"rank_loss": rank.item(), "ft_loss": ft.item()}
