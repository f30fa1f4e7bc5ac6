"""Wall time per stage of the demo on this machine.

    .venv/bin/python benchmarks/bench_demo_stages.py [--lake ./flywheel-demo/lake]

Reads the stage times each iteration recorded in the lake (run `make demo` first, or pass
--run to run `flywheel demo --iterations 2 --fresh` here), and writes
benchmarks/results/demo_stages.md.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _machine import describe

from flywheel.lake.store import Lake

OUT = Path(__file__).parent / "results" / "demo_stages.md"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lake", default="./flywheel-demo/lake")
    ap.add_argument("--run", action="store_true", help="run the 2-iteration demo first")
    args = ap.parse_args()
    total_wall = None
    if args.run:
        t0 = time.perf_counter()
        exe = Path(sys.executable).with_name("flywheel")
        # its own session: the demo's engine processes are shut down without touching this one
        subprocess.run([str(exe), "demo", "--iterations", "2", "--fresh", "--lake", args.lake],
                       check=True, start_new_session=True)
        total_wall = time.perf_counter() - t0
    rows = sorted(Lake.open(args.lake).rows("iterations"), key=lambda r: r["iteration"])
    if not rows:
        sys.exit(f"no iterations in {args.lake}; run `make demo` or pass --run")
    stages = list(json.loads(rows[0]["metrics"])["stage_seconds"])
    header = "| stage | " + " | ".join(f"iteration {r['iteration']} (s)" for r in rows) + " |"
    lines = [
        "# Demo wall time per stage",
        "",
        f"Machine: {describe()}. Config: deployments/demo.yaml (SmolLM2-135M-Instruct policy and "
        "reward-model backbone, vLLM CPU sampling, 48 train and 16 held-out prompts, K=4).",
        "Each stage's time includes loading its models (a vLLM engine start is about a minute "
        "here).",
        "",
        header,
        "|---|" + "---|" * len(rows),
    ]
    for s in stages:
        vals = [json.loads(r["metrics"])["stage_seconds"].get(s, 0.0) for r in rows]
        lines.append(f"| {s} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    totals = [sum(json.loads(r["metrics"])["stage_seconds"].values()) for r in rows]
    lines.append("| **total** | " + " | ".join(f"{t:.1f}" for t in totals) + " |")
    if total_wall:
        lines += ["", f"Whole `flywheel demo --iterations 2` command: {total_wall:.0f} s "
                  "(includes the local Prefect server start)."]
    lines.append("")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
