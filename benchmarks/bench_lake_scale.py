"""The lake at Llama 2's scale, in the earlier format (Parquet parts and manifests,
flywheel.lake.legacy) and in Delta Lake side by side, against three targets:

    1. ingest of 1M comparisons (a JSONL delivery in the sample-id form) through `ingest_bytes`
       end to end at >= 100k rows/s; the storage write of the accepted rows in each format
    2. the reward-model mixes over 1.4M comparisons in < 2 s
    3. on a lake of 1.4M comparisons, 5M samples and 50 iterations, each stage's lake reads in
       < 2 s and < 1 GB

    .venv/bin/python benchmarks/bench_lake_scale.py [--scale 1] [--seed 0] [--workdir /tmp]

`--scale 0.1` is a quick run (every count times 0.1; 50 iterations still). The lakes are built
under --workdir and removed at the end (--keep keeps them). Each stage read runs in a fresh
`spawn`ed process (benchmarks/_stage_reads.py): its time, and its peak RSS above the RSS once
the modules are imported (Arrow and DuckDB allocate outside Python, which tracemalloc would
miss). Every step checks its counts against the generated lake and fails loudly when they
differ. Writes benchmarks/results/lake_scale.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _machine import describe
from _scale_lake import (
    ITERATIONS,
    Sizes,
    best_of_iteration,
    build,
    delivery,
    layout,
    open_source,
    policy_ids,
    sample_ids,
)
from _stage_reads import (
    available_memory,
    measure,
    read_annotate,
    read_evaluation,
    read_lineage,
    read_mixes,
    read_rs_pool,
    read_status,
    read_week_pairs,
    read_whole_samples,
)
from bench_ingest import Phases
from bench_mixes import expected as expected_mixes

from flywheel.annotation.ingest import ingest_bytes
from flywheel.lake import legacy
from flywheel.lake.catalog import VISIBLE_DELIVERIES, connect, rows_by_id
from flywheel.lake.store import Lake
from flywheel.reward.mixes import helpfulness_mix, safety_mix
from flywheel.stages.pool import POOL_SAMPLE_COLUMNS

OUT = Path(__file__).parent / "results" / "lake_scale.md"
MIX_RUNS = 3
READ_RUNS = 2  # fresh processes per stage read
TARGET_ROWS_S, TARGET_S, TARGET_BYTES = 100_000, 2.0, 1 << 30
WHOLE_ROW_BYTES = 2200  # a sample row as a dict of Python objects, about (measured at 0.1)


class Captured:
    """Times `Lake.write_table` per table while ingest runs, keeping what it was given."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.data: dict[str, pa.Table] = {}

    def __enter__(self):
        self._orig = orig = Lake.write_table

        def timed(lake, table, data, *a, **kw):
            t0 = time.perf_counter()
            try:
                return orig(lake, table, data, *a, **kw)
            finally:
                self.seconds[table] = self.seconds.get(table, 0.0) + time.perf_counter() - t0
                self.data[table] = data
        Lake.write_table = timed
        return self

    def __exit__(self, *exc):
        Lake.write_table = self._orig


def fail(what: str) -> None:
    sys.exit(f"check failed: {what}")


def table_bytes(lake: Lake, table: str) -> int:
    return sum(os.path.getsize(f) for f in lake.files(table)[0])


