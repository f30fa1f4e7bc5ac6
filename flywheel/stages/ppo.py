"""Stage 4 as PPO, on top of the rejection-sampled policy."""

from __future__ import annotations

import json
import tempfile

from flywheel.annotation.prompts import messages_of
from flywheel.config import FlywheelConfig
from flywheel.config.resources import identity
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.policy.ppo_job import ppo_on_ranks
from flywheel.policy.sampling import close_samplers
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
    rm_paths = {k: lake.artifact_path("reward_models", rm_ids[k])
                for k in ("helpfulness", "safety")}
    # the engines kept open for later stages (two, ~4 GB each on a CPU) would share memory with
    # actor, critic, reference, both reward models and PPO's own engine: a three-iteration demo
    # on 24 GiB was killed for memory in PPO's second step; evaluation reopens what it needs
    close_samplers()
    new_id = content_id("policy", iteration, policy_id, rm_ids, "ppo", identity(pc))
    with tempfile.TemporaryDirectory() as tmp:
        out = ppo_on_ranks(cfg, path, rm_paths, train, heldout, tmp)
        uri = lake.put_artifact("policies", new_id, tmp, {"parent": policy_id})
    metrics = {"reward": "mean R_c of each step's rollouts (the update uses WHITEN(LOGIT(R_c)) "
                         "- beta * KL); held-out: mean R_c of the held-out rollouts",
               "ppo_steps": out["steps"], "heldout": out["heldout"],
               "best_step": out["best_step"], "scoring": out["scoring"],
               "rollouts": out.get("rollouts", {"engine": "transformers"}),
               **({"ranks": out["ranks"]} if "ranks" in out else {})}
    lake.write("policies", [{
        "id": new_id, "iteration": iteration, "uri": uri, "parent_id": policy_id,
        "method": "ppo", "reward_model_id": rm_ids["helpfulness"],
        "safety_reward_model_id": rm_ids["safety"],
        "training_data": json.dumps({"train_prompts": len(train), "heldout_prompts":
                                     len(heldout), "settings": out["settings"]}),
        "metrics": json.dumps(metrics),
    }], {"reward_models": rm_ids})
    return new_id
