"""deployments/prefect.yaml against the flows and the pools it names, `flywheel deploy`'s filling
of the config, the policy-update dispatch and its PPO hook, and the command line's commands.
The deployed runs themselves are in tests/test_deployed_slow.py."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from flywheel.errors import ConfigError
from flywheel.flows import stages
from flywheel.flows.deploy import PREFECT_FILE, filled
from flywheel.lake.store import Lake
from flywheel.stages import plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(PREFECT_FILE.read_text())


def _flow_of(entrypoint: str):
    path, name = entrypoint.split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def _deployment(spec: dict, full_name: str) -> dict:
    flow_name, name = full_name.split("/")
    (d,) = [d for d in spec["deployments"]
            if d["name"] == name and _flow_of(d["entrypoint"]).name == flow_name]
    return d


def test_every_entrypoint_is_a_flow_on_a_pool_and_queue_that_bootstrap_creates(spec):
    boot_spec = importlib.util.spec_from_file_location("infra_bootstrap",
                                                       ROOT / "infra" / "bootstrap.py")
    bootstrap = importlib.util.module_from_spec(boot_spec)
    boot_spec.loader.exec_module(bootstrap)
    names = set()
    for d in spec["deployments"]:
        flow = _flow_of(d["entrypoint"])
        names.add(f"{flow.name}/{d['name']}")
        pool = d["work_pool"]
        assert (pool["name"], pool["work_queue_name"]) in bootstrap.QUEUES, d["name"]
        assert set(d.get("parameters", {})) <= set(flow.parameters.properties), d["name"]
    assert names == {"weekly-iteration/weekly", "stage-sample-for-annotation/gpu",
                     "stage-train-reward-models/gpu", "stage-policy-update/gpu",
                     "stage-evaluate/gpu",
                     "reward-model-retrain/on-batch-landed", "annotation-inbox/poll-incoming"}
    assert bootstrap.GPU_SLOTS == stages.GPU_SLOTS


def test_weekly_schedule_concurrency_and_heavy_stages_on_the_gpu_pool(spec):
    weekly = _deployment(spec, "weekly-iteration/weekly")
    (schedule,) = weekly["schedules"]
    assert schedule["cron"] == "0 6 * * 1" and schedule["timezone"] == "America/New_York"
    assert weekly["concurrency_limit"]["limit"] == 1
    assert weekly["work_pool"]["name"] == "cpu"
    assert weekly["parameters"]["stages"] == "deployments"
    for name, queue in ((stages.SAMPLING, "default"), (stages.REWARD_MODELS, "heavy"),
                        (stages.POLICY_UPDATE, "heavy"), (stages.EVALUATE, "default")):
        d = _deployment(spec, f"{name}/{stages.DEPLOYMENT}")
        assert (d["work_pool"]["name"], d["work_pool"]["work_queue_name"]) == ("gpu", queue)
    (trigger,) = _deployment(spec, "reward-model-retrain/on-batch-landed")["triggers"]
    assert trigger["expect"] == ["flywheel.batch.landed"]
    assert trigger["parameters"]["batch_id"] == "{{ event.resource.name }}"
    (requested,) = weekly["triggers"]
    assert requested["expect"] == ["flywheel.iteration.requested"]
    assert requested["parameters"]["stages"] == "deployments"


def test_every_deployment_sends_heartbeats_for_the_crash_automation(spec):
    for d in spec["deployments"]:
        assert "flywheel" in d["tags"], d["name"]  # what the automation watches
        beat = int(d["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])
        assert 30 <= beat < 60, d["name"]  # 60 s is the shortest --unresponsive-after


def test_deploy_fills_the_config_and_the_lake_everywhere(spec, tiny_config):
    out = filled(yaml.safe_load(PREFECT_FILE.read_text()), tiny_config)
    lake = Lake(tiny_config.lake).uri
    configs = [h["parameters"]["config"] for d in out["deployments"]
               for h in [d, *d.get("triggers", [])] if "config" in h.get("parameters", {})]
    assert len(configs) == 5  # weekly and its trigger, retrain and its trigger, inbox
    assert all(c == {**tiny_config.model_dump(mode="json"), "lake": lake} for c in configs)
    (trigger,) = _deployment(out, "reward-model-retrain/on-batch-landed")["triggers"]
    assert trigger["match"]["flywheel.lake"] == lake
    (requested,) = _deployment(out, "weekly-iteration/weekly")["triggers"]
    assert requested["match"]["flywheel.lake"] == lake


def _readme_job_variables() -> list[dict]:
    """The job-variable examples of deployments/README.md, "Ranks and nodes"."""
    section = (ROOT / "deployments" / "README.md").read_text().split("## Ranks and nodes")[1]
    section = section.split("\n## ")[0]
    blocks = re.findall(r"\n\n((?:    .*\n)+)", section)
    return [yaml.safe_load("\n".join(line[4:] for line in b.splitlines()))["job_variables"]
            for b in blocks if b.startswith("    job_variables:")]


def test_training_deployments_take_their_ranks_from_job_variables(spec, monkeypatch):
    """The training deployments share job variables of their own (others keep one process), and
    the README's examples set the variables flywheel/config/resources.py reads: as a process
    worker applies them, a stage's empty `resources` plan 1 x 8 and 2 x 8 ranks; a config that
    names its ranks keeps them."""
    from flywheel.config.resources import NODES_ENV, RANKS_ENV, RDZV_ENV, ResourcesConfig

    training = {f"{stages.REWARD_MODELS}/gpu", f"{stages.POLICY_UPDATE}/gpu",
                "reward-model-retrain/on-batch-landed"}
    for d in spec["deployments"]:
        name = f"{_flow_of(d['entrypoint']).name}/{d['name']}"
        heavy = d["work_pool"]["work_queue_name"] == "heavy"
        assert heavy == (name in training), name
        assert (d["work_pool"]["job_variables"] is
                spec["definitions"]["training_job_variables"]) == heavy, name
    one, two, k8s = _readme_job_variables()
    assert set(one["env"]) - {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY"} == {RANKS_ENV}
    assert set(two["env"]) - {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY"} == {NODES_ENV, RANKS_ENV,
                                                                       RDZV_ENV}
    for variables, planned in ((one, (1, 8)), (two, (2, 8))):
        for key in (NODES_ENV, RANKS_ENV, RDZV_ENV):
            monkeypatch.delenv(key, raising=False)
        for key, value in variables["env"].items():
            monkeypatch.setenv(key, value)
        assert ResourcesConfig().plan() == planned
        assert ResourcesConfig(ranks_per_node=4).plan() == (planned[0], 4)
    # the Kubernetes pool's variables are the train-nodes template's
    template = json.loads((ROOT / "infra" / "k8s" / "train-nodes-job-template.json").read_text())
    assert set(k8s) <= set(template["variables"]["properties"])
    assert (k8s["nodes"], k8s["gpus_per_node"]) == (2, 8)


def test_policy_update_methods_follow_the_schedule(tiny_config):
    from flywheel.config import validate_config

    assert tiny_config.policy_update.for_iteration(1) == ["rejection_sampling"]
    cfg = validate_config({"policy_update": {
        "schedule": {"2": ["rejection_sampling", "ppo"], 3: ["rrhf"]}}})
    assert cfg.policy_update.for_iteration(2) == ["rejection_sampling", "ppo"]
    assert cfg.policy_update.for_iteration(3) == ["rrhf"]
    assert cfg.policy_update.for_iteration(4) == ["rejection_sampling"]


def test_an_unknown_update_sequence_is_a_config_error():
    from flywheel.config import validate_config

    with pytest.raises(ConfigError, match=r"schedule\[2\] = \['ppo', 'rejection_sampling'\] "
                       "is not a policy update"):
        validate_config({"policy_update": {"schedule": {2: ["ppo", "rejection_sampling"]}}})


def test_a_ppo_minibatch_larger_than_its_step_is_a_config_error():
    from flywheel.config import validate_config

    with pytest.raises(ConfigError, match="minibatch .8. must not exceed prompts_per_step .4."):
        validate_config({"policy_update": {"ppo": {"prompts_per_step": 4, "minibatch": 8}}})


def test_awaited_batches_follow_the_batch_name(tiny_config):
    assert plan.awaited_batches(tiny_config, 3) == ["iteration-0003", "review-iteration-0003"]
    tiny_config.annotation.batch_name = "week-{iteration}"
    assert plan.awaited_batches(tiny_config, 12)[0] == "week-12"


def test_a_bad_batch_name_is_a_config_error():
    from flywheel.config import validate_config

    with pytest.raises(ConfigError, match="annotation: batch_name must be a name"):
        validate_config({"annotation": {"batch_name": "week-{week}"}})


def test_cli_gathers_the_commands(capsys):
    from flywheel.flows.cli import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("init", "demo", "run", "ingest", "status", "lineage", "deploy", "serve",
                    "trigger"):
        assert f"│ {command} " in text, command


def test_deploy_without_a_server_names_the_fix(tmp_path, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.flows.cli import main

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert main(["deploy", "--lake", str(tmp_path / "lake")]) == 2
    assert "no Prefect server answers at http://127.0.0.1:9/api" in capsys.readouterr().err


def test_trigger_without_a_server_names_the_fix(tmp_path, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.flows.cli import main

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert main(["trigger", "--lake", str(tmp_path / "lake")]) == 2
    assert "no Prefect server answers at http://127.0.0.1:9/api" in capsys.readouterr().err


def test_crash_automation_is_created_once_and_follows_its_window(prefect_server):
    from prefect.automations import Automation

    from flywheel.tasks.events import CRASH_AUTOMATION, ensure_crash_automation

    try:
        Automation.read(name=CRASH_AUTOMATION).delete()
    except ValueError:
        pass
    assert ensure_crash_automation(90) == "created"
    assert ensure_crash_automation(90) == "unchanged"
    assert ensure_crash_automation(120) == "updated"
    automation = Automation.read(name=CRASH_AUTOMATION)
    assert automation.trigger.within.total_seconds() == 120
    assert "prefect.flow-run.Suspended" in automation.trigger.expect
    # the window opens on the server's Running event too: a run killed before its first
    # heartbeat was sent is still marked Crashed
    assert automation.trigger.after == {"prefect.flow-run.heartbeat", "prefect.flow-run.Running"}
    # only the flywheel's deployments beat every 30 s; other runs are not watched
    related = automation.trigger.match_related
    (related,) = related if isinstance(related, list) else [related]
    assert related.model_dump() == {"prefect.resource.role": "tag",
                                    "prefect.resource.id": "prefect.tag.flywheel"}
    assert automation.actions[0].state.value == "CRASHED"


def test_trigger_needs_the_weekly_deployment(prefect_server, tmp_path, capsys):
    from flywheel.flows.cli import main

    assert main(["trigger", "--lake", str(tmp_path / "lake")]) == 2
    assert "no weekly-iteration/weekly deployment" in capsys.readouterr().err
