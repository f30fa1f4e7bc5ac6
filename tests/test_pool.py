"""Rejection sampling's pool read: the newest earlier pool file, `samples` for what it lacks."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from flywheel.lake.store import Lake
from flywheel.stages.pool import POOL_FILE, pool_prompts, pool_samples, read_pool, write_pool


def _sample(i: int, iteration: int) -> dict:
    return {"id": f"s{i}", "prompt_id": f"p{i % 3}", "policy_id": "pol", "iteration": iteration,
            "purpose": "rejection", "params": json.dumps({"max_new_tokens": 8}),
            "text": f"answer {i}", "token_count": i, "logprob_sum": -1.0}


def _policy(lake: Lake, pid: str, iteration: int, best: list[str], method="rejection_sampling"):
    row = {"id": pid, "iteration": iteration, "uri": lake.artifact_uri("policies", pid),
           "method": method, "training_data": json.dumps({"best": best}), "metrics": "{}"}
    lake.write("policies", [row])
    return row


def test_the_pool_comes_from_the_newest_file_and_samples_fill_the_rest(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("samples", [_sample(i, 1 + i // 4) for i in range(12)])
    samples = {r["id"]: r for r in lake.rows("samples")}
    _policy(lake, "it1", 1, ["s0", "s1"])
    p2 = _policy(lake, "it2", 2, ["s4", "s5"])
    _policy(lake, "ppo3", 3, ["s8"], method="ppo")  # not a rejection-sampling pool
    # iteration 2's pool file holds iterations 1 and 2's best, with a text the lake does not
    # have, so a row read from the file is told from one read from `samples`
    folder = tmp_path / "it2"
    folder.mkdir()
    from_file = {i: {**samples[i], "text": f"file {i}"} for i in ("s0", "s1", "s4", "s5")}
    write_pool(str(folder), from_file, kept={"s0", "s4"})
    lake.put_artifact("policies", "it2", folder, {})
    assert [r["kept"] for r in read_pool(lake, p2).to_pylist()] == [True, False, True, False]

    current = {"s9": samples["s9"]}
    pool = pool_samples(lake, 4, current)
    assert sorted(pool) == ["s0", "s1", "s4", "s5", "s9"]
    assert {i: pool[i]["text"] for i in pool} == {
        "s0": "file s0", "s1": "file s1", "s4": "file s4", "s5": "file s5", "s9": "answer 9"}
    assert pool["s5"]["iteration"] == 2 and pool["s5"]["token_count"] == 5

    # a rerun of iteration 2 whose best the file lacks: fetched from samples
    _policy(lake, "it2b", 2, ["s6"])
    pool = pool_samples(lake, 4, {})
    assert pool["s6"]["text"] == "answer 6" and pool["s0"]["text"] == "file s0"

    # no file at all (policies from before pool files): everything from samples
    lake.fs.rm(lake._p(lake.artifact_uri("policies", "it2"), POOL_FILE))
    pool = pool_samples(lake, 3, {})
    assert sorted(pool) == ["s0", "s1", "s4", "s5", "s6"]
    assert all(pool[i]["text"] == samples[i]["text"] for i in pool)


def test_the_pool_file_is_sorted_and_typed(tmp_path):
    rows = {f"s{i}": _sample(i, 1) for i in (3, 1, 2)}
    write_pool(str(tmp_path), rows, kept={"s1"})
    table = pq.read_table(tmp_path / POOL_FILE)
    assert table["id"].to_pylist() == ["s1", "s2", "s3"]
    assert table["kept"].to_pylist() == [True, False, False]
    assert table.schema.field("iteration").type == "int64"


def test_the_pool_prompts_are_the_ones_asked_for(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("prompts", [{"id": f"p{i}", "messages": json.dumps([{"role": "user",
                                                                     "content": f"q{i}"}]),
                            "source": "t", "criterion": "safety" if i % 2 else "helpfulness",
                            "split": "train"} for i in range(5)])
    got = pool_prompts(lake, ["p1", "p4", "p1"])
    assert sorted(got) == ["p1", "p4"]
    assert got["p1"]["criterion"] == "safety" and json.loads(got["p4"]["messages"]) == [
        {"role": "user", "content": "q4"}]


def test_what_a_policy_learned_is_its_nearest_pool_files_learned_column(tmp_path):
    import pyarrow as pa

    from flywheel.stages.pool import learned_by

    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("samples", [_sample(i, 1 + i // 4) for i in range(8)])
    samples = {r["id"]: r for r in lake.rows("samples")}
    base = {"id": "base", "iteration": 0, "uri": "builtin:x", "method": "base",
            "training_data": "{}", "metrics": "{}", "parent_id": None}
    lake.write("policies", [base])
    assert learned_by(lake, base) == set()
    it1 = {**_policy(lake, "it1", 1, ["s0", "s1"]), "parent_id": "base"}
    lake.write("policies", [it1])
    folder = tmp_path / "it1"
    folder.mkdir()
    write_pool(str(folder), {i: samples[i] for i in ("s0", "s1")}, kept={"s0"})
    lake.put_artifact("policies", "it1", folder, {})
    assert learned_by(lake, it1) == {"s0"}  # the cap left s1 out: not learned
    # iteration 2 fine-tuned on the new ones only: its file says what it learned with its parent
    it2 = {**_policy(lake, "it2", 2, ["s4"]), "parent_id": "it1"}
    lake.write("policies", [it2])
    folder = tmp_path / "it2"
    folder.mkdir()
    write_pool(str(folder), {i: samples[i] for i in ("s0", "s1", "s4")}, kept={"s1", "s4"},
               learned_before=learned_by(lake, it1))
    lake.put_artifact("policies", "it2", folder, {})
    assert read_pool(lake, it2)["kept"].to_pylist() == [False, True, True]
    assert learned_by(lake, it2) == {"s0", "s1", "s4"}
    # PPO on top has no pool of its own: its parent's
    ppo = {**_policy(lake, "ppo2", 2, [], method="ppo"), "parent_id": "it2"}
    lake.write("policies", [ppo])
    assert learned_by(lake, ppo) == {"s0", "s1", "s4"}
    # a file from before the learned column: its kept (then the whole pool was fine-tuned on)
    old = pa.Table.from_pylist([{"id": "s0", "kept": True}, {"id": "s1", "kept": False}])
    pq.write_table(old, tmp_path / "old.parquet")
    lake.fs.put(str(tmp_path / "old.parquet"),
                lake._p(lake.artifact_uri("policies", "it1"), POOL_FILE))
    assert learned_by(lake, it1) == {"s0"}
