"""Training on one rank against two: step time, peak memory and optimizer state per rank.

    .venv/bin/python benchmarks/bench_ranks.py [--pairs 96] [--batch-size 8]
        [--micro-batch-size 2] [--max-length 64] [--backbone builtin:all-minilm-l6-v2]
        [--policy builtin:smollm2-135m-instruct] [--examples 32] [--policy-max-length 128]
        [--repeats 2] [--settle 180] [--no-policy] [--quick] [--out PATH]

The reward model (the demo's backbone, deployments/demo.yaml `models.reward_backbone`) trains on
the same HH-RLHF helpfulness pairs with the same config (`fit_reward_model`), its dropout off (a
copy of the backbone's folder with every dropout probability 0: each rank would draw its own
masks, so two ranks would not take one rank's steps), at: 1 rank plain;
1 rank plain with one torch thread (what each of two ranks gets here); 2 ranks plain (gradients
summed); 2 ranks ZeRO-2 (infra/deepspeed/zero2-cpu); 1 and 2 ranks ZeRO-3 in float32 (a copy of
infra/deepspeed/zero3.json with bf16 off, written to a temporary folder). Then the policy
(`finetune_on_ranks`, the demo's policy) fine-tunes on the chosen replies at 1 and 2 ranks
plain. Each run is a fresh process (two ranks: torchrun's; one rank: a child of this script),
so its peak RSS is its own. Per rank: the mean wall time of an optimizer step (the training
loop's `seconds_per_step`: loading and saving excluded), peak RSS, optimizer state bytes, each
as a ratio to the 1-rank plain run, and the last step's loss against that run's. Each run
starts once the CPUs are 90 % idle over 3 s (at most --settle seconds of waiting: other
processes share the machine) and is repeated --repeats times (the reward model; the policy
runs once), the run with the fastest rank-0 step kept. Writes benchmarks/results/ranks.md (or
--out).

On a CPU machine only the ratios mean something (two ranks share its cores: torchrun gives each
one thread); absolute times need a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe
from bench_reward_models import DATA, SETS, load_pairs, split

OUT = Path(__file__).parent / "results" / "ranks.md"
REPO = Path(__file__).resolve().parents[1]
MIB = 2**20


def zero3_fp32(folder: Path) -> str:
    """infra/deepspeed/zero3.json with bf16 off (this CPU emulates bf16), as tests/test_ranks.py
    uses it; the other settings as shipped."""
    from flywheel.training import DEEPSPEED_CONFIGS

    config = json.loads((DEEPSPEED_CONFIGS / "zero3.json").read_text())
    config["bf16"]["enabled"] = False
    path = folder / "zero3-fp32.json"
    path.write_text(json.dumps(config))
    return str(path)


def without_dropout(path: str, folder: Path) -> str:
    """A copy of the model folder `path` (its files linked) whose config sets every dropout
    probability to 0."""
    copy = folder / (Path(path).name + "-no-dropout")
    copy.mkdir()
    for f in Path(path).iterdir():
        if f.name != "config.json":
            (copy / f.name).symlink_to(f.resolve())
    config = json.loads((Path(path) / "config.json").read_text())
    for key, value in config.items():
        if "dropout" in key and isinstance(value, float):
            config[key] = 0.0
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return str(copy)


def idle_share(seconds: float = 3.0) -> float:
    """The share of the machine's CPU time left idle over the next `seconds` (/proc/stat)."""
    def read() -> tuple[int, int]:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    idle0, all0 = read()
    time.sleep(seconds)
    idle1, all1 = read()
    return (idle1 - idle0) / max(1, all1 - all0)


def settle(max_wait_s: float) -> float:
    """Wait until the CPUs are at least 90 % idle over 3 s, at most `max_wait_s`; returns the
    last idle share."""
    deadline = time.monotonic() + max_wait_s
    idle = idle_share()
    while idle < 0.9 and time.monotonic() < deadline:
        idle = idle_share()
    return idle


def child(job: Path) -> None:
    """One 1-rank run in this fresh process; writes its metrics with this process's peak RSS in
    the shape of a run on ranks (a "ranks" list of one)."""
    from flywheel.distributed.worker import peak_memory_bytes

    spec = pickle.loads(job.read_bytes())
    if spec["threads"]:
        import torch

        torch.set_num_threads(spec["threads"])
    if spec["kind"] == "reward_model":
        from flywheel.reward.train import fit_reward_model

        _, metrics = fit_reward_model(*spec["args"])
    else:
        from flywheel.policy.finetune import finetune_on_ranks

        metrics = finetune_on_ranks(*spec["args"])
    metrics["ranks"] = [{"rank": 0, "peak_memory_bytes": peak_memory_bytes(),
                         "optimizer_state_bytes": metrics.pop("optimizer_state_bytes"),
                         "seconds_per_step": metrics.pop("seconds_per_step")}]
    job.with_suffix(".json").write_text(json.dumps(metrics))


