from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.stages import common
from flywheel.stages import sample_for_annotation as sample_for_annotation_stage
from flywheel.tasks.resume import stage_cache


@task(name="sample-for-annotation", cache_policy=stage_cache())
def sample_for_annotation(config: FlywheelConfig, iteration: int) -> list[list[str]]:
    """Latest and previous policy answer every train prompt, at the two temperatures."""
    return sample_for_annotation_stage.sample_for_annotation(config, common.open_lake(config),
                                                             iteration)
