"""A reward model's accuracy on any comparison file (`flywheel evaluate-rm`): the file read by
the project's own readers (a delivery in the annotation protocol, Anthropic HH-RLHF,
UltraFeedback binarized), every row validated as ingest does, the pairs scored through the
scoring engine, accuracy overall, per criterion, per strength and per safety label, and warnings
when the result does not mean what it seems to: a model of another criterion than the file's,
or pairs the model trained on."""

from __future__ import annotations

import io
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from flywheel.annotation.delivery import read_delivery
from flywheel.annotation.importers import (
    convert,
    hh_criterion,
    record_format,
    write_delivery,
)
from flywheel.annotation.ingest import ingest_bytes
from flywheel.config import AnnotationConfig
from flywheel.errors import DataError
from flywheel.lake.catalog import connect
from flywheel.lake.schemas import CRITERIA
from flywheel.lake.store import Lake
from flywheel.reward.evaluation import evaluate, load_pairs, summarise
from flywheel.reward.model import PreferencePair, RewardModel
from flywheel.reward.retrain import MIX_FILE
from flywheel.reward.scoring import ScoringEngine

FORMATS = ("llama2", "hh-rlhf", "ultrafeedback")


@dataclass
class FilePairs:
    """The comparisons of a file that passed validation, by comparison id (the lake's: a hash
    of the prompt, both texts and the labels), with what was read and rejected."""

    format: str
    delivered: int  # records read
    rejected: dict[str, int]  # rows left out, by reason
    ids: list[str]
    pairs: list[PreferencePair]
    criteria: list[str]  # each pair's criterion
    warnings: list[str]


def read_pairs(path: str, fmt: str | None = None, criterion: str | None = None,
               limit: int | None = None) -> FilePairs:
    """The first `limit` records of a comparison file as validated pairs. `fmt`: llama2 (a
    delivery with inline prompts and responses: JSONL, CSV, Parquet), hh-rlhf or ultrafeedback;
    default: what the first record looks like. `criterion` labels HH-RLHF rows (default: what
    the file name says, harmless -> safety, helpful -> helpfulness)."""
    src = Path(path)
    if not src.is_file():
        raise DataError(f"comparison file {path} does not exist")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of records; got {limit}")
    fmt = fmt or record_format(str(src)) or "llama2"
    if fmt not in FORMATS:
        raise DataError(f"format {fmt!r} is not one of {', '.join(FORMATS)}; pass --format")
    warnings = []
    if fmt == "hh-rlhf" and criterion is None:
        try:
            criterion = hh_criterion(str(src))
        except DataError:
            criterion = "helpfulness"
            warnings.append(f"{src.name} does not say whether its comparisons are about "
                            "helpfulness or safety (harmless); they are reported as "
                            "helpfulness: pass --criterion to label them")
    if fmt == "llama2" and criterion is not None:
        raise DataError("--criterion labels HH-RLHF files; the rows of a delivery name their "
                        "own criterion: leave it out")
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "llama2":
            data, name = _first_rows(src.read_bytes(), src.name, limit)
        else:  # the importers' conversion, then the same validation as a delivery
            rows = convert(str(src), fmt, criterion, split="test", limit=limit)
            delivery = write_delivery(rows, Path(tmp) / f"{fmt}.jsonl")
            data, name = delivery.read_bytes(), delivery.name
        lake = Lake.open(f"{tmp}/lake")
        # nothing held out and no size cap: every valid row is scored, whatever its split
        result = ingest_bytes(lake, data, name, "evaluation",
                              AnnotationConfig(heldout_fraction=0, max_text_chars=10**9))
        con = connect(lake)
        try:
            rows = con.sql("SELECT id, criterion FROM comparisons ORDER BY id").fetchall()
            pairs = load_pairs(con, [i for i, _ in rows])
        finally:
            con.close()
    if not rows:
        raise DataError(f"{path}: no row could be evaluated ({result.rejected} rejected: "
                        f"{result.reasons}); rows need a prompt and both responses")
    return FilePairs(fmt, result.delivered, result.reasons, [i for i, _ in rows],
                     [pairs[i] for i, _ in rows], [c for _, c in rows], warnings)


