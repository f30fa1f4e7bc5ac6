"""The weekly iteration: each stage a task run; small ids between them, data in the lake.

    sample for annotation -> collect comparisons -> retrain reward models -> policy update
    (rejection sampling, PPO where configured) -> evaluate -> promote or roll back

Collecting comparisons: the simulated annotator labels the pairs (`annotation.mode: simulated`),
or (`human`) the pairs are exported to the lake and the run waits for the week's batch: a run
from a deployment suspends (it holds no worker) until the batch's flywheel.batch.landed event
resumes it, a run started by hand pauses in its process.

`stages="deployments"` (the weekly deployment of deployments/prefect.yaml) runs the heavy stages
(sampling, reward models, policy update, evaluation) as their own deployments on the gpu pool
(flows/stages.py); the default runs every stage in this process. Either way each stage is cached
on its inputs and code (tasks/resume.py): a retried or resumed run skips the finished ones.
"""

import time
from typing import Literal

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run, suspend_flow_run

from flywheel.config import FlywheelConfig
from flywheel.errors import DataError
from flywheel.flows.stages import EVALUATE, POLICY_UPDATE, REWARD_MODELS, SAMPLING, run_stage
from flywheel.stages import common, plan
from flywheel.tasks.annotation import annotate, export_pairs
from flywheel.tasks.evaluation import evaluate
from flywheel.tasks.events import awaiting_tag, ensure_resume_automation
from flywheel.tasks.policy import policy_update
from flywheel.tasks.promotion import decide
from flywheel.tasks.resume import in_lake, resolve_iteration
from flywheel.tasks.reward import train_reward_models
from flywheel.tasks.sampling import sample_for_annotation


def _timed(seconds: dict, name: str, fn):
    start = time.perf_counter()
    out = fn()
    seconds[name] = round(time.perf_counter() - start, 2)
    return out


def wait_for_batch(config: FlywheelConfig, iteration: int) -> str:
    """Human mode: export the pairs, then wait until one of the iteration's batches has landed.
    Returns its id."""
    logger = get_run_logger()
    lake = common.open_lake(config)
    batch_ids = plan.awaited_batches(config, iteration)
    in_lake(export_pairs, config)(config, iteration, batch_ids)
    if landed := plan.landed_batch(lake, batch_ids):
        return landed
    run = FlowRunContext.get().flow_run
    with get_client(sync_client=True) as client:
        tags = set(client.read_flow_run(run.id).tags)
        client.update_flow_run(run.id, tags=sorted(tags | {awaiting_tag(lake.uri, b)
                                                           for b in batch_ids}))
    ensure_resume_automation()
    if landed := plan.landed_batch(lake, batch_ids):  # it landed while the run tagged itself
        return landed
    timeout = round(config.annotation.wait_hours * 3600)
    logger.info("iteration %s waits up to %s h for batch %s (or %s)", iteration,
                config.annotation.wait_hours, *batch_ids)
    if run.deployment_id:
        suspend_flow_run(timeout=timeout, key=f"annotation-{iteration}")  # the process exits
    else:
        pause_flow_run(timeout=timeout, key=f"annotation-{iteration}")
    if landed := plan.landed_batch(lake, batch_ids):
        return landed
    raise DataError(f"iteration {iteration} was resumed but none of batches {batch_ids} has "
                    f"landed in {lake.uri}; ingest the labels under one of those ids, then retry")


@flow(name="weekly-iteration", flow_run_name="iteration-{iteration}")
def weekly_iteration(config: FlywheelConfig, iteration: int | None = None,
                     stages: Literal["in-process", "deployments"] = "in-process") -> dict:
    """Sample for annotation, collect comparisons, retrain the reward models, update the
    policy, evaluate, promote or roll back. `iteration` defaults to the lake's next one;
    `stages`: run the heavy stages here or as their deployments."""
    if iteration is None:
        iteration = in_lake(resolve_iteration, config)(config)
        with get_client(sync_client=True) as client:  # the run's name says which iteration
            client.update_flow_run(FlowRunContext.get().flow_run.id, name=f"iteration-{iteration}")
    plan.check_policy_update(config, iteration)  # before any work: e.g. PPO is not built yet
    deployed = stages == "deployments"

    def heavy(name: str, stage, **inputs):
        """A heavy stage: its deployment, or its task here."""
        if deployed:
            return run_stage(name, config, iteration=iteration, **inputs)
        return stage(config, iteration, *inputs.values())

    def update(cfg, it, reward_model_ids):
        return policy_update(cfg, it, reward_model_ids, lambda t: in_lake(t, cfg))

    s: dict[str, float] = {}
    pairs = _timed(s, "sample_for_annotation", lambda: heavy(
        SAMPLING, in_lake(sample_for_annotation, config)))
    if config.annotation.mode == "human":
        batch_id = _timed(s, "annotate", lambda: wait_for_batch(config, iteration))
    else:
        batch_id = _timed(s, "annotate", lambda: in_lake(annotate, config)(config, iteration,
                                                                            pairs))
    rm_ids = _timed(s, "train_reward_models", lambda: heavy(
        REWARD_MODELS, in_lake(train_reward_models, config), batch_id=batch_id))
    candidate = _timed(s, "rejection_sampling", lambda: heavy(
        POLICY_UPDATE, update, reward_model_ids=rm_ids))
    evaluation = _timed(s, "evaluate", lambda: heavy(
        EVALUATE, in_lake(evaluate, config), candidate_id=candidate))
    result = decide(config, iteration, batch_id, rm_ids, evaluation, s)
    get_run_logger().info("iteration %s: %s", iteration, result["decision"])
    return result
