"""The policy update of an iteration: rejection sampling or RRHF from the iteration's start
policy, and/or PPO on top (policy_update.methods and .schedule; the config's validation allows
only the sequences in flywheel.config.METHOD_SEQUENCES)."""

import time

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.stages import common, rejection_sampling
from flywheel.stages import ppo as ppo_stage
from flywheel.stages import rrhf as rrhf_stage
from flywheel.tasks.progress import training_progress
from flywheel.tasks.resume import in_lake, stage_cache


@task(name="rejection-sampling", cache_policy=stage_cache())
def rejection_sample(config: FlywheelConfig, iteration: int,
                     reward_model_ids: dict[str, str]) -> str:
    """Best of K by the combined reward of both reward models, pooled with earlier iterations'
    best; fine-tune the policy."""
    with training_progress(f"iteration-{iteration}"):
        return rejection_sampling.rejection_sample(config, common.open_lake(config), iteration,
                                                   reward_model_ids)


@task(name="ppo", cache_policy=stage_cache())
def ppo(config: FlywheelConfig, iteration: int, reward_model_ids: dict[str, str],
        policy_id: str | None) -> str:
    """PPO on top of the rejection-sampled (or RRHF) policy, against it as the KL reference;
    `policy_id` None: PPO alone, from the iteration's start policy."""
    with training_progress(f"iteration-{iteration}"):
        return ppo_stage.ppo_update(config, common.open_lake(config), iteration,
                                    reward_model_ids, policy_id)


@task(name="rrhf", cache_policy=stage_cache())
def rrhf(config: FlywheelConfig, iteration: int, reward_model_ids: dict[str, str]) -> str:
    """K scored samples per prompt; ranking loss plus fine-tuning on the best."""
    with training_progress(f"iteration-{iteration}"):
        return rrhf_stage.rrhf_update(config, common.open_lake(config), iteration,
                                      reward_model_ids)


def policy_update(config: FlywheelConfig, iteration: int,
                  reward_model_ids: dict[str, str]) -> dict:
    """Each of the iteration's methods in turn, each its own cached task (results in the lake)
    on the policy the one before made. Returns {"candidate": the last policy id, "policies":
    {method: policy id}, "seconds": {method: wall seconds}}, methods in the order they ran."""
    policies: dict[str, str] = {}
    seconds: dict[str, float] = {}
    candidate = None
    for method in config.policy_update.for_iteration(iteration):
        start = time.perf_counter()
        if method == "rejection_sampling":
            candidate = in_lake(rejection_sample, config)(config, iteration, reward_model_ids)
        elif method == "rrhf":
            candidate = in_lake(rrhf, config)(config, iteration, reward_model_ids)
        else:
            candidate = in_lake(ppo, config)(config, iteration, reward_model_ids, candidate)
        policies[method] = candidate
        seconds[method] = round(time.perf_counter() - start, 2)
    return {"candidate": candidate, "policies": policies, "seconds": seconds}
