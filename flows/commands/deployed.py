"""Flywheel on a Prefect server: `flywheel serve` (the annotation deployments in this process),
`flywheel deploy` (every deployment of deployments/prefect.yaml on work pools) and
`flywheel trigger` (start the deployed weekly iteration now)."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from flywheel.errors import FlywheelError
from flywheel.flows.commands.common import ConfigOpt, LakeOpt, load
from flywheel.flows.commands.where import packaged


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    from flywheel.flows.server import DEFAULT_URL

    return PREFECT_API_URL.value() or DEFAULT_URL


def serve(*, config: ConfigOpt = None, lake: LakeOpt = None,
          debounce: Annotated[int, Parameter(
              help="seconds batches may keep landing before one retrain starts")] = 600,
          poll: Annotated[int, Parameter(help="seconds between inbox polls")] = 300) -> int:
    """Serve the retrain-on-batch and inbox deployments here.

    The reward models retrain when batches land (debounced); files dropped under the lake's
    incoming/ folder are ingested. A local Prefect server, until Ctrl-C.

    Example: flywheel serve --config flywheel.yaml --debounce 60
    """
    from prefect import serve as prefect_serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.flows.deploy import annotation_deployments
    from flywheel.flows.server import local_server

    cfg = load(config, lake)
    with local_server(keep=True) as api_url, temporary_settings({PREFECT_API_URL: api_url}):
        print(f"Prefect server: {api_url.removesuffix('/api')}; serving the annotation "
              f"deployments of lake {cfg.lake} (Ctrl-C to stop)")
        prefect_serve(*annotation_deployments(cfg, debounce, poll))
    return 0


def deploy(*, config: ConfigOpt = None, lake: LakeOpt = None,
           prefect_file: Annotated[Path | None, Parameter(
               help="deployment definitions (default: the packaged deployments/prefect.yaml)")
           ] = None,
           gpu_slots: Annotated[int, Parameter(
               help="GPU stages that may run at once (the gpu-slots limit)")] = 1,
           unresponsive_after: Annotated[int, Parameter(
               help="seconds without a heartbeat after which a running flow run is marked "
               "Crashed, so it can be retried (at least 60)")] = 90) -> int:
    """Register every deployment on a Prefect server; safe to rerun.

    The weekly schedule, the stage deployments on the cpu and gpu work pools, the batch-landed
    and iteration-requested triggers, the gpu-slots limit and the resume and crash automations,
    on the server PREFECT_API_URL names.

    Example: flywheel deploy --config flywheel.yaml --gpu-slots 2
    """
    from flywheel.flows.deploy import register
    from flywheel.flows.server import healthy

    cfg = load(config, lake)
    api_url = _api_url()
    if not healthy(api_url):
        raise FlywheelError(f"no Prefect server answers at {api_url}; start one (`prefect server "
                            "start`, or `docker compose -f infra/compose.yaml up -d`) or set "
                            "PREFECT_API_URL")
    if unresponsive_after < 60:
        raise FlywheelError("--unresponsive-after must be at least 60 s: runs send a heartbeat "
                            "every 30 s")
    for line in register(cfg, api_url, prefect_file or packaged("prefect.yaml"), gpu_slots,
                         unresponsive_after):
        print(line)
    print(f"registered on {api_url.removesuffix('/api')}; start workers: `prefect worker start "
          "--pool cpu` and `prefect worker start --pool gpu`")
    return 0


def trigger(*, config: ConfigOpt = None, lake: LakeOpt = None,
            note: Annotated[str | None, Parameter(
                help="a note carried in the event's payload")] = None) -> int:
    """Start the deployed weekly iteration of a lake now.

    By the event flywheel.iteration.requested, on the server PREFECT_API_URL names.

    Example: flywheel trigger --config flywheel.yaml --note "new base checkpoint"
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.flows.server import healthy
    from flywheel.lake.store import Lake
    from flywheel.tasks.events import ITERATION_REQUESTED, request_iteration

    uri = Lake(load(config, lake).lake).uri
    api_url = _api_url()
    if not healthy(api_url):
        raise FlywheelError(f"no Prefect server answers at {api_url}; set PREFECT_API_URL to the "
                            "server `flywheel deploy` registered the weekly deployment on")
    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            try:
                client.read_deployment_by_name("weekly-iteration/weekly")
            except Exception:  # ObjectNotFound, or a server without it
                raise FlywheelError(f"{api_url} has no weekly-iteration/weekly deployment; run "
                                    "`flywheel deploy --config FILE` first") from None
        event_id = request_iteration(uri, getpass.getuser(), note or "")
    print(f"event {ITERATION_REQUESTED} sent ({event_id}) for lake {uri}: the weekly deployment "
          "registered for this lake starts an iteration (watch Flow Runs in the UI)")
    return 0
