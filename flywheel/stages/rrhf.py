"""Stage 4 as RRHF: a ranking loss over the K scored samples plus fine-tuning on the best."""

from __future__ import annotations

import json
import statistics
import tempfile

from flywheel.annotation.prompts import messages_of
from flywheel.config import FlywheelConfig
from flywheel.config.resources import identity
from flywheel.lake.catalog import rows_by_id
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.policy.rrhf import rrhf_finetune_on_ranks
from flywheel.stages.common import policy_path, require_both
from flywheel.stages.rejection_sampling import cut_by_limit, scored_samples


def rrhf_update(cfg: FlywheelConfig, lake: Lake, iteration: int,
                rm_ids: dict[str, str]) -> str:
    """RRHF from the latest policy: the K samples per train prompt that rejection sampling would
    draw, scored the same way (R_c); one pass of ranking loss over each prompt's K samples plus
    fine-tuning on its best. Returns the policy id."""
    require_both(rm_ids, "RRHF")
    latest, rows, rewards, engine, info = scored_samples(cfg, lake, iteration, rm_ids, "rrhf")
    prompts = rows_by_id(lake, "prompts", [r["prompt_id"] for r in rows])
    groups: dict[str, tuple[list[dict], list[str], list[float], list[bool]]] = {}
    for r, reward in zip(rows, rewards):
        g = groups.setdefault(r["prompt_id"], (messages_of(prompts[r["prompt_id"]]), [], [], []))
        g[1].append(r["text"])
        g[2].append(reward)
        g[3].append(not cut_by_limit(r))  # a cut-off answer is learned without its end
    rc = cfg.policy_update.rrhf
    policy_id = content_id("policy", iteration, latest["id"], rm_ids, "rrhf",
                           sorted(r["id"] for r in rows), identity(rc))
    with tempfile.TemporaryDirectory() as tmp:
        ft = rrhf_finetune_on_ranks(policy_path(lake, latest), list(groups.values()), rc, tmp)
        uri = lake.put_artifact("policies", policy_id, tmp, {"parent": latest["id"]})
    metrics = {"reward": "R_c: the gated sigmoid of the two reward models' scores",
               "scoring": vars(engine.stats), "reward_mean_all": statistics.fmean(rewards),
               "reward_mean_best": statistics.fmean(max(g[2]) for g in groups.values()),
               "reward_all": rewards, "rrhf": ft,
               "cut_by_limit": sum(not e for g in groups.values() for e in g[3])}
    lake.write("policies", [{
        "id": policy_id, "iteration": iteration, "uri": uri, "parent_id": latest["id"],
        "method": "rrhf", "reward_model_id": rm_ids["helpfulness"],
        "safety_reward_model_id": rm_ids["safety"],
        "training_data": json.dumps({"samples": sorted(r["id"] for r in rows), **info}),
        "metrics": json.dumps(metrics),
    }], {"reward_models": rm_ids})
    return policy_id
