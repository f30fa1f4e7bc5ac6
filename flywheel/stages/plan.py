"""What one weekly iteration runs beyond the stage functions of flywheel/stages/ in human
annotation mode: the exported pairs and the batch the iteration waits for. (The iteration's
policy-update methods are `cfg.policy_update.for_iteration(iteration)`; the config's validation
allows only the sequences in flywheel.config.METHOD_SEQUENCES, none of them empty.)"""

from __future__ import annotations

import json

from flywheel.annotation.exchange import (
    argilla_settings,
    label_studio_config,
    to_argilla,
    to_label_studio,
)
from flywheel.annotation.pairs import require_pairs
from flywheel.annotation.review_round import default_round_id
from flywheel.config import FlywheelConfig
from flywheel.lake.store import Lake


# human annotation ---------------------------------------------------------------------------
def awaited_batches(cfg: FlywheelConfig, iteration: int) -> list[str]:
    """The batch ids that count as the iteration's labels: `annotation.batch_name` and the
    review page's round batch."""
    return [cfg.annotation.batch_name.format(iteration=iteration),
            "review-" + default_round_id(iteration)]


def landed_batch(lake: Lake, batch_ids: list[str]) -> str | None:
    """The first of `batch_ids` with a delivery that accepted rows, else None."""
    landed = {b["batch_id"] for b in lake.rows("batches") if b["accepted"]}
    return next((b for b in batch_ids if b in landed), None)


def export_pairs(lake: Lake, iteration: int) -> dict[str, str]:
    """The week's pairs as Label Studio tasks (with the labeling config) and Argilla records
    (with the settings) under annotation/exports/iteration-NNNN/ in the lake. Returns
    {file kind: its location, relative to the lake}."""

    pairs = require_pairs(lake, iteration)
    folder = f"annotation/exports/iteration-{iteration:04d}"
    files = {
        "label-studio": ("label-studio-tasks.json", json.dumps(to_label_studio(pairs), indent=2,
                                                              ensure_ascii=False)),
        "label-studio-config": ("label-studio-config.xml", label_studio_config()),
        "argilla": ("argilla-records.json", json.dumps(to_argilla(pairs), indent=2,
                                                       ensure_ascii=False)),
        "argilla-settings": ("argilla-settings.json", json.dumps(argilla_settings(), indent=2)),
    }
    return {kind: lake.write_text(f"{folder}/{name}", text + "\n")
            for kind, (name, text) in files.items()}
