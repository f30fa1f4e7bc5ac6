"""Policy updates. Rejection sampling: keep the best of K samples per prompt by reward, then
fine-tune the policy on that pool with the loss on response tokens only."""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from flywheel.config import RejectionSamplingConfig
from flywheel.devices import autocast, compute_device
from flywheel.distributed.launch import policy_on_ranks
from flywheel.distributed.ranks import all_sum, rank_micro_batches, world
from flywheel.errors import FlywheelError
from flywheel.models import load_causal_lm, load_tokenizer
from flywheel.training import Stepper, epoch_batches, make_stepper, plan_steps, report_step


@dataclass(frozen=True)
class Candidate:
    sample_id: str
    prompt_id: str
    text: str
    reward: float


def best_of(candidates: list[Candidate]) -> dict[str, Candidate]:
    """The highest-reward candidate per prompt (ties: the first)."""
    best: dict[str, Candidate] = {}
    for c in candidates:
        if c.prompt_id not in best or c.reward > best[c.prompt_id].reward:
            best[c.prompt_id] = c
    return best


def cap_safety_share(helpful: list[str], safety: list[str], share: float | None
                     ) -> tuple[list[str], list[str]]:
    """The fine-tuning set from a pool split by prompt criterion: every helpful example, and
    the safety examples (in priority order, first kept) up to `share` of the set. Returns
    (kept, left out). `share` None, or a pool with no helpful example to mix with: all kept.
    Llama 2 (section 4.2.3) saw false refusals of safe prompts grow with the share of safety
    data; at the demo's scale eight refusals among 200 examples already carry over to
    harmless prompts (benchmarks/results/rs_pool.md)."""
    if share is None or not helpful:
        return helpful + safety, []
    n = len(safety) if share >= 1 else math.floor(share / (1 - share) * len(helpful) + 1e-9)
    return helpful + safety[:n], safety[n:]


def tokenize_sft(tokenizer, messages: list[dict], response: str, max_length: int,
                 end: bool = True):
    """input ids and labels with the prompt masked (-100): loss on the response tokens only.
    `end=False` for a response the token limit cut off: it is learned without the template's
    end-of-turn tokens, so the policy does not learn to stop where the limit stopped it."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prompt):
        raise FlywheelError("the chat template does not render the prompt as a prefix of the "
                            "conversation; rejection-sampling fine-tuning needs one that does")
    reply = full[len(prompt):]
    if not end:
        at = reply.find(response)
        if at < 0:
            raise FlywheelError("the chat template rewrites the response's text, so a response "
                                "cut off by the token limit cannot be learned without its "
                                "end-of-turn tokens; use a template that keeps it verbatim")
        reply = reply[: at + len(response)]
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    ids = (p_ids + r_ids)[:max_length]
    labels = ([-100] * len(p_ids) + r_ids)[:max_length]
    return ids, labels


def _first_response(labels: list[int]) -> int:
    """The position of a sequence's first response token (its length when it has none)."""
    return next((i for i, x in enumerate(labels) if x != -100), len(labels))


def takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model's forward can compute the logits of its last positions only (most
    transformers causal LMs: `logits_to_keep`)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _response_tokens(labels: list[int]) -> int:
    """The tokens a sequence's loss is on: its labels past the first position (the causal
    shift), not -100."""
    return sum(1 for x in labels[1:] if x != -100)


def response_loss(module, items: list[tuple[list[int], list[int]]], pad: int, device,
                  precision: str, trim: bool) -> torch.Tensor:
    """The summed cross-entropy of (ids, labels) sequences' response tokens, padded on the
    right into one forward pass. With `trim` the vocabulary's logits are computed only from the
    first response token's predecessor on (position t predicts token t + 1), not over the
    prompts: the same loss without the prompt positions' share of the [sequences, positions,
    vocabulary] float32 logits (54 of 128 positions in the benchmark). On 2 Xeon cores it is
    no faster (benchmarks/results/finetune_step.md); it saves their memory."""
    width = max(len(ids) for ids, _ in items)
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in items], device=device)
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in items],
                          device=device)
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in items],
                        device=device)
    start = min(max(0, min(_first_response(lab) for _, lab in items) - 1),
                width - 1) if trim else 0
    keep = {"logits_to_keep": width - start} if start else {}
    with autocast(precision, device):
        out = module(input_ids=ids, attention_mask=mask, **keep)
    logits = out.logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, start + 1:].reshape(-1),
        ignore_index=-100, reduction="sum")


