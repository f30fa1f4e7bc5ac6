"""PPO as the weekly loop runs it, from paths: the actor, the frozen reference and the critic
from the rejection-sampled policy, both reward models scoring the rollouts through the scoring
engine, rollouts from a vLLM engine that follows the actor's weights (one engine per rank) or
from transformers; the trained policy saved as safetensors. The PPO stage runs it in its own
process on one rank, or on every rank of a training job (flywheel/distributed/worker.py)."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from flywheel.config import FlywheelConfig
from flywheel.devices import compute_device
from flywheel.distributed.frozen import ShardedFrozen
from flywheel.distributed.launch import policy_on_ranks
from flywheel.distributed.ranks import world
from flywheel.errors import ConfigError
from flywheel.models import load_causal_lm, load_tokenizer
from flywheel.policy.ppo import ValueModel, train_ppo
from flywheel.policy.rollouts import NodeRollouts, VLLMRollouts
from flywheel.policy.sampling import VLLMSampler
from flywheel.reward.combined import RewardModelScores
from flywheel.reward.model import RewardModel
from flywheel.reward.scoring import Group, ScoringEngine


def run_ppo(cfg: FlywheelConfig, policy_path: str, rm_paths: dict[str, str], train: list,
            heldout: list, out_dir: str | Path) -> dict:
    """PPO (cfg.policy_update.ppo) on the policy at `policy_path`, also the reference of the KL
    penalty, against the reward models at `rm_paths` ({"helpfulness": ..., "safety": ...});
    `train`/`heldout`: prompts as {"messages", "safety"}. Rank 0 saves the policy to `out_dir`.
    Returns train_ppo's record plus the scoring engine's counters."""
    pc = cfg.policy_update.ppo
    w = world()
    torch.manual_seed(pc.seed)
    tok = load_tokenizer(policy_path)
    actor = load_causal_lm(policy_path, "float32").to(compute_device())
    reference = load_causal_lm(policy_path, "float32")  # train_ppo moves it to the actor's
    critic = ValueModel.from_causal_lm(actor)
    engine = ScoringEngine.from_config(cfg.scoring, cfg.reward_model.max_length)
    rms = {k: RewardModel.load(rm_paths[k]) for k in ("helpfulness", "safety")}
    if pc.frozen == "sharded" and w.size > 1:  # 1/N of each frozen model on each rank
        reference = ShardedFrozen(reference.to(compute_device()).eval(), w)
        rms = {k: ShardedFrozen(m, w) for k, m in rms.items()}

    def scores(kind: str, groups: list[Group]) -> list[list[float]]:
        with rms[kind].whole() if isinstance(rms[kind], ShardedFrozen) else \
                nullcontext(rms[kind]) as model:
            return engine.rewards(model, groups, desc=f"ppo: {kind} RM")

    def score(batch, texts, _ids) -> RewardModelScores:
        # the raw scores: the trainer combines them with the KL (the update's score is
        # whitened per batch; R_c itself is logged and early-stops)
        groups = [Group(b["messages"], [t], b["safety"]) for b, t in zip(batch, texts)]
        help_, safe = scores("helpfulness", groups), scores("safety", groups)
        return RewardModelScores.of([h[0] for h in help_], [s[0] for s in safe],
                                    [g.safety for g in groups])

    with tempfile.TemporaryDirectory() as scratch:
        rollouts = None
        if cfg.sampling.backend == "vllm":  # its own engine: its weights follow the actor's
            rollouts = _vllm_rollouts(cfg, policy_path, tok, scratch)
        try:
            out = train_ppo(actor, reference, critic, tok, train, score, pc, heldout,
                            desc="ppo", rollouts=rollouts, engine=engine)
        finally:
            if rollouts is not None:
                rollouts.close()
    if w.main:
        actor.config.dtype = "float32"  # as fine-tuning: bfloat16 would round updates away
        actor.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
    return {**out, "scoring": vars(engine.stats)}


@contextmanager
def _only_gpus(first: int, count: int):
    """While an engine starts, its processes see only this rank's GPUs (`count` from the
    `first` of the node's): vLLM places an engine on the first GPUs it sees, so every rank's
    engine would land on the node's GPU 0. Nothing to do without CUDA."""
    if not torch.cuda.is_available():
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = before.split(",") if before else [str(i) for i in range(torch.cuda.device_count())]
    if first + count > len(ids):
        raise ConfigError(f"a vLLM engine per rank with sampling.tensor_parallel_size {count} "
                          f"needs {first + count} GPUs on this node, it has {len(ids)}; use "
                          "policy_update.ppo.rollout_engines: per_node")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[first : first + count])
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def _vllm_rollouts(cfg: FlywheelConfig, policy_path: str, tok, scratch: str):
    """PPO's vLLM rollouts on this rank: its own engine (`rollout_engines: per_rank`, or one
    rank), or its node's engine on the node's first rank (`per_node`)."""
    s, pc, w = cfg.sampling, cfg.policy_update.ppo, world()

    def engine() -> VLLMRollouts:
        return VLLMRollouts(VLLMSampler(
            policy_path, dtype=s.dtype, max_model_len=s.max_model_len, seed=pc.seed + w.rank,
            tensor_parallel_size=s.tensor_parallel_size, weight_sync=True,
            gpu_memory_utilization=s.gpu_memory_utilization), tok, scratch)

    if w.size == 1:
        return engine()
    if pc.rollout_engines == "per_rank":
        with _only_gpus(w.local_rank * s.tensor_parallel_size, s.tensor_parallel_size):
            return engine()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", w.size))
    group, _ = torch.distributed.new_subgroups(group_size=local)  # this node's ranks
    leader = w.rank - w.local_rank
    return NodeRollouts(engine() if w.local_rank == 0 else None, tok, group, leader)


def ppo_on_ranks(cfg: FlywheelConfig, policy_path: str, rm_paths: dict[str, str], train: list,
                 heldout: list, out_dir: str | Path) -> dict:
    """`run_ppo` on the ranks `policy_update.ppo.resources` plans: in this process for one
    rank, else on ranks torchrun starts (flywheel/distributed/launch.py), rank 0's saved policy
    copied to `out_dir`; the record then carries each rank's peak memory."""
    res = cfg.policy_update.ppo.resources
    if res.world_size() == 1:
        return run_ppo(cfg, policy_path, rm_paths, train, heldout, out_dir)
    inputs = {"cfg": cfg, "policy_path": policy_path, "rm_paths": rm_paths, "train": train,
              "heldout": heldout}
    return policy_on_ranks("ppo", inputs, res, out_dir)


def ppo_job(inputs: dict, out: Path) -> dict:
    """The PPO stage's training job on each rank (flywheel/distributed/worker.py)."""
    return run_ppo(inputs["cfg"], inputs["policy_path"], inputs["rm_paths"], inputs["train"],
                   inputs["heldout"], out / "policy")
