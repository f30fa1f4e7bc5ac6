"""`flywheel annotators`: how far each annotator agrees with the others and with gold."""

from __future__ import annotations

from typing import Annotated

from cyclopts import Parameter

from flywheel.flows.commands.common import (
    ConfigOpt,
    JsonOpt,
    LakeOpt,
    existing_lake,
    load,
    print_json,
)


def annotators(*, batch: Annotated[str | None, Parameter(
                   help="only this batch's labels (default: every in-house batch, and each "
                   "batch's agreement)")] = None,
               config: ConfigOpt = None, lake: LakeOpt = None, json: JsonOpt = False) -> int:
    """Per annotator: gold accuracy, agreement with the others on overlap items (Cohen's kappa
    on the choice, linear-weighted kappa on choice and strength), share of "unsure", median
    seconds per item; per batch: Fleiss' kappa overall and by criterion. Annotators below
    annotation.quality.min_kappa / min_gold_accuracy are marked: the reward-model mixes leave
    their comparisons out.

    Example: flywheel annotators --batch iteration-0003
    """
    from flywheel.annotation.annotators import left_out, report
    from flywheel.errors import DataError
    from flywheel.lake.catalog import connect
    from flywheel.stages.report_annotators import report_markdown

    cfg = load(config, lake)
    store = existing_lake(cfg.lake, read_only=True)
    with connect(store) as con:
        if batch is not None and not con.execute(
                "SELECT 1 FROM batches WHERE batch_id = $b AND status = 'complete'",
                {"b": batch}).fetchall():
            known = [b for (b,) in con.execute(
                "SELECT DISTINCT batch_id FROM batches WHERE status = 'complete' ORDER BY 1"
            ).fetchall()]
            raise DataError(f"no batch {batch!r} in the lake; its batches: "
                            f"{', '.join(known) or 'none yet'} (flywheel status lists them)")
        out = report(con, store, batch)
        out["left_out"] = left_out(con, store, cfg.annotation.quality)
    if json:
        print_json(out)
        return 0
    print("\n".join(report_markdown(out)), end="")
    for who, why in out["left_out"].items():
        print(f"left out of the reward-model mixes: {who} ({why})")
    return 0
