"""The lake's tables as Delta Lake tables (delta-rs): one per schema, under <lake>/delta/<table>.

What the format gives, the lake does not write by hand: a commit is atomic (a reader sees all of a
write or none of it; a writer killed mid-write leaves at most data files no commit names),
concurrent writers are serialised by the log (a merge that raced another is refused and re-run
here), every commit is a version (time travel; a reward model records the versions it trained on)
and the table's schema is enforced.

Rows are written by a merge on `id` that inserts only ids the table lacks, so writing the same
rows twice, or two processes writing them at once, lands each row once.

delta-rs runs a tokio runtime that cannot survive `fork`: a process pool that touches the lake
uses the `spawn` start method.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from flywheel.errors import LakeError

# a merge that lost a race is re-run on the new version: with jittered backoff, 20 tries ride
# out dozens of concurrent writers of one table
COMMIT_TRIES = 20


def storage_options(uri: str) -> dict[str, str] | None:
    """delta-rs' object-store options: credentials and endpoint come from the standard AWS
    environment variables, as for s3fs; plain HTTP is allowed only when the endpoint says so."""
    if "://" not in uri or uri.startswith("file://"):
        return None
    opts = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and endpoint.startswith("http://"):
        opts["AWS_ALLOW_HTTP"] = "true"
    return opts


def open_table(uri: str, version: int | None = None) -> DeltaTable | None:
    """The table at `uri` (at `version`), or None when nothing was written to it yet."""
    try:
        return DeltaTable(uri, version=version, storage_options=storage_options(uri))
    except TableNotFoundError:
        if version is not None:
            raise LakeError(f"table {uri} has no version {version}") from None
        return None
    except DeltaError as err:
        if version is not None and "version" in str(err).lower():
            raise LakeError(f"table {uri} has no version {version}: {err}") from None
        raise


def read(uri: str, schema: pa.Schema, columns: list[str] | None = None,
         version: int | None = None, filesystem=None) -> pa.Table:
    """The table's rows as of `version`, read from its data files with pyarrow (local files
    directly, others through `filesystem`, the lake's fsspec one). Not through delta-rs'
    `to_pyarrow_table`: its dataset reads through a filesystem handler whose threads can
    outlive the interpreter and abort the process as it exits."""
    want = pa.schema([schema.field(c) for c in columns]) if columns else schema
    files, _ = file_uris(uri, version)
    parts = []
    for f in files:
        path = f.removeprefix("file://") if filesystem is None else f.split("://", 1)[-1]
        meta = pq.read_schema(path, filesystem=filesystem)
        have = [c for c in want.names if c in meta.names]  # columns added since are null
        parts.append(conform(pq.read_table(path, columns=have, filesystem=filesystem), want))
    return pa.concat_tables(parts) if parts else want.empty_table()


def version(uri: str) -> int | None:
    table = open_table(uri)
    return None if table is None else table.version()


def merge_new(uri: str, data: pa.Table, metadata: Mapping[str, str],
              replace_where: str | None = None) -> int:
    """Insert the rows of `data` whose id the table lacks, and replace those whose row in the
    table matches the SQL predicate `replace_where` (on `t.`); returns how many rows were
    inserted or replaced. The first write creates the table; a merge that raced another
    commit is re-run on the new version."""
    props = CommitProperties(custom_metadata=dict(metadata))
    opts = storage_options(uri)
    for attempt in range(COMMIT_TRIES):
        try:
            table = open_table(uri)
            if table is None:
                # created empty, then merged into: a write of rows into a new table is a blind
                # append, which delta-rs would let two racing creators both commit
                write_deltalake(uri, data.schema.empty_table(), mode="ignore",
                                storage_options=opts)
                table = open_table(uri)
            merger = table.merge(data, predicate="t.id = s.id", source_alias="s",
                                 target_alias="t", merge_schema=True, commit_properties=props)
            if replace_where:
                merger = merger.when_matched_update_all(predicate=replace_where)
            metrics = merger.when_not_matched_insert_all().execute()
            return int(metrics["num_target_rows_inserted"]) + int(
                metrics.get("num_target_rows_updated") or 0)
        except (CommitFailedError, DeltaError) as err:
            # losing a race for the table's first version shows as "already exists"
            if not _raced(err) or attempt == COMMIT_TRIES - 1:
                raise LakeError(f"writing table {uri} failed: {err}") from None
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def update(uri: str, predicate: str, values: Mapping[str, str | None],
           metadata: Mapping[str, str]) -> int:
    """Set columns of the rows matching a SQL predicate; returns how many were updated."""
    props = CommitProperties(custom_metadata=dict(metadata))
    for attempt in range(COMMIT_TRIES):
        table = open_table(uri)
        if table is None:
            return 0
        try:
            sql = {k: "NULL" if v is None else "'" + v.replace("'", "''") + "'"
                   for k, v in values.items()}
            out = table.update(updates=sql, predicate=predicate, commit_properties=props)
            return int(out.get("num_updated_rows", 0))
        except (CommitFailedError, DeltaError) as err:
            if not _raced(err) or attempt == COMMIT_TRIES - 1:
                raise LakeError(f"updating table {uri} failed: {err}") from None
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def _raced(err: Exception) -> bool:
    text = str(err).lower()
    return isinstance(err, CommitFailedError) or "already exists" in text or "concurrent" in text


def history(uri: str, limit: int | None = None) -> list[dict]:
    table = open_table(uri)
    return [] if table is None else table.history(limit)


def file_uris(uri: str, version: int | None = None) -> tuple[list[str], int | None]:
    """The data files of the table's snapshot (at `version`, default the latest) and that
    snapshot's version; ([], None) for a table not written yet."""
    table = open_table(uri, version)
    if table is None:
        return [], None
    return table.file_uris(), table.version()


def conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly the schema's columns, in order: missing columns are null, extra
    ones are dropped, types are cast."""
    cols = []
    for field in schema:
        if field.name in t.column_names:
            col = t.column(field.name)
            cols.append(col if col.type == field.type else col.cast(field.type))
        else:
            cols.append(pa.nulls(t.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=schema)
