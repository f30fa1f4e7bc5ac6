"""The demo: N weekly iterations back to back on the embedded default."""

from prefect import flow

from flows.weekly import weekly_iteration
from flywheel import loop
from flywheel.config import FlywheelConfig
from flywheel.sampling import close_samplers


@flow(name="flywheel-demo")
def demo(config: FlywheelConfig, iterations: int = 2) -> list[dict]:
    """`iterations` weekly iterations in a row, continuing from the lake's last one."""
    first = loop.next_iteration(loop.open_lake(config))
    try:
        return [weekly_iteration(config, first + i) for i in range(iterations)]
    finally:
        close_samplers()  # sampling engines stay open between stages, not past the run
