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

The iteration row records each stage's wall time (`stage_seconds`), the policy update as one
entry per method that ran (rejection_sampling, rrhf, ppo), timed where the method ran.
"""

from typing import Literal

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run, suspend_flow_run

from flywheel.config import FlywheelConfig
from flywheel.errors import DataError
from flywheel.flows.stages import evaluate_candidate, reward_models, sample, update_policy
from flywheel.stages import common, plan
from flywheel.tasks.annotation import annotate, export_pairs
from flywheel.tasks.events import awaiting_tag, ensure_resume_automation
from flywheel.tasks.progress import announced, timed
from flywheel.tasks.promotion import decide
from flywheel.tasks.resume import in_lake, resolve_iteration


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
    deployed = stages == "deployments"
    seconds: dict[str, float] = {}
    with timed(seconds, "sample_for_annotation"):
        pairs = sample(config, iteration, deployed)
    with timed(seconds, "annotate"):
        if config.annotation.mode == "human":
            batch_id = wait_for_batch(config, iteration)
        else:
            batch_id = in_lake(annotate, config)(config, iteration, pairs)
    with timed(seconds, "train_reward_models"):
        rm_ids = reward_models(config, iteration, batch_id, deployed)
    with announced("policy_update"):  # timed by method where the methods ran
        update = update_policy(config, iteration, rm_ids, deployed)
    seconds.update(update["seconds"])  # one entry per method, in the order they ran
    with timed(seconds, "evaluate"):
        evaluation = evaluate_candidate(config, iteration, update["candidate"], deployed)
    result = decide(config, iteration, batch_id, rm_ids, evaluation, seconds)
    get_run_logger().info("iteration %s: %s", iteration, result["decision"])
    return result
