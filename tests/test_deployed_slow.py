"""The weekly iteration as deployed, in the production configuration: a real `prefect server
start` on PostgreSQL (the distribution's package, a throwaway cluster: tests/postgres.py),
`flywheel deploy` of deployments/prefect.yaml with the tiny config, real process workers on the
cpu and gpu pools.

- by event: `flywheel trigger` sends flywheel.iteration.requested, the weekly deployment's trigger
  starts a run, the workers run it and its stage deployments to completion, and the server's
  PostgreSQL database holds the finished runs;
- resume: started by hand (`prefect deployment run`), the workers (and the flow-run processes
  they started) are killed while the reward-model stage runs; the crash automation marks the
  runs Crashed when their heartbeats stop; after a retry of the same flow run on new workers, the
  stages that had finished come back from the cache (not run again) and the lake holds every row
  once;
- human mode: the iteration exports its pairs and suspends, holding no worker process; a labelled
  batch ingested with `flywheel ingest` sends the batch-landed event, the resume automation
  resumes the run, and it trains on that batch; suspended past the crash automation's window,
  it is not marked Crashed.

A few minutes each on two cores: slow marker."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from postgres import local_postgres
from servers import BIN, PrefectServer, prefect_server, wait_until

from flywheel.lake.store import Lake

pytestmark = pytest.mark.slow
STAGE_TASKS = ("sample-for-annotation", "annotate", "train-reward-models")
UNRESPONSIVE_AFTER = 60  # the crash automation's window (runs beat every 30 s)
_databases = itertools.count(1)


class Cluster:
    """A Prefect server with its own PREFECT_HOME and PostgreSQL database, and workers started
    and killed on demand."""

    def __init__(self, tmp: Path, pg, database: str, server: PrefectServer):
        self.tmp, self.pg, self.database = tmp, pg, database
        self.api = server.api
        self.env = {**server.env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = [server.log]

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.logs.append(log)
        with open(log, "ab") as f:
            proc = subprocess.Popen(argv, env={**self.env, **(env or {})}, stdout=f,
                                    stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=Path(__file__).parents[1])
        self.procs.append(proc)
        return proc

    def workers(self, n: int, gpu_env: dict | None = None) -> list[subprocess.Popen]:
        """A process worker on each pool; `gpu_env` added to the gpu pool's environment (what
        its flow runs inherit, as a GPU machine's worker sets FLYWHEEL_RANKS_PER_NODE)."""
        return [self.start(f"worker-{pool}-{n}", [str(BIN / "prefect"), "worker", "start",
                                                   "--pool", pool, "--type", "process"],
                           env=gpu_env if pool == "gpu" else None)
                for pool in ("cpu", "gpu")]

    def wait(self, predicate, seconds: float, what: str):
        return wait_until(predicate, seconds, what, logs=self.logs)

    def run(self, *argv: str, program: str = "flywheel") -> str:
        proc = subprocess.run([str(BIN / program), *argv], env=self.env, capture_output=True,
                              text=True, cwd=Path(__file__).parents[1])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def sql(self, query: str) -> str:
        """A query on the server's own PostgreSQL database."""
        return self.pg.query(self.database, query)

    def weekly_runs(self) -> list:
        """The weekly deployment's runs, less those its schedule made for the coming Mondays."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

        with self.client() as c:
            weekly = c.read_deployment_by_name("weekly-iteration/weekly")
            runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[weekly.id])))
        return [r for r in runs if not r.auto_scheduled]

    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api}):
            return get_client(sync_client=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process and every process below it, as a lost machine would."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def postgres():
    try:
        with local_postgres() as pg:
            yield pg
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture
def cluster(tmp_path, postgres):
    """A server of the test's own (not shared: the tests kill workers, count every run and
    create the same deployments), on a new database of the module's PostgreSQL."""
    database = f"prefect_{next(_databases)}"
    env = {"PREFECT_API_DATABASE_CONNECTION_URL": postgres.database(database),
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}
    with prefect_server(tmp_path / "prefect", env=env) as server:
        c = Cluster(tmp_path, postgres, database, server)
        try:
            yield c
        finally:
            for p in reversed(c.procs):
                kill_tree(p)


