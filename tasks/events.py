"""The batch-landed event and the trigger that turns it into one reward-model retrain.

A delivery that adds rows emits `flywheel.batch.landed` about the resource
`flywheel.batch.<name>`, labelled with the lake. Its id is derived from the lake and the delivery,
so emitting it again for the same delivery is the same event.

The retrain deployment's trigger is reactive with a window (`debounce_seconds`): the first batch
in a window starts one flow run, scheduled at the end of the window; further events in the window
(repeats, or other batches landing together) start nothing, and the run, when it starts, trains
on every batch pending by then. A repeat after the window starts a run that finds its batch
already trained and stops without training (`flows/annotation.py`): at most one retrain per
delivery however often its event arrives.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from prefect.events import emit_event
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.events.worker import EventsWorker

BATCH_LANDED = "flywheel.batch.landed"


def batch_landed(lake_uri: str, result: dict) -> dict:
    """The event, as keyword arguments of `emit_event`."""
    return {
        "event": BATCH_LANDED,
        "resource": {
            "prefect.resource.id": f"flywheel.batch.{result['batch_id']}",
            "prefect.resource.name": result["batch_id"],
            "flywheel.lake": lake_uri,
            "flywheel.batch": result["batch_id"],
            "flywheel.delivery": result["delivery_id"],
        },
        "payload": {k: result[k] for k in ("delivered", "accepted", "new", "rejected",
                                           "heldout", "checksum", "filename")},
        "id": uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel:{lake_uri}:{result['delivery_id']}"),
    }


def emit_batch_landed(lake_uri: str, result: dict) -> bool:
    """Emit the event and wait until it is sent. Returns whether it was emitted: only deliveries
    that added rows are news (a file ingested again is not)."""
    if not result["new"] or result.get("already_ingested"):
        return False
    emit_event(**batch_landed(lake_uri, result))
    EventsWorker.drain_all()
    return True


def retrain_trigger(lake_uri: str, debounce_seconds: int,
                    parameters: dict) -> DeploymentEventTrigger:
    """One retrain per window of landed batches of this lake, with the first batch's name as
    the `batch_id` parameter."""
    window = timedelta(seconds=debounce_seconds)
    return DeploymentEventTrigger(
        name=f"retrain when a batch lands in {lake_uri}",
        expect={BATCH_LANDED},
        match={"prefect.resource.id": "flywheel.batch.*", "flywheel.lake": lake_uri},
        posture="Reactive",
        threshold=1,
        within=window,
        schedule_after=window,
        parameters={**parameters, "batch_id": "{{ event.resource.name }}"},
    )
