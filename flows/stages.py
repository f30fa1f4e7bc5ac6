"""The heavy stages as flows of their own, for deployments on the gpu pool: each flow run is its
own process, so its models and GPU memory go when it ends, and a failed one can be retried alone.

    stage-sample-for-annotation/gpu   latest and previous policy answer the train prompts
    stage-train-reward-models/gpu     helpfulness and safety reward models
    stage-policy-update/gpu           the iteration's methods: rejection sampling or RRHF,
                                      and/or PPO (policy_update.methods, .schedule)
    stage-evaluate/gpu                candidate and parent answer held-out prompts; judge, scores

Each is a thin wrapper over the same cached task the in-process weekly flow runs, holds one slot
of the `gpu-slots` global concurrency limit while it works, and returns lake ids only, which it
also writes to `<lake>/_prefect/stages/<flow run id>.json` for the weekly flow to read (a worker
on another machine shares the lake, not its local result storage).

The weekly flow calls `sample`, `reward_models`, `update_policy` and `evaluate_candidate`: each
runs its stage's deployment when `deployed`, else its task in the calling process.
"""

from __future__ import annotations

import json

from prefect import flow
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment

from flywheel.config import FlywheelConfig
from flywheel.errors import FlywheelError
from flywheel.stages import common
from flywheel.tasks.evaluation import evaluate
from flywheel.tasks.policy import policy_update
from flywheel.tasks.resume import in_lake
from flywheel.tasks.reward import train_reward_models
from flywheel.tasks.sampling import sample_for_annotation

SAMPLING = "stage-sample-for-annotation"
REWARD_MODELS = "stage-train-reward-models"
POLICY_UPDATE = "stage-policy-update"
EVALUATE = "stage-evaluate"
DEPLOYMENT = "gpu"  # the name of each stage's deployment in deployments/prefect.yaml
GPU_SLOTS = "gpu-slots"
# a slot held by a process that died is freed when its lease runs out unrenewed
LEASE_SECONDS = 60
RESULTS = "_prefect/stages"


def _gpu_slot():
    return concurrency(GPU_SLOTS, occupy=1, lease_duration=LEASE_SECONDS)


def _record(config: FlywheelConfig, value):
    run = FlowRunContext.get().flow_run
    common.open_lake(config).write_text(f"{RESULTS}/{run.id}.json", json.dumps(value))
    return value


@flow(name=SAMPLING, flow_run_name="iteration-{iteration}-sampling")
def sampling_stage(config: FlywheelConfig, iteration: int) -> list[list[str]]:
    """Sample for annotation: [latest sample id, previous sample id] per train prompt."""
    with _gpu_slot():
        return _record(config, sample(config, iteration, deployed=False))


@flow(name=REWARD_MODELS, flow_run_name="iteration-{iteration}-reward-models")
def reward_models_stage(config: FlywheelConfig, iteration: int,
                        batch_id: str | None) -> dict[str, str | None]:
    """Retrain, evaluate and gate both reward models: the ids in use afterwards, by kind."""
    with _gpu_slot():
        return _record(config, reward_models(config, iteration, batch_id, deployed=False))


@flow(name=POLICY_UPDATE, flow_run_name="iteration-{iteration}-policy-update")
def policy_update_stage(config: FlywheelConfig, iteration: int,
                        reward_model_ids: dict[str, str | None]) -> dict:
    """The iteration's policy-update methods in turn (tasks/policy.py): {"candidate": id,
    "policies": {method: id}, "seconds": {method: s}}."""
    with _gpu_slot():
        return _record(config, update_policy(config, iteration, reward_model_ids, deployed=False))


@flow(name=EVALUATE, flow_run_name="iteration-{iteration}-evaluate")
def evaluation_stage(config: FlywheelConfig, iteration: int, candidate_id: str) -> dict:
    """The candidate against its parent on held-out prompts: judge rates, reward scores."""
    with _gpu_slot():
        return _record(config, evaluate_candidate(config, iteration, candidate_id,
                                                   deployed=False))


def run_stage(name: str, config: FlywheelConfig, **parameters):
    """Run a stage's deployment as a child of the current flow run, wait for it, and return
    what it recorded in the lake. Each attempt of the parent starts fresh child runs (a crashed
    child is not reused); their finished tasks come back from the cache."""
    parent = FlowRunContext.get().flow_run
    child = run_deployment(
        f"{name}/{DEPLOYMENT}",
        parameters={"config": config.model_dump(mode="json"), **parameters},
        idempotency_key=f"{parent.id}:{name}:{parent.run_count}",
        timeout=None,
    )
    if not child.state or not child.state.is_completed():
        state = child.state.name if child.state else "unknown"
        raise FlywheelError(
            f"stage {name} (flow run {child.name}) ended {state}: see its logs in the Prefect "
            "UI; retry that run alone, or retry this iteration (finished stages are cached)"
        )
    return json.loads(common.open_lake(config).read_bytes(f"{RESULTS}/{child.id}.json"))


# what the weekly flow calls: a stage's deployment, or its task here -------------------------
def sample(config: FlywheelConfig, iteration: int, deployed: bool) -> list[list[str]]:
    """Sample for annotation: [latest sample id, previous sample id] per train prompt."""
    if deployed:
        return run_stage(SAMPLING, config, iteration=iteration)
    return in_lake(sample_for_annotation, config)(config, iteration)


def reward_models(config: FlywheelConfig, iteration: int, batch_id: str | None,
                  deployed: bool) -> dict[str, str | None]:
    """Retrain, evaluate and gate both reward models: the ids in use afterwards, by kind."""
    if deployed:
        return run_stage(REWARD_MODELS, config, iteration=iteration, batch_id=batch_id)
    return in_lake(train_reward_models, config)(config, iteration, batch_id)


def update_policy(config: FlywheelConfig, iteration: int, reward_model_ids: dict[str, str | None],
                  deployed: bool) -> dict:
    """The policy update: {"candidate": id, "policies": {method: id}, "seconds": {method: s}}."""
    if deployed:
        return run_stage(POLICY_UPDATE, config, iteration=iteration,
                         reward_model_ids=reward_model_ids)
    return policy_update(config, iteration, reward_model_ids)


def evaluate_candidate(config: FlywheelConfig, iteration: int, candidate_id: str,
                       deployed: bool) -> dict:
    """The candidate against its parent on held-out prompts: judge rates, reward scores."""
    if deployed:
        return run_stage(EVALUATE, config, iteration=iteration, candidate_id=candidate_id)
    return in_lake(evaluate, config)(config, iteration, candidate_id)
