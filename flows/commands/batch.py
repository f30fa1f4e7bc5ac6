"""Correcting a landed batch: `flywheel batch retract|restore|resplit`, and its rejected rows:
`flywheel quarantine`. The work is flywheel/annotation/batches.py's."""

from __future__ import annotations

from typing import Annotated, Literal

from cyclopts import App, Parameter

from flywheel.flows.commands.common import (
    ConfigOpt,
    JsonOpt,
    LakeOpt,
    existing_lake,
    load,
    print_json,
)

app = App(name="batch", help="Correct a batch that landed, keeping its history.\n\n"
          "Retract it (its rows leave every later mix and test set; nothing is deleted), "
          "restore it, or move its comparisons between train and test. Each change is one "
          "commit of the lake that records the reason.\n\n"
          "Example: flywheel batch retract week-47 --reason \"annotator misread the guideline\"")

BatchArg = Annotated[str, Parameter(help="the batch's id (flywheel status lists them)")]
ReasonOpt = Annotated[str | None, Parameter(help="why, recorded in the lake's history")]


def _show(change, as_json: bool) -> int:
    if as_json:
        print_json(change.to_dict())
    else:
        print(change.summary())
    return 0


@app.command
def retract(batch: BatchArg, /, *, reason: ReasonOpt = None, config: ConfigOpt = None,
            lake: LakeOpt = None, json: JsonOpt = False) -> int:
    """Take a batch's rows out of every later mix and test set.

    Its `batches` rows (status retracted) and the delivered files stay; `flywheel batch
    restore` undoes it.

    Example: flywheel batch retract week-47 --reason "labels swapped"
    """
    from flywheel.annotation.batches import retract as retract_batch

    return _show(retract_batch(existing_lake(load(config, lake).lake), batch, reason), json)


@app.command
def restore(batch: BatchArg, /, *, reason: ReasonOpt = None, config: ConfigOpt = None,
            lake: LakeOpt = None, json: JsonOpt = False) -> int:
    """Bring a retracted batch's rows back.

    Example: flywheel batch restore week-47
    """
    from flywheel.annotation.batches import restore as restore_batch

    return _show(restore_batch(existing_lake(load(config, lake).lake), batch, reason), json)


@app.command
def resplit(batch: BatchArg, /, *, split: Literal["train", "test"], reason: ReasonOpt = None,
            config: ConfigOpt = None, lake: LakeOpt = None, json: JsonOpt = False) -> int:
    """Move a batch's comparisons to train or test.

    The earlier split stays readable in the lake's history; prints how many rows moved.

    Example: flywheel batch resplit hh_rlhf_harmless_base_test-train --split test
    """
    from flywheel.annotation.batches import resplit as resplit_batch

    return _show(resplit_batch(existing_lake(load(config, lake).lake), batch, split, reason),
                 json)


def quarantine(batch: BatchArg, /, *, limit: Annotated[int, Parameter(
                   help="show at most N rows")] = 50,
               config: ConfigOpt = None, lake: LakeOpt = None, json: JsonOpt = False) -> int:
    """A batch's rejected rows: line, field, value, reason, and how to fix each.

    Example: flywheel quarantine week-47 --limit 20
    """
    from flywheel.annotation.batches import format_rejected, rejected_rows

    report = rejected_rows(existing_lake(load(config, lake).lake), batch, limit)
    if json:
        print_json(report)
    else:
        print(format_rejected(report))
    return 0
