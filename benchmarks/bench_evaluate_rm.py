"""`flywheel evaluate-rm` throughput: the scoring engine, as the command scores a file, against
scoring each pair alone; same model, same pairs, side by side in one run.

    .venv/bin/python benchmarks/bench_evaluate_rm.py
        [--file hh_rlhf_harmless_base_test_dev.jsonl.gz] [--pairs 100]
        [--backbone builtin:all-minilm-l6-v2] [--max-length 512] [--token-budget 4096]
        [--reps 2] [--seed 0] [--out PATH]

The reward model: the backbone (default the packaged all-MiniLM-L6-v2, as `RewardModel.
from_backbone` builds one) with its head drawn at random (seeded), saved as a checkpoint folder.
Pairs: the first `--pairs` records of the file in ../shared/data, read and validated by
`flywheel.reward.file_eval.read_pairs` as the command reads them.

Paths, in float32 on the CPU:
- per pair: `RewardModel.score` on one pair at a time (its chosen and rejected response padded
  into one forward pass), the simple path a per-pair evaluation loop takes;
- engine: `ScoringEngine(max_length, token_budget).rewards`, the call evaluate-rm's scoring
  makes (`flywheel.reward.evaluation.evaluate`): all pairs sorted by length and packed into
  passes of about `--token-budget` padded tokens;
- evaluate-rm: `evaluate_file` end to end (reading and validating the file, loading the model,
  scoring through the engine), what the command does after parsing its arguments.
The paths run interleaved `--reps` times and each keeps its fastest run (on a shared machine the
minimum is the run other load disturbed least). Both scoring paths must give the same accuracy;
the table reports the largest score difference. Writes benchmarks/results/evaluate_rm.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from _machine import describe

from flywheel.models import resolve
from flywheel.reward.file_eval import evaluate_file, read_pairs
from flywheel.reward.model import RewardModel
from flywheel.reward.scoring import Group, ScoringEngine

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).parent / "results" / "evaluate_rm.md"


def timed(fn):
    """(fn's result, wall seconds, CPU seconds of this process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default="hh_rlhf_harmless_base_test_dev.jsonl.gz")
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--backbone", default="builtin:all-minilm-l6-v2")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    load = os.getloadavg()[0]
    path = str(DATA / args.file)
    torch.manual_seed(args.seed)
    rm = RewardModel.from_backbone(resolve(args.backbone)).eval()
    folder = tempfile.mkdtemp(prefix="bench-evaluate-rm-")
    rm.save(folder, {"kind": "safety", "max_length": args.max_length})
    model = RewardModel.load(folder, device="cpu")
    file = read_pairs(path, limit=args.pairs)
    n = len(file.pairs)

    def per_pair():
        return [model.score([p.messages] * 2, [p.chosen, p.rejected], args.max_length, 2)
                for p in file.pairs]

    groups = [Group(p.messages, [p.chosen, p.rejected]) for p in file.pairs]

    def engine():
        eng = ScoringEngine(args.max_length, args.token_budget, progress=False)
        return eng.rewards(model, groups), eng

    def command():
        return evaluate_file(folder, path, limit=args.pairs, token_budget=args.token_budget)

    per_pair(), engine()  # warm-up: first calls allocate and pick kernels
    best = {}
    for _ in range(args.reps):
        for name, fn in (("per pair", per_pair), ("engine", engine), ("evaluate-rm", command)):
            out, secs, cpu = timed(fn)
            best[name] = min(secs, best.get(name, secs))
            best[f"{name} cpu"] = min(cpu, best.get(f"{name} cpu", cpu))
            best[f"{name} out"] = out
            print(json.dumps({"path": name, "seconds": round(secs, 2), "cpu": round(cpu, 2)}),
                  flush=True)
    alone = best["per pair out"]
    scores, eng = best["engine out"]
    e2e = best["evaluate-rm out"]
    acc_alone = sum(c > r for c, r in alone) / n
    acc_engine = sum(c > r for c, r in scores) / n
    diff = max(abs(a - b) for pa, pb in zip(scores, alone) for a, b in zip(pa, pb))
    assert acc_alone == acc_engine == e2e["accuracy"], (acc_alone, acc_engine, e2e["accuracy"])
    rate = {k: n / best[k] for k in ("per pair", "engine", "evaluate-rm")}
    lines = [
        "# evaluate-rm throughput: the scoring engine against scoring each pair alone (CPU)",
        "",
        f"Machine: {describe()}, {torch.get_num_threads()} torch threads, shared with other "
        f"work (fastest of {args.reps} interleaved runs per path). Run "
        f"{datetime.date.today().isoformat()}. Reward model: {args.backbone} (float32) with a "
        f"random head (seed {args.seed}). File: the first {args.pairs} records of {args.file} "
        f"({n} valid pairs, {eng.stats.tokens} tokens in their {eng.stats.sequences} "
        f"sequences), max_length {args.max_length}, token budget {args.token_budget}. Load "
        f"average at the start {load:.1f}, at the end {os.getloadavg()[0]:.1f}.",
        f"Command: `.venv/bin/python benchmarks/bench_evaluate_rm.py --pairs {args.pairs}`",
        "",
        "| path | seconds | pairs/s | tokens/s | vs per pair | CPU seconds | CPU vs per pair "
        "| accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    accuracy = {"per pair": acc_alone, "engine": acc_engine, "evaluate-rm": e2e["accuracy"]}
    for k in ("per pair", "engine", "evaluate-rm"):
        lines.append(f"| {k} | {best[k]:.1f} | {rate[k]:.2f} | "
                     f"{eng.stats.tokens / best[k]:.0f} | {rate[k] / rate['per pair']:.2f}x | "
                     f"{best[f'{k} cpu']:.1f} | {best['per pair cpu'] / best[f'{k} cpu']:.2f}x | "
                     f"{accuracy[k]:.4f} |")
    lines += [
        "",
        f"Largest score difference, engine against per pair: {diff:.1e}; the accuracy is the "
        "same on every path (the script checks it). \"evaluate-rm\" includes reading and "
        "validating the file and loading the model; \"engine\" and \"per pair\" are scoring "
        "alone. tokens/s: tokens of the full sequences scored, padding not counted. CPU seconds: "
        "the process's CPU time (all its threads), less sensitive than wall time to other "
        "load on a shared machine.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
