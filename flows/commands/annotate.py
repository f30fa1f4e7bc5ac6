"""`flywheel annotate export|import|serve|push|pull|webhook`: the week's pairs for people,
through Label Studio (files, or live through its SDK), Argilla or the built-in review page, and
their labels back as batches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import App, Parameter

from flywheel.errors import FlywheelError
from flywheel.flows.commands.common import (
    ConfigOpt,
    JsonOpt,
    LakeOpt,
    announce,
    existing_lake,
    load,
    print_json,
)

app = App(name="annotate", help="The week's pairs for people: labelling tools, review page.\n\n"
          "Export them to Label Studio or Argilla and import their exports as batches, push "
          "them to a Label Studio server and pull its annotations (by hand or on its webhook), "
          "or serve the built-in review page.\n\n"
          "Example: flywheel annotate export --format label-studio --iteration 3 --out "
          "tasks.json")

Tool = Literal["label-studio", "argilla"]
IterationOpt = Annotated[int, Parameter(help="the iteration whose pairs to label")]


@app.command
def export(*, format: Tool, iteration: IterationOpt,
           out: Annotated[str, Parameter(help="tasks/records JSON file to write")],
           config: ConfigOpt = None, lake: LakeOpt = None) -> int:
    """Write the iteration's pairs for a labelling tool.

    Its labelling config (Label Studio XML, Argilla settings) is written beside them.

    Example: flywheel annotate export --format argilla --iteration 3 --out records.json
    """
    from flywheel.annotation.exchange import write_export

    target = existing_lake(load(config, lake).lake, read_only=True)
    for path in write_export(target, iteration, format, out):
        print(f"wrote {path}")
    return 0


@app.command(name="import")
def import_(file: Annotated[str, Parameter(help="the tool's JSON export")], /, *,
            format: Tool, batch_id: Annotated[str | None, Parameter(
                help="the batch's name")] = None,
            iteration: Annotated[int | None, Parameter(
                help="the iteration the pairs came from")] = None,
            annotator: Annotated[str | None, Parameter(
                help="annotator name when the export carries none")] = None,
            config: ConfigOpt = None, lake: LakeOpt = None) -> int:
    """Ingest a labelling tool's JSON export as a batch.

    The exit status is 1 when nothing was accepted.

    Example: flywheel annotate import project-7-export.json --format label-studio --batch-id
    iteration-0003
    """
    from flywheel.annotation.exchange import import_export

    if not Path(file).is_file():
        raise FlywheelError(f"no export file {file}; give the JSON file the tool exported")
    cfg = load(config, lake)
    target = existing_lake(cfg.lake)
    result = import_export(target, Path(file).read_bytes(), format, Path(file).name, batch_id,
                           iteration, annotator, cfg.annotation)
    return announce(target, result)


@app.command
def serve(*, iteration: IterationOpt,
          token_file: Annotated[str | None, Parameter(
              help="file holding the access token (default: $FLYWHEEL_REVIEW_TOKEN, else a "
                   "random one, printed in the link)")] = None,
          token: Annotated[str | None, Parameter(show=False)] = None,
          host: str = "127.0.0.1", port: int = 8765,
          round: Annotated[str | None, Parameter(help="round id (default iteration-NNNN)")] = None,
          config: ConfigOpt = None, lake: LakeOpt = None) -> int:
    """Serve the built-in review page for the iteration's pairs.

    Finishing the round lands the labels as batch review-iteration-NNNN. The token comes from
    --token-file or $FLYWHEEL_REVIEW_TOKEN, never the command line (which `ps` shows).

    Example: flywheel annotate serve --iteration 3 --token-file ~/.review-token
    """
    from flywheel.annotation.review import TOKEN_ENV, review_token
    from flywheel.annotation.review import serve as serve_page

    if token is not None:
        raise FlywheelError(f"--token is no longer taken: a token on the command line is shown "
                            f"to every user by `ps`; set {TOKEN_ENV} or write it to a file and "
                            "pass --token-file FILE")
    secret, source = review_token(token_file)
    cfg = load(config, lake)
    serve_page(existing_lake(cfg.lake).uri, iteration, secret, host, port, round, cfg.annotation,
               token_source=source)
    return 0


# Label Studio, live ----------------------------------------------------------------------------
LiveIterationOpt = Annotated[int | None, Parameter(
    help="the iteration whose pairs to label (default: the lake's latest sampled for annotation)")]
ProjectOpt = Annotated[str | None, Parameter(
    help="the Label Studio project's title (default: 'flywheel iteration NNNN (lake hash)')")]


def _live(config, lake, iteration):
    from flywheel.annotation.label_studio import connect, latest_iteration

    cfg = load(config, lake)
    target = existing_lake(cfg.lake)
    return cfg, target, (latest_iteration(target) if iteration is None else iteration), connect()


@app.command
def push(*, to: Literal["label-studio"], iteration: LiveIterationOpt = None,
         project: ProjectOpt = None,
         webhook_url: Annotated[str | None, Parameter(
             help="register this address (`flywheel annotate webhook`) as the project's "
                  "webhook on annotation created / updated; the shared secret is "
                  "$FLYWHEEL_WEBHOOK_SECRET")] = None,
         json: JsonOpt = False, config: ConfigOpt = None, lake: LakeOpt = None) -> int:
    """Upload the iteration's pairs to a Label Studio project through its SDK.

    The project (pairwise config: the better response, strength, safety label, comment) is made
    once and found again by its title; pushing again uploads only the pairs it lacks. Overlap
    and gold pairs follow annotation.quality. The server and key come from $LABEL_STUDIO_URL
    and $LABEL_STUDIO_API_KEY.

    Example: flywheel annotate push --to label-studio --iteration 3 --webhook-url
    http://flywheel-host:8766/label-studio/webhook
    """
    from flywheel.annotation.label_studio import push as push_pairs
    from flywheel.annotation.label_studio_hook import SECRET_ENV

    cfg, target, iteration, ls = _live(config, lake, iteration)
    secret = os.environ.get(SECRET_ENV) if webhook_url else None
    out = push_pairs(ls, target, cfg, iteration, project, webhook_url, secret)
    if json:
        print_json(out)
    else:
        print(f"project {out['title']!r} ({out['url']}): {out['uploaded']} task(s) uploaded, "
              f"{out['already_there']} already there, {out['multi_annotator_tasks']} asking "
              "for several annotators" + (f"; webhook {out['webhook_id']} -> {webhook_url}"
                                          if webhook_url else ""))
    return 0


@app.command
def pull(*, iteration: LiveIterationOpt = None, project: ProjectOpt = None,
         batch_id: Annotated[str | None, Parameter(
             help="the batch's name (default: annotation.batch_name, the batch the week "
                  "waits for)")] = None,
         json: JsonOpt = False, config: ConfigOpt = None, lake: LakeOpt = None) -> int:
    """Land the submitted annotations of the iteration's Label Studio project as a batch.

    Through the same ingest as `annotate import`; pulling again lands only what is new. Emits
    the batch-landed event when PREFECT_API_URL is set. The exit status is 1 when nothing was
    accepted.

    Example: flywheel annotate pull --iteration 3
    """
    from flywheel.annotation.label_studio import pull as pull_labels

    cfg, target, iteration, ls = _live(config, lake, iteration)
    return announce(target, pull_labels(ls, target, cfg, iteration, project, batch_id), json)


@app.command
def webhook(*, iteration: LiveIterationOpt = None, project: ProjectOpt = None,
            debounce: Annotated[float, Parameter(
                help="seconds without a new annotation before the pull")] = 30.0,
            host: str = "127.0.0.1", port: int = 8766,
            config: ConfigOpt = None, lake: LakeOpt = None) -> int:
    """Receive Label Studio's webhooks and pull after each burst of annotations.

    Serves POST /label-studio/webhook (the X-Flywheel-Secret header must hold
    $FLYWHEEL_WEBHOOK_SECRET); --debounce seconds after the last call it pulls the project's
    annotations as the iteration's batch and emits the batch-landed event, so the retrain
    starts by itself.

    Example: flywheel annotate webhook --iteration 3 --host 0.0.0.0 --debounce 60
    """
    from flywheel.annotation.label_studio import pull as pull_labels
    from flywheel.annotation.label_studio_hook import (
        PATH,
        SECRET_ENV,
        Debouncer,
        create_app,
        serve,
    )

    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        raise FlywheelError(f"set {SECRET_ENV}: the shared secret Label Studio's webhook sends "
                            "(`flywheel annotate push --webhook-url` registers it)")
    cfg, target, iteration, ls = _live(config, lake, iteration)

    def land():
        result = pull_labels(ls, target, cfg, iteration, project)
        announce(target, result)
        return result.to_dict()

    app = create_app(secret, Debouncer(debounce, land))
    print(f"receiving Label Studio's webhooks at http://{host}:{port}{PATH} for iteration "
          f"{iteration}; pulling {debounce:g} s after the last", flush=True)
    serve(app, host, port)
    return 0
