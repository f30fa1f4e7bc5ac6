"""The `flywheel` command line.

    flywheel bootstrap                 convert the packaged default model once (cached)
    flywheel demo [--iterations N]     N iterations of the embedded default, local Prefect server
    flywheel run [--config FILE]       one weekly iteration with a config
    flywheel status [--json]           iterations, batches, reward models and policies of a lake

Errors from input, config or environment print one line naming the fix, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from flywheel.errors import FlywheelError

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "deployments" / "demo.yaml"


def _config(args):
    from flywheel.config import load_config

    overrides = {}
    if getattr(args, "lake", None):
        overrides["lake"] = args.lake
    if getattr(args, "backend", None):
        overrides["sampling.backend"] = args.backend
    return load_config(args.config, overrides)


def cmd_bootstrap(args) -> int:
    from flywheel import models

    path = models.bootstrap(force=args.force)
    print(f"default model ready: {path}")
    print(f"judge encoder ready: {models.resolve('builtin:' + models.MINILM)}")
    return 0


def _run_flow(args, cfg, iterations: int | None) -> int:
    """`iterations` runs of the demo flow, or (None) one weekly-iteration flow run."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.demo import demo
    from flows.server import local_server
    from flows.weekly import weekly_iteration
    from flywheel.loop import preflight
    from flywheel.sampling import close_samplers

    lake = preflight(cfg)
    with local_server(keep=args.keep_server) as api_url:
        print(f"Prefect server: {api_url.removesuffix('/api')} (runs appear under Flow Runs)")
        with temporary_settings({PREFECT_API_URL: api_url}):
            if iterations is None:
                try:
                    results = [weekly_iteration(cfg)]
                finally:
                    close_samplers()
            else:
                results = demo(cfg, iterations)
    for r in results:
        verdict = "promoted" if r["promoted"] else "rolled back"
        print(f"iteration {r['iteration']}: {verdict} ({r['decision']}); report {r['report_uri']}")
    print(f"lake: {lake.uri}  (inspect with `flywheel status --lake {lake.uri}`)")
    if not args.keep_server:
        print("to browse the runs later: `prefect server start`, then http://127.0.0.1:4200")
    return 0


def cmd_demo(args) -> int:
    cfg = _config(args)
    if args.fresh:
        if "://" in cfg.lake:
            raise FlywheelError(f"--fresh only removes local lakes, not {cfg.lake}")
        shutil.rmtree(cfg.lake, ignore_errors=True)
    return _run_flow(args, cfg, args.iterations)


def cmd_run(args) -> int:
    return _run_flow(args, _config(args), None)


def cmd_status(args) -> int:
    from flywheel.catalog import format_status, status
    from flywheel.lake import Lake

    uri = args.lake or _config(args).lake
    if "://" not in uri and not Path(uri).exists():
        raise FlywheelError(f"no lake at {uri}; run `flywheel demo` first or pass --lake")
    report = status(Lake.open(uri))
    print(json.dumps(report, indent=2, default=str) if args.json else format_status(report))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flywheel",
        description="rlhf-flywheel: the iterative RLHF loop (sample, annotate, reward model, "
        "rejection sampling, evaluate, promote) as Prefect flows over a Parquet lake.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bootstrap", help="convert the packaged SmolLM2 GGUF into a local model "
                       "folder (once; cached under $FLYWHEEL_HOME)")
    b.add_argument("--force", action="store_true", help="convert again even if cached")
    b.set_defaults(fn=cmd_bootstrap)

    def run_opts(sp):
        sp.add_argument("--config", default=str(DEMO_CONFIG),
                        help="YAML config (default: deployments/demo.yaml)")
        sp.add_argument("--lake", help="override the config's lake (folder or s3://bucket/prefix)")
        sp.add_argument("--backend", choices=["vllm", "transformers"],
                        help="override the sampling backend")
        sp.add_argument("--keep-server", action="store_true",
                        help="leave the local Prefect server running afterwards")

    d = sub.add_parser("demo", help="run N iterations of the loop on the embedded default")
    run_opts(d)
    d.add_argument("--iterations", type=int, default=2, help="iterations to run (default 2)")
    d.add_argument("--fresh", action="store_true", help="delete the (local) lake first")
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("run", help="run one weekly iteration with a config")
    run_opts(r)
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("status", help="iterations, batches, reward models and policies")
    s.add_argument("--config", default=str(DEMO_CONFIG), help="config whose lake to read")
    s.add_argument("--lake", help="lake to read (overrides --config)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "iterations", 1) < 1:
        parser().error("--iterations must be at least 1")
    try:
        return args.fn(args)
    except FlywheelError as err:
        print(f"flywheel: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
