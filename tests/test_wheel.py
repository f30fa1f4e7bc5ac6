"""The package a user installs: a wheel built from this checkout, installed into a fresh
virtual environment outside it, runs `flywheel init`, `check` and `status` in a folder of its
own.

Offline and fast: the wheel goes in with --no-deps, and a .pth file in the new environment puts
this environment's site-packages (Prefect, torch, ...) after its own, so `flywheel` itself comes
from the wheel (a .pth file's own .pth files are not read: the checkout's editable finder stays
out). The default models converted by `flywheel bootstrap` are reused from $FLYWHEEL_HOME.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _sources(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked, and new ones it does not ignore), copied
    so the build writes nothing into the shared checkout."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, names.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to build from")
    src = _sources(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(src)], check=True, capture_output=True,
                   timeout=300)
    (whl,) = out.glob("rlhf_flywheel-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh environment with the wheel installed; returns its `flywheel`."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=False)
    bin_dir = env_dir / "bin"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install",
                    "--no-deps", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    site = subprocess.run([str(bin_dir / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "zz_flywheel_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    return bin_dir / "flywheel"


def test_the_wheel_holds_one_top_level_package_and_the_default_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    # no top-level flows, tasks or kernels to collide with other distributions' packages
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"flywheel"}
    for package in ("flows", "tasks", "kernels"):  # installed under flywheel/ only
        assert f"flywheel/{package}/__init__.py" in names
    assert {"flywheel/deployments/demo.yaml", "flywheel/deployments/prefect.yaml",
            "flywheel/data/demo_prompts.jsonl", "flywheel/flows/commands/where.py"} <= set(names)


def _flywheel(exe: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "FLYWHEEL_CONFIG", "FLYWHEEL_LAKE", "PREFECT_API_URL")}
    # the models `flywheel bootstrap` converted on this machine (the default home, or the one
    # the environment names)
    env.setdefault("FLYWHEEL_HOME", str(Path.home() / ".cache" / "rlhf-flywheel"))
    return subprocess.run([str(exe), *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_init_check_status_outside_the_checkout(installed, tmp_path):
    from flywheel.config import load_config

    home = Path(os.environ.get("FLYWHEEL_HOME", Path.home() / ".cache" / "rlhf-flywheel"))
    if not (home / "models" / "SmolLM2-135M-Instruct" / ".complete").exists():
        pytest.skip(f"the default model is not converted under {home}; run `flywheel bootstrap`")
    work = tmp_path / "my-flywheel"
    work.mkdir()
    assert ROOT not in work.parents

    version = _flywheel(installed, work, "--version")
    assert version.returncode == 0 and "+src" in version.stdout  # no checkout: a source hash

    p = _flywheel(installed, work, "init")
    assert p.returncode == 0, p.stderr
    config = work / "flywheel.yaml"
    cfg = load_config(config)
    assert (cfg.name, cfg.lake) == ("my-flywheel", str(work / "lake"))
    assert "benchmarks/" not in config.read_text()
    assert yaml.safe_load(config.read_text())["annotation"] == {
        "mode": "simulated", "batch_name": "iteration-{iteration:04d}", "wait_hours": 144}

    p = _flywheel(installed, work, "check")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("\nok    ") + p.stdout.startswith("ok    ") == 6
    assert p.stdout.rstrip().endswith("ready to run")
    assert f"config {config} (from ./flywheel.yaml)" in p.stderr

    p = _flywheel(installed, work, "status", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["lake"] == str(work / "lake") and report["iterations"] == []
    assert set(report["counts"].values()) == {0}

    # the demo's config comes from inside the installed package (its lake here is unreachable,
    # so the run stops at the preflight check)
    (tmp_path / "a-file").write_text("x")
    p = _flywheel(installed, tmp_path, "demo", "--lake", str(tmp_path / "a-file" / "lake"))
    assert p.returncode == 2 and "unreachable or not writable" in p.stderr, p.stderr
    assert "site-packages/flywheel/deployments/demo.yaml (from the demo)" in p.stderr
    p = _flywheel(installed, tmp_path, "ingest", "x.jsonl")  # no ./flywheel.yaml here
    assert p.returncode == 2 and "no lake named" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "flywheel-demo").exists()
