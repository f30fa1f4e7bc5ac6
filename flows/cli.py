"""The `flywheel` command line.

    flywheel init [--dir DIR]          a config file to edit, and the default model converted
    flywheel bootstrap                 convert the packaged default model once (cached)
    flywheel demo [--iterations N]     N iterations of the embedded default, local Prefect server
    flywheel run [--config FILE]       one weekly iteration with a config
    flywheel status [--json]           iterations, batches, reward models and policies of a lake
    flywheel ingest FILE               validate a delivered batch of comparisons into the lake
    flywheel import SOURCE             an open-source preference set (HH-RLHF, UltraFeedback)
    flywheel annotate export|import|serve   the week's pairs to Label Studio / Argilla / the
                                       built-in review page, and their labels back as batches
    flywheel lineage ID                the batches, mix, reward models and parents behind an id
    flywheel evaluate-rm MODEL FILE    a trained reward model's accuracy on any comparison file
                                       (Llama 2 protocol or HH-RLHF), as JSON
    flywheel serve                     run the retrain-on-batch and inbox-polling deployments
    flywheel deploy [--config FILE]    register deployments/prefect.yaml on a Prefect server: work
                                       pools, queues, gpu-slots, the weekly schedule, the stage
                                       deployments, triggers, the resume and crash automations
    flywheel trigger [--config FILE]   ask the deployed weekly iteration of a lake to run now

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


def cmd_init(args) -> int:
    from flywheel import models

    target = Path(args.dir) / "flywheel.yaml"
    if target.exists() and not args.force:
        raise FlywheelError(f"{target} exists; edit it, or pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEMO_CONFIG, target)
    print(f"wrote {target} (the embedded default; every key is described in flywheel/config.py)")
    print(f"default model ready: {models.bootstrap()}")
    print(f"next: `flywheel run --config {target}` for one iteration here, or "
          f"`flywheel deploy --config {target}` to schedule it on a Prefect server")
    return 0


def cmd_deploy(args) -> int:
    from prefect.settings import PREFECT_API_URL

    from flywheel.flows.deploy import register
    from flywheel.flows.server import DEFAULT_URL, healthy

    cfg = _config(args)
    api_url = PREFECT_API_URL.value() or DEFAULT_URL
    if not healthy(api_url):
        raise FlywheelError(f"no Prefect server answers at {api_url}; start one (`prefect server "
                            "start`, or `docker compose -f infra/compose.yaml up -d`) or set "
                            "PREFECT_API_URL")
    if args.unresponsive_after < 60:
        raise FlywheelError("--unresponsive-after must be at least 60 s: runs send a heartbeat "
                            "every 30 s")
    for line in register(cfg, api_url, Path(args.prefect_file), args.gpu_slots,
                         args.unresponsive_after):
        print(line)
    print(f"registered on {api_url.removesuffix('/api')}; start workers: `prefect worker start "
          "--pool cpu` and `prefect worker start --pool gpu`")
    return 0


def cmd_trigger(args) -> int:
    import getpass

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.flows.server import DEFAULT_URL, healthy
    from flywheel.lake.store import Lake
    from flywheel.tasks.events import ITERATION_REQUESTED, request_iteration

    lake = Lake(_config(args).lake).uri
    api_url = PREFECT_API_URL.value() or DEFAULT_URL
    if not healthy(api_url):
        raise FlywheelError(f"no Prefect server answers at {api_url}; set PREFECT_API_URL to the "
                            "server `flywheel deploy` registered the weekly deployment on")
    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            try:
                client.read_deployment_by_name("weekly-iteration/weekly")
            except Exception:  # ObjectNotFound, or a server without it
                raise FlywheelError(f"{api_url} has no weekly-iteration/weekly deployment; run "
                                    "`flywheel deploy --config FILE` first") from None
        event_id = request_iteration(lake, getpass.getuser(), args.note or "")
    print(f"event {ITERATION_REQUESTED} sent ({event_id}) for lake {lake}: the weekly deployment "
          "registered for this lake starts an iteration (watch Flow Runs in the UI)")
    return 0


def cmd_bootstrap(args) -> int:
    from flywheel import models

    path = models.bootstrap(force=args.force)
    print(f"default model ready: {path}")
    print(f"judge encoder ready: {models.resolve('builtin:' + models.MINILM)}")
    return 0


def _run_flow(args, cfg, iterations: int | None) -> int:
    """`iterations` runs of the demo flow, or (None) one weekly-iteration flow run."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.flows.demo import demo
    from flywheel.flows.server import local_server
    from flywheel.flows.weekly import weekly_iteration
    from flywheel.policy.sampling import close_samplers
    from flywheel.stages.common import preflight

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
    from flywheel.lake.catalog import format_status, status
    from flywheel.lake.store import Lake

    uri = args.lake or _config(args).lake
    if "://" not in uri and not Path(uri).exists():
        raise FlywheelError(f"no lake at {uri}; run `flywheel demo` first or pass --lake")
    report = status(Lake.open(uri))
    print(json.dumps(report, indent=2, default=str) if args.json else format_status(report))
    return 0


