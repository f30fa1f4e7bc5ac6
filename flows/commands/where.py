"""Which config and which lake a command uses, and where each came from. Plain Python: no
Prefect, no command-line library, so it is unit-tested on its own.

The config, the first found of:
    --config FILE          the flag
    $FLYWHEEL_CONFIG       the environment
    ./flywheel.yaml        the file `flywheel init` writes, in the current folder
otherwise the packaged defaults (the demo's settings, deployments/demo.yaml), whose lake
nobody named.

The lake, the first found of:
    --lake URI             the flag
    $FLYWHEEL_LAKE         the environment
    the config's `lake:`   only when a config was named (by flag, environment or ./flywheel.yaml)
A command that reads or writes a lake refuses to run when none of them names one, so a stray
`flywheel ingest` never writes into the demo's lake. `flywheel demo` is the one command that names
its own: it reads only its flags, and defaults to the packaged demo config and its lake.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from flywheel.errors import FlywheelError

CONFIG_ENV = "FLYWHEEL_CONFIG"
LAKE_ENV = "FLYWHEEL_LAKE"
LOCAL_CONFIG = "flywheel.yaml"

NO_LAKE = ("no lake named; pass --lake (a folder or s3://bucket/prefix), set FLYWHEEL_LAKE, or "
           "run `flywheel init` to write ./flywheel.yaml with one (`flywheel demo` uses its own, "
           "./flywheel-demo/lake)")


def packaged(name: str) -> Path:
    """A file of the repository's deployments/ folder (demo.yaml, prefect.yaml), which a wheel
    ships as package data of `flywheel.deployments`."""
    path = Path(str(resources.files("flywheel.deployments") / name))
    if not path.is_file():
        raise FlywheelError(f"the packaged {name} is missing at {path}; reinstall rlhf-flywheel")
    return path


@dataclass(frozen=True)
class Choice:
    """A value and where it came from (`origin`), as a command reports it."""

    value: str
    origin: str

    def __str__(self) -> str:
        return f"{self.value} (from {self.origin})"


def find_config(flag: str | None, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> Choice | None:
    """The config a user named, or None when nobody did."""
    env = os.environ if env is None else env
    if flag:
        return Choice(flag, "--config")
    if env.get(CONFIG_ENV):
        return Choice(env[CONFIG_ENV], CONFIG_ENV)
    local = (cwd or Path.cwd()) / LOCAL_CONFIG
    if local.is_file():
        return Choice(str(local), f"./{LOCAL_CONFIG}")
    return None


def find_lake(flag: str | None, config: Choice | None, config_lake: str | None,
              env: Mapping[str, str] | None = None) -> Choice | None:
    """The lake a user named: the flag, the environment, or the `lake:` (`config_lake`) of a
    config they named (`config`); None when nobody named one."""
    env = os.environ if env is None else env
    if flag:
        return Choice(flag, "--lake")
    if env.get(LAKE_ENV):
        return Choice(env[LAKE_ENV], LAKE_ENV)
    if config is not None and config_lake:
        return Choice(config_lake, f"`lake:` of {config.value}")
    return None


def require_lake(lake: Choice | None) -> Choice:
    if lake is None:
        raise FlywheelError(NO_LAKE)
    return lake