def _deploy(cluster: Cluster, config, tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    out = cluster.run("deploy", "--config", str(path), "--unresponsive-after",
                      str(UNRESPONSIVE_AFTER))
    assert "automation resume-iteration-on-batch-landed: created" in out
    assert "automation crash-unresponsive-runs: created" in out
    return path


def _task_runs(client):
    runs = client.read_task_runs()
    return [t for t in runs if t.name.rsplit("-", 1)[0] in STAGE_TASKS]


def _no_duplicate_ids(lake: Lake) -> dict[str, int]:
    counts = {}
    for table in ("prompts", "samples", "comparisons", "batches", "scores", "reward_models",
                  "policies", "iterations"):
        ids = [r["id"] for r in lake.rows(table)]
        assert len(ids) == len(set(ids)), f"duplicate ids in {table}"
        counts[table] = len(ids)
    return counts


def test_weekly_deployment_runs_on_event_through_workers_on_postgres(cluster, tiny_config,
                                                                     tmp_path):
    """... and every training stage on two ranks: the gpu pool's worker sets
    FLYWHEEL_RANKS_PER_NODE=2, as a machine with two GPUs would, and the reward models, the
    rejection-sampling fine-tune and PPO after it each launch two ranks (gloo on this CPU)."""
    tiny_config.policy_update.schedule = {1: ["rejection_sampling", "ppo"]}
    tiny_config.policy_update.ppo = tiny_config.policy_update.ppo.model_copy(update={
        "steps": 2, "prompts_per_step": 4, "minibatch": 2, "max_new_tokens": 8,
        "learning_rate": 1e-4, "eval_every": 0})
    config_file = _deploy(cluster, tiny_config, tmp_path)
    cluster.workers(1, gpu_env={"FLYWHEEL_RANKS_PER_NODE": "2"})
    out = cluster.run("trigger", "--config", str(config_file), "--note", "test")
    assert "event flywheel.iteration.requested sent" in out

    def finished():
        runs = cluster.weekly_runs()
        return runs[0] if runs and runs[0].state.is_final() else None

    run = cluster.wait(finished, 600, "the iteration the event started")
    assert run.state.is_completed(), run.state
    assert run.created_by and run.created_by.type == "AUTOMATION", run.created_by
    assert len(cluster.weekly_runs()) == 1
    lake = Lake.open(tiny_config.lake)
    (iteration,) = lake.rows("iterations")
    assert iteration["iteration"] == 1
    assert lake.exists("reports/iteration-0001.md")
    ranks = [len(json.loads(r["metrics"])["training"]["ranks"]) for r in lake.rows("reward_models")]
    assert ranks == [2, 2]
    policies = {p["method"]: json.loads(p["metrics"]) for p in lake.rows("policies")}
    assert len(policies["rejection_sampling"]["finetune"]["ranks"]) == 2
    assert len(policies["ppo"]["ranks"]) == 2
    # the server kept it all in PostgreSQL: the iteration and each stage as its own flow run
    names = cluster.sql("select name from flow_run where state_type = 'COMPLETED' "
                        "and name like 'iteration-%' order by name").splitlines()
    assert names == ["iteration-1", "iteration-1-evaluate", "iteration-1-policy-update",
                     "iteration-1-reward-models", "iteration-1-sampling"]
    assert cluster.sql("select count(*) from task_run where name like 'evaluate-%' "
                       "and state_type = 'COMPLETED'") == "1"


def test_killed_iteration_resumes_without_redoing_finished_stages(cluster, tiny_config,
                                                                  tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.states import Scheduled

    _deploy(cluster, tiny_config, tmp_path)
    with cluster.client() as client:
        weekly = client.read_deployment_by_name("weekly-iteration/weekly")
        assert weekly.global_concurrency_limit.limit == 1
        (schedule,) = weekly.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 6 * * 1",
                                                                        "America/New_York")
        assert weekly.parameters["stages"] == "deployments"
        assert weekly.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
        assert client.read_global_concurrency_limit_by_name("gpu-slots").limit == 1
    workers = cluster.workers(1)
    # by hand, as a user does from a shell (or the UI's Run button)
    cluster.run("deployment", "run", "weekly-iteration/weekly", program="prefect")
    (parent,) = cluster.weekly_runs()

    def rm_stage_running():
        with cluster.client() as c:
            runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["iteration-1-reward-models"])))
            return [r for r in runs if r.state and r.state.is_running()]

    (rm_run,) = cluster.wait(rm_stage_running, 420, "the reward-model stage to start")
    for w in workers:
        kill_tree(w)
    lake = Lake.open(tiny_config.lake)
    assert not lake.rows("iterations")

    def crashed():
        with cluster.client() as c:
            states = [c.read_flow_run(i).state for i in (parent.id, rm_run.id)]
        return states if all(s.is_crashed() for s in states) else None

    # nobody tells the server the processes died: their heartbeats stop, the automation acts
    states = cluster.wait(crashed, UNRESPONSIVE_AFTER + 180, "the crash automation")
    assert all("no heartbeat" in (s.message or "") for s in states), states
    with cluster.client() as client:
        before = {t.id: t.state.name for t in _task_runs(client)}
        # the UI's retry: the same flow run scheduled again
        client.set_flow_run_state(parent.id, Scheduled(), force=True)
    cluster.workers(2)

    def finished():
        with cluster.client() as c:
            run = c.read_flow_run(parent.id)
            return run if run.state.is_final() else None

    run = cluster.wait(finished, 420, "the retried iteration")
    assert run.state.is_completed(), run.state
    assert run.run_count == 2
    with cluster.client() as client:
        after = _task_runs(client)
    executed = {name: [t for t in after if t.name.startswith(name) and t.state.name == "Completed"]
                for name in STAGE_TASKS}
    # sampling and annotation finished before the kill: each ran once, the retry took its result
    # from the cache (a new stage flow run: a Cached task run; annotation, in the parent: its
    # finished task run, not run again)
    for name in ("sample-for-annotation", "annotate"):
        assert len(executed[name]) == 1, (name, [(t.name, t.state.name) for t in after])
        assert executed[name][0].id in before
    assert any(t.name.startswith("sample-for-annotation") and t.state.name == "Cached"
               for t in after)
    # the reward models were cut off: trained again, once, by the retry
    assert len(executed["train-reward-models"]) == 1
    assert executed["train-reward-models"][0].id not in before
    counts = _no_duplicate_ids(lake)
    # 4 train prompts x 2 for annotation, K=2 x 4 for rejection sampling, 2 x 2 for evaluation
    assert counts["samples"] == 4 * 2 + 4 * 2 + 2 * 2
    assert counts["iterations"] == 1 and counts["batches"] == 1
    assert counts["reward_models"] == 2
    results = lake.listdir("_prefect/results")
    assert results and all(json.loads(lake.read_bytes(f"_prefect/results/{n}")) for n in results)


