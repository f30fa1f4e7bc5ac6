"""The weekly iteration: each stage a task run; small ids between them, data in the lake."""

import time

from prefect import flow, get_run_logger

from flywheel import loop
from flywheel.config import FlywheelConfig
from tasks.annotation import annotate
from tasks.evaluation import evaluate
from tasks.policy import rejection_sample
from tasks.promotion import decide
from tasks.reward import train_reward_models
from tasks.sampling import sample_for_annotation


def _timed(seconds: dict, name: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    seconds[name] = round(time.perf_counter() - start, 2)
    return out


@flow(name="weekly-iteration", flow_run_name="iteration-{iteration}")
def weekly_iteration(config: FlywheelConfig, iteration: int | None = None) -> dict:
    """Sample for annotation, annotate, retrain the reward models, rejection sampling, evaluate,
    promote or roll back. `iteration` defaults to the lake's next one."""
    if iteration is None:
        iteration = loop.next_iteration(loop.open_lake(config))
    s: dict[str, float] = {}
    pairs = _timed(s, "sample_for_annotation", sample_for_annotation, config, iteration)
    batch_id = _timed(s, "annotate", annotate, config, iteration, pairs)
    rm_ids = _timed(s, "train_reward_models", train_reward_models, config, iteration, batch_id)
    candidate = _timed(s, "rejection_sampling", rejection_sample, config, iteration, rm_ids)
    evaluation = _timed(s, "evaluate", evaluate, config, iteration, candidate)
    result = decide(config, iteration, batch_id, rm_ids, evaluation, s)
    get_run_logger().info("iteration %s: %s", iteration, result["decision"])
    return result
