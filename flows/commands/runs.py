"""Running the loop and looking at it: `flywheel demo`, `flywheel run`, `flywheel status`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter, validators

from flywheel.config import FlywheelConfig
from flywheel.errors import FlywheelError
from flywheel.flows.commands.common import (
    ConfigOpt,
    JsonOpt,
    LakeOpt,
    existing_lake,
    load,
    print_json,
)

BackendOpt = Annotated[Literal["vllm", "transformers"] | None,
                       Parameter(help="override the sampling backend")]
KeepOpt = Annotated[bool, Parameter(help="leave the local Prefect server running afterwards")]


def _run_flow(cfg: FlywheelConfig, iterations: int | None, keep_server: bool) -> int:
    """`iterations` runs of the demo flow, or (None) one weekly-iteration flow run."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.flows.demo import demo as demo_flow
    from flywheel.flows.server import local_server
    from flywheel.flows.weekly import weekly_iteration
    from flywheel.policy.sampling import close_samplers
    from flywheel.stages.common import preflight

    lake = preflight(cfg)
    with local_server(keep=keep_server) as api_url:
        print(f"Prefect server: {api_url.removesuffix('/api')} (runs appear under Flow Runs)")
        with temporary_settings({PREFECT_API_URL: api_url}):
            if iterations is None:
                try:
                    results = [weekly_iteration(cfg)]
                finally:
                    close_samplers()
            else:
                results = demo_flow(cfg, iterations)
    for r in results:
        verdict = "promoted" if r["promoted"] else "rolled back"
        print(f"iteration {r['iteration']}: {verdict} ({r['decision']}); report {r['report_uri']}")
    print(f"lake: {lake.uri}  (inspect with `flywheel status --lake {lake.uri}`)")
    if not keep_server:
        print("to browse the runs later: `prefect server start`, then http://127.0.0.1:4200")
    return 0


def demo(*, iterations: Annotated[int, Parameter(validator=validators.Number(gte=1),
                                                 help="iterations to run")] = 2,
         fresh: Annotated[bool, Parameter(help="delete the (local) lake first")] = False,
         config: Annotated[str | None, Parameter(
             help="YAML config (default: the packaged demo config)")] = None,
         lake: Annotated[str | None, Parameter(
             help="override the config's lake (default: ./flywheel-demo/lake)")] = None,
         backend: BackendOpt = None, keep_server: KeepOpt = False) -> int:
    """Run N iterations of the loop on the embedded default.

    A local Prefect server is started for the run. The demo names its own config and lake
    (./flywheel-demo/lake); it ignores ./flywheel.yaml, FLYWHEEL_CONFIG and FLYWHEEL_LAKE.

    Example: flywheel demo --iterations 2 --fresh
    """
    cfg = load(config, lake, demo=True,
               overrides={"sampling.backend": backend} if backend else None)
    if fresh:
        if "://" in cfg.lake:
            raise FlywheelError(f"--fresh only removes local lakes, not {cfg.lake}")
        shutil.rmtree(cfg.lake, ignore_errors=True)
    return _run_flow(cfg, iterations, keep_server)


def run(*, config: ConfigOpt = None, lake: LakeOpt = None, backend: BackendOpt = None,
        keep_server: KeepOpt = False) -> int:
    """Run one weekly iteration with a config.

    Against a local Prefect server started for the run, or the one PREFECT_API_URL names.

    Example: flywheel run --config flywheel.yaml
    """
    cfg = load(config, lake, overrides={"sampling.backend": backend} if backend else None)
    return _run_flow(cfg, None, keep_server)


def status(*, config: ConfigOpt = None, lake: LakeOpt = None, json: JsonOpt = False) -> int:
    """Iterations, batches, reward models and policies of a lake.

    Example: flywheel status --lake ./flywheel-demo/lake
    """
    from flywheel.lake.catalog import format_status
    from flywheel.lake.catalog import status as lake_status

    uri = load(config, lake).lake
    if "://" not in uri and not Path(uri).exists():
        raise FlywheelError(f"no lake at {uri}; run `flywheel demo` first or pass --lake")
    report = lake_status(existing_lake(uri, read_only=True))
    if json:
        print_json(report)
    else:
        print(format_status(report))
    return 0
