"""Deployments. `register` is `flywheel deploy`: everything in deployments/prefect.yaml on work
pools, with the run configuration filled in. `annotation_deployments` are the two that
`flywheel serve` serves in its own process (no work pools):

    reward-model-retrain/on-batch-landed   triggered by flywheel.batch.landed of this lake,
                                           debounced; one run at a time
    annotation-inbox/poll-incoming         every `poll_seconds`, ingests files dropped under
                                           <lake>/incoming/
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from flywheel.config import FlywheelConfig
from flywheel.errors import FlywheelError
from flywheel.flows.annotation import inbox, retrain
from flywheel.lake.store import Lake
from flywheel.tasks.events import ensure_crash_automation, ensure_resume_automation, retrain_trigger

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"


def annotation_deployments(config: FlywheelConfig, debounce_seconds: int = 600,
                           poll_seconds: int = 300) -> list:
    params = {"config": config.model_dump(mode="json")}
    on_batch = retrain.to_deployment(
        name="on-batch-landed",
        parameters=params,
        triggers=[retrain_trigger(Lake(config.lake).uri, debounce_seconds, params)],
        concurrency_limit=1,
        description="Retrain the reward model when annotation batches land in " + config.lake,
    )
    poll = inbox.to_deployment(
        name="poll-incoming",
        parameters=params,
        interval=poll_seconds,
        description="Ingest batch files dropped under the lake's incoming/ folder",
    )
    return [on_batch, poll]


def filled(spec: dict, config: FlywheelConfig) -> dict:
    """prefect.yaml's deployments with the whole config (its lake made absolute) as every
    `config` parameter and the lake in every trigger's match."""
    lake = Lake(config.lake).uri
    params = {**config.model_dump(mode="json"), "lake": lake}
    for d in spec["deployments"]:
        for holder in [d, *d.get("triggers", [])]:
            if "config" in holder.get("parameters", {}):
                holder["parameters"]["config"] = params
            if "flywheel.lake" in holder.get("match", {}):
                holder["match"]["flywheel.lake"] = lake
    return spec


def _run(argv: list[str], what: str, env: dict) -> str:
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise FlywheelError(f"{what} failed (exit status {proc.returncode}):\n"
                            + (proc.stdout + proc.stderr).strip()[-3000:])
    return proc.stdout


def register(config: FlywheelConfig, api_url: str, prefect_file: Path = PREFECT_FILE,
             gpu_slots: int = 1, unresponsive_after: int = 90) -> list[str]:
    """`flywheel deploy`: the work pools, queues and gpu-slots limit (infra/bootstrap.py), every
    deployment of `prefect_file` with `config` (`prefect deploy --all`), the automation that
    resumes an iteration when its batch lands, and the one that marks a run Crashed when its
    heartbeats stop for `unresponsive_after` seconds. Safe to run again. Returns what it did, a
    line each."""
    try:
        spec = yaml.safe_load(Path(prefect_file).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise FlywheelError(f"cannot read {prefect_file}: {err}") from None
    env = {**os.environ, "PREFECT_API_URL": api_url}
    bin_dir = Path(sys.executable).parent
    lake = Lake(config.lake)
    # the lake blocks are for remote lakes (a local folder is only shared by one machine)
    boot = [] if lake.local else ["--lake", lake.uri]
    lines = _run([sys.executable, str(ROOT / "infra" / "bootstrap.py"), *boot, "--gpu-slots",
                  str(gpu_slots)], "infra/bootstrap.py", env).splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prefect.yaml"
        path.write_text(yaml.safe_dump(filled(spec, config), sort_keys=False))
        _run([str(bin_dir / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file",
              str(path)], "prefect deploy --all", env)
    lines += [f"deployment {d['name']} of {d['entrypoint']}: applied"
              for d in spec["deployments"]]
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        lines.append(f"automation resume-iteration-on-batch-landed: {ensure_resume_automation()}")
        lines.append("automation crash-unresponsive-runs: "
                     + ensure_crash_automation(unresponsive_after))
    return lines
