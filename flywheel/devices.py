"""Where training and scoring run: the first CUDA device when torch sees one, else the CPU.

FLYWHEEL_DEVICE overrides the choice for a worker (`cpu`, `cuda`, `cuda:1`): a GPU worker whose
card is kept for vLLM alone can train on its CPUs, or a second card. vLLM engines place
themselves (sampling.tensor_parallel_size, sampling.gpu_memory_utilization); DeepSpeed engines
use their local rank's device. Where a device computes in bfloat16 natively (`native_bf16`),
`auto` precision trains under bfloat16 autocast and samples with bfloat16 weights."""

from __future__ import annotations

import contextlib
import functools
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


def native_bf16(device: torch.device | None = None) -> bool:
    """Whether `device` (default: `compute_device()`) computes in bfloat16 natively: a CUDA card
    that supports it, or a CPU with AVX-512 BF16 or AMX (elsewhere torch emulates bfloat16 on
    the CPU, several times slower than float32)."""
    device = device or compute_device()
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


@functools.cache
def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_dtype(dtype: str, device: torch.device | None = None) -> str:
    """A configured weights dtype, `auto` resolved: bfloat16 where `native_bf16`, else
    float32."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if native_bf16(device) else "float32"


def autocast(precision: str, device: torch.device):
    """The context a training step's forward pass runs in: bfloat16 autocast (float32 weights,
    optimizer and loss; matrix products in bfloat16) for `bf16`, and for `auto` where
    `native_bf16(device)`; float32 throughout for `fp32`."""
    if precision == "bf16" or (precision == "auto" and native_bf16(device)):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
