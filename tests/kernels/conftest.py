"""Kernel tests run each Triton kernel on this CPU through Triton's interpreter. The interpreter
is chosen when a kernel is decorated, so the fixture re-imports a kernel module with
TRITON_INTERPRET=1, and afterwards re-imports it without, so later tests see the usual dispatch."""

import importlib
import os

import pytest


@pytest.fixture(scope="module")
def interpreted():
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    loaded = []

    def load(name: str):
        module = importlib.reload(importlib.import_module(name))
        loaded.append(module)
        return module

    yield load
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old
    for module in loaded:
        importlib.reload(module)
