from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flywheel.config import FlywheelConfig
from flywheel.lake.catalog import query
from flywheel.stages import annotate as annotate_stage
from flywheel.stages import common, plan
from flywheel.tasks.resume import stage_cache


@task(name="annotate", cache_policy=stage_cache())
def annotate(config: FlywheelConfig, iteration: int, pairs: list[list[str]]) -> str:
    """The simulated annotator labels the pairs; they land as one batch."""
    lake = common.open_lake(config)
    batch_id = annotate_stage.annotate(config, lake, iteration, pairs)
    rows = query(lake, "SELECT criterion, strength, safety_label, split FROM comparisons "
                 "WHERE batch_id = $batch", {"batch": batch_id})
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


@task(name="export-pairs", cache_policy=stage_cache())
def export_pairs(config: FlywheelConfig, iteration: int, batch_ids: list[str]) -> dict[str, str]:
    """Human mode: the week's pairs for Label Studio and Argilla, written to the lake; the
    artifact says where and how the labels come back."""
    lake = common.open_lake(config)
    uris = plan.export_pairs(lake, iteration)
    create_markdown_artifact(
        key=f"iteration-{iteration}-pairs-to-label",
        markdown=f"# Iteration {iteration}: pairs to label\n\n"
        + "".join(f"- {kind}: `{lake.url(uri)}`\n" for kind, uri in uris.items())
        + f"\nThe iteration waits for batch `{batch_ids[0]}`: import the labels with "
        f"`flywheel annotate import FILE --format label-studio|argilla --batch-id {batch_ids[0]}`"
        f" or `flywheel ingest FILE --batch-id {batch_ids[0]}`, or label them on the review page "
        f"(`flywheel annotate serve --iteration {iteration}`, batch `{batch_ids[1]}`).\n",
        description=f"Iteration {iteration}: exported for annotation",
    )
    return uris
