"""Create the Prefect objects the flywheel's deployments run on; safe to run again.

    PREFECT_API_URL=http://127.0.0.1:4200/api python infra/bootstrap.py \
        [--lake s3://flywheel/lake] [--gpu-slots 1] [--gpu-pool-type process|kubernetes] \
        [--k8s-template infra/k8s/gpu-job-template.json]

It makes sure these exist, as described here:

    work pool cpu (process)                         queue default
    work pool gpu (process, or kubernetes with      queues default (sampling, evaluation) and
      the GPU job template)                                heavy (reward-model, policy training)
    global concurrency limit gpu-slots              size --gpu-slots
    block remote-file-system/flywheel-lake          the lake's URI, and its S3 endpoint if any
    block secret/flywheel-lake-credentials          the AWS key pair, when the environment has it

and prints one line per object: created, updated or unchanged. Run again with the same options,
every line says unchanged and nothing on the server changes. Options fall back to the environment:
PREFECT_API_URL, FLYWHEEL_LAKE, FLYWHEEL_GPU_SLOTS, FLYWHEEL_GPU_POOL_TYPE, AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. The blocks are skipped when no lake is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from flywheel.errors import FlywheelError

K8S_TEMPLATE = Path(__file__).resolve().parent / "k8s" / "gpu-job-template.json"
GPU_SLOTS = "gpu-slots"
LAKE_BLOCK = "flywheel-lake"
CREDENTIALS_BLOCK = "flywheel-lake-credentials"
POOL_DESCRIPTIONS = {
    "cpu": "Flywheel stages that need no GPU: ingest, data mixes, reports",
    "gpu": "Flywheel stages on GPUs: sampling (vLLM), reward-model and policy training (DeepSpeed)",
}
# (pool, queue) -> (priority, description); a lower priority number is served first
QUEUES = {
    ("cpu", "default"): (1, "Every CPU stage"),
    ("gpu", "default"): (1, "Sampling and evaluation"),
    ("gpu", "heavy"): (2, "Reward-model and policy training"),
}


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--api-url", default=env("PREFECT_API_URL"),
                   help="the Prefect server's API (default: $PREFECT_API_URL)")
    p.add_argument("--lake", default=env("FLYWHEEL_LAKE"),
                   help="the lake's URI, e.g. s3://flywheel/lake (default: $FLYWHEEL_LAKE)")
    p.add_argument("--gpu-slots", type=int, default=int(env("FLYWHEEL_GPU_SLOTS") or 1),
                   help="size of the gpu-slots concurrency limit (default: 1)")
    p.add_argument("--gpu-pool-type", choices=["process", "kubernetes"],
                   default=env("FLYWHEEL_GPU_POOL_TYPE") or "process",
                   help="type of the gpu work pool (default: process)")
    p.add_argument("--k8s-template", type=Path, default=K8S_TEMPLATE,
                   help="base job template of a kubernetes gpu pool")
    return p


def ensure_pool(client, name: str, pool_type: str, template: dict, owns_template: bool) -> str:
    """A process pool keeps whatever template it has once created (it may be edited in the UI);
    a kubernetes pool's template follows the file."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=name, type=pool_type,
                                               base_job_template=template,
                                               description=POOL_DESCRIPTIONS[name]))
        return "created"
    if pool.type != pool_type:
        raise FlywheelError(
            f"work pool {name!r} exists with type {pool.type}, not {pool_type}; rerun with "
            f"--gpu-pool-type {pool.type}, or delete the pool (`prefect work-pool delete {name}`) "
            "and rerun"
        )
    changes = {}
    if pool.description != POOL_DESCRIPTIONS[name]:
        changes["description"] = POOL_DESCRIPTIONS[name]
    if owns_template and pool.base_job_template != template:
        changes["base_job_template"] = template
    if not changes:
        return "unchanged"
    client.update_work_pool(name, WorkPoolUpdate(**changes))
    return "updated"


