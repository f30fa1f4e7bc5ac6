"""What each rank of a training job runs: `python -m flywheel.distributed.worker JOB_DIR`,
started by torchrun (launch.py). Every rank reads the job's inputs from JOB_DIR, joins the
process group (NCCL on GPUs, gloo on CPUs), and trains its share; rank 0 writes the trained
weights and `result.json` to JOB_DIR/out once every rank has finished. No rank touches the lake:
the stage writes it after the launcher reports that all ranks succeeded."""

from __future__ import annotations

import json
import os
import pickle
import resource
import sys
from datetime import timedelta
from pathlib import Path

import torch

from flywheel.distributed.launch import PROGRESS, RESULT
from flywheel.distributed.ranks import all_gather, world
from flywheel.training import on_step


def _reward_model(inputs: dict, out: Path) -> dict:
    from flywheel.reward.train import train_reward_model

    model, metrics = train_reward_model(inputs["backbone"], inputs["pairs"], inputs["cfg"],
                                        desc=inputs["desc"])
    if world().main:
        model.save(out / "model", inputs.get("meta", {}))
    return metrics


def _finetune(inputs: dict, out: Path) -> dict:
    from flywheel.policy.finetune import finetune

    return finetune(inputs["policy_path"], inputs["examples"], inputs["cfg"], out / "policy")


def _rrhf(inputs: dict, out: Path) -> dict:
    from flywheel.policy.rrhf import rrhf_finetune

    return rrhf_finetune(inputs["policy_path"], inputs["groups"], inputs["cfg"], out / "policy")


def _ppo(inputs: dict, out: Path) -> dict:
    from flywheel.policy.ppo_job import ppo_job

    return ppo_job(inputs, out)


# the training steps a stage can spread over ranks, by the name the stage writes in job.json
JOBS = {"reward_model": _reward_model, "finetune": _finetune, "rrhf": _rrhf, "ppo": _ppo}


def peak_memory_bytes() -> int:
    """This process's peak memory: the GPU's allocator peak on CUDA, else its peak RSS."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _write_progress(job_dir: Path, what: str, done: int, total: int) -> None:
    tmp = job_dir / f"{PROGRESS}.tmp"
    tmp.write_text(json.dumps([what, done, total]))
    tmp.replace(job_dir / PROGRESS)


def run(job_dir: Path) -> None:
    spec = json.loads((job_dir / "job.json").read_text())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available() and os.environ.get("FLYWHEEL_DEVICE", "") != "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                         timeout=timedelta(seconds=spec.get("timeout_s", 1800)))
    try:
        inputs = pickle.loads((job_dir / "inputs.pkl").read_bytes())
        out = job_dir / "out"
        if world().main:
            out.mkdir(exist_ok=True)
        if world().main:  # the stage's process relays it (launch.wait)
            on_step.set(lambda what, done, total: _write_progress(job_dir, what, done, total))
        metrics = JOBS[spec["kind"]](inputs, out)
        mine = {"rank": world().rank, "peak_memory_bytes": peak_memory_bytes(),
                "optimizer_state_bytes": metrics.pop("optimizer_state_bytes", None),
                "seconds_per_step": metrics.pop("seconds_per_step", None)}
        ranks = all_gather(mine)
        if world().main:
            tmp = out / f"{RESULT}.tmp"
            tmp.write_text(json.dumps({"metrics": metrics, "ranks": ranks}, default=str))
            tmp.replace(out / RESULT)  # written last: its presence says the job finished
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def main() -> None:
    from torch.distributed.elastic.multiprocessing.errors import record

    if len(sys.argv) != 2:
        sys.exit("usage: python -m flywheel.distributed.worker JOB_DIR (started by torchrun)")
    record(run)(Path(sys.argv[1]))  # a rank's exception goes to torchrun's error file


if __name__ == "__main__":
    main()
