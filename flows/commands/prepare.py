"""Getting ready to run: `flywheel init` (a config of one's own), `flywheel bootstrap` (the
default models on disk) and `flywheel check` (everything a run needs, without running)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import Parameter

from flywheel import models
from flywheel.config import DEFAULT_EMBEDDER, DEFAULT_MODEL, load_config
from flywheel.errors import FlywheelError
from flywheel.flows.commands.common import ConfigOpt, LakeOpt, load

STARTER = """\
# rlhf-flywheel configuration of {name}, written by `flywheel init`.
# Check it:   flywheel check --config {path}
# Run it once (one weekly iteration, on a local Prefect server):
#             flywheel run --config {path}
# Schedule it (the weekly deployment, on the Prefect server PREFECT_API_URL names):
#             flywheel deploy --config {path}
# Commands run in {folder} find this file by themselves. A key left out keeps its default;
# every key, its default and its bounds: flywheel/config/ (`FlywheelConfig`).
name: {name_yaml}
# Every table, checkpoint and report of this flywheel: a folder, or s3://bucket/prefix when
# workers on other machines share it.
lake: {lake}
models:
  # The base policy of the first iteration: builtin:smollm2-135m-instruct (converted once by
  # `flywheel bootstrap`), a local Hugging Face folder, or a hub name.
  policy: {policy}
  # The reward models' backbone; Llama 2 starts them from the chat model. On a machine without
  # a GPU, builtin:all-minilm-l6-v2 trains about 7x faster (the demo's choice).
  reward_backbone: {policy}
  # The sentence encoder of the simulated annotator's proxy judge.
  judge_embedder: {embedder}
prompts:
  # JSONL of {{"text", "criterion": helpfulness|safety, "split": train|heldout}} records;
  # null: the 484 prompts shipped with rlhf-flywheel.
  path: {prompts}
sampling:
  # vllm (a GPU, or vLLM's CPU build) or transformers (slower; needs no vLLM).
  backend: {backend}
  # auto: bfloat16 where the device computes it natively (GPUs, CPUs with AVX-512 BF16 or
  # AMX), float32 elsewhere (bfloat16 is emulated there, several times slower).
  dtype: auto
annotation:
  # simulated: the proxy judge labels every pair, unattended. human: each iteration exports its
  # pairs (Label Studio, Argilla, `flywheel annotate serve`) and waits for the batch named
  # batch_name (`flywheel ingest FILE --batch-id iteration-0001`).
  mode: {mode}
  batch_name: "iteration-{{iteration:04d}}"
  # Human mode: hours an iteration waits for its batch before it fails. The weekly deployment
  # (deployments/prefect.yaml: Mondays 06:00 America/New_York) starts the next iteration a
  # week after, and runs one at a time: keep this under 168.
  wait_hours: 144
policy_update:
  methods: [rejection_sampling]
  # Other updates by iteration; Llama 2 adds PPO after rejection sampling from its 4th:
  # {{4: [rejection_sampling, ppo]}}
  schedule: {{}}