def save_policy(stepper: Stepper, policy_path: str, tok, out_dir: str | Path) -> None:
    """Rank 0 saves the trained policy to `out_dir` as safetensors, loadable by transformers
    and vLLM; under ZeRO-3 the weights are first gathered from every rank's shard (every rank
    must call this). float32 on purpose: an update of lr 1e-5 is far below bfloat16's
    resolution (8 bits of mantissa), so a bfloat16 copy would round most of the training away."""
    state = stepper.state_dict_for_save()
    if not stepper.world.main:
        return
    model = stepper.model
    if stepper.partitioned:  # the module holds empty shards: a whole copy takes the weights
        model = load_causal_lm(policy_path, "float32", "cpu")
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "_tied_weights_keys", None) or [])
        if unexpected or set(missing) - tied:
            raise FlywheelError(f"the gathered weights do not fit {policy_path}'s model: "
                                f"missing {sorted(set(missing) - tied)[:5]}, unexpected "
                                f"{sorted(unexpected)[:5]}")
    model.config.dtype = "float32"
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def finetune_on_ranks(policy_path: str, examples: list[tuple], cfg, out_dir: str | Path) -> dict:
    """`finetune` on the ranks `cfg.resources` plans: in this process for one rank, else on ranks
    torchrun starts (flywheel/distributed/launch.py), rank 0's saved policy copied to `out_dir`.
    The metrics then carry each rank's peak memory and optimizer state."""
    if cfg.resources.world_size() == 1:
        return finetune(policy_path, examples, cfg, out_dir)
    inputs = {"policy_path": policy_path, "examples": examples, "cfg": cfg}
    return policy_on_ranks("finetune", inputs, cfg.resources, out_dir)


def finetune(
    policy_path: str, examples: list[tuple], cfg: RejectionSamplingConfig,
    out_dir: str | Path,
) -> dict:
    """Supervised fine-tuning on (messages, response) or (messages, response, end) tuples
    (`end` False: the token limit cut the response off; see `tokenize_sft`); saves the policy to
    `out_dir` (on several ranks: each trains on its share of every step, rank 0 saves)."""

    if not examples:
        raise FlywheelError("the rejection-sampling pool is empty: nothing to fine-tune on")
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(policy_path)
    model = load_causal_lm(policy_path, "float32", None if cfg.deepspeed else compute_device())
    model.train()
    data = [tokenize_sft(tok, e[0], e[1], cfg.max_length, *e[2:]) for e in examples]
    steps, warmup = plan_steps(len(data), cfg.batch_size, cfg.epochs)
    full_step = range(min(cfg.batch_size, len(data)))
    stepper = make_stepper(model, cfg.learning_rate, steps, warmup,
                           len(rank_micro_batches(full_step, cfg.micro_batch_size, world())),
                           cfg.deepspeed, "rejection_sampling.deepspeed")
    device, w = stepper.device, stepper.world
    precision = "fp32" if cfg.deepspeed else cfg.precision  # DeepSpeed's config sets its own
    # the vocabulary's logits only where a response token is predicted, not over the prompt
    # (with the chat template's system turn, 54 of 128 positions in bench_finetune_step.py)
    trim = takes_logits_to_keep(stepper.model)
    losses = []
    bar = tqdm(total=steps, desc="policy fine-tune", unit="step", disable=not w.main)
    start = time.perf_counter()
    for idx in epoch_batches(len(data), cfg.batch_size, cfg.epochs, cfg.seed):
        # shortest first: each micro-batch pads to its own longest, so similar lengths share one
        # (the step's gradient is the same in any order: every response token weighs the same)
        batch = sorted((data[i] for i in idx), key=lambda e: len(e[0]))
        n_tokens = sum(_response_tokens(lab) for _, lab in batch)
        step_loss = 0.0
        for micro in rank_micro_batches(batch, cfg.micro_batch_size, w):
            tokens = sum(_response_tokens(lab) for _, lab in micro.items)
            # the micro-batch's mean over its response tokens, weighted by its share of the
            # step's: every response token weighs the same whatever the micro-batch split
            loss = response_loss(stepper.module, micro.items, tok.pad_token_id, device,
                                 precision, trim) / max(1, tokens)
            if not torch.isfinite(loss):
                raise FlywheelError(
                    f"policy fine-tuning loss became {loss.item()}; lower "
                    f"rejection_sampling.learning_rate (now {cfg.learning_rate})"
                )
            # (a step whose responses the token limit cut away entirely has loss 0: by items)
            weight = (tokens / n_tokens if n_tokens else micro.weight) if micro.weight else 0.0
            stepper.backward(loss, weight, micro.last)
            step_loss += loss.item() * weight
        stepper.step()
        (step_loss,) = all_sum([step_loss], w)
        losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        report_step("policy fine-tune", len(losses), steps)
    bar.close()
    seconds_per_step = (time.perf_counter() - start) / steps  # before saving
    save_policy(stepper, policy_path, tok, out_dir)
    return {"optimizer_state_bytes": stepper.optimizer_state_bytes(),  # this rank's
            "seconds_per_step": seconds_per_step,  # this rank's, the step loop only
            "steps": steps, "examples": len(data), "loss_first": losses[0],
            "loss_last": losses[-1]}
