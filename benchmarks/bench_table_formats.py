"""Delta Lake (deltalake, delta-rs) against Apache Iceberg (pyiceberg, SQL catalog on SQLite) on
the lake's own work, in one run, so the lake's table format is chosen by measurement:

    1. concurrent appenders on a local folder: 6 processes x 2 appends
    2. the same on an S3 server (moto, as in the tests)
    3. merge by content id: a re-delivery (every id present) and a batch half new
    4. concurrent merges from 4 processes of id sets overlapping their neighbours by half
    5. time travel: the table as of its second commit, read after 5 more
    6. DuckDB over the table through Arrow (and over its Parquet files): a GROUP BY
    7. ingest: --rows comparisons appended in 10 commits

    .venv/bin/python benchmarks/bench_table_formats.py [--rows 1000000] [--quick] [--seed 0]

Rows have the comparisons table's schema (flywheel/lake/schemas.py), texts of about 300
characters. Sizes scale with --rows: merges of rows/10, appends of rows/100, concurrent merges of
rows/50 ids each. Every step checks its row count and that no id is there twice, and the script
exits non-zero when one differs. Conflicting commits are redone by reopening the table; the
table counts them with those pyiceberg redoes itself. Iceberg's concurrent merges run twice: with
its own commit retries off (the checked row) and at pyiceberg's default, whose duplicate ids are
reported. Writes benchmarks/results/table_formats.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _machine import describe
from _synthetic import corpus, ids, texts
from _table_formats import SCHEMA, counts, open_format

OUT = Path(__file__).parent / "results" / "table_formats.md"
TEXT_CHARS = 300
STRENGTHS = ["significantly better", "better", "slightly better", "negligibly better / unsure"]
APPENDERS, APPENDS_EACH, MERGERS, LATER_COMMITS = 6, 2, 4, 5
QUERY = """SELECT batch_id, criterion, strength, count(*) AS n,
                  avg(length(chosen_text) + length(rejected_text)) AS chars
           FROM t WHERE split = 'train' GROUP BY ALL ORDER BY ALL"""
QUERY_COLUMNS = ("batch_id", "criterion", "strength", "chosen_text", "rejected_text", "split")


def comparisons(start: int, n: int, seed: int, text_corpus: np.ndarray | None = None) -> pa.Table:
    """Comparison rows start..start+n: the same ids for the same positions in every call."""
    rng = np.random.default_rng([seed, start])
    text_corpus = corpus(rng, 1 << 22) if text_corpus is None else text_corpus
    row_ids = ids("c", start + n).slice(start)
    helpful = rng.random(n) < 0.7
    cols = {
        "id": row_ids, "prompt_id": ids("p", start + n).slice(start),
        "chosen_sample_id": ids("sa", start + n).slice(start),
        "rejected_sample_id": ids("sb", start + n).slice(start),
        "chosen_text": texts(rng, text_corpus, n, TEXT_CHARS, row_ids),
        "rejected_text": texts(rng, text_corpus, n, TEXT_CHARS),
        "strength": pa.array(np.array(STRENGTHS, dtype=object)[rng.integers(0, 4, n)]),
        "criterion": pa.array(np.where(helpful, "helpfulness", "safety")),
        "safety_label": pa.array(np.where(helpful, None, "both safe"), pa.string()),
        "annotator": pa.array(np.char.add("annotator-", rng.integers(0, 40, n).astype(str))),
        "batch_id": pa.array(np.char.add("batch-", (np.arange(start, start + n) // 50_000)
                                         .astype(str))),
        "delivery_id": pa.array(["bench"] * n), "source": pa.array(["in-house"] * n),
        "split": pa.array(np.where(rng.random(n) < 0.95, "train", "test")),
        "created_at": pa.array([datetime(2026, 1, 1, tzinfo=timezone.utc)] * n,
                               SCHEMA.field("created_at").type),
    }
    # the columns the bench leaves empty (an annotator's note, the seconds spent): NULL, as in
    # rows that came without them
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in SCHEMA}, schema=SCHEMA)


# concurrent writers ----------------------------------------------------------------------------
def _worker(fmt, place, name, op, starts, n, seed, barrier, results) -> None:
    table = open_format(fmt, place, name)
    batches = [comparisons(s, n, seed) for s in starts]
    barrier.wait()
    retries = 0
    for rows in batches:
        retries += table.append(rows) if op == "append" else table.merge(rows)[0]
    results.put(retries)


def concurrent(fmt, place, name, op, jobs: list[list[int]], n, seed,
               library_retries: bool = True) -> dict:
    """Each job a process writing rows start..start+n for each of its starts, all released at
    once; the wall time runs from their release to the last one's end."""
    table = open_format(fmt, place, name, library_retries)
    table.create()
    ctx = mp.get_context("spawn")  # delta-rs's runtime does not survive a fork
    barrier, results = ctx.Barrier(len(jobs) + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(fmt, place, name, op, starts, n, seed, barrier,
                                               results)) for starts in jobs]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    retries = [_result(results, procs, op, fmt) for _ in procs]
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join()
        if p.exitcode:
            sys.exit(f"a {op} process of {fmt} exited with {p.exitcode}")
    unique = len({s + i for starts in jobs for s in starts for i in range(n)})
    rows, distinct = counts(table)
    want = unique if op == "merge" else n * sum(len(s) for s in jobs)
    return {"seconds": seconds, "retries": sum(retries), "rows": rows, "distinct": distinct,
            "want": want, "ok": rows == want == distinct}


