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

A weekly iteration in human annotation mode waits, suspended, for its batch: it tags its flow run
with `awaiting_tag(lake, batch)` for each batch id it accepts, and the event of a delivery of
such a batch names the tagged runs as related resources (role `awaiting-iteration`). One
automation (`ensure_resume_automation`) resumes the run an event names that way.

`flywheel.iteration.requested` about the resource `flywheel.lake.<hash>` (labelled with the lake)
starts the weekly deployment now (its trigger in deployments/prefect.yaml): `flywheel trigger`
sends it, and so can any system through a Prefect webhook.

A worker's flow runs send heartbeats (PREFECT_FLOWS_HEARTBEAT_FREQUENCY in the deployments' job
variables); `ensure_crash_automation` marks a run of those deployments (tag flywheel) Crashed
when they stop while it runs (its machine or process died), which frees it to be retried; a
server alone cannot tell.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

from prefect.events import emit_event
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.events.worker import EventsWorker

BATCH_LANDED = "flywheel.batch.landed"
AWAITING_ROLE = "awaiting-iteration"
RESUME_AUTOMATION = "flywheel-resume-iteration-on-batch-landed"
ITERATION_REQUESTED = "flywheel.iteration.requested"
CRASH_AUTOMATION = "flywheel-crash-unresponsive-runs"
WATCHED_TAG = "prefect.tag.flywheel"  # the tag of every deployment in deployments/prefect.yaml
# what starts the window: a heartbeat, or the server's own Running event (a run killed before its
# first heartbeat reaches the server is still watched)
_HEARTBEAT_STARTS = {"prefect.flow-run.heartbeat", "prefect.flow-run.Running"}
# what ends a run's heartbeats without it being lost: a final state, or waiting (suspended runs
# hold no process, paused ones wait in theirs)
_HEARTBEAT_ENDS = {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                   "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                   "prefect.flow-run.Crashed", "prefect.flow-run.Suspended",
                   "prefect.flow-run.Paused"}


def awaiting_tag(lake_uri: str, batch_id: str) -> str:
    """The tag of a flow run waiting for `batch_id` to land in the lake."""
    lake = hashlib.sha256(lake_uri.encode()).hexdigest()[:12]
    return f"flywheel-awaits:{lake}:{batch_id}"


def awaiting_runs(lake_uri: str, batch_id: str) -> list[str]:
    """Ids of the flow runs waiting for the batch: suspended ones first, then running ones
    about to suspend."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[awaiting_tag(lake_uri, batch_id)]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.PAUSED, StateType.RUNNING]))))
    runs.sort(key=lambda r: r.state_type != StateType.PAUSED)
    return [str(r.id) for r in runs]


def batch_landed(lake_uri: str, result: dict, awaiting: list[str] = ()) -> dict:
    """The event, as keyword arguments of `emit_event`; `awaiting`: flow runs waiting for it."""
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
        "related": [{"prefect.resource.id": f"prefect.flow-run.{run_id}",
                     "prefect.resource.role": AWAITING_ROLE} for run_id in awaiting],
        "id": uuid.uuid5(uuid.NAMESPACE_URL, f"flywheel:{lake_uri}:{result['delivery_id']}"),
    }


def emit_batch_landed(lake_uri: str, result: dict) -> bool:
    """Emit the event and wait until it is sent. Returns whether it was emitted: only deliveries
    that added rows are news (a file ingested again is not)."""
    if not result["new"] or result.get("already_ingested"):
        return False
    emit_event(**batch_landed(lake_uri, result, awaiting_runs(lake_uri, result["batch_id"])))
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


def ensure_resume_automation() -> str:
    """The automation that resumes an iteration waiting for its batch when the batch's event
    names it; created once per server. Returns created or unchanged."""
    from prefect.automations import Automation
    from prefect.events.actions import ResumeFlowRun
    from prefect.events.schemas.automations import EventTrigger, Posture

    try:
        Automation.read(name=RESUME_AUTOMATION)
        return "unchanged"
    except ValueError:  # Automation.read's answer when none has the name
        pass
    Automation(
        name=RESUME_AUTOMATION,
        description="Resume the weekly iteration (human annotation mode) that waits for the "
        "batch that just landed",
        trigger=EventTrigger(expect={BATCH_LANDED},
                             match_related={"prefect.resource.role": AWAITING_ROLE},
                             posture=Posture.Reactive, threshold=1),
        actions=[ResumeFlowRun()],
    ).create()
    return "created"


def lake_resource_id(lake_uri: str) -> str:
    return "flywheel.lake." + hashlib.sha256(lake_uri.encode()).hexdigest()[:12]


def request_iteration(lake_uri: str, requested_by: str, note: str = "") -> str:
    """Emit flywheel.iteration.requested for the lake and wait until it is sent; the weekly
    deployment registered for that lake starts a run. Returns the event id."""
    event_id = uuid.uuid4()
    emit_event(event=ITERATION_REQUESTED,
               resource={"prefect.resource.id": lake_resource_id(lake_uri),
                         "prefect.resource.name": lake_uri, "flywheel.lake": lake_uri},
               payload={"requested_by": requested_by, "note": note}, id=event_id)
    EventsWorker.drain_all()
    return str(event_id)


def ensure_crash_automation(unresponsive_after: int = 90) -> str:
    """The automation that marks a flow run Crashed when no heartbeat (nor a final or waiting
    state) follows its last heartbeat, or its Running state, within `unresponsive_after` seconds.
    Returns created, updated or unchanged."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    trigger = EventTrigger(
        after=_HEARTBEAT_STARTS, expect=_HEARTBEAT_ENDS,
        match={"prefect.resource.id": ["prefect.flow-run.*"]},
        # only runs of deployments/prefect.yaml (tagged flywheel), which beat every 30 s: other
        # runs on the server beat at Prefect's default (every 180 s) and must not be crashed
        match_related={"prefect.resource.role": "tag", "prefect.resource.id": WATCHED_TAG},
        for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
        within=timedelta(seconds=unresponsive_after))
    try:
        current = Automation.read(name=CRASH_AUTOMATION)
    except ValueError:  # none has the name
        current = None
    if current is not None and current.trigger.within == trigger.within \
            and set(current.trigger.expect) == _HEARTBEAT_ENDS \
            and set(current.trigger.after) == _HEARTBEAT_STARTS \
            and current.trigger.match_related == trigger.match_related:
        return "unchanged"
    automation = Automation(
        name=CRASH_AUTOMATION,
        description=f"Mark a flow run Crashed when its heartbeats stop for {unresponsive_after} s "
        "(its worker's machine or process died), so it can be retried",
        trigger=trigger,
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {unresponsive_after} s: the flow "
                                    "run's process or machine is gone")],
    )
    if current is None:
        automation.create()
        return "created"
    automation.id = current.id
    automation.update()
    return "updated"
