"""The annotation deployments a lake needs, served by `flywheel serve` (or defined for work
pools in deployments/prefect.yaml):

    reward-model-retrain/on-batch-landed   triggered by flywheel.batch.landed of this lake,
                                           debounced; one run at a time
    annotation-inbox/poll-incoming         every `poll_seconds`, ingests files dropped under
                                           <lake>/incoming/
"""

from __future__ import annotations

from flows.annotation import inbox, retrain
from flywheel.config import FlywheelConfig
from flywheel.lake import Lake
from tasks.events import retrain_trigger


def annotation_deployments(config: FlywheelConfig, debounce_seconds: int = 600,
                           poll_seconds: int = 300) -> list:
    params = {"config": config.model_dump(mode="json")}
    on_batch = retrain.to_deployment(
        name="on-batch-landed",
        parameters=params,
        triggers=[retrain_trigger(Lake(config.lake).uri, debounce_seconds, params)],
        concurrency_limit=1,
        description="Retrain the reward model when annotation batches land in " + config.lake,
    )
    poll = inbox.to_deployment(
        name="poll-incoming",
        parameters=params,
        interval=poll_seconds,
        description="Ingest batch files dropped under the lake's incoming/ folder",
    )
    return [on_batch, poll]
