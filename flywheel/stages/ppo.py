"""Stage 4 as PPO, on top of the rejection-sampled policy."""

from __future__ import annotations

import json
import tempfile

import torch

from flywheel.annotation.prompts import messages_of
from flywheel.config import FlywheelConfig
from flywheel.config.resources import identity
from flywheel.devices import compute_device
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.models import load_causal_lm, load_tokenizer
from flywheel.policy import ppo as trainer
from flywheel.policy.rollouts import VLLMRollouts
from flywheel.policy.sampling import VLLMSampler, close_samplers
from flywheel.reward.combined import RewardModelScores
from flywheel.reward.model import RewardModel
from flywheel.reward.scoring import Group, ScoringEngine
from flywheel.stages.common import by_id, current_policy, ensure_prompts, policy_path, require_both


def ppo_update(cfg: FlywheelConfig, lake: Lake, iteration: int, rm_ids: dict[str, str],
               policy_id: str | None) -> str:
    """PPO on top of the iteration's rejection-sampled policy `policy_id` (None: the latest
    promoted policy), which is also the frozen reference of the KL penalty: rollouts on the
    train prompts, each scored by both reward models through the scoring engine; the trainer
    turns the two scores, the per-token KL (reference log-probs from the same engine) and the
    response mask into WHITEN(LOGIT(R_c)) - beta x KL token rewards in one pass of the
    reward-combination kernel; held-out prompts (mean R_c) for early stopping. Saves the policy
    (parent: `policy_id`) with its per-step log. Returns its id."""
    pc = cfg.policy_update.ppo
    require_both(rm_ids, "PPO")
    if policy_id is None:  # PPO alone: from the latest policy
        policy_id = current_policy(cfg, lake)["id"]
    prompts = ensure_prompts(cfg, lake)
    as_input = [{"messages": messages_of(p), "safety": p["criterion"] == "safety"}
                for p in prompts]
    train = [x for x, p in zip(as_input, prompts) if p["split"] == "train"]
    heldout = [x for x, p in zip(as_input, prompts) if p["split"] == "heldout"]
    start = by_id(lake.rows("policies"))[policy_id]
    path = policy_path(lake, start)
    torch.manual_seed(pc.seed)
    tok = load_tokenizer(path)
    device = compute_device()  # train_ppo moves reference and critic to the actor's device
    actor = load_causal_lm(path, "float32").to(device)
    reference = load_causal_lm(path, "float32")
    critic = trainer.ValueModel.from_causal_lm(actor)
    engine = ScoringEngine.from_config(cfg.scoring, cfg.reward_model.max_length)
    rms = {k: RewardModel.load(lake.artifact_path("reward_models", rm_ids[k]))
           for k in ("helpfulness", "safety")}

    def score(batch, texts, _ids) -> RewardModelScores:
        # the raw scores: the trainer combines them with the KL (the update's score is
        # whitened per batch; R_c itself is logged and early-stops)
        groups = [Group(b["messages"], [t], b["safety"]) for b, t in zip(batch, texts)]
        help_ = engine.rewards(rms["helpfulness"], groups, desc="ppo: helpfulness RM")
        safe = engine.rewards(rms["safety"], groups, desc="ppo: safety RM")
        return RewardModelScores.of([h[0] for h in help_], [s[0] for s in safe],
                                    [g.safety for g in groups])

    # the engines kept open for later stages (two, ~4 GB each on a CPU) would share memory with
    # actor, critic, reference, both reward models and PPO's own engine: a three-iteration demo
    # on 24 GiB was killed for memory in PPO's second step; evaluation reopens what it needs
    close_samplers()
    with tempfile.TemporaryDirectory() as scratch:
        rollouts = None
        if cfg.sampling.backend == "vllm":  # its own engine: its weights follow the actor's
            s = cfg.sampling
            rollouts = VLLMRollouts(VLLMSampler(
                path, dtype=s.dtype, max_model_len=s.max_model_len, seed=pc.seed,
                tensor_parallel_size=s.tensor_parallel_size, weight_sync=True,
                gpu_memory_utilization=s.gpu_memory_utilization), tok, scratch)
        try:
            out = trainer.train_ppo(actor, reference, critic, tok, train, score, pc, heldout,
                                    desc="ppo", rollouts=rollouts, engine=engine)
        finally:
            if rollouts is not None:
                rollouts.sampler.close()
    new_id = content_id("policy", iteration, policy_id, rm_ids, "ppo", identity(pc))
    with tempfile.TemporaryDirectory() as tmp:
        actor.config.dtype = "float32"
        actor.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        uri = lake.put_artifact("policies", new_id, tmp, {"parent": policy_id})
    metrics = {"reward": "mean R_c of each step's rollouts (the update uses WHITEN(LOGIT(R_c)) "
                         "- beta * KL); held-out: mean R_c of the held-out rollouts",
               "ppo_steps": out["steps"], "heldout": out["heldout"],
               "best_step": out["best_step"], "scoring": vars(engine.stats),
               "rollouts": out.get("rollouts", {"engine": "transformers"})}
    lake.write("policies", [{
        "id": new_id, "iteration": iteration, "uri": uri, "parent_id": policy_id,
        "method": "ppo", "reward_model_id": rm_ids["helpfulness"],
        "safety_reward_model_id": rm_ids["safety"],
        "training_data": json.dumps({"train_prompts": len(train), "heldout_prompts":
                                     len(heldout), "settings": out["settings"]}),
        "metrics": json.dumps(metrics),
    }], {"reward_models": rm_ids})
    return new_id
