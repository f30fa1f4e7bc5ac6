"""`flywheel annotate export|import|serve`: the week's pairs for people, through Label Studio,
Argilla or the built-in review page, and their labels back as batches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from cyclopts import App, Parameter

from flywheel.errors import FlywheelError
from flywheel.flows.commands.common import ConfigOpt, LakeOpt, announce, existing_lake, load

app = App(name="annotate", help="The week's pairs for people: labelling tools, review page.\n\n"
          "Export them to Label Studio or Argilla, import their exports as batches, or serve "
          "the built-in review page.\n\n"
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
