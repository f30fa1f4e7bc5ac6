"""Reward-model data mixes at Llama 2's in-house scale: `helpfulness_mix` and `safety_mix` on a
lake of 1.4M comparisons, each timed end to end (DuckDB connection and views, then the query).

    .venv/bin/python benchmarks/bench_mixes.py [--rows 1400000] [--text-chars 300] [--seed 0]

The lake is written directly with `Lake.write_table` (not through ingest, to keep set-up short):
in-house rows (1.1M of 1.4M) in 14 weekly batches, 70 % helpfulness and 30 % safety, 1,000 test
rows held out of each batch; open-source rows (the rest) in three parts: Anthropic HH-RLHF
harmless-base and helpful-base and UltraFeedback binarized, 2 % of them test rows. Every run
checks the mix counts against the ones derived from the generated lake and fails loudly if they
differ. Writes benchmarks/results/mixes.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from _machine import describe
from _synthetic import corpus, ids, texts

from flywheel.lake.store import Lake
from flywheel.reward.mixes import helpfulness_mix, safety_mix

OUT = Path(__file__).parent / "results" / "mixes.md"
BATCHES = 14
IN_HOUSE_SHARE = 1.1 / 1.4
OPEN_SOURCE = ["anthropic-hh-rlhf/harmless-base", "anthropic-hh-rlhf/helpful-base",
               "ultrafeedback-binarized"]
RUNS = 3


def _part(rng, text_corpus, tag: str, n: int, source: str, criteria: np.ndarray,
          split: np.ndarray, batch: str, text_chars: int) -> pa.Table:
    cid = ids(tag, n)
    return pa.table({
        "id": cid, "prompt_id": ids(tag + "p", n),
        "chosen_text": texts(rng, text_corpus, n, text_chars, cid),
        "rejected_text": texts(rng, text_corpus, n, text_chars, cid),
        "strength": pa.array(np.array(["significantly_better", "better", "slightly_better",
                                       "negligibly_better"], dtype=object)[rng.integers(0, 4, n)]),
        "criterion": pa.array(criteria), "annotator": pa.array([f"{source}-annotator"] * n),
        "batch_id": pa.array([batch] * n), "delivery_id": pa.array([batch + "-d"] * n),
        "source": pa.array([source] * n), "split": pa.array(split),
    })


def build(lake: Lake, rows: int, text_chars: int, seed: int) -> dict[str, int]:
    """Writes the lake; returns the train-row counts the mixes are derived from."""
    rng = np.random.default_rng(seed)
    text_corpus = corpus(rng)
    in_house = round(rows * IN_HOUSE_SHARE)
    counts = dict.fromkeys(["ih_help", "ih_safe", "harmless", "os_help", "test"], 0)
    for b in range(BATCHES):
        n = in_house // BATCHES + (b < in_house % BATCHES)
        crit = np.where(rng.random(n) < 0.7, "helpfulness", "safety")
        split = np.full(n, "train", dtype=object)
        split[rng.choice(n, min(1000, n // 5), replace=False)] = "test"
        lake.write_table("comparisons", _part(rng, text_corpus, f"ih{b}-", n, "in-house", crit,
                                              split, f"week-{b + 1:02d}", text_chars))
        train = split == "train"
        counts["ih_help"] += int(np.sum(train & (crit == "helpfulness")))
        counts["ih_safe"] += int(np.sum(train & (crit == "safety")))
        counts["test"] += int(np.sum(~train))
    open_rows = rows - in_house
    for k, source in enumerate(OPEN_SOURCE):
        n = open_rows // len(OPEN_SOURCE) + (k < open_rows % len(OPEN_SOURCE))
        crit = np.full(n, "safety" if "harmless" in source else "helpfulness", dtype=object)
        split = np.where(rng.random(n) < 0.02, "test", "train").astype(object)
        lake.write_table("comparisons", _part(rng, text_corpus, f"os{k}-", n, source, crit,
                                              split, source, text_chars))
        key = "harmless" if "harmless" in source else "os_help"
        counts[key] += int(np.sum(split == "train"))
        counts["test"] += int(np.sum(split == "test"))
    # each part's delivery complete, so the `comparisons` view shows its rows
    batches = [f"week-{b + 1:02d}" for b in range(BATCHES)] + list(OPEN_SOURCE)
    lake.write("batches", [{"id": f"{b}-d", "batch_id": b, "status": "complete"}
                           for b in batches])
    return counts


def expected(counts: dict[str, int]) -> dict[str, dict[str, int]]:
    kept_s = counts["ih_safe"] + counts["harmless"]
    pool_h = counts["ih_safe"] + counts["harmless"] + counts["os_help"]
    pool_s = counts["ih_help"] + counts["os_help"]
    want_h, want_s = counts["ih_help"], round(kept_s / 9)
    return {
        "helpfulness": {"total": want_h + min(want_h, pool_h), "sample wanted": want_h,
                        "sample short": max(0, want_h - pool_h)},
        "safety": {"total": kept_s + min(want_s, pool_s), "sample wanted": want_s,
                   "sample short": max(0, want_s - pool_s)},
    }


def time_mix(fn, lake: Lake, seed: int) -> tuple[list[float], object, float]:
    """Times of RUNS calls, the last result, and the highest 1-minute load average seen."""
    times, result, load = [], None, os.getloadavg()[0]
    for _ in range(RUNS):
        t0 = time.perf_counter()
        result = fn(lake, seed=seed, allow_short=True)  # the pool is short: see notes
        times.append(time.perf_counter() - t0)
        load = max(load, os.getloadavg()[0])
    return times, result, load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_400_000)
    ap.add_argument("--text-chars", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mixes-") as tmp:
        lake = Lake.open(f"{tmp}/lake")
        t0 = time.perf_counter()
        counts = build(lake, args.rows, args.text_chars, args.seed)
        setup = time.perf_counter() - t0
        parts = len(lake.files("comparisons")[0])
        print(f"set-up {setup:.1f} s: {args.rows:,} comparisons in {parts} parts; {counts}",
              flush=True)
        want = expected(counts)
        results = []
        for name, fn in (("helpfulness", helpfulness_mix), ("safety", safety_mix)):
            times, mix, load = time_mix(fn, lake, args.seed)
            got = {k: mix.counts[k] for k in want[name]}
            if got != want[name]:
                sys.exit(f"{name} mix counts differ from the lake's: got {mix.counts}, "
                         f"want {want[name]}")
            results.append((name, times, mix.counts, load))
            print(f"{name}: median {statistics.median(times):.2f} s of {times}; {mix.counts}",
                  flush=True)
    lines = [
        "# Reward-model data mixes at Llama 2's in-house scale",
        "",
        f"Machine: {describe()}. {args.rows:,} comparisons in {parts} Parquet parts "
        f"({BATCHES} in-house batches, {len(OPEN_SOURCE)} open-source sets; "
        f"{counts['test']:,} of them test rows), texts {args.text_chars} characters on "
        f"average; seed {args.seed}. Set-up (not timed): {setup:.0f} s.",
        f"Command: `.venv/bin/python benchmarks/bench_mixes.py --rows {args.rows}`",
        "",
        "Each time is one call, `helpfulness_mix(lake, allow_short=True)` or "
        "`safety_mix(lake, allow_short=True)`: a new DuckDB "
        "connection with the lake's views, then the query; median of "
        f"{RUNS} runs.",
        "",
        "| mix | median (s) | runs (s) | rows in the mix | by part | sampled of wanted | "
        "highest load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, times, mix_counts, load in results:
        sampled = mix_counts["sample wanted"] - mix_counts["sample short"]
        parts_text = ", ".join(f"{k} {v:,}" for k, v in mix_counts.items()
                               if k not in ("total", "sample wanted", "sample short"))
        lines.append(f"| {name} | {statistics.median(times):.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in times)} | {mix_counts['total']:,} | "
                     f"{parts_text} | {sampled:,} of {mix_counts['sample wanted']:,} | "
                     f"{load:.1f} |")
    lines += [
        "",
        "The load average column is the machine's 1-minute load while the runs went on: the "
        "machine is shared, and a load above 2 on its 2 cores means another process took CPU "
        "time from these runs.",
        "With about 300k open-source rows, the helpfulness mix's pool (in-house safety and "
        "open-source rows) is smaller than the in-house helpfulness data: with `allow_short` the "
        "mix takes all of it and its counts say how many rows were short (without it, the mix "
        "stops with an error naming the shortfall).",
        "",
    ]
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