def ensure_queue(client, pool: str, name: str, priority: int, description: str) -> str:
    from prefect.exceptions import ObjectNotFound

    try:
        queue = client.read_work_queue_by_name(name, work_pool_name=pool)
    except ObjectNotFound:
        client.create_work_queue(name, description=description, priority=priority,
                                 work_pool_name=pool)
        return "created"
    if (queue.priority, queue.description) == (priority, description):
        return "unchanged"
    client.update_work_queue(queue.id, priority=priority, description=description)
    return "updated"


def ensure_limit(client, name: str, size: int) -> str:
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    try:
        limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
        return "created"
    if limit.limit == size and limit.active:
        return "unchanged"
    client.update_global_concurrency_limit(
        name, GlobalConcurrencyLimitUpdate(limit=size, active=True))
    return "updated"


def ensure_block(block, name: str, same) -> str:
    """`same(existing)` says whether the stored block already holds what `block` does."""
    try:
        existing = type(block).load(name)
    except ValueError:  # Block.load's answer when no document has that name
        block.save(name)
        return "created"
    if same(existing):
        return "unchanged"
    block.save(name, overwrite=True)
    return "updated"


def lake_blocks(lake: str) -> list[tuple[str, object, object]]:
    """(name, block, same) for the lake's location and, for s3://, its credentials."""
    from prefect.blocks.system import Secret
    from prefect.filesystems import RemoteFileSystem

    settings = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if lake.startswith("s3://") and endpoint:
        settings["client_kwargs"] = {"endpoint_url": endpoint}
    location = RemoteFileSystem(basepath=lake, settings=settings)
    blocks = [(LAKE_BLOCK, location,
               lambda b: (b.basepath, b.settings) == (location.basepath, location.settings))]
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if lake.startswith("s3://") and key and secret:
        pair = {"aws_access_key_id": key, "aws_secret_access_key": secret}
        blocks.append((CREDENTIALS_BLOCK, Secret(value=pair), lambda b: b.get() == pair))
    return blocks


def bootstrap(args) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    from flywheel.flows.server import healthy

    if not args.api_url:
        raise FlywheelError("no Prefect server named: set PREFECT_API_URL or pass --api-url")
    if not healthy(args.api_url):
        raise FlywheelError(f"the Prefect server at {args.api_url} does not answer; start it "
                            "(`prefect server start`, or `docker compose up` in infra/)")
    if args.gpu_slots < 1:
        raise FlywheelError(f"--gpu-slots must be at least 1, got {args.gpu_slots}")
    process_template = ProcessWorker.get_default_base_job_template()
    gpu_template = process_template
    if args.gpu_pool_type == "kubernetes":
        try:
            gpu_template = json.loads(args.k8s_template.read_text())
        except (OSError, ValueError) as err:
            raise FlywheelError(f"cannot read the job template {args.k8s_template}: {err}")
    lines = []
    with temporary_settings({PREFECT_API_URL: args.api_url}):
        with get_client(sync_client=True) as client:
            for name, pool_type, template in (("cpu", "process", process_template),
                                              ("gpu", args.gpu_pool_type, gpu_template)):
                state = ensure_pool(client, name, pool_type, template,
                                    owns_template=pool_type == "kubernetes")
                lines.append(f"work pool {name} ({pool_type}): {state}")
            for (pool, queue), (priority, description) in QUEUES.items():
                state = ensure_queue(client, pool, queue, priority, description)
                lines.append(f"work queue {pool}/{queue}: {state}")
            state = ensure_limit(client, GPU_SLOTS, args.gpu_slots)
            lines.append(f"global concurrency limit {GPU_SLOTS} ({args.gpu_slots}): {state}")
        if args.lake:
            for name, block, same in lake_blocks(args.lake):
                state = ensure_block(block, name, same)
                lines.append(f"block {block.get_block_type_slug()}/{name}: {state}")
        else:
            lines.append("lake blocks: skipped (no --lake or FLYWHEEL_LAKE)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        for line in bootstrap(args):
            print(line)
    except FlywheelError as err:
        print(f"bootstrap: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
