from prefect import task

from flywheel import loop
from flywheel.config import FlywheelConfig
from tasks.resume import stage_cache


@task(name="sample-for-annotation", cache_policy=stage_cache(loop.sample_for_annotation))
def sample_for_annotation(config: FlywheelConfig, iteration: int) -> list[list[str]]:
    """Latest and previous policy answer every train prompt, at the two temperatures."""
    return loop.sample_for_annotation(config, loop.open_lake(config), iteration)
