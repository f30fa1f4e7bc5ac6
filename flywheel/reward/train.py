"""Training one reward model on preference pairs."""

from __future__ import annotations

import json
import math
import time

import torch
from tqdm.auto import tqdm

from flywheel.config import RewardModelConfig
from flywheel.devices import autocast, compute_device
from flywheel.distributed.launch import run_on_ranks
from flywheel.distributed.ranks import all_sum, rank_micro_batches, world
from flywheel.errors import FlywheelError
from flywheel.reward.model import PreferencePair, RewardModel, margin_of, ranking_loss
from flywheel.reward.text import reward_ids
from flywheel.training import epoch_batches, make_stepper, plan_steps, report_step

# What one more forward pass costs, in padded tokens, when a micro-batch is cut into runs of
# similar length (`length_chunks`). MiniLM on 2 CPU cores: (measured below in bench notes).
CHUNK_OVERHEAD_TOKENS = 64


def group_pairs(pairs: list[PreferencePair]) -> list[list[int]]:
    """Indices of `pairs` by prompt (its messages), in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(json.dumps(p.messages, sort_keys=True), []).append(i)
    return list(groups.values())


def length_chunks(lengths: list[int], overhead: int = CHUNK_OVERHEAD_TOKENS) -> list[list[int]]:
    """The positions of `lengths`, shortest first, cut into consecutive runs that each pad to
    their own longest: the cut that minimises the padded tokens plus `overhead` tokens per run
    (exact, by dynamic programming over the sorted lengths). One forward over a micro-batch
    padded to its longest sequence spends the rest on padding; HH-RLHF's conversations at 256
    tokens range from tens of tokens to the limit."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cost of the first j sorted items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]
        for i in range(j):
            cost = best[i] + (j - i) * width + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    runs, j = [], n
    while j > 0:
        runs.append(order[cut[j]:j])
        j = cut[j]
    return runs[::-1]


def _encode_distinct(groups: list[list[int]], ids: list[tuple[list[int], list[int]]],
                     pairs: list[PreferencePair]):
    """Each distinct (prompt, response) of `groups` (lists of pair indices) once, as its
    token ids (`ids[i]`: pair i's chosen and rejected ids), with the positions of every pair's
    chosen and rejected response among them and each pair's weight (every group weighs
    1 / len(groups), shared among its pairs)."""
    where: dict[tuple[int, str], int] = {}
    seqs, chosen, rejected, weight = [], [], [], []
    for g, group in enumerate(groups):
        for i in group:
            p = pairs[i]
            for text, tokens in zip((p.chosen, p.rejected), ids[i]):
                if (g, text) not in where:
                    where[g, text] = len(seqs)
                    seqs.append(tokens)
            chosen.append(where[g, p.chosen])
            rejected.append(where[g, p.rejected])
            weight.append(1 / (len(groups) * len(group)))
    return seqs, torch.tensor(chosen), torch.tensor(rejected), torch.tensor(weight)


def pair_ids(model: RewardModel, pairs: list[PreferencePair], max_length: int):
    """Every pair's (chosen ids, rejected ids), tokenized once before training rather than at
    every step of every epoch."""
    messages = [p.messages for p in pairs]
    chosen = reward_ids(model.tokenizer, messages, [p.chosen for p in pairs], max_length)
    rejected = reward_ids(model.tokenizer, messages, [p.rejected for p in pairs], max_length)
    return list(zip(chosen, rejected))


def forward_rewards(module, model: RewardModel, seqs: list[list[int]], device) -> torch.Tensor:
    """The rewards [len(seqs)] of token sequences through `module` (the model, or the engine
    that wraps it), one forward per run of similar length (`length_chunks`), in `seqs`' order."""
    out: list[torch.Tensor | None] = [None] * len(seqs)
    for run in length_chunks([len(s) for s in seqs], CHUNK_OVERHEAD_TOKENS):
        enc = model.pad([seqs[i] for i in run], device)
        for i, r in zip(run, module(enc["input_ids"], enc["attention_mask"]).float()):
            out[i] = r
    return torch.stack(out)


