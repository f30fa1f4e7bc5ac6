"""`flywheel lake migrate`: convert a lake of the earlier format (Parquet parts plus manifests,
flywheel.lake.legacy) to Delta Lake tables in place.

Each part becomes one commit carrying the part's lineage, so the history reads as the lake was
written; locations stored under the lake's own root become relative to it. The old files are
left where they are (nothing is deleted), and `lake.json` is written last: an interrupted
migration is simply run again (a part already converted is a no-op merge), and the lake opens
only once it is whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from flywheel.errors import LakeError
from flywheel.lake import legacy
from flywheel.lake.schemas import SCHEMAS
from flywheel.lake.store import FORMAT, MARKER, Lake

# the columns that hold a location inside the lake
LOCATIONS = ("uri", "raw_uri", "report_uri")


def migrate(uri: str, progress: Callable[[str], None] = print) -> dict[str, dict[str, int]]:
    """Convert the lake at `uri`; returns per table the parts read and the rows written."""
    lake = Lake(uri)
    if lake.exists(MARKER):
        progress(f"lake {lake.uri} is already in the Delta Lake format; nothing to do")
        return {}
    if not lake.exists("manifests"):
        raise LakeError(f"no lake of the earlier format at {uri} (no manifests/ folder); "
                        "check the path")
    done: dict[str, dict[str, int]] = {}
    for table in SCHEMAS:
        parts = legacy.manifests(lake, table)
        if not parts:
            continue
        written = 0
        for m in parts:
            rows = _relative(lake, legacy.read(lake, table, [m]))
            lineage = {**(m.get("lineage") or {}), "migrated_part": m["part"],
                       "written_at": m.get("created_at"), "code_version": m.get("code_version")}
            written += lake.write_table(table, rows, lineage).written
        done[table] = {"parts": len(parts), "rows": written}
        progress(f"{table}: {len(parts)} parts -> {written} rows, version {lake.version(table)}")
    lake.write_bytes(MARKER, json.dumps(FORMAT).encode())
    progress(f"lake {lake.uri} converted; the earlier files (tables/, manifests/) are kept and "
             "may be deleted once you have checked it")
    return done


def _relative(lake: Lake, t: pa.Table) -> pa.Table:
    prefix = lake.uri + "/"
    for name in LOCATIONS:
        if name in t.column_names:
            col = t.column(name)
            relative = pc.if_else(pc.starts_with(col, prefix),
                                  pc.utf8_slice_codeunits(col, len(prefix)), col)
            t = t.set_column(t.schema.get_field_index(name), name, relative)
    return t
