"""Kernel tests run each Triton kernel on this CPU through Triton's interpreter, which
tests/conftest.py switches on before triton is first imported."""

import importlib
import os

import pytest


@pytest.fixture(scope="module")
def interpreted():
    """`interpreted("flywheel.kernels.x")` -> the kernel module, its kernels under the
    interpreter."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not 1: these tests run the kernels on the CPU")
    return importlib.import_module