def fit_reward_model(backbone_path: str, pairs: list[PreferencePair], cfg: RewardModelConfig,
                     desc="reward model") -> tuple[RewardModel, dict]:
    """`train_reward_model` on the ranks `cfg.resources` plans: in this process for one rank,
    else on ranks torchrun starts (flywheel/distributed/launch.py), the model read back from
    what rank 0 saved. The metrics then carry each rank's peak memory and optimizer state."""
    if cfg.resources.world_size() == 1:
        return train_reward_model(backbone_path, pairs, cfg, desc)
    inputs = {"backbone": backbone_path, "pairs": pairs, "cfg": cfg, "desc": desc}
    with run_on_ranks("reward_model", inputs, cfg.resources) as (result, out):
        model = RewardModel.load(str(out / "model"))
    return model, {**result["metrics"], "ranks": result["ranks"]}


def train_reward_model(
    backbone_path: str, pairs: list[PreferencePair], cfg: RewardModelConfig, desc="reward model"
) -> tuple[RewardModel, dict]:
    """One run of the margin ranking loss over `pairs`; returns the model and training metrics.
    On several ranks (a process group is up) each trains on its share of every step; the
    model returned is whole on rank 0 (under ZeRO-3, only there)."""
    if not pairs:
        raise FlywheelError("no preference pairs to train the reward model on")
    torch.manual_seed(cfg.seed)
    model = RewardModel.from_backbone(backbone_path, cfg.pooling)
    ids = pair_ids(model, pairs, cfg.max_length)
    if not cfg.deepspeed:  # a DeepSpeed engine places the model on its local rank's device
        model.to(compute_device())
    model.train()
    # a batch element: one pair, or with group_by_prompt all of one prompt's pairs
    elements = (group_pairs(pairs) if cfg.group_by_prompt else [[i] for i in range(len(pairs))])
    steps, warmup = plan_steps(len(elements), cfg.batch_size, cfg.epochs)
    full_step = range(min(cfg.batch_size, len(elements)))
    micro_steps = len(rank_micro_batches(full_step, cfg.micro_batch_size, world()))
    stepper = make_stepper(model, cfg.learning_rate, steps, warmup, micro_steps, cfg.deepspeed)
    device = stepper.device
    w = stepper.world
    precision = "fp32" if cfg.deepspeed else cfg.precision  # DeepSpeed's config sets its own
    losses, correct, seen = [], 0, 0
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not w.main)
    start = time.perf_counter()
    for idx in epoch_batches(len(elements), cfg.batch_size, cfg.epochs, cfg.seed):
        step_loss = step_correct = step_seen = 0.0
        for micro in rank_micro_batches(idx, cfg.micro_batch_size, w):
            micro_groups = [elements[e] for e in micro.items]
            flat = [pairs[i] for group in micro_groups for i in group]
            seqs, at_chosen, at_rejected, weight = _encode_distinct(micro_groups, ids, pairs)
            with autocast(precision, device):
                rewards = forward_rewards(stepper.module, model, seqs, device)
            margin = torch.tensor([margin_of(p.strength, cfg.margin) for p in flat],
                                  device=device)
            r_chosen, r_rejected = rewards[at_chosen.to(device)], rewards[at_rejected.to(device)]
            loss = ranking_loss(r_chosen, r_rejected, margin, cfg.center_coefficient,
                                weight.to(device))
            if not torch.isfinite(loss):
                raise FlywheelError(
                    f"reward-model loss became {loss.item()} at step {len(losses) + 1}; "
                    f"lower reward_model.learning_rate (now {cfg.learning_rate}) or check "
                    "the data for empty responses"
                )
            stepper.backward(loss, micro.weight, micro.last)
            if micro.weight:  # not a stand-in
                step_loss += loss.item() * micro.weight
                step_correct += int((r_chosen > r_rejected).sum())
                step_seen += len(flat)
        stepper.step()
        step_loss, step_correct, step_seen = all_sum([step_loss, step_correct, step_seen], w)
        correct, seen = correct + step_correct, seen + step_seen
        losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}", acc=f"{correct / seen:.2f}")
        report_step(desc, len(losses), steps)
    bar.close()
    seconds_per_step = (time.perf_counter() - start) / steps
    opt_bytes = stepper.optimizer_state_bytes()
    if cfg.deepspeed:  # ZeRO-3 holds shards: gather the full weights into the model
        state = stepper.state_dict_for_save()  # every rank takes part; None off rank 0
        del stepper
        if state is not None:
            model = RewardModel.from_state(backbone_path, state, model.pooling)
            model.to(device)  # scored next, where it trained
    return model.eval(), {
        "steps": steps,
        "warmup_steps": warmup,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "train_accuracy_running": correct / seen,
        "optimizer_state_bytes": opt_bytes,  # this rank's
        "seconds_per_step": seconds_per_step,  # this rank's, the step loop only
    }
