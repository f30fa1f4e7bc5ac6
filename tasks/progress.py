"""Progress of a run, for the person watching it.

- `training_progress`: in the Prefect UI, each training run inside the block (a reward model,
  the policy fine-tune) gets a progress artifact, updated as its optimizer steps finish.
- `timed` / `StageClock`: the weekly flow times each stage with `timed`; a run that sets a
  `StageClock` (the demo does) prints one line as each stage starts, above the progress bars:
  the iteration, the stage, the time elapsed and an estimate of what is left. The estimate is a
  table of expected stage times (the lake's earlier iterations', else the demo's measured ones)
  scaled by how this run's finished stages compared with their expected times.
"""

from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from tqdm.auto import tqdm

from flywheel.training import on_step


@contextmanager
def training_progress(key: str):
    """Progress artifacts keyed `<key>-<what is trained>`, e.g. iteration-1-safety-reward-model;
    updated at most once per percent, so a long run makes about a hundred API calls."""
    shown: dict[str, tuple[UUID, int]] = {}

    def listener(what: str, done: int, total: int) -> None:
        percent = 100 * done // max(1, total)
        text = f"{what}: step {done} of {total}"
        if what not in shown:
            slug = re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-")
            shown[what] = (create_progress_artifact(percent, key=f"{key}-{slug}",
                                                    description=text), percent)
        elif percent > shown[what][1]:
            shown[what] = (update_progress_artifact(shown[what][0], percent, description=text),
                           percent)

    token = on_step.set(listener)
    try:
        yield
    finally:
        on_step.reset(token)


# The stages of an iteration in the order the weekly flow runs them; `policy_update` stands for
# whichever methods the iteration runs (the iteration row records them by method).
STAGES = ("sample_for_annotation", "annotate", "train_reward_models", "policy_update",
          "evaluate")
# Expected seconds of each stage of deployments/demo.yaml on two idle CPU cores (a Xeon with
# AMX, bfloat16), in a first iteration and in a later one after a promotion: run J of
# benchmarks/results/demo_stages.md (2026-12-07), whose second iteration came after a rollback
# (its policy update, refitting both weeks, took 934 s); after a promotion the update fine-tunes
# one week's answers, as the first iteration does. Only their proportions matter once a stage
# has finished: the estimate is scaled by what this run measured.
DEMO_STAGE_SECONDS = {
    "sample_for_annotation": (97.0, 65.0),
    "annotate": (14.0, 15.0),
    "train_reward_models": (88.0, 184.0),
    "policy_update": (485.0, 485.0),
    "evaluate": (185.0, 114.0),
}

POLICY_METHODS = ("rejection_sampling", "rrhf", "ppo")


def expected_from_lake(iterations: list[dict]) -> dict[str, tuple[float, float]] | None:
    """Expected stage seconds from a lake's recorded iterations (their `stage_seconds`, the
    policy-update methods summed): the first iteration's as the first, the mean of the later
    ones' (else the first's) as a later one. None when none recorded every stage."""
    runs = []
    for row in sorted(iterations, key=lambda r: r["iteration"]):
        s = row.get("stage_seconds") or {}
        per = {k: s[k] for k in STAGES if k in s}
        update = [s[m] for m in POLICY_METHODS if m in s]
        if update:
            per["policy_update"] = sum(update)
        if set(per) == set(STAGES):
            runs.append(per)
    if not runs:
        return None
    later = runs[1:] or runs[:1]
    return {k: (runs[0][k], sum(r[k] for r in later) / len(later)) for k in STAGES}


@dataclass
class StageClock:
    """Where a run of `iterations` iterations stands. `expected`: seconds per stage, (first
    iteration, later one); `first_is_first`: whether the run's first iteration is the lake's
    first (a later one needs no base-policy answers and starts fewer engines)."""

    iterations: int
    expected: dict[str, tuple[float, float]] = field(
        default_factory=lambda: dict(DEMO_STAGE_SECONDS))
    first_is_first: bool = True
    out: object = None  # a file; None: stderr
    started_at: float = field(default_factory=time.perf_counter)
    done: list[tuple[float, float]] = field(default_factory=list)  # (measured, expected)
    index: int = 0  # the iteration of this run, 0-based
    current: str | None = None

    def expect(self, stage: str, index: int) -> float:
        first, later = self.expected.get(stage, (0.0, 0.0))
        return first if index == 0 and self.first_is_first else later

    def scale(self) -> float:
        """This run's finished stages' measured time over their expected time (1 before any)."""
        measured, expected = sum(m for m, _ in self.done), sum(e for _, e in self.done)
        return measured / expected if measured and expected else 1.0

    def left(self, stage: str, index: int) -> float:
        """Seconds expected from the start of `stage` of iteration `index` to the run's end."""
        at = STAGES.index(stage) if stage in STAGES else 0
        rest = sum(self.expect(s, index) for s in STAGES[at:])
        rest += sum(self.expect(s, i) for i in range(index + 1, self.iterations)
                    for s in STAGES)
        return rest * self.scale()

    def line(self, stage: str, elapsed: float) -> str:
        at = STAGES.index(stage) + 1 if stage in STAGES else 0
        return (f"[flywheel] iteration {self.index + 1} of {self.iterations} · stage {at} of "
                f"{len(STAGES)}: {stage.replace('_', ' ')} · {clock(elapsed)} elapsed · about "
                f"{clock(self.left(stage, self.index))} left")

    def started(self, stage: str) -> None:
        if stage == STAGES[0] and self.current is not None:  # the next iteration
            self.index += 1
        self.current = stage
        tqdm.write(self.line(stage, time.perf_counter() - self.started_at),
                   file=self.out or sys.stderr)

    def finished(self, stage: str, seconds: float) -> None:
        self.done.append((seconds, self.expect(stage, self.index)))


def clock(seconds: float) -> str:
    """`1 h 02 min`, `12 min 05 s`, `45 s`."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


on_stage: ContextVar[StageClock | None] = ContextVar("on_stage", default=None)


@contextmanager
def announced(name: str):
    """Tells the run's StageClock, if it has one, that stage `name` starts and when it ends."""
    listener = on_stage.get()
    if listener is not None:
        listener.started(name)
    start = time.perf_counter()
    yield
    if listener is not None:
        listener.finished(name, time.perf_counter() - start)


@contextmanager
def timed(seconds: dict[str, float], name: str):
    """Records the block's wall time under `name`, announced to the run's StageClock."""
    start = time.perf_counter()
    with announced(name):
        yield
    seconds[name] = round(time.perf_counter() - start, 2)
