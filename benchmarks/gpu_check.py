"""Every training stage on all the GPUs of this machine, with the demo's small models: two
iterations of `flywheel demo` whose training sections each set `resources.ranks_per_node` to the
GPU count (reward models in both; rejection sampling then PPO in iteration 1, RRHF in iteration
2: one iteration runs at most one fine-tune and PPO, policy_update.METHOD_SEQUENCES). Records the
device, each stage's wall time and each training job's peak GPU memory per rank (the `ranks` of
the lake rows' metrics) in benchmarks/results/gpu_check.md.

    .venv/bin/python benchmarks/gpu_check.py [--lake ./gpu-check/lake] [--out FILE]
    .venv/bin/python benchmarks/gpu_check.py --print-config [--gpus 8]   # no GPU needed

It refuses to run where torch sees no CUDA GPU (exit status 2). One rank (a one-GPU machine)
trains in the stage's own process, which records no per-rank memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "deployments" / "demo.yaml"
OUT = Path(__file__).parent / "results" / "gpu_check.md"
ITERATIONS = 2
TRAINING = ("reward_model", "rejection_sampling", "policy_update.rrhf", "policy_update.ppo")


def check_config(gpus: int, lake: str) -> dict:
    """deployments/demo.yaml, cut to a check: every training section on `gpus` ranks of one node,
    all three policy-update methods over two iterations, one epoch, two PPO steps, bf16 vLLM."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg.update(name="gpu-check", lake=lake)
    cfg["sampling"].update(dtype="bfloat16", prompts_per_criterion=32)
    cfg["reward_model"]["epochs"] = 1
    cfg["rejection_sampling"]["epochs"] = 1
    pu = cfg["policy_update"]
    pu["schedule"] = {1: ["rejection_sampling", "ppo"], 2: ["rrhf"]}
    pu["ppo"].update(steps=2, prompts_per_step=16, minibatch=8)
    for path in TRAINING:
        section = cfg
        for key in path.split("."):
            section = section.setdefault(key, {})
        section["resources"] = {"nodes": 1, "ranks_per_node": gpus}
    return cfg


def _validated(cfg: dict) -> dict:
    from flywheel.config import validate_config

    validate_config(cfg, "gpu_check config")
    return cfg


def ranks_of(metrics: dict) -> list[dict] | None:
    """The per-rank records (`rank`, `peak_memory_bytes`, ...) of a lake row's metrics, wherever
    the stage put its training metrics (reward models: `training`; rejection sampling:
    `finetune`; RRHF: `rrhf`; PPO: top level); None when it trained in one process."""
    for holder in (metrics, *(v for v in metrics.values() if isinstance(v, dict))):
        if isinstance(holder.get("ranks"), list):
            return holder["ranks"]
    return None


def _device() -> str:
    import torch

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30).stdout.strip().splitlines()
    except OSError:
        smi = []
    names = smi or [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} x {names[0]}" if len(set(names)) == 1 else "; ".join(names)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def report(lake_uri: str, device: str, gpus: int, wall: float, command: str) -> list[str]:
    from flywheel.lake.store import Lake

    lake = Lake.open(lake_uri)
    lines = [f"# Every training stage on {gpus} GPU(s)", "",
             f"Device: {device}. Command: `{command}` ({wall:.0f} s in all). Config: "
             "deployments/demo.yaml with each training section on "
             f"`resources: {{nodes: 1, ranks_per_node: {gpus}}}`, bf16 vLLM, one epoch, two PPO "
             "steps; iteration 1 rejection sampling then PPO, iteration 2 RRHF.", "",
             "## Stage wall time (s)", "", "| iteration | stage | seconds |", "|---|---|---|"]
    for row in sorted(lake.rows("iterations"), key=lambda r: r["iteration"]):
        for stage, s in json.loads(row["metrics"])["stage_seconds"].items():
            lines.append(f"| {row['iteration']} | {stage} | {s:.1f} |")
    lines += ["", "## Peak GPU memory per rank (GiB)", "",
              "| iteration | training job | ranks | peak per rank | optimizer state per rank |",
              "|---|---|---|---|---|"]
    jobs = [(r["iteration"], f"reward model: {r['criterion']}", r["metrics"])
            for r in lake.rows("reward_models")]
    jobs += [(r["iteration"], r["method"], r["metrics"]) for r in lake.rows("policies")
             if r["method"] != "base"]
    for iteration, name, metrics in sorted(jobs, key=lambda j: (j[0], j[1])):
        ranks = ranks_of(json.loads(metrics or "{}"))
        if not ranks:
            lines.append(f"| {iteration} | {name} | 1 (in process) | n/a | n/a |")
            continue
        peaks = " / ".join(_gib(r["peak_memory_bytes"]) for r in ranks)
        optim = " / ".join(_gib(r.get("optimizer_state_bytes") or 0) for r in ranks)
        lines.append(f"| {iteration} | {name} | {len(ranks)} | {peaks} | {optim} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lake", default="./gpu-check/lake", help="a local lake, emptied first")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--print-config", action="store_true",
                   help="print the config the check runs (with --gpus ranks) and exit")
    p.add_argument("--gpus", type=int, help="ranks per node (default: the visible GPUs)")
    args = p.parse_args(argv)
    if args.print_config:
        print(yaml.safe_dump(_validated(check_config(args.gpus or 8, args.lake)),
                             sort_keys=False), end="")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible to torch here; run it on a machine with "
              "NVIDIA GPUs and the CUDA build of the project (infra/gpu.Dockerfile), or pass "
              "--print-config to see the config it would run", file=sys.stderr)
        return 2
    gpus = args.gpus or torch.cuda.device_count()
    if "://" in args.lake:
        print(f"gpu_check: --lake must be a local folder (it is emptied first), not {args.lake}",
              file=sys.stderr)
        return 2
    shutil.rmtree(args.lake, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gpu-check.yaml"
        config.write_text(yaml.safe_dump(_validated(check_config(gpus, args.lake))))
        argv = [str(Path(sys.executable).with_name("flywheel")), "demo", "--iterations",
                str(ITERATIONS), "--fresh", "--config", str(config)]
        start = time.monotonic()
        done = subprocess.run(argv, cwd=ROOT)
        wall = time.monotonic() - start
    if done.returncode:
        print(f"gpu_check: `flywheel demo` failed (exit status {done.returncode}); its output "
              "is above", file=sys.stderr)
        return done.returncode
    command = f"flywheel demo --iterations {ITERATIONS} --fresh --config gpu-check.yaml"
    lines = report(args.lake, _device(), gpus, wall, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
