"""The demo: N weekly iterations back to back on the embedded default."""

from prefect import flow

from flywheel.config import FlywheelConfig
from flywheel.flows.weekly import weekly_iteration
from flywheel.policy.sampling import close_samplers
from flywheel.stages import common


@flow(name="flywheel-demo")
def demo(config: FlywheelConfig, iterations: int = 2) -> list[dict]:
    """`iterations` weekly iterations in a row, continuing from the lake's last one."""
    first = common.next_iteration(common.open_lake(config))
    try:
        return [weekly_iteration(config, first + i) for i in range(iterations)]
    finally:
        close_samplers()  # sampling engines stay open between stages, not past the run
