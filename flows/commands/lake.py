"""Data into the lake and questions about it: `flywheel ingest`, `flywheel import`,
`flywheel lineage`, and the lake itself: `flywheel lake migrate`."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from cyclopts import App, Parameter

from flywheel.flows.commands.common import (
    ConfigOpt,
    JsonOpt,
    LakeOpt,
    announce,
    existing_lake,
    load,
    print_json,
)

BatchOpt = Annotated[str | None, Parameter(help="the batch's name")]


def ingest(file: Annotated[str, Parameter(help="the delivered file")], /, *,
           config: ConfigOpt = None, lake: LakeOpt = None,
           batch_id: Annotated[str | None, Parameter(
               help="the batch's name (default: the file name's stem); a corrected "
               "re-delivery uses the same name")] = None,
           json: JsonOpt = False) -> int:
    """Validate a delivered batch of comparisons into the lake.

    JSONL, CSV or Parquet; the exit status is 1 when nothing was accepted. Rows that fail
    validation go to the `quarantine` table with their reason; the delivered file is kept byte
    for byte. Sends flywheel.batch.landed when PREFECT_API_URL is set.

    Example: flywheel ingest week-3.jsonl --batch-id iteration-0003
    """
    from flywheel.annotation.ingest import ingest_file

    cfg = load(config, lake)
    target = existing_lake(cfg.lake, create=True)
    return announce(target, ingest_file(target, file, batch_id, cfg.annotation), json)


def import_(source: Annotated[str, Parameter(
                help="a local file (.jsonl[.gz], .json, .parquet) or a Hugging Face dataset "
                "name (needs network)")], /, *,
            config: ConfigOpt = None, lake: LakeOpt = None,
            format: Annotated[Literal["hh-rlhf", "ultrafeedback"] | None, Parameter(
                help="default: guessed from the name")] = None,
            criterion: Annotated[Literal["helpfulness", "safety"] | None, Parameter(
                help="HH-RLHF: default from the name (harmless -> safety)")] = None,
            split: Annotated[Literal["train", "test"] | None, Parameter(
                help="split of the imported rows (default: a train or test in the file "
                "name, else train; records that carry one keep it)")] = None,
            limit: Annotated[int | None, Parameter(help="only the first N records")] = None,
            source_name: Annotated[str | None, Parameter(
                help="the set's name in the `source` column")] = None,
            batch_id: BatchOpt = None, json: JsonOpt = False) -> int:
    """Import an open-source preference set as a batch.

    Anthropic HH-RLHF or UltraFeedback, from a local file or the Hugging Face hub. It prints
    the split it used and why: the records' own, --split, the file name's, or train.

    Example: flywheel import hh_rlhf_harmless_base_test.jsonl.gz --limit 1000
    """
    from flywheel.annotation.importers import convert, describe_split, import_split, write_delivery
    from flywheel.annotation.ingest import ingest_file

    cfg = load(config, lake)
    target = existing_lake(cfg.lake, create=True)
    split, why = import_split(source, split)
    rows = convert(source, format, criterion, split, limit, source_name)
    print(describe_split(rows, split, why), file=sys.stderr if json else sys.stdout)
    name = Path(source.rstrip("/")).name.split(".")[0] or "import"
    with tempfile.TemporaryDirectory() as tmp:
        path = write_delivery(rows, Path(tmp) / f"{name}-{split}.jsonl")
        result = ingest_file(target, path, batch_id, cfg.annotation)
    return announce(target, result, json)


def lineage(id: Annotated[str, Parameter(
                help="a policy or reward-model id (a unique prefix is enough)")], /, *,
            config: ConfigOpt = None, lake: LakeOpt = None, json: JsonOpt = False) -> int:
    """Batches, data mix, reward models and parents behind an id.

    The id is a policy's or a reward model's; the ancestry goes back to the base policy.

    Example: flywheel lineage 3fa9c2 --json
    """
    from flywheel.lake.lineage import format_lineage
    from flywheel.lake.lineage import lineage as lineage_of

    info = lineage_of(existing_lake(load(config, lake).lake, read_only=True), id)
    if json:
        print_json(info)
    else:
        print(format_lineage(info))
    return 0


app = App(name="lake", help="The lake itself: convert a lake of the earlier format.")


@app.command
def migrate(*, config: ConfigOpt = None, lake: LakeOpt = None) -> int:
    """Convert a lake of the earlier format (Parquet parts and manifests) to Delta Lake tables.

    In place and resumable: each part becomes one commit with its lineage, stored locations
    become relative to the lake, and the earlier files are kept.

    Example: flywheel lake migrate --lake ./flywheel-demo/lake
    """
    from flywheel.lake.migrate import migrate as convert

    convert(load(config, lake).lake)
    return 0
