"""The command line's failure modes: one clear message naming the fix, exit status 2, no
traceback."""

import os
import subprocess
import sys
from pathlib import Path

from flywheel.flows.cli import main


def _run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_bad_config_lists_every_problem(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  backend: nope\nreward_model:\n  epochs: 0\n")
    rc, _, err = _run(capsys, "run", "--config", str(bad))
    assert rc == 2
    assert err.startswith("flywheel: error:") and "2 problem(s)" in err
    assert "sampling.backend" in err and "reward_model.epochs" in err
    assert "Traceback" not in err


def test_missing_model_names_bootstrap(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "empty-home"))
    rc, _, err = _run(capsys, "run", "--lake", str(tmp_path / "lake"))
    assert rc == 2 and "run `flywheel bootstrap`" in err and "Traceback" not in err


def test_unreachable_lake(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, _, err = _run(capsys, "demo", "--lake", str(blocker / "lake"))
    assert rc == 2 and "unreachable or not writable" in err and "--lake" in err


def test_status_of_a_missing_lake(capsys, tmp_path):
    rc, _, err = _run(capsys, "status", "--lake", str(tmp_path / "none"))
    assert rc == 2 and "run `flywheel demo` first" in err


def test_console_script_prints_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("flywheel")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lake: [1, 2]\nextra_key: 1\n")
    p = subprocess.run([str(exe), "run", "--config", str(bad)], capture_output=True, text=True,
                       env={**os.environ, "PREFECT_HOME": str(tmp_path)}, timeout=120)
    assert p.returncode == 2
    assert "lake: Input should be a valid string" in p.stderr and "extra_key" in p.stderr
    assert "Traceback" not in p.stderr


def test_run_one_iteration_then_status(capsys, tmp_path, tiny_config, prefect_server,
                                       monkeypatch):
    """`flywheel run` against a running server (PREFECT_API_URL), then `flywheel status`."""
    import yaml

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config.model_dump()))
    rc, out, err = _run(capsys, "run", "--config", str(cfg))
    assert rc == 0, err
    assert "iteration 1:" in out and f"Prefect server: {prefect_server.removesuffix('/api')}" in out
    rc, out, _ = _run(capsys, "status", "--config", str(cfg))
    assert rc == 0
    assert "#1:" in out and "iterations 1" in out and "batches:" in out
    rc, out, _ = _run(capsys, "status", "--lake", tiny_config.lake, "--json")
    assert rc == 0 and '"iteration": 1' in out
    # lineage of the iteration's candidate: its parent, reward model, batch and delivered file
    import json

    from flywheel.lake.store import Lake

    lake = Lake.open(tiny_config.lake)
    (candidate,) = [p for p in lake.rows("policies") if p["method"] == "rejection_sampling"]
    rc, out, err = _run(capsys, "lineage", candidate["id"][:8], "--lake", tiny_config.lake,
                        "--json")
    assert rc == 0, err
    info = json.loads(out)
    first, base = info["ancestry"]
    assert first["id"] == candidate["id"] and base["method"] == "base"
    assert [r["criterion"] for r in first["reward_models"]] == ["helpfulness", "safety"]
    rm = first["reward_models"][0]
    assert rm["batches"] == ["iteration-0001-simulated"] and rm["promoted"] is True
    assert rm["data_mix"]["ids_file"].endswith("data_mix.parquet")
    (delivery,) = rm["deliveries"]
    assert delivery["filename"] == "iteration-0001-simulated.jsonl"
    assert lake.read_bytes(delivery["raw_uri"].removeprefix(lake.uri + "/"))
    rc, out, _ = _run(capsys, "lineage", candidate["id"], "--lake", tiny_config.lake)
    assert rc == 0 and "batch iteration-0001-simulated:" in out
    rc, _, err = _run(capsys, "lineage", "zzzz", "--lake", tiny_config.lake)
    assert rc == 2 and "is not a policy or reward model id" in err


def _delivery(tmp_path, rows) -> str:
    import json

    path = tmp_path / "week-3.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_ingest_prints_counts_by_reason_and_fails_when_nothing_lands(capsys, tmp_path,
                                                                     monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    good = {"prompt": "How do I boil an egg?", "response_a": "Eight minutes in boiling water.",
            "response_b": "Eggs.", "chosen": "a", "strength": "better",
            "criterion": "helpfulness", "annotator": "ann-1"}
    lake = str(tmp_path / "lake")
    path = _delivery(tmp_path, [good, dict(good, chosen="x"), dict(good, response_b="")])
    rc, out, _ = _run(capsys, "ingest", path, "--lake", lake)
    assert rc == 0
    assert "3 delivered, 1 accepted (1 new, 0 already in the lake), 2 rejected" in out
    assert "invalid_chosen" in out and "empty_response" in out
    rc, out, _ = _run(capsys, "ingest", path, "--lake", lake)
    assert rc == 0 and out.startswith("already ingested, nothing to do")
    bad = _delivery(tmp_path, [dict(good, annotator=None)])
    rc, out, err = _run(capsys, "ingest", bad, "--lake", lake, "--batch-id", "week-3b")
    assert rc == 1 and "missing_annotator" in out and "nothing was accepted" in err
    rc, _, err = _run(capsys, "ingest", str(tmp_path / "nope.jsonl"), "--lake", lake)
    assert rc == 2 and "no batch file" in err


def test_import_an_open_source_set(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    harmless = data / "hh_rlhf_harmless_base_test_dev.jsonl.gz"
    if not harmless.exists():
        import pytest

        pytest.skip(f"{harmless} is missing (the shared data folder)")
    lake = str(tmp_path / "lake")
    rc, out, err = _run(capsys, "import", str(harmless), "--lake", lake, "--limit", "100",
                        "--split", "test")
    assert rc == 0, err
    assert "100 delivered" in out
    from flywheel.lake.store import Lake

    rows = Lake.open(lake).rows("comparisons")
    assert rows and {r["criterion"] for r in rows} == {"safety"}
    assert {r["source"] for r in rows} == {"anthropic-hh-rlhf/harmless-base"}
    assert {r["split"] for r in rows} == {"test"}
