"""Device choice for training and scoring."""

import pytest
import torch

from flywheel.devices import compute_device
from flywheel.errors import FlywheelError


def test_auto_is_cuda_when_torch_sees_it(monkeypatch):
    monkeypatch.delenv("FLYWHEEL_DEVICE", raising=False)
    assert compute_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_override_and_its_errors(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_DEVICE", "cpu")
    assert compute_device() == torch.device("cpu")
    monkeypatch.setenv("FLYWHEEL_DEVICE", "gpu0")
    with pytest.raises(FlywheelError, match="not a torch device"):
        compute_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("FLYWHEEL_DEVICE", "cuda:0")
        with pytest.raises(FlywheelError, match="sees no CUDA device"):
            compute_device()
    monkeypatch.setenv("FLYWHEEL_DEVICE", "meta")
    with pytest.raises(FlywheelError, match="only cpu and cuda"):
        compute_device()