def _first_rows(data: bytes, name: str, limit: int | None) -> tuple[bytes, str]:
    """The delivery cut to its first `limit` rows (as Parquet, read by the delivery reader so
    a row spanning lines or an unparseable one counts as one row)."""
    if limit is None:
        return data, name
    table, _ = read_delivery(data, name)
    if table.num_rows <= limit:
        return data, name
    buf = io.BytesIO()
    pq.write_table(table.slice(0, limit).drop_columns(["row_index"])
                   .replace_schema_metadata(None), buf)
    return buf.getvalue(), f"{Path(name).name.split('.')[0]}.parquet"


def trained_ids(model_dir: str, row: dict) -> set[str] | None:
    """The comparison ids of the model's training mix, from the ids file stored with its
    checkpoint (its `reward_models` row's data_mix names it); None when it has none."""
    mix = json.loads(row.get("data_mix") or "{}")
    path = Path(model_dir) / mix.get("ids_file", MIX_FILE)
    if not path.is_file():
        return None
    return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())


def criterion_warning(kind: str | None, criteria: list[str], name: str) -> str | None:
    if kind is None or kind in criteria:
        return None
    file_criteria = " and ".join(sorted(set(criteria)))
    return (f"the model is a {kind} reward model and every comparison in {name} is about "
            f"{file_criteria}: the accuracy measures it on a criterion it was not trained "
            f"for (see by_criterion)")


def evaluate_file(model_dir: str, path: str, fmt: str | None = None,
                  max_length: int | None = None, *, limit: int | None = None,
                  token_budget: int | None = None, criterion: str | None = None,
                  row: dict | None = None) -> dict:
    """Accuracy of the reward model in `model_dir` on a comparison file (`read_pairs`), overall,
    per criterion, per strength and per safety label. `row`: the model's `reward_models` row,
    when it came from a lake (its criterion and training mix; default: the folder's own
    reward_model.json and ids file). `token_budget`: padded tokens per forward pass of the
    scoring engine (default: the engine's). `warnings` says when the model's criterion is not
    the file's, or when some of the file's pairs were in the model's training mix."""
    row = row or {}
    meta = json.loads((Path(model_dir) / "reward_model.json").read_text() or "{}")
    max_length = max_length or meta.get("max_length") or 512
    file = read_pairs(path, fmt, criterion, limit)
    kind = row.get("criterion") or meta.get("kind")
    warnings = list(file.warnings)
    if warning := criterion_warning(kind, file.criteria, Path(path).name):
        warnings.append(warning)
    trained = trained_ids(model_dir, row)
    overlap = None if trained is None else sum(i in trained for i in file.ids)
    if overlap:
        warnings.append(f"{overlap} of the {len(file.ids)} pairs are in the model's training "
                        "mix: accuracy on them is not held-out accuracy")

    model = RewardModel.load(model_dir)
    engine = ScoringEngine(max_length, **({"token_budget": token_budget} if token_budget else {}))
    start = time.perf_counter()
    summary, hits = evaluate(model, file.pairs, max_length, engine)
    seconds = time.perf_counter() - start
    by_criterion = {}
    for c in CRITERIA:
        sel = [k for k, pc in enumerate(file.criteria) if pc == c]
        if sel:
            by_criterion[c] = summarise([file.pairs[k] for k in sel], [hits[k] for k in sel])
    return {"model": row.get("id", model_dir), "kind": kind, "file": str(path),
            "format": file.format, "delivered": file.delivered, "evaluated": len(file.ids),
            "rejected": file.rejected, "max_length": max_length,
            "token_budget": engine.token_budget, "seconds": round(seconds, 3),
            "pairs_per_s": round(len(file.ids) / seconds, 2) if seconds else None,
            **summary, "by_criterion": by_criterion, "train_overlap": overlap,
            "warnings": warnings}