# 1. ingest -----------------------------------------------------------------------------------
def run_ingest(delta: Lake, old: Lake, size: Sizes, prompts: pa.Table, seed: int, tmp: str):
    data = delivery(np.random.default_rng([seed, 1]), size, prompts)
    n = ITERATIONS * size.pairs
    load = os.getloadavg()[0]
    with Captured() as cap, Phases() as phases:
        t0 = time.perf_counter()
        result = ingest_bytes(delta, data, "annotation-all.jsonl")
        seconds = time.perf_counter() - t0
    count = connect(delta).sql("SELECT count(*) FROM comparisons").fetchall()[0][0]
    if (result.delivered, result.accepted, result.rejected, count) != (n, n, 0, n):
        fail(f"ingest: {result.summary()}; {count} rows in the lake, want {n} accepted")
    accepted = cap.data["comparisons"]
    t0 = time.perf_counter()
    legacy.write_table(old, "comparisons", accepted, {"batch": result.batch_id})
    earlier = time.perf_counter() - t0
    legacy.write_table(old, "batches", delta.read("batches"))
    # what the sample-id form stores: ids, or copies of the samples' texts too
    stored = connect(delta).sql("""
      SELECT count(*) FILTER (WHERE chosen_sample_id IS NOT NULL),
        count(*) FILTER (WHERE chosen_sample_id IS NOT NULL AND chosen_text IS NOT NULL),
        coalesce(sum(strlen(chosen_text) + strlen(rejected_text)), 0)
      FROM comparisons""").fetchall()[0]
    ids_only = accepted.drop_columns(["chosen_text", "rejected_text"])
    pq.write_table(ids_only, f"{tmp}/ids_only.parquet")
    return {"rows": n, "mb": len(data) / 1e6, "seconds": seconds, "load": load,
            "delta_write": cap.seconds["comparisons"], "earlier_write": earlier,
            "phases": phases.table(seconds), "with_ids": stored[0], "with_texts": stored[1],
            "text_bytes": stored[2], "table_bytes": table_bytes(delta, "comparisons"),
            "ids_only_bytes": os.path.getsize(f"{tmp}/ids_only.parquet")}


# 2. mixes ------------------------------------------------------------------------------------
def earlier_connect(old: Lake) -> duckdb.DuckDBPyConnection:
    """The earlier format's view of comparisons: its parts (those with a manifest), showing
    complete deliveries only, as `connect` does for Delta."""
    con = duckdb.connect()
    for table in ("comparisons", "batches"):
        parts = ", ".join(f"'{old._p('tables', table, m['part'] + '.parquet')}'"
                          for m in legacy.manifests(old, table))
        con.execute(f"CREATE VIEW all_{table} AS SELECT * FROM read_parquet([{parts}])")
    con.execute("CREATE VIEW batches AS SELECT * FROM all_batches")
    con.execute("CREATE VIEW comparisons AS SELECT * FROM all_comparisons "
                f"WHERE delivery_id IN ({VISIBLE_DELIVERIES})")
    return con


def lake_counts(delta: Lake) -> dict[str, int]:
    """The train-row counts the mixes are derived from (bench_mixes.expected's keys)."""
    rows = connect(delta).sql("""
      SELECT count(*) FILTER (WHERE source = 'in-house' AND criterion = 'helpfulness'),
        count(*) FILTER (WHERE source = 'in-house' AND criterion = 'safety'),
        count(*) FILTER (WHERE source ILIKE '%harmless%'),
        count(*) FILTER (WHERE source <> 'in-house' AND source NOT ILIKE '%harmless%')
      FROM comparisons WHERE split = 'train'""").fetchall()[0]
    return dict(zip(["ih_help", "ih_safe", "harmless", "os_help"], rows))


def run_mixes(delta: Lake, old: Lake, seed: int) -> list[dict]:
    want = expected_mixes(lake_counts(delta))
    out = []
    for name, fn in (("helpfulness", helpfulness_mix), ("safety", safety_mix)):
        row = {"mix": name}
        for fmt, open_con in (("delta", lambda: delta), ("earlier", lambda: earlier_connect(old))):
            times, load = [], os.getloadavg()[0]
            for _ in range(MIX_RUNS):
                t0 = time.perf_counter()
                mix = fn(open_con(), seed=seed, allow_short=True)
                times.append(time.perf_counter() - t0)
                load = max(load, os.getloadavg()[0])
            got = {k: mix.counts[k] for k in want[name]}
            if got != want[name]:
                fail(f"{name} mix on {fmt}: {mix.counts}, want {want[name]}")
            row[fmt] = {"times": times, "load": load, "ids": mix.ids, "total": mix.counts["total"]}
        if not row["delta"]["ids"].equals(row["earlier"]["ids"]):
            fail(f"the {name} mix differs between the formats")
        out.append(row)
    return out