def run(kind: str, args: tuple, ranks: int, folder: Path, threads: int | None = None,
        settle_s: float = 0) -> dict:
    """`args` through fit_reward_model or finetune_on_ranks: on 2 ranks from here (torchrun's
    processes), on 1 in a child process. Adds the call's wall time, the idle share of the
    CPUs before it and the 1-minute load average after it."""
    idle = settle(settle_s)
    start = time.perf_counter()
    if ranks == 1:
        job = folder / f"job-{time.monotonic_ns()}.pkl"
        job.write_bytes(pickle.dumps({"kind": kind, "args": args, "threads": threads}))
        subprocess.run([sys.executable, __file__, "--child", str(job)], check=True, cwd=REPO)
        metrics = json.loads(job.with_suffix(".json").read_text())
    elif kind == "reward_model":
        from flywheel.reward.train import fit_reward_model

        _, metrics = fit_reward_model(*args)
    else:
        from flywheel.policy.finetune import finetune_on_ranks

        metrics = finetune_on_ranks(*args)
    metrics["wall_s"] = time.perf_counter() - start
    metrics["load"] = (idle, os.getloadavg()[0])
    return metrics


def best_of(repeats: int, *args, **kwargs) -> dict:
    """`run` `repeats` times; the run whose rank 0 stepped fastest, with every run's rank-0
    seconds per step under "all_seconds_per_step"."""
    runs = [run(*args, **kwargs) for _ in range(repeats)]
    best = min(runs, key=lambda m: m["ranks"][0]["seconds_per_step"])
    best["all_seconds_per_step"] = [m["ranks"][0]["seconds_per_step"] for m in runs]
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=96, help="reward-model train pairs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--micro-batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--backbone", default="builtin:all-minilm-l6-v2")
    ap.add_argument("--policy", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--examples", type=int, default=32, help="policy fine-tuning examples")
    ap.add_argument("--policy-max-length", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each reward-model setting")
    ap.add_argument("--settle", type=float, default=180,
                    help="seconds to wait at most for idle CPUs before each run")
    ap.add_argument("--no-policy", action="store_true", help="the reward model only")
    ap.add_argument("--quick", action="store_true", help="16 pairs, 16 examples: a smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    if args.quick:
        args.pairs = args.examples = 16
        args.repeats, args.settle = 1, 0
    from flywheel.config import RejectionSamplingConfig, RewardModelConfig
    from flywheel.models import resolve

    started, load_start = datetime.datetime.now().astimezone(), os.getloadavg()
    pairs = random.Random(args.seed).sample(split(load_pairs(SETS["helpfulness"], DATA)[0])[0],
                                            max(args.pairs, args.examples))
    rm_pairs = pairs[: args.pairs]
    examples = [(p.messages, p.chosen) for p in pairs[: args.examples]]
    rm = dict(learning_rate=5e-5, batch_size=args.batch_size, margin="none",
              micro_batch_size=args.micro_batch_size, max_length=args.max_length, seed=args.seed)
    sft = dict(learning_rate=1e-5, batch_size=args.batch_size, seed=args.seed,
               micro_batch_size=args.micro_batch_size, max_length=args.policy_max_length)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        zero3 = zero3_fp32(folder)
        backbone, policy = without_dropout(resolve(args.backbone), folder), resolve(args.policy)
        for name, ranks, deepspeed, threads in (
            ("1 rank, plain", 1, None, None),
            ("1 rank, plain, 1 thread", 1, None, 1),
            ("2 ranks, plain (gradients summed)", 2, None, None),
            ("2 ranks, ZeRO-2 (zero2-cpu)", 2, "zero2-cpu", None),
            ("1 rank, ZeRO-3 fp32", 1, zero3, None),
            ("2 ranks, ZeRO-3 fp32", 2, zero3, None),
        ):
            cfg = RewardModelConfig(**rm, resources={"ranks_per_node": ranks},
                                    deepspeed=deepspeed)
            print(f"reward model: {name}", flush=True)
            m = best_of(args.repeats, "reward_model", (backbone, rm_pairs, cfg, f"RM {name}"),
                        ranks, folder, threads, args.settle)
            results.append(("reward model", name, m))
        if not args.no_policy:
            for name, ranks in (("1 rank, plain", 1), ("2 ranks, plain (gradients summed)", 2)):
                cfg = RejectionSamplingConfig(**sft, resources={"ranks_per_node": ranks})
                print(f"policy fine-tuning: {name}", flush=True)
                m = best_of(1, "finetune", (policy, examples, cfg, folder / f"policy-{ranks}"),
                            ranks, folder, settle_s=args.settle)
                results.append(("policy fine-tuning", name, m))
    write(args, results, started, load_start, os.getloadavg())


def table(results: list[tuple[str, str, dict]]) -> list[str]:
    """One row per rank; ratios to the same model's 1-rank plain run (its rank 0)."""
    lines = ["| model | run | rank | s/step | x | peak RSS (MiB) | x | optimizer state (MiB) | x "
             "| loss first -> last | last vs 1 rank | call wall (s) | idle before / load after "
             "| rank 0 s/step, "
             "each run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {}
    for model, name, m in results:
        one = base.setdefault(model, m)
        b = one["ranks"][0]
        rel = (m["loss_last"] - one["loss_last"]) / abs(one["loss_last"])
        for r in m["ranks"]:
            first = r["rank"] == 0
            lines.append(
                f"| {model if first else ''} | {name if first else ''} | {r['rank']} | "
                f"{r['seconds_per_step']:.3f} | "
                f"{r['seconds_per_step'] / b['seconds_per_step']:.2f} | "
                f"{r['peak_memory_bytes'] / MIB:,.0f} | "
                f"{r['peak_memory_bytes'] / b['peak_memory_bytes']:.2f} | "
                f"{r['optimizer_state_bytes'] / MIB:,.1f} | "
                f"{r['optimizer_state_bytes'] / b['optimizer_state_bytes']:.2f} | "
                + (f"{m['loss_first']:.4f} -> {m['loss_last']:.4f} | {rel:+.1e} | "
                   f"{m['wall_s']:.0f} | {100 * m['load'][0]:.0f} % / {m['load'][1]:.1f} | "
                   + ", ".join(f"{x:.3f}" for x in m["all_seconds_per_step"]) + " |"
                   if first else "| | | | |"))
    return lines


def write(args, results, started, load_start, load_end) -> None:
    cmd = (f"`.venv/bin/python benchmarks/bench_ranks.py --pairs {args.pairs} --batch-size "
           f"{args.batch_size} --micro-batch-size {args.micro_batch_size} --max-length "
           f"{args.max_length} --backbone {args.backbone}"
           + (" --no-policy`" if args.no_policy else
              f" --policy {args.policy} --examples {args.examples} --policy-max-length "
              f"{args.policy_max_length}`"))
    steps = {model: m["steps"] for model, _, m in results}
    lines = [
        "# Training on one rank against two: step time and memory per rank",
        "",
        f"Machine: {describe()}. Date: {started:%Y-%m-%d %H:%M %Z}. 1-minute load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end. No GPU was lent, so "
        "there are no absolute times here to quote: on this CPU only the ratios mean something.",
        f"Command: {cmd}",
        "",
        f"Reward model: `{args.backbone}` (the demo's `models.reward_backbone`) with its "
        "dropout off (each rank would draw its own masks, and two ranks would not take one "
        f"rank's steps), `fit_reward_model` on {args.pairs} HH-RLHF helpfulness pairs (a "
        "seeded sample of "
        f"bench_reward_models.py's train split), {args.batch_size} pairs a step in micro-batches "
        f"of {args.micro_batch_size}, {args.max_length} tokens, max lr 5e-5, one epoch: "
        f"{steps.get('reward model')} steps. "
        + ("" if args.no_policy else
           f"Policy fine-tuning: `{args.policy}` (the demo's policy), `finetune_on_ranks` on the "
           f"chosen replies of {args.examples} of those pairs, {args.batch_size} a step in "
           f"micro-batches of {args.micro_batch_size}, {args.policy_max_length} tokens, max lr "
           f"1e-5: {steps.get('policy fine-tuning')} steps. ")
        + "float32 throughout. Two ranks: torchrun on this machine, gloo, one torch thread each "
        "(torchrun's default with several ranks a node); one rank: a fresh process with "
        "torch's default threads (one a core) unless the row says 1 thread.",
        "",
        "Per rank: s/step is the training loop's `seconds_per_step` (mean wall time of an "
        "optimizer step, encoding and the all-reduce included, loading and saving excluded); "
        "peak RSS is the rank process's (`ru_maxrss`: libraries, data and model included); "
        "optimizer state is AdamW's moments held by that rank. x: the ratio to the same model's "
        "1-rank plain run. last vs 1 rank: the relative difference of the last step's loss. "
        "call wall: the whole call, process start, model load and save included. idle "
        "before / load after: the CPUs' idle share over 3 s before the run, and the 1-minute "
        "load average after it (the machine is shared: an idle share under 90 % or a load "
        "average well above the run's own ranks means another process took CPU time from "
        f"it). The reward-model settings ran {args.repeats} time(s) each, the run with the "
        "fastest rank-0 step kept (each run's "
        "in the last column); the policy once.",
        "",
        *table(results),
        "",
    ]
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
