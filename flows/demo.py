"""The demo: N weekly iterations back to back on the embedded default, saying as each stage
starts where the run stands and about how long is left (tasks/progress.py)."""

import json
import time

from prefect import flow
from tqdm.auto import tqdm

from flywheel.config import FlywheelConfig
from flywheel.flows.weekly import weekly_iteration
from flywheel.policy.sampling import close_samplers
from flywheel.stages import common
from flywheel.tasks.progress import (
    DEMO_STAGE_SECONDS,
    StageClock,
    clock,
    expected_from_lake,
    on_stage,
)


@flow(name="flywheel-demo")
def demo(config: FlywheelConfig, iterations: int = 2) -> list[dict]:
    """`iterations` weekly iterations in a row, continuing from the lake's last one."""
    lake = common.open_lake(config)
    first = common.next_iteration(lake)
    earlier = [{"iteration": r["iteration"], **json.loads(r["metrics"] or "{}")}
               for r in lake.rows("iterations")]
    stage_clock = StageClock(iterations, expected_from_lake(earlier) or dict(DEMO_STAGE_SECONDS),
                             first_is_first=first == 1)
    token = on_stage.set(stage_clock)
    try:
        results = [weekly_iteration(config, first + i) for i in range(iterations)]
        tqdm.write(f"[flywheel] {iterations} iteration(s) in "
                   f"{clock(time.perf_counter() - stage_clock.started_at)}")
        return results
    finally:
        on_stage.reset(token)
        close_samplers()  # sampling engines stay open between stages, not past the run