# 3. stage reads, each in a fresh process -----------------------------------------------------
def stage_reads(delta: Lake, old: Lake, size: Sizes, prompts: pa.Table, mixes: list[dict],
                test_sets: int, skip_whole: str) -> tuple[list[tuple[str, list]], str]:
    pols = policy_ids()
    last = sample_ids(ITERATIONS, size)
    pair_rows = layout(ITERATIONS, size)["annotation"]
    heldout = [{"id": i} for i in prompts["id"].to_pylist()[size.prompts - size.heldout:]]
    train = size.prompts - size.heldout
    n_mix = (*(m["delta"]["total"] for m in mixes), test_sets)
    reads = [
        ("annotation export: `week_pairs` of the last iteration", read_week_pairs, ITERATIONS,
         size.pairs),
        ("annotate: the week's pairs' samples and prompts (`rows_by_id`)", read_annotate,
         last[pair_rows].to_pylist(), (2 * size.pairs, size.pairs)),
        ("rejection sampling: the pool of 50 iterations' best and their prompts",
         read_rs_pool, rows_by_id(delta, "samples", best_of_iteration(ITERATIONS, size),
                                  POOL_SAMPLE_COLUMNS),
         (ITERATIONS * size.rs_prompts, min(train, ITERATIONS * size.rs_prompts))),
        ("evaluation: earlier greedy answers of candidate, baseline and base",
         read_evaluation, {"candidate": pols[-1], "prompts": heldout}, 3 * size.heldout),
        ("reward models: both mixes and the test sets", read_mixes, None, n_mix),
        ("`flywheel status` (`catalog.status`)", read_status, None, ITERATIONS),
        ("lineage of the latest policy", read_lineage, pols[-1], ITERATIONS + 1),
    ]
    out = []
    for label, fn, arg, want in reads:
        runs = [measure(fn, delta.uri, arg) for _ in range(READ_RUNS)]
        if runs[0][2] != want:
            fail(f"{label}: {runs[0][2]} rows, want {want}")
        out.append((label, runs))
        print(f"  {label}: " + "; ".join(f"{s:.2f} s, {b / 2**20:,.0f} MiB" for s, b, *_ in runs),
              flush=True)
    need = WHOLE_ROW_BYTES * size.samples
    if not skip_whole and need > 0.6 * available_memory():
        skip_whole = f"skipped: it would take about {need / 2**30:.1f} GiB"
    if not skip_whole:
        label = "before: `legacy.read(lake, 'samples').to_pylist()` (earlier format)"
        runs = [measure(read_whole_samples, old.uri, None)]
        if runs[0][2] != size.samples:
            fail(f"{label}: {runs[0][2]} rows, want {size.samples}")
        out.append((label, runs))
        print(f"  {label}: {runs[0][0]:.1f} s, {runs[0][1] / 2**20:,.0f} MiB", flush=True)
    return out, skip_whole


# report --------------------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "pass" if ok else "**fail**"


def _counts(n) -> str:
    return ", ".join(f"{x:,}" for x in (n if isinstance(n, tuple) else (n,)))


