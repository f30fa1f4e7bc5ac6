"""The lake: immutable Parquet files behind fsspec, a local folder or `s3://`.

Layout under the lake root:
    tables/<table>/<part>.parquet     rows, never rewritten
    manifests/<table>/<part>.json     written last: marks the part complete, carries lineage
                                      and the code revision that wrote it (`code_version`)
    artifacts/<kind>/<id>/...         checkpoints (safetensors + tokenizer), COMPLETE.json last
    reports/<name>                    markdown reports
    raw/<checksum>/<file>             annotation batches as delivered, byte for byte
    incoming/                         drop folder the inbox flow polls for new batches

A reader sees only parts with a manifest, so a crash mid-write leaves at most an unreferenced file.
Rows are keyed by content hash: a write skips ids the table already holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flywheel.errors import LakeError
from flywheel.lake.schemas import SCHEMAS, content_id
from flywheel.revision import code_revision


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class WriteResult:
    table: str
    part: str | None  # None when every row was already there
    written: int
    skipped: int


class Lake:
    def __init__(self, uri: str, storage_options: dict | None = None):
        # a local path is made absolute, so URIs in lineage and reports stay valid anywhere
        self.uri = uri.rstrip("/") if "://" in uri else os.path.abspath(os.path.expanduser(uri))
        try:
            self.fs, root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        except (ImportError, ValueError) as err:
            raise LakeError(f"lake URI {uri!r} is not usable: {err}") from None
        self.root = root.rstrip("/")
        proto = self.fs.protocol
        self.protocol = proto if isinstance(proto, str) else proto[0]
        self.local = self.protocol in ("file", "local")

    @classmethod
    def open(cls, uri: str, storage_options: dict | None = None) -> Lake:
        """Open a lake and prove it is reachable and writable, with one clear error if not."""
        lake = cls(uri, storage_options)
        try:
            lake.fs.makedirs(lake.root, exist_ok=True)
            probe = lake._p(".probe")
            with lake.fs.open(probe, "wb") as f:
                f.write(b"ok")
            lake.fs.rm(probe)
        except Exception as err:  # any backend failure means the same thing to the user
            raise LakeError(
                f"lake {uri} is unreachable or not writable ({type(err).__name__}: {err}); "
                "check the path or bucket, its permissions and credentials, or pass another "
                "--lake"
            ) from None
        return lake

    # paths -------------------------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url(self, *parts: str) -> str:
        """A full URI (with protocol) of a path inside the lake, for links and lineage."""
        return "/".join([self.uri, *parts])

    # tables ------------------------------------------------------------------------------
    def manifests(self, table: str) -> list[dict]:
        _check_table(table)
        folder = self._p("manifests", table)
        # listings are cached per filesystem (s3fs): drop it, or parts written since by another
        # process stay invisible to this one
        self.fs.invalidate_cache(folder)
        if not self.fs.exists(folder):
            return []
        out = []
        for path in sorted(self.fs.ls(folder, detail=False)):
            if path.endswith(".json"):
                with self.fs.open(path, "rb") as f:
                    out.append(json.loads(f.read()))
        return sorted(out, key=lambda m: (m["created_at"], m["part"]))

    def files(self, table: str, manifests: list[dict] | None = None) -> list[str]:
        """Full paths (with protocol) of the complete Parquet parts of a table (of the parts
        `manifests` names, when given: what `manifests(table)` returned)."""
        parts = self.manifests(table) if manifests is None else manifests
        return [self._full(self._p("tables", table, m["part"] + ".parquet")) for m in parts]

    def _full(self, path: str) -> str:
        return path if self.local else f"{self.protocol}://{path}"

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        schema = SCHEMAS[table]
        want = pa.schema([schema.field(c) for c in columns]) if columns else schema
        parts = []
        for m in self.manifests(table):
            with self.fs.open(self._p("tables", table, m["part"] + ".parquet"), "rb") as f:
                parts.append(_conform(pq.read_table(f), want))
        t = pa.concat_tables(parts) if parts else want.empty_table()
        if len(parts) > 1:  # concurrent writers may both have written a row: first part wins
            ids = t.column("id") if "id" in want.names else self.read(table, ["id"])["id"]
            if pc.count_distinct(ids).as_py() < len(ids):
                t = t.take(_first_occurrences(ids))
        return t

    def rows(self, table: str) -> list[dict]:
        return self.read(table).to_pylist()

    def ids(self, table: str) -> set[str]:
        return set(self.read(table, ["id"]).column("id").to_pylist())

    def write(self, table: str, rows: list[dict], lineage: dict | None = None) -> WriteResult:
        """Append rows whose id is new; the manifest goes last. Returns what was written."""
        _check_table(table)
        schema = SCHEMAS[table]
        fresh = [{k: r.get(k) for k in schema.names} for r in rows]
        now = _now()
        for r in fresh:
            if "created_at" in schema.names and r.get("created_at") is None:
                r["created_at"] = now
        return self.write_table(table, pa.Table.from_pylist(fresh, schema=schema), lineage)

    def write_table(self, table: str, data: pa.Table, lineage: dict | None = None) -> WriteResult:
        """Append the rows of an Arrow table whose id is new (the columnar path, for large
        batches); the part is named by its ids, so writing the same rows again after a crash
        rewrites the same file, and the manifest goes last."""
        _check_table(table)
        schema = SCHEMAS[table]
        data = _conform(data, schema)
        total = data.num_rows
        if total:
            if pc.count_distinct(data.column("id")).as_py() < total:
                data = data.take(_first_occurrences(data.column("id")))
            existing = self.read(table, ["id"]).column("id")
            if len(existing):
                data = data.filter(pc.invert(pc.is_in(data.column("id"), value_set=existing)))
        if not data.num_rows:
            return WriteResult(table, None, 0, total)
        if "created_at" in schema.names:
            stamp = pa.array([_now()] * data.num_rows, schema.field("created_at").type)
            col = data.column("created_at")
            filled = pc.if_else(pc.is_null(col), stamp, col) if col.null_count else col
            data = data.set_column(schema.get_field_index("created_at"), "created_at", filled)
        ids = pc.take(data.column("id"), pc.sort_indices(data.column("id")))
        part = hashlib.sha256(
            f"{table}\n".encode() + "\n".join(ids.to_pylist()).encode()
        ).hexdigest()[:16]
        self.fs.makedirs(self._p("tables", table), exist_ok=True)
        with self.fs.open(self._p("tables", table, part + ".parquet"), "wb") as f:
            pq.write_table(data, f)
        manifest = {
            "table": table,
            "part": part,
            "rows": data.num_rows,
            "created_at": _now().isoformat(),
            "code_version": code_revision(),
            "lineage": lineage or {},
        }
        self._write_json(self._p("manifests", table, part + ".json"), manifest)
        return WriteResult(table, part, data.num_rows, total - data.num_rows)

    def _write_json(self, path: str, obj: dict) -> None:
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as f:
            f.write(json.dumps(obj, indent=2, default=str).encode())

    # artifacts ---------------------------------------------------------------------------
    def artifact_uri(self, kind: str, artifact_id: str) -> str:
        return self.url("artifacts", kind, artifact_id)

    def has_artifact(self, kind: str, artifact_id: str) -> bool:
        marker = self._p("artifacts", kind, artifact_id, "COMPLETE.json")
        self.fs.invalidate_cache(marker.rsplit("/", 1)[0])  # see manifests()
        return self.fs.exists(marker)

    def put_artifact(self, kind: str, artifact_id: str, local_dir: str | Path, meta: dict) -> str:
        """Copy a finished local folder into the lake, then mark it complete."""
        dest = self._p("artifacts", kind, artifact_id)
        self.fs.makedirs(dest, exist_ok=True)
        for name in sorted(os.listdir(local_dir)):
            src = os.path.join(local_dir, name)
            if os.path.isfile(src):
                self.fs.put_file(src, f"{dest}/{name}")
        self._write_json(f"{dest}/COMPLETE.json", {"id": artifact_id, "created_at": _now(), **meta})
        return self.artifact_uri(kind, artifact_id)

    def artifact_path(self, kind: str, artifact_id: str) -> str:
        """A local folder holding the artifact (the lake folder itself when the lake is local;
        otherwise a cached download)."""
        if not self.has_artifact(kind, artifact_id):
            raise LakeError(
                f"artifact {kind}/{artifact_id} is missing or incomplete in lake {self.uri}; "
                "re-run the stage that produces it"
            )
        src = self._p("artifacts", kind, artifact_id)
        if self.local:
            return src
        cache = Path(tempfile.gettempdir()) / "flywheel-lake-cache" / content_id(self.uri) / kind
        target = cache / artifact_id
        if not (target / "COMPLETE.json").exists():
            staging = cache / f".{artifact_id}.{os.getpid()}"
            self.fs.get(src + "/", str(staging) + "/", recursive=True)
            os.replace(staging, target)
        return str(target)

    # files: reports, delivered batches -----------------------------------------------------
    def write_text(self, relpath: str, text: str) -> str:
        return self.write_bytes(relpath, text.encode())

    def write_bytes(self, relpath: str, data: bytes) -> str:
        path = self._p(relpath)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(path, "wb") as f:
            f.write(data)
        return self.url(relpath)

    def read_bytes(self, relpath: str) -> bytes:
        with self.fs.open(self._p(relpath), "rb") as f:
            return f.read()

    def listdir(self, relpath: str) -> list[str]:
        """Names of the files directly under a folder of the lake (none if it is missing)."""
        folder = self._p(relpath)
        self.fs.invalidate_cache(folder)  # see manifests(): a poller must see new files
        if not self.fs.exists(folder):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)
                      if self.fs.isfile(p))

    def exists(self, relpath: str) -> bool:
        path = self._p(relpath)
        self.fs.invalidate_cache(path.rsplit("/", 1)[0])  # see manifests()
        return self.fs.exists(path)


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly the schema's columns, in order: columns an older part lacks are
    null, extra ones are dropped, types are cast."""
    cols = []
    for field in schema:
        if field.name in t.column_names:
            col = t.column(field.name)
            cols.append(col if col.type == field.type else col.cast(field.type))
        else:
            cols.append(pa.nulls(t.num_rows, field.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _first_occurrences(ids) -> pa.Array:
    """Indices of the first row of each distinct id, in their original order."""
    idx = pa.table({"id": ids, "i": pa.array(range(len(ids)), pa.int64())})
    first = idx.group_by("id", use_threads=False).aggregate([("i", "min")]).column("i_min")
    return pc.take(first, pc.sort_indices(first))


def _check_table(table: str) -> None:
    if table not in SCHEMAS:
        raise LakeError(f"unknown table {table!r}; the lake's tables are {', '.join(SCHEMAS)}")
