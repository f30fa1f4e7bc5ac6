"""What lets a crashed or retried iteration resume without redoing finished stages.

Each stage task is cached on its inputs (the config and the small ids it is given), its own
source, and the source of all the code a stage can run (`CodeSource`): every Python file of the
installed flywheel package, and in a checkout the flows/, tasks/ and kernels/ folders that install
beside it as flywheel.flows, flywheel.tasks and flywheel.kernels. An edit to any of them (to the
stage function, or to the fine-tuning, scoring or kernel code it calls) runs the stage again;
a config change runs again the stages that take the config. Its result (ids, lists of ids, small
dicts of metrics) is stored as JSON in the lake under `_prefect/results/`, next to the rows it
points at, so any worker that can read the lake finds it: `in_lake(task, config)`.
A stage that finished is not run again; the one that was cut off runs again, and its rows, keyed
by content, are written at most once.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import INPUTS, RUN_ID, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import RemoteFileSystem
from prefect.utilities.hashing import hash_objects

from flywheel.config import FlywheelConfig
from flywheel.lake.store import Lake
from flywheel.revision import source_hash
from flywheel.stages import common

RESULTS = "_prefect/results"


def code_roots() -> tuple[Path, ...]:
    """The folders of the code a stage runs: the flywheel package and its installed
    subpackages flows, tasks and kernels, each once (installed from a wheel they lie inside the
    package folder; in a checkout, beside it)."""
    folders = []
    for name in ("flywheel", "flywheel.flows", "flywheel.tasks", "flywheel.kernels"):
        spec = importlib.util.find_spec(name)
        folders += [Path(p).resolve() for p in spec.submodule_search_locations]
    return tuple(sorted(p for p in set(folders)
                        if not any(q != p and q in p.parents for q in folders)))


@dataclass
class CodeSource(CachePolicy):
    """A cache key from the source of every Python file under `roots` (default: `code_roots()`),
    read when the key is computed, so that an edit anywhere in the library, the tasks, the flows
    or the kernels runs the stage again."""

    roots: tuple[Path, ...] = field(default_factory=code_roots)

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        return hash_objects([(p.name, source_hash(p)) for p in self.roots])


def stage_cache(roots: tuple[Path, ...] | None = None) -> CachePolicy:
    """Inputs + the task's own source + the source of all the code under `roots` (default:
    the installed flywheel code, `code_roots()`)."""
    code = CodeSource() if roots is None else CodeSource(roots=tuple(roots))
    return INPUTS + TASK_SOURCE + code


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
