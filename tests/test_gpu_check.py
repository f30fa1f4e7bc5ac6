"""benchmarks/gpu_check.py, the check of every training stage on all of a machine's GPUs: where
torch sees no CUDA GPU it refuses and writes nothing; its config (printed without a GPU) is a
valid one that puts every training section on the GPUs and runs all three policy-update methods
over its two iterations; per-rank memory is found wherever a stage keeps its training metrics."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from flywheel.config import validate_config

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: the check would run")
def test_gpu_check_refuses_without_cuda_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu_check.md"
    p = _run("--out", str(out), "--lake", str(tmp_path / "lake"), cwd=tmp_path)
    assert p.returncode == 2
    assert "no CUDA GPU is visible to torch here" in p.stderr and "--print-config" in p.stderr
    assert "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []  # no lake, no results file


def test_gpu_check_config_trains_every_stage_on_every_gpu(tmp_path):
    p = _run("--print-config", "--gpus", "8", "--lake", str(tmp_path / "lake"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cfg = validate_config(yaml.safe_load(p.stdout))
    assert cfg.lake == str(tmp_path / "lake")
    for section in (cfg.reward_model, cfg.rejection_sampling, cfg.policy_update.rrhf,
                    cfg.policy_update.ppo):
        assert section.resources.plan() == (1, 8)
    one, two = cfg.policy_update.for_iteration(1), cfg.policy_update.for_iteration(2)
    assert (one, two) == (["rejection_sampling", "ppo"], ["rrhf"])
    assert cfg.sampling.dtype == "bfloat16"


def test_gpu_check_finds_each_stages_ranks():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    ranks = [{"rank": 0, "peak_memory_bytes": 3 * 2**30}, {"rank": 1, "peak_memory_bytes": 2**30}]
    for metrics in ({"training": {"loss_last": 0.5, "ranks": ranks}, "gate": {}},  # reward model
                    {"finetune": {"ranks": ranks}},  # rejection sampling
                    {"rrhf": {"ranks": ranks}},
                    {"ppo_steps": [], "ranks": ranks}):
        assert gpu_check.ranks_of(metrics) == ranks
    assert gpu_check.ranks_of({"training": {"optimizer_state_bytes": 8}}) is None  # one process
    assert gpu_check._gib(3 * 2**30) == "3.00"
