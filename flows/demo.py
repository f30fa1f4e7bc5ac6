"""The demo: N weekly iterations back to back on the embedded default."""

from prefect import flow

from flywheel import loop
from flywheel.config import FlywheelConfig
from flows.weekly import weekly_iteration


@flow(name="flywheel-demo")
def demo(config: FlywheelConfig, iterations: int = 2) -> list[dict]:
    first = loop.next_iteration(loop.open_lake(config))
    return [weekly_iteration(config, first + i) for i in range(iterations)]