def _lake(args):
    from flywheel.lake.store import Lake

    uri = args.lake or _config(args).lake
    if "://" not in uri and not Path(uri).exists() and not getattr(args, "create", False):
        raise FlywheelError(f"no lake at {uri}; run `flywheel demo` first or pass --lake")
    return Lake.open(uri)


def _annotation_cfg(args):
    return _config(args).annotation


def _announce(lake, result) -> int:
    """Print the summary, emit the batch-landed event when a Prefect API is configured; the
    exit status is 1 when nothing was accepted."""
    from prefect.settings import PREFECT_API_URL

    print(result.summary())
    if result.new and not result.already_ingested:
        if PREFECT_API_URL.value():
            from flywheel.tasks.events import emit_batch_landed

            emit_batch_landed(lake.uri, result.to_dict())
            print(f"event flywheel.batch.landed sent to {PREFECT_API_URL.value()}")
        else:
            print("no Prefect API configured (PREFECT_API_URL): no batch-landed event sent; "
                  "`flywheel serve` or the next weekly run will pick the batch up")
    if not result.accepted:
        print("flywheel: nothing was accepted; see the reasons above and the `quarantine` "
              "table", file=sys.stderr)
        return 1
    return 0


def cmd_ingest(args) -> int:
    from flywheel.annotation.ingest import ingest_file

    args.create = True
    lake = _lake(args)
    return _announce(lake, ingest_file(lake, args.file, args.batch_id, _annotation_cfg(args)))


def cmd_import(args) -> int:
    import tempfile

    from flywheel.annotation.importers import convert, write_delivery
    from flywheel.annotation.ingest import ingest_file

    args.create = True
    lake = _lake(args)
    rows = convert(args.source, args.format, args.criterion, args.split, args.limit,
                   args.source_name)
    name = Path(args.source.rstrip("/")).name.split(".")[0] or "import"
    with tempfile.TemporaryDirectory() as tmp:
        path = write_delivery(rows, Path(tmp) / f"{name}-{args.split}.jsonl")
        result = ingest_file(lake, path, args.batch_id, _annotation_cfg(args))
    return _announce(lake, result)


def cmd_annotate(args) -> int:
    from flywheel.annotation import exchange

    lake = _lake(args)
    if args.action == "export":
        for path in exchange.write_export(lake, args.iteration, args.format, args.out):
            print(f"wrote {path}")
        return 0
    if args.action == "import":
        data = Path(args.file).read_bytes()
        result = exchange.import_export(lake, data, args.format, Path(args.file).name,
                                        args.batch_id, args.iteration, args.annotator,
                                        _annotation_cfg(args))
        return _announce(lake, result)
    from flywheel.annotation.review import serve

    serve(lake.uri, args.iteration, args.token, args.host, args.port, args.round,
          _annotation_cfg(args))
    return 0


def cmd_lineage(args) -> int:
    from flywheel.lake.lineage import format_lineage, lineage

    info = lineage(_lake(args), args.id)
    print(json.dumps(info, indent=2, default=str) if args.json else format_lineage(info))
    return 0


def cmd_evaluate_rm(args) -> int:
    from flywheel.reward.evaluation import evaluate_file, resolve_model

    lake = None if Path(args.model).is_dir() else _lake(args)
    folder, row = resolve_model(args.model, lake)
    result = evaluate_file(folder, args.file, args.format, args.max_length)
    if row:
        result.update(model=row["id"], kind=row["criterion"])
    print(json.dumps(result, indent=2))
    return 0


