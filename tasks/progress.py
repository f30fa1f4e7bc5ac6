"""Progress of a long stage in the Prefect UI: each training run inside the block (a reward
model, the policy fine-tune) gets a progress artifact, updated as its optimizer steps finish."""

from __future__ import annotations

import re
from contextlib import contextmanager
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flywheel.training import on_step


@contextmanager
def training_progress(key: str):
    """Progress artifacts keyed `<key>-<what is trained>`, e.g. iteration-1-safety-reward-model;
    updated at most once per percent, so a long run makes about a hundred API calls."""
    shown: dict[str, tuple[UUID, int]] = {}

    def listener(what: str, done: int, total: int) -> None:
        percent = 100 * done // max(1, total)
        text = f"{what}: step {done} of {total}"
        if what not in shown:
            slug = re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-")
            shown[what] = (create_progress_artifact(percent, key=f"{key}-{slug}",
                                                    description=text), percent)
        elif percent > shown[what][1]:
            shown[what] = (update_progress_artifact(shown[what][0], percent, description=text),
                           percent)

    token = on_step.set(listener)
    try:
        yield
    finally:
        on_step.reset(token)
