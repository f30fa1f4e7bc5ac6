"""The command line's failure modes: one clear message naming the fix, exit status 2, no
traceback."""

import os
import subprocess
import sys
from pathlib import Path

from flows.cli import main


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
