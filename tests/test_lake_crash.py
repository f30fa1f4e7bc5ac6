"""The lake under concurrent writers and kill -9, locally and on S3 (moto's server): after
every trial the lake opens and answers, each delivery is whole or absent, nothing is doubled,
and running the ingest again completes it.

Racing workers are `spawn`ed processes kept for the module (delta-rs' runtime does not survive
`fork`); a trial makes them start their ingest at the same agreed instant."""

from __future__ import annotations

import multiprocessing
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import lake_racers
import pytest
from s3 import moto_s3

from flywheel.annotation.ingest import ingest_bytes
from flywheel.lake.catalog import connect, status
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake

TRIALS = 20
GOOD, BAD = 60, 20  # rows of each racers' delivery


# on moto's server (one Python process answering every request) a trial takes about ten times
# as long: the S3 runs are in the slow suite
@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def where(request, tmp_path_factory):
    """(a function giving a fresh lake URI, a pool of two racing workers) on a local folder
    or on a bucket of moto's S3 server; the workers see the server's endpoint."""
    ctx = multiprocessing.get_context("spawn")
    if request.param == "local":
        root = tmp_path_factory.mktemp("lakes")
        with ctx.Pool(2) as pool:
            yield (lambda: str(root / uuid.uuid4().hex[:8])), pool
        return
    with moto_s3() as (_, bucket), ctx.Pool(2) as pool:
        yield (lambda: f"s3://{bucket}/{uuid.uuid4().hex[:8]}"), pool


def _race(pool, uri: str, jobs: list[tuple[bytes, str]]) -> list[dict]:
    start = time.time() + 0.5
    waiting = [pool.apply_async(lake_racers.ingest, (uri, data, name, start))
               for data, name in jobs]
    return [w.get(timeout=180) for w in waiting]


def _delivery_id(batch: str, data: bytes) -> str:
    import hashlib

    return content_id("delivery", batch, hashlib.sha256(data).hexdigest())


def _check(lake: Lake, deliveries: dict[str, tuple[int, int]]) -> dict[str, bool]:
    """The lake opens and answers; each delivery is whole (its accepted and rejected rows all
    visible, one batches row) or absent (none visible); no id twice. Returns which are whole."""
    assert status(lake)["counts"] is not None
    con = connect(lake)
    for table in ("all_comparisons", "all_quarantine", "batches", "prompts"):
        n, distinct = con.execute(f"SELECT count(*), count(DISTINCT id) FROM {table}").fetchall()[0]
        assert n == distinct, f"{table} holds an id twice"
    whole = {}
    for delivery_id, (accepted, rejected) in deliveries.items():
        seen = [con.execute(f"SELECT count(*) FROM {t} WHERE delivery_id = ?", [delivery_id]
                            ).fetchall()[0][0] for t in ("comparisons", "quarantine")]
        batches = con.execute("SELECT count(*) FROM batches WHERE id = ?", [delivery_id]
                              ).fetchall()[0][0]
        assert (seen, batches) in (([accepted, rejected], 1), ([0, 0], 0)), (seen, batches)
        whole[delivery_id] = batches == 1
    con.close()
    return whole


def test_the_same_file_ingested_twice_at_once_lands_once(where):
    new_lake, pool = where
    data = lake_racers.delivery("same")
    for _ in range(TRIALS):
        uri = new_lake()
        results = _race(pool, uri, [(data, "week-1.jsonl"), (data, "week-1.jsonl")])
        # one of the two reports the rows (and would send the batch-landed event)
        fresh = [r for r in results if not r["already_ingested"]]
        assert len(fresh) == 1, results
        assert (fresh[0]["accepted"], fresh[0]["new"], fresh[0]["rejected"]) == (GOOD, GOOD, BAD)
        assert all(r["delivery_id"] == fresh[0]["delivery_id"] for r in results)
        assert _check(Lake.open(uri), {fresh[0]["delivery_id"]: (GOOD, BAD)}) == {
            fresh[0]["delivery_id"]: True}


def test_different_files_ingested_at_once_both_land_whole(where):
    new_lake, pool = where
    files = [(lake_racers.delivery("first"), "week-1.jsonl"),
             (lake_racers.delivery("second"), "week-2.jsonl")]
    for _ in range(TRIALS):
        uri = new_lake()
        results = _race(pool, uri, files)
        assert [(r["accepted"], r["new"], r["already_ingested"]) for r in results] == [
            (GOOD, GOOD, False)] * 2
        whole = _check(Lake.open(uri), {r["delivery_id"]: (GOOD, BAD) for r in results})
        assert all(whole.values())


def test_kill_9_anywhere_in_an_ingest_leaves_it_whole_or_absent_and_a_rerun_completes_it(
        where, tmp_path):
    new_lake, _ = where
    data = lake_racers.delivery("killed")
    path = tmp_path / "week-1.jsonl"
    path.write_bytes(data)
    delivery_id = _delivery_id("week-1", data)
    racer = Path(lake_racers.__file__)
    # how long one whole ingest takes here, so the kills spread over all of it
    uri = new_lake()
    Lake.open(uri)
    t0 = time.perf_counter()
    ingest_bytes(Lake.open(uri), data, "week-1.jsonl", cfg=lake_racers.CFG)
    duration = time.perf_counter() - t0
    rng = random.Random(0)
    outcomes = []
    for trial in range(TRIALS):
        uri = new_lake()
        child = subprocess.Popen([sys.executable, str(racer), uri, str(path)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(rng.uniform(0, duration * 1.1))
        child.kill()
        child.wait(timeout=60)
        lake = Lake.open(uri)
        outcomes.append(_check(lake, {delivery_id: (GOOD, BAD)})[delivery_id])
        again = ingest_bytes(lake, data, "week-1.jsonl", cfg=lake_racers.CFG)
        assert again.already_ingested == outcomes[-1]
        assert (again.accepted, again.new, again.rejected) == (GOOD, GOOD, BAD)
        assert _check(lake, {delivery_id: (GOOD, BAD)}) == {delivery_id: True}
        heldout = connect(lake).execute(
            "SELECT count(*) FROM comparisons WHERE split = 'test'").fetchall()[0][0]
        assert heldout == again.heldout == round(0.2 * GOOD)
    # most kills must land inside the ingest, or the test proves little
    assert outcomes.count(False) >= TRIALS // 2, outcomes