def test_human_mode_suspends_until_the_batch_lands(cluster, tiny_config, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.annotation.pairs import week_pairs, write_delivery_jsonl

    tiny_config.annotation.mode = "human"
    config_file = _deploy(cluster, tiny_config, tmp_path)
    workers = cluster.workers(1)
    with temporary_settings({PREFECT_API_URL: cluster.api}):
        parent = run_deployment("weekly-iteration/weekly", timeout=0)

    def suspended():
        with cluster.client() as c:
            run = c.read_flow_run(parent.id)
            assert not run.state.is_final(), run.state
            return run if run.state.name == "Suspended" else None

    run = cluster.wait(suspended, 420, "the iteration to suspend for its batch")
    suspended_at = time.monotonic()
    lake = Lake.open(tiny_config.lake)
    exported = lake.listdir("annotation/exports/iteration-0001")
    assert "label-studio-tasks.json" in exported and "argilla-records.json" in exported
    # suspended, the run holds no process: the workers have no child left
    cluster.wait(lambda: not any(psutil.Process(w.pid).children(recursive=True)
                                 for w in workers), 60, "the suspended run's process to exit")
    assert any(t.startswith("flywheel-awaits:") for t in run.tags)
    assert not lake.rows("comparisons")
    # no heartbeats while suspended, and rightly no crash: waiting is not dying
    time.sleep(max(0.0, suspended_at + UNRESPONSIVE_AFTER + 20 - time.monotonic()))
    with cluster.client() as c:
        assert c.read_flow_run(parent.id).state.name == "Suspended"
    # the labels name the week's prompts; the responses are written out (the tiny model's
    # 8-token answers can coincide, which ingest rightly refuses as identical)
    rows = [{"prompt_id": p["prompt_id"], "response_a": f"A careful, complete answer {i}.",
             "response_b": f"No {i}.", "chosen": "a", "strength": "better",
             "criterion": p["criterion"], "safety_label": "both_safe", "annotator": "ann-1"}
            for i, p in enumerate(week_pairs(lake, 1))]
    assert sorted(r["criterion"] for r in rows) == ["helpfulness"] * 2 + ["safety"] * 2
    labels = tmp_path / "week-1.jsonl"
    labels.write_bytes(write_delivery_jsonl(rows))
    out = cluster.run("ingest", str(labels), "--config", str(config_file), "--batch-id",
                      "iteration-0001")
    assert "event flywheel.batch.landed sent" in out

    def finished():
        with cluster.client() as c:
            r = c.read_flow_run(parent.id)
            return r if r.state.is_final() else None

    run = cluster.wait(finished, 420, "the resumed iteration")
    assert run.state.is_completed(), run.state
    (iteration,) = lake.rows("iterations")
    assert iteration["batch_id"] == "iteration-0001"
    (batch,) = lake.rows("batches")
    assert batch["delivered"] == batch["accepted"] == len(rows)
    rms = lake.rows("reward_models")
    assert {r["criterion"] for r in rms} == {"helpfulness", "safety"}
    assert all("iteration-0001" in json.loads(r["data_mix"])["batches"] for r in rms)
