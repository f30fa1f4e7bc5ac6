"""Ingest as a task: a delivered file (local path or URI) into the lake, its summary as
artifacts, and the batch-landed event when it added rows."""

from __future__ import annotations

import fsspec
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flywheel.annotation.ingest import ingest_bytes
from flywheel.config import FlywheelConfig
from flywheel.stages import common
from flywheel.tasks.events import emit_batch_landed


def _artifact_key(batch_id: str) -> str:
    return "batch-" + "".join(c if c.isalnum() else "-" for c in batch_id.lower())


@task(name="ingest-batch", cache_policy=None, retries=2, retry_delay_seconds=10)
def ingest_batch(config: FlywheelConfig, path: str, batch_id: str | None = None) -> dict:
    """Validate and land one delivered file. A retry after a crash is safe: rows are keyed by
    content and the delivery is marked complete last."""
    lake = common.open_lake(config)
    with fsspec.open(path, "rb") as f:
        data = f.read()
    result = ingest_bytes(lake, data, path.rsplit("/", 1)[-1], batch_id, config.annotation)
    get_run_logger().info(result.summary())
    out = result.to_dict()
    key = _artifact_key(result.batch_id)
    create_table_artifact(
        key=key,
        table=[{"reason": "accepted", "rows": result.accepted}]
        + [{"reason": r, "rows": n} for r, n in sorted(result.reasons.items())],
        description=f"Delivery {result.filename} of batch {result.batch_id}: rows by outcome",
    )
    create_markdown_artifact(key=f"{key}-summary", markdown="```\n" + result.summary() + "\n```")
    out["event_emitted"] = emit_batch_landed(lake.uri, out)
    return out
