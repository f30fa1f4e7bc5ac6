from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flywheel.annotation.annotators import left_out, report
from flywheel.config import FlywheelConfig
from flywheel.lake.catalog import connect, query
from flywheel.lake.store import Lake
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


def publish_annotators(config: FlywheelConfig, lake: Lake, iteration: int,
                       batch_id: str | None) -> list[dict]:
    """The batch's annotator quality (flywheel/annotation/quality.py) as the Prefect table
    artifact "iteration-N-annotators", with whom the mixes leave out and why."""
    if not batch_id:
        return []
    with connect(lake) as con:
        out = report(con, lake, batch_id)
        dropped = left_out(con, lake, config.annotation.quality)
    rows = [{**{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()},
             "left_out": dropped.get(r["annotator"], "")} for r in out["annotators"]]
    a = out["agreement"]
    create_table_artifact(
        key=f"iteration-{iteration}-annotators", table=rows,
        description=f"Batch {batch_id}: per annotator, gold accuracy, agreement and Cohen's "
        "kappa with the others on overlap items, strength kappa (linear-weighted, choice and "
        f"strength), unsure share, median seconds; {a['items']} overlap items, Fleiss' kappa "
        + ("n/a" if a["fleiss_kappa"] is None else f"{a['fleiss_kappa']:.3f}"))
    return rows
