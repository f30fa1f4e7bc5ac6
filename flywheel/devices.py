"""Where training and scoring run: the first CUDA device when torch sees one, else the CPU.

FLYWHEEL_DEVICE overrides the choice for a worker (`cpu`, `cuda`, `cuda:1`): a GPU worker whose
card is kept for vLLM alone can train on its CPUs, or a second card. vLLM engines place
themselves (sampling.tensor_parallel_size, sampling.gpu_memory_utilization); DeepSpeed engines
use their local rank's device."""

from __future__ import annotations

import os

import torch

from flywheel.errors import FlywheelError


def compute_device() -> torch.device:
    """The device for a model this process trains or scores with."""
    name = os.environ.get("FLYWHEEL_DEVICE", "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FlywheelError(f"FLYWHEEL_DEVICE={name!r} is not a torch device ({e}); use cpu, "
                            "cuda or cuda:N, or unset it to choose automatically") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlywheelError(f"FLYWHEEL_DEVICE={name!r} but torch sees no CUDA device on this "
                            "worker; unset it, or set it to cpu")
    if device.type not in ("cpu", "cuda"):
        raise FlywheelError(f"FLYWHEEL_DEVICE={name!r}: only cpu and cuda devices are "
                            "supported")
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's parameters are on."""
    return next(model.parameters()).device
