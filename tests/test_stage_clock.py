"""The demo's stage lines: iteration, stage, elapsed time and what is left, the estimate scaled by
what the run measured so far."""

import io

import pytest

from flywheel.tasks.progress import (
    STAGES,
    StageClock,
    announced,
    clock,
    expected_from_lake,
    on_stage,
    timed,
)

EXPECTED = {s: (100.0, 50.0) for s in STAGES}  # 500 s a first iteration, 250 s a later one


def test_clock_reads_as_minutes_and_hours():
    assert clock(45.4) == "45 s"
    assert clock(725) == "12 min 05 s"
    assert clock(3720) == "1 h 02 min"
    assert clock(-3) == "0 s"


def test_before_any_stage_finished_the_estimate_is_the_table():
    c = StageClock(2, dict(EXPECTED), out=io.StringIO())
    assert c.left("sample_for_annotation", 0) == pytest.approx(500 + 250)
    assert c.left("evaluate", 0) == pytest.approx(100 + 250)
    assert c.left("train_reward_models", 1) == pytest.approx(150)


def test_the_estimate_scales_with_what_was_measured():
    out = io.StringIO()
    c = StageClock(2, dict(EXPECTED), out=out)
    c.started("sample_for_annotation")
    c.finished("sample_for_annotation", 200.0)  # twice the table's 100 s
    c.started("annotate")
    c.finished("annotate", 100.0)
    assert c.scale() == pytest.approx(1.5)
    # three stages of the first iteration and the whole second one, at 1.5 x
    assert c.left("train_reward_models", 0) == pytest.approx(1.5 * (300 + 250))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("[flywheel] iteration 1 of 2 · stage 2 of 5: annotate · ")
    assert lines[1].endswith("left")


def test_the_next_iteration_starts_with_its_first_stage():
    out = io.StringIO()
    c = StageClock(2, dict(EXPECTED), out=out)
    for stage in STAGES:
        c.started(stage)
        c.finished(stage, 50.0)  # half the first iteration's table
    c.started(STAGES[0])
    assert c.index == 1
    assert c.scale() == pytest.approx(0.5)
    last = out.getvalue().splitlines()[-1]
    assert "iteration 2 of 2 · stage 1 of 5: sample for annotation" in last
    # the second iteration's 250 s at half: 2 min 05 s
    assert last.endswith("about 2 min 05 s left")


def test_a_run_continuing_a_lake_expects_later_iterations_only():
    c = StageClock(1, dict(EXPECTED), first_is_first=False, out=io.StringIO())
    assert c.left("sample_for_annotation", 0) == pytest.approx(250)


def test_timed_records_and_announces():
    out = io.StringIO()
    c = StageClock(1, dict(EXPECTED), out=out)
    seconds = {}
    token = on_stage.set(c)
    try:
        with timed(seconds, "annotate"):
            pass
        with announced("policy_update"):
            pass
    finally:
        on_stage.reset(token)
    assert set(seconds) == {"annotate"}
    assert len(c.done) == 2 and c.done[1][1] == 100.0
    assert "stage 4 of 5: policy update" in out.getvalue()
    with timed(seconds, "evaluate"):  # no clock set: timed only
        pass
    assert "evaluate" in seconds


def test_expected_times_from_a_lakes_iterations():
    rows = [{"iteration": i, "stage_seconds": {
        "sample_for_annotation": 10.0 * i, "annotate": 1.0, "train_reward_models": 20.0,
        "rejection_sampling": 30.0, "ppo": 5.0 * (i - 1), "evaluate": 8.0}}
        for i in (1, 2, 3)]
    got = expected_from_lake(rows)
    assert got["sample_for_annotation"] == (10.0, 25.0)
    assert got["policy_update"] == (30.0, 37.5)  # rejection sampling and PPO summed
    assert expected_from_lake([{"iteration": 1, "stage_seconds": {"annotate": 1.0}}]) is None
