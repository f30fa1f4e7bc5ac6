from prefect import task
from prefect.artifacts import create_table_artifact

from flywheel import loop
from flywheel.config import FlywheelConfig


@task(name="annotate", cache_policy=None)
def annotate(config: FlywheelConfig, iteration: int, pairs: list[list[str]]) -> str:
    """The simulated annotator labels the pairs; they land as one batch."""
    lake = loop.open_lake(config)
    batch_id = loop.annotate(config, lake, iteration, pairs)
    rows = [r for r in lake.rows("comparisons") if r["batch_id"] == batch_id]
    counts: dict[tuple, int] = {}
    for r in rows:
        key = (r["criterion"], r["strength"], r["safety_label"], r["split"])
        counts[key] = counts.get(key, 0) + 1
    create_table_artifact(
        key=f"iteration-{iteration}-batch",
        table=[{"criterion": k[0], "strength": k[1], "safety_label": k[2], "split": k[3],
                "pairs": n} for k, n in sorted(counts.items())],
        description=f"Batch {batch_id}: {len(rows)} comparisons of {len(pairs)} pairs",
    )
    return batch_id
