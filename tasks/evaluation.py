from prefect import task

from flywheel import loop
from flywheel.config import FlywheelConfig


@task(name="evaluate", cache_policy=None)
def evaluate(config: FlywheelConfig, iteration: int, candidate_id: str) -> dict:
    """Candidate against its parent on held-out prompts, by the proxy judge."""
    return loop.evaluate(config, loop.open_lake(config), iteration, candidate_id)
