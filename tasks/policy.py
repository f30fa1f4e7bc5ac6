from prefect import task

from flywheel import loop
from flywheel.config import FlywheelConfig


@task(name="rejection-sampling", cache_policy=None)
def rejection_sample(config: FlywheelConfig, iteration: int,
                     reward_model_ids: dict[str, str]) -> str:
    """Best of K by the combined reward of both reward models, pooled with earlier iterations'
    best; fine-tune the policy."""
    return loop.rejection_sample(config, loop.open_lake(config), iteration, reward_model_ids)
