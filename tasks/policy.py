"""The policy update of an iteration: rejection sampling or RRHF from the iteration's start
policy, and/or PPO on top (policy_update.methods and .schedule; flywheel/stages/plan.py)."""

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.stages import common, plan, rejection_sampling
from flywheel.stages import ppo as ppo_stage
from flywheel.stages import rrhf as rrhf_stage
from flywheel.tasks.progress import training_progress
from flywheel.tasks.resume import stage_cache


@task(name="rejection-sampling", cache_policy=stage_cache(rejection_sampling.rejection_sample))
def rejection_sample(config: FlywheelConfig, iteration: int,
                     reward_model_ids: dict[str, str]) -> str:
    """Best of K by the combined reward of both reward models, pooled with earlier iterations'
    best; fine-tune the policy."""
    with training_progress(f"iteration-{iteration}"):
        return rejection_sampling.rejection_sample(config, common.open_lake(config), iteration,
                                                   reward_model_ids)


@task(name="ppo", cache_policy=stage_cache(ppo_stage.ppo_update))
def ppo(config: FlywheelConfig, iteration: int, reward_model_ids: dict[str, str],
        policy_id: str) -> str:
    """PPO on top of the rejection-sampled policy, against it as the KL reference."""
    with training_progress(f"iteration-{iteration}"):
        return ppo_stage.ppo_update(config, common.open_lake(config), iteration,
                                    reward_model_ids, policy_id)


@task(name="rrhf", cache_policy=stage_cache(rrhf_stage.rrhf_update))
def rrhf(config: FlywheelConfig, iteration: int, reward_model_ids: dict[str, str]) -> str:
    """K scored samples per prompt; ranking loss plus fine-tuning on the best."""
    with training_progress(f"iteration-{iteration}"):
        return rrhf_stage.rrhf_update(config, common.open_lake(config), iteration,
                                      reward_model_ids)


def policy_update(config: FlywheelConfig, iteration: int,
                  reward_model_ids: dict[str, str], stage=lambda t: t) -> str:
    """Each of the iteration's methods in turn, each on the policy the one before made; `stage`
    wraps each task (tasks.resume.in_lake). Returns the candidate policy id."""
    candidate = None
    for method in plan.check_policy_update(config, iteration):
        if method == "rejection_sampling":
            candidate = stage(rejection_sample)(config, iteration, reward_model_ids)
        elif method == "rrhf":
            candidate = stage(rrhf)(config, iteration, reward_model_ids)
        else:
            candidate = stage(ppo)(config, iteration, reward_model_ids, candidate)
    return candidate