def cmd_serve(args) -> int:
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.flows.deploy import annotation_deployments
    from flywheel.flows.server import local_server

    cfg = _config(args)
    with local_server(keep=True) as api_url, temporary_settings({PREFECT_API_URL: api_url}):
        print(f"Prefect server: {api_url.removesuffix('/api')}; serving the annotation "
              f"deployments of lake {cfg.lake} (Ctrl-C to stop)")
        serve(*annotation_deployments(cfg, args.debounce, args.poll))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flywheel",
        description="rlhf-flywheel: the iterative RLHF loop (sample, annotate, reward model, "
        "rejection sampling, evaluate, promote) as Prefect flows over a Parquet lake.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    it = sub.add_parser("init", help="write flywheel.yaml (the embedded default, to edit) and "
                        "convert the default model")
    it.add_argument("--dir", default=".", help="folder to write flywheel.yaml into (default: .)")
    it.add_argument("--force", action="store_true", help="overwrite an existing flywheel.yaml")
    it.set_defaults(fn=cmd_init)

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

    def lake_opts(sp):
        sp.add_argument("--config", default=str(DEMO_CONFIG),
                        help="config whose lake and annotation settings to use")
        sp.add_argument("--lake", help="lake (folder or s3://bucket/prefix; overrides --config)")

    i = sub.add_parser("ingest", help="validate a delivered batch (JSONL, CSV or Parquet) into "
                       "the lake; exit status 1 when nothing was accepted")
    i.add_argument("file", help="the delivered file")
    lake_opts(i)
    i.add_argument("--batch-id", help="the batch's name (default: the file name's stem); a "
                   "corrected re-delivery uses the same name")
    i.set_defaults(fn=cmd_ingest)

    im = sub.add_parser("import", help="import an open-source preference set as a batch")
    im.add_argument("source", help="a local file (.jsonl[.gz], .json, .parquet) or a Hugging "
                    "Face dataset name (needs network)")
    lake_opts(im)
    im.add_argument("--format", choices=["hh-rlhf", "ultrafeedback"],
                    help="default: guessed from the name")
    im.add_argument("--criterion", choices=["helpfulness", "safety"],
                    help="HH-RLHF: default from the name (harmless -> safety)")
    im.add_argument("--split", choices=["train", "test"], default="train",
                    help="split of the imported rows (records that carry one keep it)")
    im.add_argument("--limit", type=int, help="only the first N records")
    im.add_argument("--source-name", help="the set's name in the `source` column")
    im.add_argument("--batch-id", help="the batch's name")
    im.set_defaults(fn=cmd_import)

    a = sub.add_parser("annotate", help="the week's pairs for people: export to Label Studio "
                       "or Argilla, import their exports, or serve the review page")
    asub = a.add_subparsers(dest="action", required=True)
    ae = asub.add_parser("export", help="write the iteration's pairs for a labelling tool")
    ae.add_argument("--format", choices=["label-studio", "argilla"], required=True)
    ae.add_argument("--iteration", type=int, required=True)
    ae.add_argument("--out", required=True, help="tasks/records JSON file to write")
    ai = asub.add_parser("import", help="ingest a labelling tool's JSON export as a batch")
    ai.add_argument("file")
    ai.add_argument("--format", choices=["label-studio", "argilla"], required=True)
    ai.add_argument("--batch-id")
    ai.add_argument("--iteration", type=int)
    ai.add_argument("--annotator", help="annotator name when the export carries none")
    asv = asub.add_parser("serve", help="the built-in review page for the iteration's pairs")
    asv.add_argument("--iteration", type=int, required=True)
    asv.add_argument("--token", help="access token (default: a random one, printed)")
    asv.add_argument("--host", default="127.0.0.1")
    asv.add_argument("--port", type=int, default=8765)
    asv.add_argument("--round", help="round id (default iteration-NNNN)")
    for sp in (ae, ai, asv):
        lake_opts(sp)
    a.set_defaults(fn=cmd_annotate)

    li = sub.add_parser("lineage", help="batches, data mix, reward models and parent policies "
                        "behind a policy or reward-model id")
    li.add_argument("id", help="a policy or reward-model id (a unique prefix is enough)")
    lake_opts(li)
    li.add_argument("--json", action="store_true", help="machine-readable output")
    li.set_defaults(fn=cmd_lineage)

    ev = sub.add_parser("evaluate-rm", help="accuracy of a trained reward model on a comparison "
                        "file, overall, per strength and per safety label (JSON)")
    ev.add_argument("model", help="a reward-model checkpoint folder, or a reward model id in "
                    "the lake (a unique prefix is enough)")
    ev.add_argument("file", help="comparisons: a delivery in the Llama 2 protocol with inline "
                    "prompts and responses (.jsonl[.gz], .csv, .parquet) or Anthropic HH-RLHF")
    lake_opts(ev)
    ev.add_argument("--format", choices=["llama2", "hh-rlhf"],
                    help="default: guessed from the first record")
    ev.add_argument("--max-length", type=int, help="tokens per pair (default: as trained)")
    ev.set_defaults(fn=cmd_evaluate_rm)

    sv = sub.add_parser("serve", help="serve the annotation deployments: retrain when batches "
                        "land (debounced), poll the lake's incoming/ folder")
    lake_opts(sv)
    sv.add_argument("--debounce", type=int, default=600,
                    help="seconds batches may keep landing before one retrain starts")
    sv.add_argument("--poll", type=int, default=300, help="seconds between inbox polls")
    sv.set_defaults(fn=cmd_serve)

    dp = sub.add_parser("deploy", help="register the weekly schedule, the stage deployments on "
                        "the cpu and gpu work pools, the batch-landed trigger and the gpu-slots "
                        "limit on the Prefect server (PREFECT_API_URL); safe to rerun")
    lake_opts(dp)
    dp.add_argument("--prefect-file", default=str(DEMO_CONFIG.parent / "prefect.yaml"),
                    help="deployment definitions (default: deployments/prefect.yaml)")
    dp.add_argument("--gpu-slots", type=int, default=1,
                    help="GPU stages that may run at once (the gpu-slots limit; default 1)")
    dp.add_argument("--unresponsive-after", type=int, default=90,
                    help="seconds without a heartbeat after which a running flow run is marked "
                    "Crashed, so it can be retried (default 90; at least 60)")
    dp.set_defaults(fn=cmd_deploy)

    tr = sub.add_parser("trigger", help="start the deployed weekly iteration of the config's "
                        "lake now, by the event flywheel.iteration.requested (PREFECT_API_URL)")
    lake_opts(tr)
    tr.add_argument("--note", help="a note carried in the event's payload")
    tr.set_defaults(fn=cmd_trigger)
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
