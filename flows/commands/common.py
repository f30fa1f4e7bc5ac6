"""What the commands share: the --config and --lake options, loading the config a command is
given (flows/commands/where.py says which), the line that says which config and lake it uses,
and the summary of a landed batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

from cyclopts import Parameter

from flywheel.config import FlywheelConfig, load_config
from flywheel.errors import FlywheelError
from flywheel.flows.commands.where import Choice, find_config, find_lake, packaged, require_lake

ConfigOpt = Annotated[str | None, Parameter(
    help="YAML config (default: $FLYWHEEL_CONFIG, else ./flywheel.yaml, else the packaged "
    "defaults, which name no lake)")]
LakeOpt = Annotated[str | None, Parameter(
    help="lake folder or s3://bucket/prefix (default: $FLYWHEEL_LAKE, else the config's lake)")]
JsonOpt = Annotated[bool, Parameter(help="print the result as JSON")]


def load(config: str | None, lake: str | None, *, need_lake: bool = True, demo: bool = False,
         overrides: dict[str, Any] | None = None) -> FlywheelConfig:
    """The config a command runs with, its lake as named (where.py), and one line on stderr
    saying which config and lake from where. `demo`: only the flags count, defaulting to the
    packaged demo config and its lake. Raises FlywheelError when `need_lake` and nobody named
    a lake."""
    if demo:
        named = Choice(config, "--config") if config else Choice(str(packaged("demo.yaml")),
                                                                 "the demo")
        env: dict[str, str] = {}
    else:
        named = find_config(config)
        env = None
    source = named or Choice(str(packaged("demo.yaml")), "the packaged defaults: no --config, "
                             "FLYWHEEL_CONFIG or ./flywheel.yaml")
    cfg = load_config(source.value, overrides)
    config_lake = cfg.lake if "lake" in cfg.model_fields_set else None
    chosen = find_lake(lake, named, config_lake, env)
    if need_lake:
        chosen = require_lake(chosen)
    if chosen is not None:
        cfg.lake = chosen.value
    print(f"flywheel: config {source}; lake {chosen or '(none named)'}", file=sys.stderr)
    return cfg


def existing_lake(uri: str, create: bool = False, read_only: bool = False):
    """The lake at `uri`, opened; a local one must exist unless `create`. A command that only
    reads opens it `read_only`: it writes nothing, so it works on a read-only mount or with
    read-only credentials."""
    from flywheel.lake.store import Lake

    if "://" not in uri and not Path(uri).exists() and not create:
        raise FlywheelError(f"no lake at {uri}; run `flywheel demo` first or pass --lake")
    return Lake.open(uri, read_only=read_only)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def announce(lake, result, as_json: bool = False) -> int:
    """Print the batch's summary (or, `as_json`, its result dict), emit the batch-landed event
    when a Prefect API is configured; the exit status is 1 when nothing was accepted."""
    from prefect.settings import PREFECT_API_URL

    if as_json:
        print_json(result.to_dict())
    else:
        print(result.summary())
    note = sys.stderr if as_json else sys.stdout
    if result.new and not result.already_ingested:
        if PREFECT_API_URL.value():
            from flywheel.tasks.events import emit_batch_landed

            emit_batch_landed(lake.uri, result.to_dict())
            print(f"event flywheel.batch.landed sent to {PREFECT_API_URL.value()}", file=note)
        else:
            print("no Prefect API configured (PREFECT_API_URL): no batch-landed event sent; "
                  "`flywheel serve` or the next weekly run will pick the batch up", file=note)
    if not result.accepted:
        print("flywheel: nothing was accepted; see the reasons above and the `quarantine` "
              "table", file=sys.stderr)
        return 1
    return 0
