"""Annotation flows: ingest a delivered batch, poll the lake's drop folder, retrain the reward
model when batches land.

    annotation-ingest       one file -> the ingest-batch task (emits flywheel.batch.landed)
    annotation-inbox        every supported file under <lake>/incoming/ -> ingest-batch; files
                            already ingested are no-ops (by checksum), so polling is safe
    reward-model-retrain    started by the batch-landed trigger (tasks/events.py) with the
                            batch's name; retrains the helpfulness and safety reward models
                            once on every pending batch (mixes, evaluation, promotion gate),
                            or stops at once when its batch is already in a reward model
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flywheel.annotation.delivery import SUFFIXES
from flywheel.config import FlywheelConfig
from flywheel.stages import common, reward_models
from flywheel.tasks.events import awaiting_runs
from flywheel.tasks.ingest import ingest_batch
from flywheel.tasks.reward import train_reward_models

INCOMING = "incoming"


@flow(name="annotation-ingest", flow_run_name="ingest-{path}")
def ingest(config: FlywheelConfig, path: str, batch_id: str | None = None) -> dict:
    """Validate and land one delivered batch file (a local path or a URI)."""
    return ingest_batch(config, path, batch_id)


def incoming_files(lake, prefix: str = INCOMING) -> list[str]:
    names = lake.listdir(prefix)
    return [lake.url(prefix, n) for n in names
            if n.lower().removesuffix(".gz").endswith(SUFFIXES)]


@flow(name="annotation-inbox")
def inbox(config: FlywheelConfig, prefix: str = INCOMING) -> list[dict]:
    """Ingest every batch file dropped under the lake's `prefix` folder (for buckets that send
    no notifications; deployed on an interval)."""
    lake = common.open_lake(config)
    results = [ingest_batch(config, uri) for uri in incoming_files(lake, prefix)]
    new = [r["batch_id"] for r in results if not r["already_ingested"]]
    get_run_logger().info("inbox: %d file(s), %d new deliveries %s", len(results), len(new), new)
    return results


@flow(name="reward-model-retrain", flow_run_name="retrain-{batch_id}")
def retrain(config: FlywheelConfig, batch_id: str) -> dict:
    """Retrain both reward models on everything landed so far, if `batch_id` is not in one
    yet: each on its Llama 2 mix, evaluated on every test set, promoted only if it passes the
    gate against the current one."""
    logger = get_run_logger()
    lake = common.open_lake(config)
    pending = reward_models.pending_batches(lake)
    if batch_id not in pending:
        logger.info("batch %s is already in a reward model (or added no rows): nothing to do",
                    batch_id)
        return {"batch_id": batch_id, "trained": False, "pending": pending}
    waiting = awaiting_runs(lake.uri, batch_id)
    if waiting:
        logger.info("batch %s is the labels weekly iteration run %s waits for: it retrains on "
                    "them when it resumes", batch_id, waiting[0])
        return {"batch_id": batch_id, "trained": False, "pending": pending, "awaited_by": waiting}
    iteration = common.next_iteration(lake)
    rm_ids = train_reward_models(config, iteration, batch_id)
    logger.info("reward models in use %s after training on batches %s", rm_ids, pending)
    return {"batch_id": batch_id, "trained": True, "reward_model_ids": rm_ids,
            "batches": pending}
