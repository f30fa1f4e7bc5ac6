"""The command line's failure modes: one clear message naming the fix, exit status 2, no
traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


# --- which config and lake a command uses (flows/commands/where.py) ---------------------------

def test_config_is_the_flag_then_the_environment_then_the_local_file(tmp_path):
    from flywheel.flows.commands.where import find_config

    env = {"FLYWHEEL_CONFIG": "/etc/fw.yaml"}
    assert find_config("a.yaml", env, tmp_path).origin == "--config"
    assert find_config(None, env, tmp_path) == find_config(None, env, tmp_path)
    assert find_config(None, env, tmp_path).value == "/etc/fw.yaml"
    assert find_config(None, {}, tmp_path) is None  # nothing named
    (tmp_path / "flywheel.yaml").write_text("name: x\n")
    local = find_config(None, {}, tmp_path)
    assert (local.value, local.origin) == (str(tmp_path / "flywheel.yaml"), "./flywheel.yaml")
    assert find_config(None, env, tmp_path).origin == "FLYWHEEL_CONFIG"  # env beats the file


def test_lake_is_the_flag_then_the_environment_then_a_named_configs(tmp_path):
    from flywheel.errors import FlywheelError
    from flywheel.flows.commands.where import Choice, find_lake, require_lake

    named = Choice("fw.yaml", "--config")
    env = {"FLYWHEEL_LAKE": "s3://b/lake"}
    assert str(find_lake("./l", named, "./c", env)) == "./l (from --lake)"
    assert str(find_lake(None, named, "./c", env)) == "s3://b/lake (from FLYWHEEL_LAKE)"
    assert str(find_lake(None, named, "./c", {})) == "./c (from `lake:` of fw.yaml)"
    # the packaged defaults' lake (no config named) or a config without `lake:` names none
    assert find_lake(None, None, "./flywheel-demo/lake", {}) is None
    assert find_lake(None, named, None, {}) is None
    with pytest.raises(FlywheelError, match="pass --lake .* set FLYWHEEL_LAKE, or run `flywheel "
                       "init`"):
        require_lake(None)


def test_packaged_configs_are_found():
    from flywheel.config import load_config
    from flywheel.flows.commands.where import packaged

    assert load_config(packaged("demo.yaml")).name == "demo"
    assert packaged("prefect.yaml").read_text().startswith("#")


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A folder outside the checkout with no config, and no FLYWHEEL_* names in the env."""
    for var in ("FLYWHEEL_CONFIG", "FLYWHEEL_LAKE", "PREFECT_API_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


GOOD = {"prompt": "How do I boil an egg?", "response_a": "Eight minutes in boiling water.",
        "response_b": "Eggs.", "chosen": "a", "strength": "better",
        "criterion": "helpfulness", "annotator": "ann-1"}


def test_a_lake_nobody_named_is_refused(capsys, elsewhere):
    path = _delivery(elsewhere, [GOOD])
    for argv in (["ingest", path], ["status"], ["lineage", "abc"], ["run"], ["check"]):
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and "no lake named; pass --lake" in err, argv
    assert list(elsewhere.iterdir()) == [Path(path)]  # nothing written, no ./flywheel-demo


def test_the_lake_from_the_environment_is_used_and_reported(capsys, elsewhere, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_LAKE", str(elsewhere / "env-lake"))
    rc, out, err = _run(capsys, "ingest", _delivery(elsewhere, [GOOD]), "--json")
    assert rc == 0
    result = json.loads(out)  # stdout is the result alone
    assert (result["batch_id"], result["accepted"], result["new"]) == ("week-3", 1, 1)
    assert f"lake {elsewhere / 'env-lake'} (from FLYWHEEL_LAKE)" in err
    assert "config " in err and "(from the packaged defaults" in err
    from flywheel.lake.store import Lake

    assert len(Lake.open(str(elsewhere / "env-lake")).rows("comparisons")) == 1


def test_demo_names_its_own_config_and_lake(capsys, elsewhere, monkeypatch):
    from flywheel.flows.commands.common import load

    monkeypatch.setenv("FLYWHEEL_LAKE", "s3://someone-elses/lake")
    (elsewhere / "flywheel.yaml").write_text("lake: ./mine\n")
    cfg = load(None, None, demo=True)
    assert (cfg.name, cfg.lake) == ("demo", "./flywheel-demo/lake")
    assert "(from the demo); lake ./flywheel-demo/lake (from `lake:` of" in capsys.readouterr().err
    assert load(None, None).lake == "s3://someone-elses/lake"  # any other command: the env
    monkeypatch.delenv("FLYWHEEL_LAKE")
    assert load(None, None).lake == "./mine"  # then ./flywheel.yaml


# --- init, check -----------------------------------------------------------------------------

def test_init_writes_a_config_of_ones_own(capsys, elsewhere):
    """A hub-named policy: init converts nothing. The file validates, holds the given choices
    with absolute paths, and commands in its folder find it."""
    import yaml

    from flywheel.config import load_config

    prompts = elsewhere / "prompts.jsonl"
    prompts.write_text('{"text": "Hi?"}\n')
    rc, out, err = _run(capsys, "init", "--dir", "proj", "--policy", "org/chat-7b",
                        "--prompts", "prompts.jsonl", "--annotation", "human")
    assert rc == 0, err
    target = elsewhere / "proj" / "flywheel.yaml"
    assert f"wrote {target}" in out and "default model ready" not in out
    cfg = load_config(target)
    assert (cfg.name, cfg.lake, cfg.prompts.path) == ("proj", str(elsewhere / "proj" / "lake"),
                                                      str(prompts))
    assert (cfg.models.policy, cfg.models.reward_backbone) == ("org/chat-7b", "org/chat-7b")
    assert (cfg.annotation.mode, cfg.annotation.wait_hours) == ("human", 144)
    text = target.read_text()
    assert "benchmarks/" not in text and text.count("\n#") + text.count("\n  #") >= 10
    assert list(yaml.safe_load(text)) == ["name", "lake", "models", "prompts", "sampling",
                                          "annotation", "policy_update"]  # short
    rc, _, err = _run(capsys, "init", "--dir", "proj")
    assert rc == 2 and "exists; edit it, or pass --force" in err
    rc, _, err = _run(capsys, "init", "--prompts", "missing.jsonl")
    assert rc == 2 and "prompt file missing.jsonl does not exist" in err


def test_check_lists_every_problem(capsys, elsewhere):
    (elsewhere / "flywheel.yaml").write_text(
        f"lake: {elsewhere / 'lake'}\nmodels:\n  policy: ./no-model\n"
        "prompts:\n  path: ./no-prompts.jsonl\n")
    rc, out, err = _run(capsys, "check")
    assert rc == 2 and "2 check(s) failed" in err
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert [f.split(":")[0] for f in fails] == ["FAIL  models.policy ./no-model",
                                                "FAIL  prompts ./no-prompts.jsonl"]
    assert f"ok    lake {elsewhere / 'lake'}" in out


# --- the command line itself -----------------------------------------------------------------

def _help(capsys, *argv) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def _commands(help_text: str) -> list[str]:
    """The command names in a help page's Commands panel."""
    names, inside = [], False
    for line in help_text.splitlines():
        if line.startswith("╭"):
            inside = " Commands " in line
        elif inside and line.startswith("│ ") and line[2] != " ":
            if not line.split()[1].startswith("-"):
                names.append(line.split()[1])
    return names


def test_bare_flywheel_prints_the_help(capsys):
    assert main([]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Usage: flywheel COMMAND") and "│ init " in text


def test_version_is_the_code_revision(capsys):
    from flywheel import __version__
    from flywheel.revision import code_revision

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == (f"rlhf-flywheel {__version__} "
                                               f"(code revision {code_revision()})")


def _pages(capsys) -> dict[str, str]:
    """The help page of every command, a group's subcommands as "group sub"."""
    pages = {}
    for command in _commands(_help(capsys)):
        text = _help(capsys, command)
        subcommands = _commands(text)
        if subcommands:  # a group: its subcommands are the commands
            pages |= {f"{command} {c}": _help(capsys, command, c) for c in subcommands}
        else:
            pages[command] = text
    return pages


def test_every_command_has_a_description_and_an_example(capsys):
    commands = _commands(_help(capsys))
    assert commands[:7] == ["init", "bootstrap", "check", "plan-resources", "demo", "run",
                            "status"]
    pages = _pages(capsys)
    assert {"annotate export", "annotate import", "annotate serve", "lake migrate", "ingest",
            "lineage", "rank-agent"} <= set(pages)
    for name, text in pages.items():
        usage, description = text.split("\n\n")[:2]
        assert usage.startswith(f"Usage: flywheel {name}") and description.strip(), name
        assert f"Example: flywheel {name}" in text, name


def test_readme_command_table_matches_the_help(capsys):
    """README's "Command line" section lists every command of `flywheel --help`, and only
    those (a group's subcommands each on its own line)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Command line")[1].split("\n## ")[0]
    pages = _pages(capsys)
    groups = {name.split()[0] for name in pages if " " in name}
    listed = {" ".join(line.split()[1:3]) if line.split()[1] in groups else line.split()[1]
              for line in section.splitlines() if line.startswith("    flywheel ")}
    assert listed == set(pages)


def test_a_usage_error_is_one_line_and_status_2(capsys):
    rc, _, err = _run(capsys, "demo", "--iterations", "0")
    assert rc == 2 and err.strip() == ('flywheel: error: Invalid value "0" for --iterations. '
                                       "Must be >= 1.")
    rc, _, err = _run(capsys, "annotate", "export", "--format", "csv")
    assert rc == 2 and err.startswith("flywheel: error:") and "label-studio" in err
