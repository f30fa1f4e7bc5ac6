"""Ingest: a delivered batch of comparisons, validated row by row, into the lake.

A delivery is a JSONL (optionally .gz), CSV or Parquet file; one row per comparison in the Llama 2
protocol:

    prompt_id | prompt          an id of the `prompts` table, or the prompt itself: its text, or
                                a JSON list of {role, content} messages ending with a user turn
    response_a, response_b      the two responses as shown, or their `samples` ids:
    sample_id_a, sample_id_b    (texts are then read from the lake)
    chosen                      a | b
    strength                    significantly better | better | slightly better |
                                negligibly better (or unsure); required for in-house rows
    criterion                   helpfulness | safety
    safety_label                chosen safe other unsafe | both safe | both unsafe (required for
                                in-house safety rows); chosen unsafe other safe is excluded
    annotator                   who labelled it (required)
    source                      in-house (default) or the name of an open-source set
    split                       train | test (optional: in-house rows get a held-out split;
                                a row already in the lake keeps its split, and a file naming
                                another for it is refused: `flywheel batch resplit` moves rows)
    comment                     the annotator's note (optional; kept, not part of the row's id)
    seconds                     time the annotator spent on the item (optional; a number >= 0,
                                kept, not part of the row's id)

Every delivered row ends up in exactly one place: `comparisons` (accepted, new or already there)
or `quarantine` (rejected, with the first reason it failed), so accepted + rejected = delivered.
The file itself is kept byte for byte under raw/<sha256>/. The `batches` row is written last: it
marks the delivery complete, so an interrupted ingest is simply run again; rows are keyed by
content hash and parts named by their ids, so that leaves no duplicate and no gap. The same bytes
delivered twice are a no-op; a corrected re-delivery adds only its new rows.

Validation runs as one DuckDB query over the Arrow table (about a million rows in seconds;
flywheel/annotation/validation.py). docs/ingest-reasons.md lists every reason a row or a file is
refused for, and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from json.encoder import encode_basestring_ascii
from pathlib import Path, PurePosixPath

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.annotation import gold
from flywheel.annotation.delivery import (
    COLUMNS,
    SUFFIXES,
    inline_prompts,
    read_delivery,
)
from flywheel.annotation.labels import normalised_labels
from flywheel.annotation.validation import IN_HOUSE, REASONS  # noqa: F401 (re-exported)
from flywheel.annotation.validation import validation_sql as _validation_sql
from flywheel.config import AnnotationConfig
from flywheel.errors import DataError
from flywheel.lake.catalog import VISIBLE_DELIVERIES, connect
from flywheel.lake.schemas import SCHEMAS, content_id
from flywheel.lake.store import Lake

_BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class IngestResult:
    batch_id: str
    delivery_id: str
    checksum: str
    filename: str
    raw_uri: str
    delivered: int
    accepted: int
    new: int
    rejected: int
    heldout: int
    reasons: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    already_ingested: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        head = (
            f"batch {self.batch_id} ({self.filename}, sha256 {self.checksum[:12]}): "
            f"{self.delivered} delivered, {self.accepted} accepted "
            f"({self.new} new, {self.accepted - self.new} already in the lake), "
            f"{self.rejected} rejected; {self.heldout} held out as test rows"
        )
        if self.already_ingested:
            head = f"already ingested, nothing to do: {head}"
        lines = [head]
        if self.reasons:
            lines.append("rejected by reason:")
            width = max(map(len, self.reasons))
            lines += [f"  {r:<{width}}  {n}" for r, n in sorted(self.reasons.items())]
        if self.ignored_columns:
            lines.append(f"ignored columns: {', '.join(self.ignored_columns)}")
        lines.append(f"delivered file kept at {self.raw_uri}")
        return "\n".join(lines)


# ingest --------------------------------------------------------------------------------------
def default_batch_id(filename: str) -> str:
    stem = PurePosixPath(filename).name
    for suffix in (".gz", *SUFFIXES):
        stem = stem.removesuffix(suffix)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "batch"
    return name[:128]


def _previous_delivery(lake: Lake, checksum: str, status: str = "complete") -> dict | None:
    batches = lake.read("batches")
    hit = batches.filter(pc.and_(pc.equal(batches["checksum"], checksum),
                                 pc.equal(batches["status"], status)))
    return hit.slice(0, 1).to_pylist()[0] if hit.num_rows else None


def _result_of(lake: Lake, row: dict, already: bool) -> IngestResult:
    """The result of a delivery from its `batches` row (whose raw_uri is lake-relative; the
    result names the full URI)."""
    summary = json.loads(row["summary"] or "{}")
    return IngestResult(
        batch_id=row["batch_id"], delivery_id=row["id"], checksum=row["checksum"],
        filename=row["filename"], raw_uri=lake.url(row["raw_uri"]), delivered=row["delivered"],
        accepted=row["accepted"], new=row["new"], rejected=row["rejected"],
        heldout=row["heldout"], reasons=summary.get("reasons", {}),
        ignored_columns=summary.get("ignored_columns", []), already_ingested=already,
    )


def ingest_file(lake: Lake, path, batch_id: str | None = None,
                cfg: AnnotationConfig | None = None, iteration: int | None = None,
                source: str | None = None) -> IngestResult:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no batch file at {path}; check the path")
    return ingest_bytes(lake, path.read_bytes(), path.name, batch_id, cfg, iteration, source)


def ingest_bytes(lake: Lake, data: bytes, filename: str, batch_id: str | None = None,
                 cfg: AnnotationConfig | None = None, iteration: int | None = None,
                 source: str | None = None) -> IngestResult:
    """Validate a delivered file and land it: accepted rows in `comparisons`, rejected ones in
    `quarantine`, the file under raw/, the `batches` row last. `source` labels the delivery in
    `batches` (default: the rows' own source)."""
    cfg = cfg or AnnotationConfig()
    batch_id = batch_id or default_batch_id(filename)
    if not _BATCH_NAME.match(batch_id):
        raise DataError(f"batch id {batch_id!r} is not usable; use letters, digits, '.', '_' "
                        "or '-' (at most 128), e.g. --batch-id week-47")
    checksum = hashlib.sha256(data).hexdigest()
    previous = _previous_delivery(lake, checksum)
    if previous is not None:
        return _result_of(lake, previous, already=True)
    retracted = _previous_delivery(lake, checksum, "retracted")
    if retracted is not None:
        raise DataError(
            f"{filename} was delivered before as batch {retracted['batch_id']}, which was "
            f"retracted; to bring it back: flywheel batch restore {retracted['batch_id']} "
            "(or deliver a corrected file)")
    delivery_id = content_id("delivery", batch_id, checksum)
    table, malformed = read_delivery(data, filename)
    ignored = json.loads(table.schema.metadata[b"ignored"])
    table, new_prompts = inline_prompts(table)
    table = normalised_labels(table)
    table = gold.mark(lake, table)  # labels of gold pairs: quarantined, never trained on

    con = connect(lake)
    try:
        return _land(lake, con, table, malformed, new_prompts, ignored, cfg, batch_id,
                     delivery_id, checksum, filename, data, iteration, source)
    finally:
        con.close()


def _land(lake, con, table, malformed, new_prompts, ignored, cfg, batch_id, delivery_id,
          checksum, filename, data, iteration, source) -> IngestResult:
    # 1. validate against the lake; a file refused as a whole leaves nothing behind
    con.register("delivery", table)
    con.execute(_validation_sql(cfg.max_text_chars)).fetchall()
    con.execute("""
      UPDATE checked SET reason = 'duplicate_row'
      FROM (SELECT cid AS first_cid, min(row_index) AS first_row FROM checked
            WHERE reason IS NULL GROUP BY cid) f
      WHERE checked.cid = f.first_cid AND checked.row_index > f.first_row
    """).fetchall()
    if malformed:
        bad = pa.table({"row_index": pa.array(list(malformed), pa.int64())})
        con.register("malformed", bad)
        con.execute("UPDATE checked SET reason = 'malformed_row' "
                    "WHERE row_index IN (SELECT row_index FROM malformed)").fetchall()
    good = _accepted(con, lake, batch_id, delivery_id, cfg)
    quarantined = _quarantine(con, batch_id, delivery_id, malformed)
    delivered = table.num_rows
    if good["rows"].num_rows + quarantined.num_rows != delivered:
        raise AssertionError("ingest lost rows: accepted + rejected != delivered")

    # 2. the delivered file, byte for byte
    raw_uri = lake.write_bytes(f"raw/{checksum}/{PurePosixPath(filename).name}", data)

    # 3. rows: prompts first (comparisons refer to them), then comparisons, then quarantine
    lineage = {"batch": batch_id, "delivery": delivery_id, "checksum": checksum,
               "raw_uri": raw_uri}
    prompt_rows = _prompt_rows(con, new_prompts)
    if prompt_rows.num_rows:
        lake.write_table("prompts", prompt_rows, lineage)
    # a row an unfinished delivery wrote (and nobody can see) becomes this delivery's
    lake.write_table("comparisons", good["rows"], lineage,
                     replace_where=f"t.delivery_id NOT IN ({_visible_deliveries(con)})")
    lake.write_table("quarantine", quarantined, lineage)

    reasons = dict(sorted(con.execute(
        "SELECT reason, count(*) FROM checked WHERE reason IS NOT NULL GROUP BY reason"
    ).fetchall()))
    sources = [s for (s,) in con.execute(
        "SELECT DISTINCT source_n FROM checked WHERE reason IS NULL ORDER BY 1").fetchall()]
    row = {
        "id": delivery_id, "batch_id": batch_id, "iteration": iteration,
        "source": source or (",".join(sources) if sources else "none"),
        "filename": PurePosixPath(filename).name, "raw_uri": raw_uri, "delivered": delivered,
        "accepted": good["rows"].num_rows, "new": good["new"], "rejected": quarantined.num_rows,
        "heldout": good["heldout"], "checksum": checksum,
        "summary": json.dumps({"reasons": reasons, "ignored_columns": ignored,
                               "config": cfg.model_dump(include={"heldout_fraction",
                                                                 "heldout_rows",
                                                                 "max_text_chars"})}),
        "status": "complete",
    }
    # 4. the batches row: written last, it makes the delivery visible; of two ingests of the
    # same file racing, the one whose row lands reports it, the other finds it there
    if not lake.write("batches", [row], lineage).written:
        return _result_of(lake, _previous_delivery(lake, checksum) or row, already=True)
    return _result_of(lake, row, already=False)


def _visible_deliveries(con) -> str:
    """The complete deliveries as an SQL list ('' when none), for a merge predicate."""
    ids = [i for (i,) in con.execute(VISIBLE_DELIVERIES).fetchall()]
    return ", ".join("'" + i.replace("'", "''") + "'" for i in ids) or "''"


def _accepted(con: duckdb.DuckDBPyConnection, lake: Lake, batch_id: str, delivery_id: str,
              cfg: AnnotationConfig) -> dict:
    """Accepted rows as `comparisons` rows, with their split; how many are new."""
    con.execute(f"""
      CREATE TEMP TABLE ok AS
      SELECT c.row_index, c.cid, c.split_n, c.prompt_ref, c.criterion_n,
        e.id IS NULL OR e.delivery_id = $delivery OR NOT e.visible AS is_new,
        CASE WHEN e.visible THEN e.split END AS old_split,
        CASE WHEN e.visible THEN e.batch_id END AS old_batch,
        (e.id IS NULL OR NOT e.visible) AND c.source_n = '{IN_HOUSE}' AND c.split_n IS NULL
          AS to_split
      FROM checked c LEFT JOIN (
        SELECT id, delivery_id, batch_id, split,
          delivery_id IN ({VISIBLE_DELIVERIES}) AS visible
        FROM all_comparisons) e ON e.id = c.cid
      WHERE c.reason IS NULL
    """, {"delivery": delivery_id}).fetchall()
    _refuse_moves(con)
    # in-house rows without a split: held out up to the budget of each criterion (Llama 2
    # tests each batch per criterion), whole prompts in the order of their hash (a prompt's
    # comparisons share responses, so a test pair whose prompt is also trained on would
    # overstate accuracy; only the prompt at the budget's edge is split)
    counts = con.execute(f"""
      WITH earlier AS (
        SELECT criterion, count(*) AS n, count(*) FILTER (WHERE split = 'test') AS n_test
        FROM comparisons WHERE batch_id = $batch AND source = '{IN_HOUSE}' GROUP BY criterion
      ), fresh AS (
        SELECT criterion_n AS criterion, count(*) AS n FROM ok WHERE to_split
        GROUP BY criterion_n
      )
      SELECT f.criterion, f.n, coalesce(e.n, 0), coalesce(e.n_test, 0)
      FROM fresh f LEFT JOIN earlier e USING (criterion)
    """, {"batch": batch_id}).fetchall()
    budgets = {}
    for criterion, new_eligible, earlier, already_test in counts:
        total = earlier + new_eligible  # half up, and at least one row of a criterion trains
        target = min(cfg.heldout_rows, math.floor(cfg.heldout_fraction * total + 0.5), total - 1)
        budgets[criterion] = max(0, min(target - already_test, new_eligible))
    budget = sum(budgets.values())
    con.execute("CREATE OR REPLACE TEMP TABLE budgets (criterion VARCHAR, budget BIGINT)")
    if budgets:
        con.executemany("INSERT INTO budgets VALUES (?, ?)", list(budgets.items()))
    # `ok` holds no texts: they stream from `checked` through the join, never copied or sorted
    # into a temporary table (1M rows of 900-character texts: 7 s of 15 before)
    rows = con.sql("""
      WITH ranked AS (
        SELECT cid, criterion_n, row_number() OVER (
          PARTITION BY criterion_n
          ORDER BY md5('split' || prompt_ref), md5('split' || cid)) AS k
        FROM ok WHERE to_split
      ), test AS (
        SELECT cid FROM ranked JOIN budgets b ON b.criterion = ranked.criterion_n
        WHERE k <= b.budget
      )
      SELECT c.cid AS id, c.prompt_ref AS prompt_id, c.chosen_sample_id, c.rejected_sample_id,
        -- a side given by its sample id keeps the id, not a copy of the sample's text
        c.chosen_text, c.rejected_text,
        c.strength_n AS strength, c.criterion_n AS criterion,
        c.safety_n AS safety_label, c.annotator_n AS annotator, $batch AS batch_id,
        $delivery AS delivery_id, c.source_n AS source,
        coalesce(o.old_split, o.split_n, CASE WHEN t.cid IS NOT NULL THEN 'test' END,
                 'train') AS split,
        nullif(trim(c.comment), '') AS comment, c.seconds_n AS seconds,
        NULL::TIMESTAMPTZ AS created_at
      FROM checked c JOIN ok o USING (row_index) LEFT JOIN test t ON t.cid = c.cid
      ORDER BY c.row_index
    """, params={"batch": batch_id, "delivery": delivery_id}).to_arrow_table()
    new = con.execute("SELECT count(*) FROM ok WHERE is_new").fetchall()[0][0]
    heldout = con.execute(
        "SELECT count(*) FROM ok WHERE coalesce(old_split, split_n) = 'test'").fetchall()[0][0]
    return {"rows": _cast(rows, "comparisons"), "new": new, "heldout": heldout + budget}


def _refuse_moves(con) -> None:
    """Rows already in the lake keep their split: a delivery naming another one for them is
    refused whole, with the command that moves them on purpose (a test row quietly filed as
    train, or the reverse, would leak into a mix or out of the evaluation)."""
    moves = con.execute("""
      SELECT count(*), old_split, old_batch, split_n FROM ok
      WHERE old_split IS NOT NULL AND split_n IS NOT NULL AND old_split <> split_n
      GROUP BY ALL ORDER BY 1 DESC, 3
    """).fetchall()
    if moves:
        what = "; ".join(
            f"{n} {'row' if n == 1 else 'rows'} of this file {'is' if n == 1 else 'are'} "
            f"already in the lake as {old} (batch {batch}); to move them: flywheel batch "
            f"resplit {batch} --split {new}" for n, old, batch, new in moves)
        raise DataError(f"{what}. Nothing was written; or deliver those rows with the split "
                        "they have, or none")


def _quarantine(con, batch_id: str, delivery_id: str, malformed: dict[int, str]) -> pa.Table:
    cols = ", ".join(COLUMNS)
    t = con.sql(f"""
      SELECT substr(md5($delivery || ':' || row_index), 1, 16) AS id,
        $delivery AS delivery_id, $batch AS batch_id, row_index, reason,
        to_json(struct_pack({", ".join(f"{c} := {c}" for c in COLUMNS)}))::VARCHAR AS row,
        NULL::TIMESTAMPTZ AS created_at
      FROM (SELECT row_index, reason, {cols} FROM checked WHERE reason IS NOT NULL)
      ORDER BY row_index
    """, params={"batch": batch_id, "delivery": delivery_id}).to_arrow_table()
    if malformed:  # keep the line as delivered, not the empty parse
        raw = [json.dumps({"raw": malformed[i]}) if i in malformed else v
               for i, v in zip(t["row_index"].to_pylist(), t["row"].to_pylist())]
        t = t.set_column(t.schema.get_field_index("row"), "row", pa.array(raw, pa.string()))
    return _cast(t, "quarantine")


def _prompt_rows(con, new_prompts: dict[str, list[dict]]) -> pa.Table:
    """`prompts` rows of the inline prompts that accepted rows use."""
    if not new_prompts:
        return SCHEMAS["prompts"].empty_table()
    used = con.sql(
        "SELECT prompt_key AS id, any_value(criterion_n) AS criterion, "
        "any_value(source_n) AS source FROM checked "
        "WHERE reason IS NULL AND nullif(prompt_key, '') IS NOT NULL GROUP BY prompt_key"
    ).to_arrow_table()
    messages = [_messages_json(new_prompts[pid]) for pid in used["id"].to_pylist()]
    return pa.table({"id": used["id"], "messages": pa.array(messages, pa.string()),
                     "source": used["source"], "criterion": used["criterion"],
                     "split": pa.array(["train"] * used.num_rows, pa.string())})


def _messages_json(msgs: list[dict]) -> str:
    """json.dumps(msgs), written out for the commonest case, one user message (3x faster)."""
    if len(msgs) == 1 and list(msgs[0]) == ["role", "content"] and msgs[0]["role"] == "user":
        return '[{"role": "user", "content": ' + encode_basestring_ascii(msgs[0]["content"]) + "}]"
    return json.dumps(msgs)


def _cast(t: pa.Table, table: str) -> pa.Table:
    schema = SCHEMAS[table]
    return pa.Table.from_arrays([t.column(f.name).cast(f.type) for f in schema], schema=schema)