def _result(results, procs, op, fmt) -> int:
    """The next worker's retry count; a worker that died ends the run at once, not after the
    queue's timeout."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            return results.get(timeout=1)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode]
            if dead:
                sys.exit(f"a {op} process of {fmt} exited with {dead[0]} (its traceback is above)")
    sys.exit(f"the {op} processes of {fmt} gave no result in 600 s")


# the single-writer steps ------------------------------------------------------------------------
def merges(fmt, place, n, seed) -> dict:
    table = open_format(fmt, place, "merge")
    table.create()
    table.append(comparisons(0, n, seed))
    out = {}
    for key, start, new in (("rerun", 0, 0), ("half_new", n // 2, n - n // 2)):
        rows = comparisons(start, n, seed)
        t0 = time.perf_counter()
        _, inserted = table.merge(rows)
        out[key] = time.perf_counter() - t0
        out[f"{key}_ok"] = inserted == new
    got, distinct = counts(table)
    out["rows"], out["want"] = got, n + n - n // 2
    out["ok"] = out["rerun_ok"] and out["half_new_ok"] and got == out["want"] == distinct
    return out


def time_travel(fmt, place, n, seed) -> dict:
    table = open_format(fmt, place, "travel")
    table.create()
    for k in range(2 + LATER_COMMITS):
        table.append(comparisons(k * n, n, seed))
    t0 = time.perf_counter()
    rows, distinct = counts(table, table.second_commit())
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": rows, "want": 2 * n, "ok": rows == 2 * n == distinct}


def ingest_and_query(fmt, place, rows, seed) -> dict:
    table = open_format(fmt, place, "ingest")
    table.create()
    text_corpus = corpus(np.random.default_rng(seed))
    step, seconds = rows // 10, 0.0
    for k in range(10):
        batch = comparisons(k * step, step, seed, text_corpus)
        t0 = time.perf_counter()
        table.append(batch)
        seconds += time.perf_counter() - t0
    got, distinct = counts(table)
    out = {"ingest": seconds, "rows_per_s": 10 * step / seconds, "rows": got,
           "want": 10 * step, "ok": got == 10 * step == distinct}
    answers = []
    for how in ("arrow", "parquet"):
        con = duckdb.connect()
        t0 = time.perf_counter()
        if how == "arrow":
            con.register("t", table.arrow(columns=QUERY_COLUMNS))
        else:
            files = [f.removeprefix("file://") for f in table.files()]
            con.execute(f"CREATE OR REPLACE VIEW t AS SELECT * FROM read_parquet({files})")
        answers.append(con.execute(QUERY).fetchall())
        out[how] = time.perf_counter() - t0
    out["ok"] = out["ok"] and answers[0] == answers[1] and sum(r[3] for r in answers[0]) > 0
    out["mb"] = sum(os.path.getsize(f) for f in files) / 1e6
    out["codec"] = pq.ParquetFile(files[0]).metadata.row_group(0).column(4).compression.lower()
    return out


# the run ---------------------------------------------------------------------------------------
FORMATS = ("delta", "iceberg")


def run(args, root: str) -> dict:
    """Every step on both formats, the two one after the other within a step (so that other
    load on the machine falls on both alike); results[step][fmt]."""
    from s3 import moto_s3  # tests/s3.py: moto's S3 server on a local port

    n_append, n_merge, n_cmerge = args.rows // 100, args.rows // 10, args.rows // 50
    appenders = [[(p * APPENDS_EACH + k) * n_append for k in range(APPENDS_EACH)]
                 for p in range(APPENDERS)]
    mergers = [[p * n_cmerge // 2] for p in range(MERGERS)]  # neighbours share half their ids
    local = {f: {"root": f"{root}/{f}", "s3": None} for f in FORMATS}
    for place in local.values():
        os.makedirs(place["root"])
    out: dict[str, dict] = {}
    with moto_s3() as (_, bucket):
        on_s3 = {f: {"root": local[f]["root"], "s3": f"s3://{bucket}/{f}"} for f in FORMATS}
        steps = {
            "append_local": lambda f: concurrent(f, local[f], "appends", "append", appenders,
                                                 n_append, args.seed),
            "append_s3": lambda f: concurrent(f, on_s3[f], "appends_s3", "append", appenders,
                                              n_append, args.seed),
            "merge": lambda f: merges(f, local[f], n_merge, args.seed),
            "merge_concurrent": lambda f: concurrent(f, local[f], "cmerge", "merge", mergers,
                                                     n_cmerge, args.seed, False),
            "time_travel": lambda f: time_travel(f, local[f], n_append, args.seed),
            "ingest": lambda f: ingest_and_query(f, local[f], args.rows, args.seed),
            # what pyiceberg's own retries make of concurrent merges
            "merge_concurrent_library": lambda f: concurrent(f, local[f], "cmerge_library",
                                                             "merge", mergers, n_cmerge,
                                                             args.seed),
        }
        for step, fn in steps.items():
            for fmt in FORMATS if step != "merge_concurrent_library" else ("iceberg",):
                t0 = time.perf_counter()
                r = out.setdefault(step, {})[fmt] = fn(fmt)
                print(f"{fmt} {step}: {time.perf_counter() - t0:.1f} s, {r['rows']:,} rows "
                      f"(want {r['want']:,}), checks {'' if r['ok'] else 'not '}passed",
                      flush=True)
    return out


def report(args, res: dict, load: tuple[float, float]) -> str:
    import deltalake
    import pyiceberg

    def row(what: str, key: str, fmt_value, step: str) -> str:
        cells = [fmt_value(res[step][f][key]) for f in FORMATS]
        ratio = ""
        if all(isinstance(res[step][f][key], float) for f in FORMATS) and res[step]["delta"][key]:
            ratio = f"{res[step]['iceberg'][key] / res[step]['delta'][key]:.2f}x"
        return f"| {what} | {cells[0]} | {cells[1]} | {ratio} |"

    s, n = "{:.2f} s".format, "{:,}".format
    ok = lambda step: lambda r: f"{n(r)} (want {n(res[step]['delta']['want'])})"  # noqa: E731
    na, nm, nc = args.rows // 100, args.rows // 10, args.rows // 50
    lines = [
        "# Table formats: Delta Lake against Iceberg on the lake's work",
        "",
        f"Machine: {describe()}. deltalake {deltalake.__version__} (delta-rs), pyiceberg "
        f"{pyiceberg.__version__} with a SQL catalog on SQLite; one run, seed {args.seed}; "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after.",
        "Command: `.venv/bin/python benchmarks/bench_table_formats.py "
        f"{'--quick' if args.quick else f'--rows {args.rows}'}`",
        "",
        "Rows of the comparisons schema, texts of about 300 characters. Retries: commits "
        "redone after losing a race, by the caller (reopen the table, redo) or, for Iceberg, "
        "by pyiceberg itself (it logs each); delta-rs rebases an append onto a newer version "
        "without telling, so Delta's count is only the conflicts it raised. Iceberg's merge "
        "tables hand conflicts to the caller (`commit.retry.num-retries` 0; see below).",
        "",
        "| step | Delta Lake | Iceberg | Iceberg / Delta |",
        "|---|---|---|---|",
    ]
    for step, where in (("append_local", "local folder"), ("append_s3", "S3 (moto)")):
        lines += [row(f"{APPENDERS} processes x {APPENDS_EACH} appends of {n(na)} rows, "
                      f"{where}: wall time", "seconds", s, step),
                  row(f"... retries (of {APPENDERS * APPENDS_EACH} commits)", "retries", n, step),
                  row("... rows at the end, all distinct", "rows", ok(step), step)]
    lines += [row(f"merge {n(nm)} rows all present (a re-delivery)", "rerun", s, "merge"),
              row(f"merge {n(nm)} rows, half new", "half_new", s, "merge"),
              row("... rows at the end, all distinct", "rows", ok("merge"), "merge"),
              row(f"{MERGERS} concurrent merges of {n(nc)} ids, neighbours sharing half: "
                  "wall time", "seconds", s, "merge_concurrent"),
              row(f"... retries (of {MERGERS} commits)", "retries", n, "merge_concurrent"),
              row("... rows at the end, all distinct", "rows", ok("merge_concurrent"),
                  "merge_concurrent"),
              row(f"time travel: second commit of {2 + LATER_COMMITS}, open and count",
                  "seconds", s, "time_travel"),
              row("... rows", "rows", ok("time_travel"), "time_travel"),
              row(f"ingest {n(args.rows)} rows in 10 commits", "ingest", s, "ingest"),
              row("... rows/s", "rows_per_s", "{:,.0f}".format, "ingest"),
              row("... Parquet files, MB (texts' codec: " + ", ".join(
                  f"{f} {res['ingest'][f]['codec']}" for f in FORMATS) + ")", "mb",
                  "{:,.0f}".format, "ingest"),
              row(f"DuckDB GROUP BY over the {n(args.rows)} rows, through Arrow", "arrow", s,
                  "ingest"),
              row("... over the table's Parquet files (read_parquet)", "parquet", s, "ingest")]
    bad = [f"{step} ({fmt})" for step, r in res.items() for fmt in FORMATS
           if fmt in r and not r[fmt]["ok"] and step != "merge_concurrent_library"]
    lib = res["merge_concurrent_library"]["iceberg"]
    lines += ["", f"The same {MERGERS} concurrent merges into an Iceberg table left with "
              f"pyiceberg's own commit retries (its default): {n(lib['rows'])} rows for "
              f"{n(lib['want'])} ids, {n(lib['rows'] - lib['distinct'])} of them a second copy "
              f"of an id; {n(lib['retries'])} retries."]
    lines += ["", "Checks (row counts, no id twice, merges inserting exactly the new rows, the "
              "two DuckDB answers equal): " + ("all passed." if not bad else
                                               "FAILED: " + ", ".join(bad)), ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="20,000 rows: a check in under a minute")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    if args.quick:
        args.rows = 20_000
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as root:
        res = run(args, root)
    text = report(args, res, (load_before, os.getloadavg()[0]))
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(text)
    print(text)
    if "FAILED" in text:
        sys.exit(1)


if __name__ == "__main__":
    main()
