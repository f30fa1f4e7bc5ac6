"""The reward-model data mixes on small lakes built through ingest (tests/mix_lake.py).

Lake A (train rows): 10 in-house helpfulness (6 in week-1, 4 in week-2), 6 in-house safety
(4 + 2), 8 harmless, 4 open-source helpfulness; 8 test rows.

    helpfulness mix   kept 10 in-house helpfulness; sampled 10 of the 6 + 8 + 4 = 18 pool rows;
                      total 20
    safety mix        S = 6 + 8 = 14 kept; round(14 / 9) = round(1.56) = 2 sampled of the
                      10 + 4 = 14 helpfulness rows; total 16 (14 / 16 = 87.5 % safety)
    batches [week-1]  helpfulness: kept 6, sampled 6 of 4 + 8 + 4 = 16, total 12;
                      safety: S = 4 + 8 = 12 kept, round(12 / 9) = round(1.33) = 1 sampled of
                      6 + 4 = 10, total 13

Which pool rows are sampled is re-derived here with Python's hashlib: the pool sorted by
md5("<seed>:<id>") hex digest (then id), first N.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from mix_lake import build, ids_by_group

from flywheel.errors import DataError
from flywheel.lake.catalog import connect
from flywheel.lake.store import Lake
from flywheel.reward.mixes import helpfulness_mix, mix_record, safety_mix


@pytest.fixture(scope="module")
def lake_a(tmp_path_factory) -> Lake:
    return build(Lake.open(str(tmp_path_factory.mktemp("mix-a") / "lake")))


@pytest.fixture(scope="module")
def groups(lake_a):
    return ids_by_group(lake_a)


def expected_sample(pool: set[str], seed: int, n: int) -> set[str]:
    ranked = sorted(pool, key=lambda i: (hashlib.md5(f"{seed}:{i}".encode()).hexdigest(), i))
    return set(ranked[:n])


def test_the_lake_holds_what_the_layout_says(groups):
    sizes = {k: len(v) for k, v in groups.items()}
    assert sizes == {
        ("in-house", "helpfulness", "train"): 10, ("in-house", "safety", "train"): 6,
        ("harmless", "safety", "train"): 8, ("open-source", "helpfulness", "train"): 4,
        ("in-house", "helpfulness", "test"): 3, ("in-house", "safety", "test"): 2,
        ("harmless", "safety", "test"): 2, ("open-source", "helpfulness", "test"): 1,
    }


def test_helpfulness_mix(lake_a, groups):
    mix = helpfulness_mix(lake_a, seed=0)
    ih_help = groups["in-house", "helpfulness", "train"]
    ih_safe = groups["in-house", "safety", "train"]
    open_source = groups["harmless", "safety", "train"] | groups["open-source", "helpfulness",
                                                                   "train"]
    sampled = expected_sample(ih_safe | open_source, 0, 10)
    ids = mix.ids.to_pylist()
    assert len(ids) == len(set(ids)) == 20
    assert set(ids) == ih_help | sampled
    assert mix.counts == {
        "in-house helpfulness": 10, "in-house safety": len(sampled & ih_safe),
        "open-source": len(sampled & open_source), "total": 20, "sample wanted": 10,
        "sample short": 0,
    }
    assert mix.counts["in-house safety"] + mix.counts["open-source"] == 10
    assert ids == sorted(ids)
    assert mix.seed == 0 and mix.batches is None and "md5" in mix.sql


def test_safety_mix(lake_a, groups):
    mix = safety_mix(lake_a, seed=0)
    kept = groups["in-house", "safety", "train"] | groups["harmless", "safety", "train"]
    ih_help = groups["in-house", "helpfulness", "train"]
    os_help = groups["open-source", "helpfulness", "train"]
    sampled = expected_sample(ih_help | os_help, 0, 2)
    assert set(mix.ids.to_pylist()) == kept | sampled
    assert mix.counts == {
        "in-house safety": 6, "anthropic harmless": 8,
        "in-house helpfulness": len(sampled & ih_help),
        "open-source helpfulness": len(sampled & os_help),
        "total": 16, "sample wanted": 2, "sample short": 0,
    }


def test_test_rows_never_enter_a_mix(lake_a, groups):
    test_ids = set().union(*(v for (_, _, split), v in groups.items() if split == "test"))
    assert len(test_ids) == 8
    for seed in range(5):
        for mix in (helpfulness_mix(lake_a, seed=seed), safety_mix(lake_a, seed=seed)):
            assert not test_ids & set(mix.ids.to_pylist())


def test_same_seed_same_ids_other_seed_other_sample(lake_a, groups):
    a, b = helpfulness_mix(lake_a, seed=0), helpfulness_mix(lake_a, seed=0)
    c = helpfulness_mix(lake_a, seed=1)
    assert a.ids.to_pylist() == b.ids.to_pylist()
    assert set(a.ids.to_pylist()) != set(c.ids.to_pylist())
    # the in-house helpfulness rows are in every sample; only the sampled part moves
    ih_help = groups["in-house", "helpfulness", "train"]
    assert ih_help <= set(c.ids.to_pylist())
    pool = groups["in-house", "safety", "train"] | groups["harmless", "safety", "train"] | \
        groups["open-source", "helpfulness", "train"]
    assert set(c.ids.to_pylist()) - ih_help == expected_sample(pool, 1, 10)
    assert mix_record(a) == mix_record(b) != mix_record(c)


def test_batches_limit_the_in_house_rows(lake_a, groups):
    week1 = {r["id"] for r in lake_a.rows("comparisons") if r["batch_id"] == "week-1"}
    week2 = {r["id"] for r in lake_a.rows("comparisons") if r["batch_id"] == "week-2"}
    help_mix = helpfulness_mix(lake_a, seed=0, batches=["week-1"])
    safe_mix = safety_mix(lake_a, seed=0, batches=["week-1"])
    assert help_mix.counts["in-house helpfulness"] == 6 and help_mix.counts["total"] == 12
    assert help_mix.counts["sample wanted"] == 6 and help_mix.counts["sample short"] == 0
    assert safe_mix.counts["in-house safety"] == 4 and safe_mix.counts["anthropic harmless"] == 8
    assert safe_mix.counts["sample wanted"] == 1 and safe_mix.counts["total"] == 13
    for mix in (help_mix, safe_mix):
        ids = set(mix.ids.to_pylist())
        assert not ids & week2
        assert ids & week1
        assert mix.batches == ["week-1"]


def test_an_open_connection_gives_the_same_mix(lake_a):
    con = connect(lake_a)
    assert safety_mix(con, seed=3).ids.to_pylist() == safety_mix(lake_a, seed=3).ids.to_pylist()
    con.execute("SELECT 1").fetchall()  # the caller's connection is left open


def test_unknown_batch_is_one_clear_error(lake_a):
    with pytest.raises(DataError, match=r"unknown in-house batch ids \['week-3'\].*week-1"):
        helpfulness_mix(lake_a, batches=["week-1", "week-3"])
    with pytest.raises(DataError, match=r"pass \['week-1'\]"):
        safety_mix(lake_a, batches="week-1")


def test_mix_record_is_json_with_the_hash_of_the_sorted_ids(lake_a):
    mix = safety_mix(lake_a, seed=0, batches=["week-1", "week-2"])
    record = json.loads(json.dumps(mix_record(mix)))
    ids = sorted(mix.ids.to_pylist())
    assert record["ids_sha256"] == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    assert record["counts"] == mix.counts and record["counts"]["total"] == 16
    assert record["seed"] == 0 and record["batches"] == ["week-1", "week-2"]
    assert record["mix"] == "safety" and record["sql"] == mix.sql


LAKE_B = {
    "b1.jsonl": [("in-house", "helpfulness", "train", 12), ("in-house", "helpfulness", "test", 1)],
    "b2.jsonl": [("in-house", "safety", "train", 10)],
}


def test_a_pool_too_small_fails_naming_what_is_missing_or_is_taken_whole(tmp_path):
    """Lake B: 12 in-house helpfulness (b1), 10 in-house safety (b2), no open-source rows.
    helpfulness: kept 12, wanted 12, pool 10 -> an error naming the 2 missing rows; with
    allow_short all 10 are taken, short 2, total 22.
    safety on [b2]: S = 10, wanted round(10 x 0.1 / 0.9) = 1, pool 0 (b1 left out) -> short 1.
    helpfulness on [b2]: no in-house helpfulness rows -> empty mix, an error."""
    lake = build(Lake.open(str(tmp_path / "lake")), LAKE_B)
    with pytest.raises(DataError, match=r"helpfulness mix cannot meet its ratio: it wants 12 "
                       r"rows .*holds 10 .*\(2 missing\).*helpfulness_extra.*allow_short"):
        helpfulness_mix(lake)
    mix = helpfulness_mix(lake, allow_short=True)
    assert mix.counts == {"in-house helpfulness": 12, "in-house safety": 10, "open-source": 0,
                          "total": 22, "sample wanted": 12, "sample short": 2}
    with pytest.raises(DataError, match="safety mix cannot meet its ratio.*1 missing"):
        safety_mix(lake, batches=["b2"])
    mix = safety_mix(lake, batches=["b2"], allow_short=True)
    assert mix.counts == {"in-house safety": 10, "anthropic harmless": 0,
                          "in-house helpfulness": 0, "open-source helpfulness": 0,
                          "total": 10, "sample wanted": 1, "sample short": 1}
    with pytest.raises(DataError, match="helpfulness mix is empty: no in-house helpfulness.*b2"):
        helpfulness_mix(lake, batches=["b2"])


def test_ratios_are_config(tmp_path):
    """Lake B again. helpfulness extra 0.5: 12 kept + round(6) sampled of the 10 safety rows.
    safety share 0.5: 10 kept + round(10 x 0.5 / 0.5) = 10 sampled of the 12 helpfulness rows;
    share 0.2: round(10 x 0.25) = round(2.5) = 3 (halves away from zero, as DuckDB rounds).
    extra 0 gives the in-house helpfulness rows alone."""
    lake = build(Lake.open(str(tmp_path / "lake")), LAKE_B)
    mix = helpfulness_mix(lake, extra=0.5)
    assert (mix.counts["in-house safety"], mix.counts["sample wanted"], mix.counts["total"]) == (
        6, 6, 18)
    mix = safety_mix(lake, helpfulness_share=0.5)
    assert (mix.counts["in-house helpfulness"], mix.counts["total"]) == (10, 20)
    assert safety_mix(lake, helpfulness_share=0.2).counts["in-house helpfulness"] == 3
    assert helpfulness_mix(lake, extra=0).counts["total"] == 12
    for bad in (-1, "1"):
        with pytest.raises(DataError, match="extra must be a number"):
            helpfulness_mix(lake, extra=bad)
    with pytest.raises(DataError, match=r"share must be in \[0, 1\)"):
        safety_mix(lake, helpfulness_share=1.0)


def test_mixes_for_reads_the_config(tmp_path):
    from flywheel.config import MixConfig
    from flywheel.reward.mixes import mixes_for

    lake = build(Lake.open(str(tmp_path / "lake")), LAKE_B)
    both = mixes_for(lake, MixConfig(helpfulness_extra=0.5, safety_helpfulness_share=0.5))
    assert both["helpfulness"].counts["total"] == 18 and both["safety"].counts["total"] == 20
    with pytest.raises(DataError, match="cannot meet its ratio"):
        mixes_for(lake, MixConfig())