def du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def report(args, size: Sizes, setup: dict, ing: dict, mixes: list[dict], reads,
           skip: str) -> str:
    rate = ing["rows"] / ing["seconds"]
    mix_worst = max(statistics.median(m["delta"]["times"]) for m in mixes)
    stage = [(label, runs) for label, runs in reads if not label.startswith("before")]
    worst_s = max(max(r[0] for r in runs) for _, runs in stage)
    worst_b = max(max(r[1] for r in runs) for _, runs in stage)
    copied = ing["with_texts"]
    lines = [
        "# The lake at Llama 2's scale: the earlier format against Delta Lake",
        "",
        f"Machine: {describe()}. Scale {args.scale:g}: {size.samples:,} samples over "
        f"{ITERATIONS} iterations, {size.prompts:,} prompts, {ing['rows'] + size.open_source:,} "
        f"comparisons ({ing['rows']:,} delivered in the sample-id form through ingest, "
        f"{size.open_source:,} open-source with inline texts); texts about 200 characters; "
        f"seed {args.seed}.",
        f"Command: `.venv/bin/python benchmarks/bench_lake_scale.py --scale {args.scale:g}`",
        f"Set-up (not a target): {setup['seconds']:.0f} s; the samples in "
        f"{setup['commits']} commits took {setup['writes']['delta']:.0f} s to write as Delta "
        f"(`Lake.write_table`) and {setup['writes']['earlier']:.0f} s in the earlier format "
        f"(`legacy.write_table`, which reads every earlier part's ids); on disk "
        f"{setup['delta_mb']:,.0f} MB against {setup['earlier_mb']:,.0f} MB.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| 1. ingest of {ing['rows']:,} comparisons >= {TARGET_ROWS_S:,} rows/s | "
        f"{rate:,.0f} rows/s ({ing['seconds']:.1f} s) | {verdict(rate >= TARGET_ROWS_S)} |",
        f"| 1b. the sample-id form stores ids, not copies of the texts | "
        f"{copied:,} of {ing['with_ids']:,} rows store the texts too "
        f"({ing['text_bytes'] / 1e6:,.0f} MB of text) | {verdict(copied == 0)} |",
        f"| 2. mixes over {ing['rows'] + size.open_source:,} comparisons < {TARGET_S:g} s "
        f"(Delta) | slowest median {mix_worst:.2f} s | {verdict(mix_worst < TARGET_S)} |",
        f"| 3. each stage's lake reads < {TARGET_S:g} s and < 1 GB | slowest {worst_s:.2f} s, "
        f"largest {worst_b / 2**20:,.0f} MiB | "
        f"{verdict(worst_s < TARGET_S and worst_b < TARGET_BYTES)} |",
        "",
        "## 1. Ingest",
        "",
        f"`ingest_bytes` of one JSONL delivery ({ing['mb']:.0f} MB, every annotation pair of "
        f"the {ITERATIONS} iterations: prompt id, both sample ids and the labels) into the "
        f"Delta lake holding the samples, end to end: {ing['seconds']:.1f} s, {rate:,.0f} "
        f"rows/s (load average {ing['load']:.1f} before). All {ing['rows']:,} rows accepted "
        "(checked). The storage write of the same accepted rows:",
        "",
        "| write | Delta (`Lake.write_table`, within the ingest) | earlier "
        "(`legacy.write_table`) |",
        "|---|---|---|",
        f"| {ing['rows']:,} accepted comparisons into an empty table | "
        f"{ing['delta_write']:.1f} s | {ing['earlier_write']:.1f} s |",
        "",
        "Where the ingest's time goes (bench_ingest's phases: the functions ingest calls, "
        "wrapped and timed):",
        "",
        "| phase | s | share |",
        "|---|---|---|",
        *[f"| {label.replace('Parquet parts and manifests', 'Delta writes')} | {s:.1f} | "
          f"{s / ing['seconds']:.0%} |" for label, s in ing["phases"]],
        "",
        f"What the sample-id form stores: {ing['with_ids']:,} rows name their samples; "
        f"{copied:,} of them also hold copies of both texts ({ing['text_bytes'] / 1e6:,.0f} MB "
        f"of text). The comparisons table is {ing['table_bytes'] / 1e6:,.0f} MB on disk; the "
        f"same rows without the text columns are {ing['ids_only_bytes'] / 1e6:,.0f} MB as one "
        "Parquet file.",
        "",
        "## 2. Reward-model mixes",
        "",
        f"`helpfulness_mix` / `safety_mix(..., allow_short=True)`, each call end to end "
        f"(connection and views, then the query), median of {MIX_RUNS}; Delta through "
        "`connect(lake)`, the earlier format through a DuckDB view over its parts "
        "(`read_parquet` of the files `legacy.manifests` lists, complete deliveries only). "
        "Counts checked against the lake's, and the same ids from both formats.",
        "",
        "| mix | rows | Delta median (s) | runs | earlier median (s) | runs | highest load |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in mixes:
        d, e = m["delta"], m["earlier"]
        lines.append(
            f"| {m['mix']} | {d['total']:,} | {statistics.median(d['times']):.2f} | "
            f"{', '.join(f'{t:.2f}' for t in d['times'])} | "
            f"{statistics.median(e['times']):.2f} | {', '.join(f'{t:.2f}' for t in e['times'])}"
            f" | {max(d['load'], e['load']):.1f} |")
    lines += [
        "",
        "## 3. Each stage's lake reads",
        "",
        f"Each read runs in a fresh `spawn`ed process ({READ_RUNS} processes each; the "
        "before row once): wall time and peak RSS above the RSS after the process's imports "
        "(VmHWM, reset after the imports). Rows read checked against the generated lake. "
        "The before row is how every stage that used samples read them before (whole tables "
        "as dicts through `lake.rows`).",
        "",
        "| read | time (s) | peak memory (MiB) | rows | highest load | |",
        "|---|---|---|---|---|---|",
    ]
    for label, runs in reads:
        ok = all(r[0] < TARGET_S and r[1] < TARGET_BYTES for r in runs)
        lines.append(
            f"| {label} | {', '.join(f'{r[0]:.2f}' for r in runs)} | "
            f"{', '.join(f'{r[1] / 2**20:,.0f}' for r in runs)} | {_counts(runs[0][2])} | "
            f"{max(r[3] for r in runs):.1f} | "
            f"{'(not a target)' if label.startswith('before') else verdict(ok)} |")
    if skip:
        lines.append(f"| before: the earlier whole-table read | {skip} | | | | |")
    crashed = [(label, r[4]) for label, runs in reads for r in runs if r[4]]
    if crashed:
        lines += ["", "Processes that returned their rows, then exited abnormally: " + "; ".join(
            f"{label}: exit code {code}" for label, code in crashed) + "."]
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", action="store_true", help="keep the lakes")
    ap.add_argument("--skip-whole", action="store_true",
                    help="skip the earlier way's whole-table read (about 2 KB a sample)")
    args = ap.parse_args()
    size = Sizes.at(args.scale)
    need = 6e9 * args.scale
    free = shutil.disk_usage(args.workdir).free
    if free < 1.5 * need:
        sys.exit(f"{args.workdir} has {free / 1e9:.1f} GB free; scale {args.scale:g} needs "
                 f"about {need / 1e9:.1f} GB: pass --workdir or a smaller --scale")
    tmp = tempfile.mkdtemp(prefix="bench-lake-scale-", dir=args.workdir)
    try:
        delta = Lake.open(f"{tmp}/delta")
        old = Lake(f"{tmp}/earlier")
        old.fs.makedirs(old.root, exist_ok=True)
        print(f"building the lakes under {tmp}: {size}", flush=True)
        t0 = time.perf_counter()
        both, prompts = build(delta, old, size, args.seed)
        setup = {"seconds": time.perf_counter() - t0, "commits": 10,
                 "writes": dict(both.seconds), "delta_mb": du(f"{tmp}/delta") / 1e6,
                 "earlier_mb": du(f"{tmp}/earlier") / 1e6}
        print("ingest", flush=True)
        ing = run_ingest(delta, old, size, prompts, args.seed, tmp)
        print(f"  {ing['seconds']:.1f} s; comparisons write Delta {ing['delta_write']:.1f} s, "
              f"earlier {ing['earlier_write']:.1f} s", flush=True)
        for part, batch in open_source(np.random.default_rng([args.seed, 2]), size):
            both.write("comparisons", part, {"batch": batch["batch_id"]})
            both.write("batches", pa.Table.from_pylist([batch], schema=delta.read(
                "batches").schema), {"batch": batch["batch_id"]})
        print("mixes", flush=True)
        mixes = run_mixes(delta, old, args.seed)
        from flywheel.reward.evaluation import find_test_sets
        test_sets = len(find_test_sets(connect(delta)))
        print("stage reads", flush=True)
        reads, skip = stage_reads(delta, old, size, prompts, mixes, test_sets,
                                  "skipped (--skip-whole)" if args.skip_whole else "")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    text = report(args, size, setup, ing, mixes, reads, skip)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