"""


def starter_config(path: Path, name: str, lake: str, policy: str, prompts: str | None,
                   backend: str, mode: str) -> str:
    """The text of a new flywheel.yaml at `path` (strings as JSON, which YAML reads)."""
    return STARTER.format(
        name=name, name_yaml=json.dumps(name), path=path, folder=path.parent,
        lake=json.dumps(lake), policy=json.dumps(policy), embedder=json.dumps(DEFAULT_EMBEDDER),
        prompts=json.dumps(prompts), backend=backend, mode=mode)


def init(*, folder: Annotated[Path, Parameter(
             name="--dir", help="folder to write flywheel.yaml into")] = Path("."),
         force: Annotated[bool, Parameter(help="overwrite an existing flywheel.yaml")] = False,
         lake: Annotated[str | None, Parameter(help="the lake (default: DIR/lake)")] = None,
         name: Annotated[str | None, Parameter(help="the flywheel's name (default: DIR's)")] = None,
         policy: Annotated[str, Parameter(help="base policy model")] = DEFAULT_MODEL,
         prompts: Annotated[str | None, Parameter(
             help="JSONL prompt file (default: the shipped prompts)")] = None,
         backend: Literal["vllm", "transformers"] = "vllm",
         annotation: Literal["simulated", "human"] = "simulated") -> int:
    """Write flywheel.yaml, a short commented config of your own.

    It names your lake, models, prompts and annotation mode, and validates; commands run in
    DIR then use it without --config. The default model is converted if it is named.

    Example: flywheel init --dir ~/rlhf --lake s3://my-bucket/lake --annotation human

    Parameters
    ----------
    backend
        sampling backend
    annotation
        simulated (the proxy judge labels, unattended) or human (each iteration waits for
        people's batch)
    """
    folder = folder.expanduser().resolve()
    target = folder / "flywheel.yaml"
    if target.exists() and not force:
        raise FlywheelError(f"{target} exists; edit it, or pass --force to overwrite it")
    if prompts is not None and not Path(prompts).expanduser().is_file():
        raise FlywheelError(f"prompt file {prompts} does not exist; give a JSONL file of "
                            "prompts, or leave --prompts out for the shipped ones")
    lake_uri = lake if lake and "://" in lake else str(Path(lake or folder / "lake").resolve())
    prompts = str(Path(prompts).expanduser().resolve()) if prompts else None
    text = starter_config(target, name or folder.name or "flywheel", lake_uri, policy, prompts,
                          backend, annotation)
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    load_config(target)  # what the commands will read
    print(f"wrote {target} (lake {lake_uri}, annotation {annotation})")
    if policy == DEFAULT_MODEL:
        print(f"default model ready: {models.bootstrap()}")
    print(f"next: `flywheel check` here, then `flywheel run` for one iteration, or "
          f"`flywheel deploy --config {target}` to schedule it on a Prefect server")
    return 0


def bootstrap(*, force: Annotated[bool, Parameter(help="convert again even if cached")] = False
              ) -> int:
    """Convert the packaged default model once (cached).

    The SmolLM2 GGUF file becomes a model folder under $FLYWHEEL_HOME (default
    ~/.cache/rlhf-flywheel); the judge's encoder is checked.

    Example: flywheel bootstrap   (FLYWHEEL_HOME=/data/flywheel first, to cache it there)
    """
    path = models.bootstrap(force=force)
    print(f"default model ready: {path}")
    print(f"judge encoder ready: {models.resolve('builtin:' + models.MINILM)}")
    return 0


def check(*, config: ConfigOpt = None, lake: LakeOpt = None) -> int:
    """Check everything a run needs, without running a stage.

    The config validates, the lake answers and takes writes, every model resolves, the prompts
    parse, the sampling backend imports. Every problem is listed; the exit status is 2 if
    there is one.

    Example: flywheel check --config flywheel.yaml
    """
    from flywheel.annotation.prompts import load_prompts
    from flywheel.lake.store import Lake

    cfg = load(config, lake)
    m = cfg.models
    steps = [(f"lake {cfg.lake}", lambda: f"reachable and writable ({Lake.open(cfg.lake).uri})")]
    steps += [(f"models.{key} {name}", lambda name=name: models.resolve(name))
              for key, name in (("policy", m.policy), ("reward_backbone", m.reward_backbone),
                                ("judge_embedder", m.judge_embedder))]
    steps.append((f"prompts {cfg.prompts.path or '(shipped)'}",
                  lambda: f"{len(load_prompts(cfg.prompts.path, cfg.prompts.limit))} prompts"))
    steps.append((f"sampling.backend {cfg.sampling.backend}", lambda: _backend(cfg)))
    problems = 0
    for what, step in steps:
        try:
            print(f"ok    {what}: {step()}")
        except FlywheelError as err:
            problems += 1
            print(f"FAIL  {what}: {err}")
    if problems:
        raise FlywheelError(f"{problems} check(s) failed; fix them as each line above says")
    print("ready to run")
    return 0


def _backend(cfg) -> str:
    module = {"vllm": "vllm", "transformers": "transformers"}[cfg.sampling.backend]
    if importlib.util.find_spec(module) is None:
        raise FlywheelError(f"{module} is not installed; install it (`pip install -e .[cpu]` on a "
                            "CPU machine, `.[gpu]` on a GPU one) or set sampling.backend")
    return f"{module} importable"
