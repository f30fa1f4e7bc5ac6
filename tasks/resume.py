"""What lets a crashed or retried iteration resume without redoing finished stages.

Each stage task is cached on its inputs (the config and the small ids it is given), its own
source and the source of the library function it runs (`STAGE_CACHE`). Its result (ids, lists of
ids, small dicts of metrics) is stored as JSON in the lake under `_prefect/results/`, next to the
rows it points at, so any worker that can read the lake finds it: `in_lake(task, config)`.
A stage that finished is not run again; the one that was cut off runs again, and its rows, keyed
by content, are written at most once.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prefect import task
from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import RemoteFileSystem
from prefect.utilities.hashing import hash_objects

from flywheel.config import FlywheelConfig
from flywheel.lake.store import Lake
from flywheel.stages import common

RESULTS = "_prefect/results"


@dataclass
class LibrarySource(CachePolicy):
    """A cache key from the source of the library functions a task runs, so that a change to
    the stage's code in flywheel/ (not only to the thin task) runs the stage again."""

    functions: tuple[Callable, ...] = field(default_factory=tuple)

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        return hash_objects([inspect.getsource(f) for f in self.functions])


def stage_cache(*functions: Callable) -> CachePolicy:
    """Inputs + the task's source + the library functions' source."""
    return INPUTS + TASK_SOURCE + LibrarySource(functions=tuple(functions))


@functools.cache
def _remote_block(uri: str) -> str:
    """A saved remote-file-system block for a remote results folder (tasks take only saved
    blocks or local paths); its name comes from the URI, so saving it again changes nothing."""
    name = "flywheel-results-" + hashlib.sha256(uri.encode()).hexdigest()[:12]
    RemoteFileSystem(basepath=uri).save(name, overwrite=True)
    return f"remote-file-system/{name}"


def lake_storage(config: FlywheelConfig) -> Path | str:
    """The result storage of a config's stages: a folder in its lake."""
    lake = Lake(config.lake)
    uri = lake.url(RESULTS)
    return Path(uri) if lake.local else _remote_block(uri)


def in_lake(stage, config: FlywheelConfig):
    """The task with its results (and cache records) persisted as JSON in the config's lake."""
    return stage.with_options(result_storage=lake_storage(config), persist_result=True,
                              result_serializer="json")


@task(name="resolve-iteration", cache_policy=RUN_ID, persist_result=True,
      result_serializer="json")
def resolve_iteration(config: FlywheelConfig) -> int:
    """The lake's next iteration, fixed for the flow run: a retry of the same run gets the same
    number even if the first attempt got as far as recording its iteration."""
    return common.next_iteration(common.open_lake(config))
