"""How many ranks a training stage runs on: `resources` under each training section
(reward_model, rejection_sampling, policy_update.rrhf, policy_update.ppo)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from flywheel.config.base import _Section

# a deployment's job variables set these for every training stage that leaves the field empty
NODES_ENV, RANKS_ENV = "FLYWHEEL_NODES", "FLYWHEEL_RANKS_PER_NODE"
RDZV_ENV = "FLYWHEEL_RDZV_ENDPOINT"


class ResourcesConfig(_Section):
    """The ranks a stage's training step runs on: `ranks_per_node` processes on each of `nodes`
    machines, started by torchrun (flywheel/distributed/launch.py). One rank in all: the step
    runs in the stage's own process, as on the embedded default."""

    nodes: int | None = Field(
        None, ge=1,
        description=f"Machines the training step spans. Empty: ${NODES_ENV} if set (a "
        "deployment's job variables), else 1.",
    )
    ranks_per_node: int | None = Field(
        None, ge=1,
        description=f"Training processes per machine. Empty: ${RANKS_ENV} if set, else one per "
        "visible CUDA GPU, else 1 (a CPU machine). On a CPU, ranks > 1 train with the gloo "
        "backend: it runs and checks the multi-GPU code paths, without a speed-up.",
    )
    agents: Literal["local", "external"] = Field(
        "local",
        description="Who starts each node's launcher agent. local: the stage starts all of "
        "them on this machine (one node, or trying several on one machine). external: the "
        "stage starts node 0's and waits for the other nodes' `flywheel rank-agent` "
        "(infra/k8s/train-nodes.yaml) to join through the rendezvous.",
    )
    rdzv_endpoint: str | None = Field(
        None,
        description=f"host:port of node 0's rendezvous. Empty: ${RDZV_ENV} if set, else "
        "127.0.0.1 and a free port (local agents only).",
    )
    job_root: str | None = Field(
        None,
        description="Folder the stage writes each training job to (inputs, rank logs, the "
        "saved weights). With external agents it must be shared by every node (a volume "
        "mounted on each pod). Empty: a temporary folder.",
    )

    @model_validator(mode="after")
    def _external_needs(self):
        if self.agents == "external" and self.job_root is None:
            raise ValueError("agents: external needs job_root, a folder every node mounts "
                             "(the other nodes read the job from it)")
        return self

    def plan(self) -> tuple[int, int]:
        """(nodes, ranks per node) after the environment and the visible GPUs."""
        nodes = self.nodes or int(os.environ.get(NODES_ENV) or 1)
        ranks = self.ranks_per_node or int(os.environ.get(RANKS_ENV) or 0) or _visible_gpus() or 1
        return nodes, ranks

    def world_size(self) -> int:
        nodes, ranks = self.plan()
        return nodes * ranks


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


RESOURCES_HELP = ("The ranks this stage trains on (`nodes`, `ranks_per_node`); empty: one "
                  "rank per visible GPU on one node, or one rank on a CPU.")


# where and how a stage trains, not what it trains: left out of the ids of what it makes, so a
# retry on more ranks (or with ZeRO) finds the model an earlier try made
PLACEMENT_KEYS = {"resources", "deepspeed"}


def identity(section: _Section) -> dict:
    """A training section's settings that define what it makes (`PLACEMENT_KEYS` left out)."""
    return section.model_dump(exclude=PLACEMENT_KEYS)
