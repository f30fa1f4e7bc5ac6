"""The stage reads bench_lake_scale.py measures, each in a fresh `spawn`ed process: what a
stage reads of the lake, called as the stage calls it (or its read lines, where the stage also
samples or trains), with its wall time and peak memory."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from _scale_lake import ITERATIONS

from flywheel.annotation.pairs import week_pairs
from flywheel.config import FlywheelConfig
from flywheel.lake import legacy
from flywheel.lake.catalog import connect, rows_by_id, status
from flywheel.lake.lineage import lineage
from flywheel.lake.store import Lake
from flywheel.reward.evaluation import find_test_sets
from flywheel.reward.mixes import mixes_for
from flywheel.stages.common import by_id, iteration_start, lineage_root
from flywheel.stages.evaluate import _earlier_answers
from flywheel.stages.pool import pool_prompts, pool_samples


def read_week_pairs(uri: str, arg):
    return len(week_pairs(Lake.open(uri, read_only=True), arg))


def read_annotate(uri: str, arg):
    """annotate's reads: the samples of the week's pairs and their prompts."""
    with connect(Lake.open(uri, read_only=True)) as con:
        samples = rows_by_id(con, "samples", arg, ["prompt_id", "text"])
        prompts = rows_by_id(con, "prompts", [s["prompt_id"] for s in samples.values()],
                             ["criterion", "messages"])
    return len(samples), len(prompts)


def read_rs_pool(uri: str, arg):
    """rejection_sample's reads: the pool (the newest earlier pool file, every earlier
    iteration's best; this one's best are in memory, `arg`) and the pool's prompts."""
    lake = Lake.open(uri, read_only=True)
    samples = pool_samples(lake, ITERATIONS, arg)
    prompts = pool_prompts(lake, [s["prompt_id"] for s in samples.values()])
    return len(samples), len(prompts)


def read_evaluation(uri: str, arg):
    """evaluate's reads: the policies, then the earlier greedy answers of the candidate, the
    policy its iteration started from and the base."""
    lake, cfg = Lake.open(uri, read_only=True), FlywheelConfig()
    candidate = by_id(lake.rows("policies"))[arg["candidate"]]
    found = 0
    for policy in (candidate, iteration_start(lake, candidate), lineage_root(lake, candidate)):
        found += len(_earlier_answers(cfg, lake, policy, arg["prompts"]) or [])
    return found


def read_mixes(uri: str, arg):
    """retrain's reads before training: both mixes and the test sets, on one connection."""
    mix_cfg = FlywheelConfig().reward_model.mix.model_copy(update={"allow_short": True})
    with connect(Lake.open(uri, read_only=True)) as con:
        mixes = mixes_for(con, mix_cfg)
        sets = find_test_sets(con)
    return mixes["helpfulness"].counts["total"], mixes["safety"].counts["total"], len(sets)


def read_status(uri: str, arg):
    return len(status(Lake.open(uri, read_only=True))["iterations"])


def read_lineage(uri: str, arg):
    return len(lineage(Lake.open(uri, read_only=True), arg)["ancestry"])


def read_whole_samples(uri: str, arg):
    """The earlier way: every stage that used samples read the whole table as dicts."""
    return len(legacy.read(Lake(uri), "samples").to_pylist())


def _child(fn, uri, arg, conn) -> None:
    """Runs in the fresh process, its modules (this one's imports) already loaded."""
    Path("/proc/self/clear_refs").write_text("5")  # the peak so far is the imports'
    base = peak_rss()
    t0 = time.perf_counter()
    n = fn(uri, arg)
    seconds = time.perf_counter() - t0
    conn.send((seconds, peak_rss() - base, n))


def peak_rss() -> int:
    """The process's peak RSS in bytes since it was last reset (VmHWM). Not `ru_maxrss`: a
    spawned child's counts the RSS of the parent it was forked from before its exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status: peak memory needs Linux")


def measure(fn, uri: str, arg) -> tuple[float, int, object, float, int]:
    """(seconds, peak bytes, what the read returned, highest 1-minute load average seen, the
    process's exit code: one that returned its result and then crashed on the way out is
    kept, and reported)."""
    load = os.getloadavg()[0]
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    p = ctx.Process(target=_child, args=(fn, uri, arg, there))
    p.start()
    out = here.recv() if here.poll(3600) else None
    p.join()
    if out is None:
        raise SystemExit(f"{fn.__name__} exited with {p.exitcode} before it returned")
    return (*out, max(load, os.getloadavg()[0]), p.exitcode)


def available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0
