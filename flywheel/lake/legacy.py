"""The lake's earlier format, Parquet parts plus manifests written last, kept to convert a lake
to Delta Lake (`flywheel lake migrate`) and to build lakes of that format in tests and
benchmarks.

    tables/<table>/<part>.parquet     rows; a part is complete once its manifest exists
    manifests/<table>/<part>.json     {"part", "rows", "created_at", "lineage", ...}

Two writers racing could both write a row: a reader keeps the first part's copy.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.lake.delta import conform
from flywheel.lake.schemas import SCHEMAS
from flywheel.lake.store import Lake, _first_occurrences


def manifests(lake: Lake, table: str) -> list[dict]:
    folder = lake._p("manifests", table)
    lake.fs.invalidate_cache(folder)
    if not lake.fs.exists(folder):
        return []
    out = []
    for path in sorted(lake.fs.ls(folder, detail=False)):
        if path.endswith(".json"):
            with lake.fs.open(path, "rb") as f:
                out.append(json.loads(f.read()))
    return sorted(out, key=lambda m: (m["created_at"], m["part"]))


def read(lake: Lake, table: str, parts: list[dict] | None = None) -> pa.Table:
    """The table's complete parts (those `parts` names, default all), one row per id."""
    schema = SCHEMAS[table]
    chunks = []
    for m in manifests(lake, table) if parts is None else parts:
        with lake.fs.open(lake._p("tables", table, m["part"] + ".parquet"), "rb") as f:
            chunks.append(conform(pq.read_table(f), schema))
    t = pa.concat_tables(chunks) if chunks else schema.empty_table()
    if len(chunks) > 1 and pc.count_distinct(t.column("id")).as_py() < t.num_rows:
        t = t.take(_first_occurrences(t.column("id")))
    return t


def write_table(lake: Lake, table: str, data: pa.Table, lineage: dict | None = None) -> int:
    """Append the rows whose id is new as one part, its manifest last; returns rows written."""
    data = conform(data, SCHEMAS[table])
    existing = read(lake, table).column("id")
    if len(existing):
        data = data.filter(pc.invert(pc.is_in(data.column("id"), value_set=existing)))
    if not data.num_rows:
        return 0
    ids = "\n".join(sorted(data.column("id").to_pylist()))
    part = hashlib.sha256(f"{table}\n{ids}".encode()).hexdigest()[:16]
    lake.fs.makedirs(lake._p("tables", table), exist_ok=True)
    with lake.fs.open(lake._p("tables", table, part + ".parquet"), "wb") as f:
        pq.write_table(data, f)
    manifest = {"table": table, "part": part, "rows": data.num_rows,
                "created_at": datetime.now(timezone.utc).isoformat(), "lineage": lineage or {}}
    lake._write_json(lake._p("manifests", table, part + ".json"), manifest)
    return data.num_rows
