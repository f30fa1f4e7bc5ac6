from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.stages import common
from flywheel.stages import evaluate as evaluate_stage
from flywheel.tasks.resume import stage_cache


@task(name="evaluate", cache_policy=stage_cache())
def evaluate(config: FlywheelConfig, iteration: int, candidate_id: str) -> dict:
    """Candidate against its parent on held-out prompts, by the proxy judge."""
    return evaluate_stage.evaluate(config, common.open_lake(config), iteration, candidate_id)
