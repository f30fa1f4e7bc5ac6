"""Retraining both reward models on a lake: the Llama 2 mixes, evaluation on every test set with
Table 8 buckets, the ids stored with each checkpoint, the promotion gate (including a bad batch
that it must refuse) and resume after a crash (`flywheel evaluate-rm`: test_evaluate_rm.py)."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from mix_lake import build, jsonl, row

from flywheel.annotation.ingest import ingest_bytes
from flywheel.config import validate_config
from flywheel.lake.catalog import connect
from flywheel.lake.store import Lake
from flywheel.reward.evaluation import find_test_sets
from flywheel.reward.mixes import helpfulness_mix, safety_mix
from flywheel.reward.retrain import current_models, gate, retrain


@pytest.fixture
def rm_config(tmp_path, tiny_llama):
    return validate_config({
        "lake": str(tmp_path / "lake"),
        "models": {"policy": tiny_llama, "reward_backbone": tiny_llama},
        # strong enough for the tiny model to learn "good" over "worse" in a few epochs
        "reward_model": {"learning_rate": 2e-3, "epochs": 4, "batch_size": 4,
                         "micro_batch_size": 4, "max_length": 128,
                         "mix": {"allow_short": True}, "promotion_tolerance": 0.1},
    })


def _stored_ids(lake: Lake, rm_id: str, name: str) -> pq.Table:
    return pq.read_table(io.BytesIO(lake.read_bytes(f"artifacts/reward_models/{rm_id}/{name}")))


# the gate on its own ----------------------------------------------------------------------------
def _current(acc: dict[str, float]) -> dict:
    return {"id": "rm-old", "criterion": "helpfulness", "metrics": json.dumps(
        {"test_sets": {k: {"accuracy": v, "criterion": "helpfulness"} for k, v in acc.items()}})}


def test_gate_promotes_the_first_model_and_one_within_tolerance():
    assert gate({"a": True}, None, {}, 0.02)[:2] == (
        True, "promoted: the first reward model of its kind")
    # current 0.75 on set s (4 rows); the candidate gets 3 of 4 -> 0.75: no change
    hits = {"1": True, "2": True, "3": True, "4": False}
    ok, why, compared = gate(hits, _current({"s": 0.75}), {"s": ["1", "2", "3", "4"]}, 0.0)
    assert ok and "within 0.0 on its 1 test set(s)" in why
    assert compared == [{"test set": "s", "n": 4, "current": 0.75, "candidate": 0.75,
                         "change": 0.0}]


def test_gate_keeps_the_current_model_when_one_set_drops_beyond_tolerance():
    """Set s1: 1.0 -> 0.5 (a drop of 0.5); set s2: 0.5 -> 1.0. With tolerance 0.25 the drop on
    s1 alone keeps the current model; with tolerance 0.5 it is allowed (exactly at the bound)."""
    hits = {"1": True, "2": False, "3": True, "4": True}
    sets = {"s1": ["1", "2"], "s2": ["3", "4"]}
    ok, why, compared = gate(hits, _current({"s1": 1.0, "s2": 0.5}), sets, 0.25)
    assert not ok
    assert why == "kept rm-old: accuracy fell by more than 0.25 on s1 1.000 -> 0.500"
    assert [c["change"] for c in compared] == [-0.5, 0.5]
    assert gate(hits, _current({"s1": 1.0, "s2": 0.5}), sets, 0.5)[0]


def test_gate_with_nothing_to_compare_promotes_and_says_so():
    ok, why, _ = gate({"9": True}, _current({"s": 1.0}), {"s": ["1", "2"]}, 0.0)
    assert ok and "has no test set to compare on" in why


# retraining on a lake ---------------------------------------------------------------------------
def test_retrain_trains_both_models_on_their_mixes_with_table8_metrics(rm_config):
    """tests/mix_lake.py's lake: every chosen response is 'a good answer ...' and every
    rejected one 'a worse answer ...', so a trained model should rank nearly all test rows."""
    lake = build(Lake.open(rm_config.lake))
    at_training = lake.versions()
    results = retrain(rm_config, lake, iteration=1, batch_id="week-2")
    assert set(results) == {"helpfulness", "safety"}
    rows = {r["id"]: r for r in lake.rows("reward_models")}
    con = connect(lake)
    sets = {s.name: s for s in find_test_sets(con)}
    expected_mix = {"helpfulness": helpfulness_mix(con, allow_short=True),
                    "safety": safety_mix(con, allow_short=True)}
    con.close()
    assert set(sets) == {
        "week-1 · helpfulness", "week-1 · safety", "week-2 · helpfulness", "week-2 · safety",
        "anthropic-hh-rlhf/harmless-base · safety", "ultrafeedback-binarized · helpfulness"}
    for kind, r in results.items():
        row_ = rows[r["id"]]
        assert r["promoted"] and r["current"] == r["id"] and row_["criterion"] == kind
        assert row_["decision"] == "promoted: the first reward model of its kind"
        mix = json.loads(row_["data_mix"])
        # the exact rows of the mix are stored with the checkpoint, and match the mix query
        ids = _stored_ids(lake, r["id"], "data_mix.parquet").column("id").to_pylist()
        assert ids == expected_mix[kind].ids.to_pylist()
        assert mix["counts"] == expected_mix[kind].counts and mix["seed"] == 0
        assert mix["batches"] == ["week-1", "week-2"]
        # so are the test sets it was scored on
        stored = _stored_ids(lake, r["id"], "test_sets.parquet").to_pylist()
        assert {(x["set"], x["id"]) for x in stored} == {
            (name, i) for name, s in sets.items() for i in s.ids}
        m = json.loads(row_["metrics"])
        assert set(m["test_sets"]) == set(sets)
        assert m["test_sets"]["week-1 · helpfulness"]["n"] == 2
        own = m["in_house"]
        assert own["n"] == (3 if kind == "helpfulness" else 2)
        assert own["by_strength"]["better"]["n"] == own["n"]  # mix_lake labels all 'better'
        assert own["accuracy"] >= 0.5 and m["train"]["accuracy"] >= 0.75
        if kind == "safety":
            assert own["by_safety_label"]["both_safe"]["n"] == 2
        assert m["training"]["loss_last"] < m["training"]["loss_first"]
    assert {k: v["id"] for k, v in current_models(lake).items()} == {
        k: r["id"] for k, r in results.items()}
    # retried (a crash after the rows were written): the same ids, nothing trained or added
    again = retrain(rm_config, lake, iteration=1, batch_id="week-2")
    assert {k: r["id"] for k, r in again.items()} == {k: r["id"] for k, r in results.items()}
    assert len(lake.rows("reward_models")) == 2
    # each model records the table versions it read; once more rows land, those versions
    # still give back its mix exactly
    ingest_bytes(lake, jsonl([row(f"week-3/{i}", "in-house", crit, "train")
                              for i, crit in enumerate(["helpfulness", "safety"] * 3)]),
                 "week-3.jsonl")
    mixes = {"helpfulness": helpfulness_mix, "safety": safety_mix}
    for kind, r in results.items():
        versions = json.loads(rows[r["id"]]["data_mix"])["table_versions"]
        assert versions == at_training and versions["comparisons"] is not None
        ids = _stored_ids(lake, r["id"], "data_mix.parquet").column("id").to_pylist()
        then = lake.read("comparisons", version=versions["comparisons"])
        assert set(ids) <= set(then.column("id").to_pylist())
        assert then.num_rows < lake.read("comparisons", ["id"]).num_rows
        with connect(lake, versions) as con:
            assert mixes[kind](con, allow_short=True).ids.to_pylist() == ids
        with connect(lake) as con:  # the lake as it is now draws another mix
            assert mixes[kind](con, allow_short=True).ids.to_pylist() != ids


def test_a_batch_of_flipped_labels_is_refused_by_the_gate(rm_config):
    """The helpfulness model alone, on in-house rows alone (helpfulness_extra 0): first on the
    10 good train rows of weeks 1-2. Week 3 then delivers 30 helpfulness rows whose labels are
    flipped (the worse answer chosen), outnumbering the good ones 3 to 1: the retrained model
    learns the reverse, loses accuracy on the current model's test sets, and the current model
    stays."""
    from flywheel.annotation.ingest import ingest_bytes

    rm_config.reward_model.mix.helpfulness_extra = 0.0
    lake = build(Lake.open(rm_config.lake))
    first = retrain(rm_config, lake, iteration=1, kinds=("helpfulness",))["helpfulness"]
    assert first["promoted"]
    bad = [{**row(f"week-3/{i}", "in-house", "helpfulness", "train"), "chosen": "b"}
           for i in range(30)]
    ingest_bytes(lake, jsonl(bad), "week-3.jsonl")
    second = retrain(rm_config, lake, iteration=2, kinds=("helpfulness",))["helpfulness"]
    new = {r["id"]: r for r in lake.rows("reward_models")}[second["id"]]
    assert new["iteration"] == 2 and new["promoted"] is False
    assert second["current"] == first["id"]  # the current model stays in use
    assert new["decision"].startswith(f"kept {first['id']}: accuracy fell by more than 0.1 on ")
    gate_info = json.loads(new["metrics"])["gate"]
    assert gate_info["promoted"] is False
    fell = [c["test set"] for c in gate_info["compared"] if c["change"] < -0.1]
    assert fell and all(name in new["decision"] for name in fell)
    assert {c["test set"] for c in gate_info["compared"]} == {
        "week-1 · helpfulness", "week-2 · helpfulness", "ultrafeedback-binarized · helpfulness"}
    assert json.loads(new["data_mix"])["counts"]["in-house helpfulness"] == 40
    assert current_models(lake)["helpfulness"]["id"] == first["id"]


def test_a_kind_without_data_is_not_trained_and_no_data_at_all_is_one_error(rm_config):
    """Only helpfulness comparisons so far: the helpfulness model trains, the safety one is
    skipped with the reason. Only test rows: nothing can train, one error names what is
    missing."""
    from flywheel.errors import DataError

    lake = build(Lake.open(rm_config.lake), {"h.jsonl": [("in-house", "helpfulness", "train", 4),
                                                         ("in-house", "helpfulness", "test", 1)]})
    results = retrain(rm_config, lake, iteration=1)
    assert results["helpfulness"]["promoted"]
    assert results["safety"]["id"] is None and results["safety"]["current"] is None
    assert results["safety"]["decision"].startswith(
        "not trained: the safety mix is empty: no in-house safety or anthropic harmless train "
        "comparisons")
    assert [r["criterion"] for r in lake.rows("reward_models")] == ["helpfulness"]
    other = build(Lake.open(rm_config.lake + "-2"), {"t.jsonl": [
        ("in-house", "safety", "test", 2)]})
    with pytest.raises(DataError, match="no reward model can be trained: the helpfulness mix is "
                       "empty.*; the safety mix is empty.*flywheel import"):
        retrain(rm_config, other, iteration=1)
    assert other.rows("reward_models") == []
