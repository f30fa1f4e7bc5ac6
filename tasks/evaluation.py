from prefect import task

from flywheel import loop
from flywheel.config import FlywheelConfig
from tasks.resume import stage_cache


@task(name="evaluate", cache_policy=stage_cache(loop.evaluate))
def evaluate(config: FlywheelConfig, iteration: int, candidate_id: str) -> dict:
    """Candidate against its parent on held-out prompts, by the proxy judge."""
    return loop.evaluate(config, loop.open_lake(config), iteration, candidate_id)
