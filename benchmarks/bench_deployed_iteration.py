"""One iteration of the demo config two ways, side by side in one run:

- in-process: `flywheel run` (every stage a task of one process, a local Prefect server on SQLite);
- deployed: the production set-up on this machine: `prefect server start` on PostgreSQL (a
  throwaway cluster of the distribution's package, tests/postgres.py), `flywheel deploy`, one
  process worker per pool, the run started by hand (`prefect deployment run`); each heavy stage
  its own flow run and process.

    .venv/bin/python benchmarks/bench_deployed_iteration.py [--config deployments/demo.yaml]

Writes benchmarks/results/deployed_iteration.md: wall time of each, the stage times each
recorded, and the deployed stage flow runs as the server's PostgreSQL database holds them.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _machine import describe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from postgres import local_postgres  # noqa: E402
from servers import free_port  # noqa: E402

from flywheel.flows.server import healthy  # noqa: E402
from flywheel.lake.store import Lake  # noqa: E402

BIN = Path(sys.executable).parent
OUT = Path(__file__).parent / "results" / "deployed_iteration.md"


def _stage_seconds(lake: str) -> dict:
    (row,) = Lake.open(lake).rows("iterations")
    return row, json.loads(row["metrics"])["stage_seconds"]


def in_process(config: Path, work: Path) -> tuple[float, dict, dict]:
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "flywheel"), "run", "--config", str(config), "--lake",
                    str(work / "lake")], check=True, cwd=ROOT, start_new_session=True,
                   env={**os.environ, "PREFECT_HOME": str(work / "prefect")})
    return time.perf_counter() - t0, *_stage_seconds(str(work / "lake"))


def deployed(config: Path, work: Path) -> tuple[float, dict, dict, list[str], str]:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    procs = []
    with local_postgres() as pg:
        env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PREFECT_API_URL": api,
               "PREFECT_API_DATABASE_CONNECTION_URL": pg.database("prefect"),
               "PREFECT_WORKER_QUERY_SECONDS": "2"}

        def start(name, argv):
            log = open(work / f"{name}.log", "ab")
            procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=ROOT, start_new_session=True))

        try:
            start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)])
            deadline = time.monotonic() + 180
            while not healthy(api):
                if time.monotonic() > deadline:
                    sys.exit(f"the Prefect server did not start; see {work / 'server.log'}")
                time.sleep(1)
            cfg = yaml.safe_load(config.read_text())
            cfg["lake"] = str(work / "lake")
            (work / "config.yaml").write_text(yaml.safe_dump(cfg))
            subprocess.run([str(BIN / "flywheel"), "deploy", "--config", str(work / "config.yaml")],
                           env=env, cwd=ROOT, check=True, capture_output=True)
            for pool in ("cpu", "gpu"):
                start(f"worker-{pool}", [str(BIN / "prefect"), "worker", "start", "--pool", pool,
                                         "--type", "process"])
            t0 = time.perf_counter()
            subprocess.run([str(BIN / "prefect"), "deployment", "run", "weekly-iteration/weekly"],
                           env=env, cwd=ROOT, check=True, capture_output=True)
            while True:
                state = pg.query("prefect", "select state_type from flow_run where name = "
                                 "'iteration-1'")
                if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                    break
                if time.perf_counter() - t0 > 3600:
                    sys.exit("the deployed iteration did not finish within an hour")
                time.sleep(5)
            wall = time.perf_counter() - t0
            if state != "COMPLETED":
                sys.exit(f"the deployed iteration ended {state}; see {work}/*.log")
            runs = pg.query("prefect", "select name, state_type, round(extract(epoch from "
                            "(end_time - start_time))::numeric, 1) from flow_run where name "
                            "like 'iteration-%' order by start_time").splitlines()
            version = pg.query("prefect", "select version()").split(" on ")[0]
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    return wall, *_stage_seconds(str(work / "lake")), runs, version


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=ROOT / "deployments" / "demo.yaml")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-deployed-") as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        load0 = os.getloadavg()[0]
        wall_a, row_a, stages_a = in_process(args.config, Path(tmp) / "a")
        wall_b, row_b, stages_b, runs, version = deployed(args.config, Path(tmp) / "b")
        load1 = os.getloadavg()[0]
    shown = args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config
    lines = [
        "# One demo iteration: in one process vs deployed on PostgreSQL with workers",
        "",
        f"Machine: {describe()}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"1-minute load average {load0:.1f} at the start, {load1:.1f} at the end.",
        f"Config: `{shown}` (one iteration each, fresh lakes). Deployed: {version}, "
        "`prefect server start`, `flywheel deploy`, one process worker on `cpu` and one on "
        "`gpu`, started by `prefect deployment run weekly-iteration/weekly`.",
        "",
        "| stage | in-process (s) | deployed (s) | deployed / in-process |",
        "|---|---|---|---|",
        *[f"| {k} | {stages_a[k]:.1f} | {stages_b.get(k, float('nan')):.1f} | "
          f"{stages_b.get(k, float('nan')) / stages_a[k]:.2f} |" for k in stages_a],
        f"| **whole iteration (wall)** | {wall_a:.1f} | {wall_b:.1f} | {wall_b / wall_a:.2f} |",
        "",
        "In-process wall time includes starting the local Prefect server; deployed wall time "
        "runs from `prefect deployment run` to the parent run's final state (workers already "
        "polling). Decisions: in-process " + row_a["decision"] + "; deployed "
        + row_b["decision"] + ".",
        "",
        "Deployed flow runs as the server's database holds them (name | state | seconds):",
        "",
        "```",
        *runs,
        "```",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
