"""The lake: Delta Lake tables and plain files behind one root, a local folder or `s3://`.

Layout under the lake root:
    lake.json                         the lake's format; written when the lake is created
    delta/<table>/                    the tables, in Delta Lake format (flywheel.lake.delta):
                                      every write one atomic commit whose metadata carries its
                                      lineage and the code revision that wrote it
    artifacts/<kind>/<id>/...         checkpoints (safetensors + tokenizer), COMPLETE.json last
    reports/<name>                    markdown reports
    raw/<checksum>/<file>             annotation batches as delivered, byte for byte
    incoming/                         drop folder the inbox flow polls for new batches

Rows are keyed by content hash: a write inserts only ids the table lacks. Locations stored in
rows (artifacts, reports, delivered files) are relative to the lake root, so a lake copied or
moved keeps its lineage; `Lake.url` makes one a full URI.

A lake opened `read_only` writes nothing, not even a probe: `flywheel status`, lineage and
exports work on a read-only mount or with read-only credentials.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.errors import LakeError
from flywheel.lake import delta
from flywheel.lake.schemas import SCHEMAS, content_id
from flywheel.revision import code_revision

FORMAT = {"format": "delta", "layout": 2}
MARKER = "lake.json"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class WriteResult:
    table: str
    version: int | None  # the table's version after the write; None when nothing was new
    written: int
    skipped: int


class Lake:
    def __init__(self, uri: str, read_only: bool = False, storage_options: dict | None = None):
        """`storage_options` go to the fsspec filesystem of the lake's files (the tables'
        object store takes its credentials and endpoint from the AWS environment)."""
        # a local path is made absolute, so the URIs a run prints stay valid anywhere
        self.uri = uri.rstrip("/") if "://" in uri else os.path.abspath(os.path.expanduser(uri))
        try:
            self.fs, root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        except (ImportError, ValueError) as err:
            raise LakeError(f"lake URI {uri!r} is not usable: {err}") from None
        self.root = root.rstrip("/")
        proto = self.fs.protocol
        self.protocol = proto if isinstance(proto, str) else proto[0]
        self.local = self.protocol in ("file", "local")
        self.read_only = read_only

    @classmethod
    def open(cls, uri: str, read_only: bool = False,
             storage_options: dict | None = None) -> Lake:
        """Open a lake with one clear error if it cannot be used: writable (and created when
        missing) unless `read_only`, in which case it must exist and nothing is written."""
        lake = cls(uri, read_only, storage_options)
        try:
            if read_only:
                found = lake.fs.exists(lake._p(MARKER)) or lake.fs.exists(lake._p("delta"))
                if not found and not lake.fs.exists(lake._p("manifests")):
                    raise LakeError(f"no lake at {uri}; check the path, or run `flywheel demo` "
                                    "or `flywheel run` to create one")
            else:
                lake.fs.makedirs(lake.root, exist_ok=True)
                # a probe of its own: processes opening the lake at once must not collide
                probe = lake._p(f".probe-{uuid.uuid4().hex}")
                with lake.fs.open(probe, "wb") as f:
                    f.write(b"ok")
                lake.fs.rm(probe)
        except LakeError:
            raise
        except Exception as err:  # any backend failure means the same thing to the user
            what = "unreachable" if read_only else "unreachable or not writable"
            raise LakeError(
                f"lake {uri} is {what} ({type(err).__name__}: {err}); check the path or "
                "bucket, its permissions and credentials, or pass another --lake"
            ) from None
        lake._check_format()
        return lake

    def _check_format(self) -> None:
        if self.exists(MARKER):
            found = json.loads(self.read_bytes(MARKER))
            if found.get("layout") != FORMAT["layout"]:
                raise LakeError(f"lake {self.uri} has layout {found.get('layout')}, this "
                                f"version reads layout {FORMAT['layout']}; upgrade rlhf-flywheel")
            return
        if self.exists("manifests"):
            raise LakeError(
                f"lake {self.uri} is in the earlier format (Parquet parts and manifests); "
                f"convert it once with `flywheel lake migrate --lake {self.uri}`")
        if not self.read_only:
            self.write_bytes(MARKER, json.dumps(FORMAT).encode())

    # paths -------------------------------------------------------------------------------
    def _p(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url(self, *parts: str) -> str:
        """A full URI (with protocol) of a path inside the lake, for links and messages; a
        stored location that is already absolute (an older row) is returned as it is."""
        if parts and ("://" in parts[0] or parts[0].startswith("/")):
            return "/".join(parts)
        return "/".join([self.uri, *parts])

    def _full(self, path: str) -> str:
        return path if self.local else f"{self.protocol}://{path}"

    def table_uri(self, table: str) -> str:
        _check_table(table)
        return self._full(self._p("delta", table))

    # tables ------------------------------------------------------------------------------
    def read(self, table: str, columns: list[str] | None = None,
             version: int | None = None) -> pa.Table:
        """A table's rows (its `columns`), as of `version` (default: the latest)."""
        return delta.read(self.table_uri(table), SCHEMAS[table], columns, version,
                          None if self.local else self.fs)

    def rows(self, table: str) -> list[dict]:
        """Every row of a small table (models, policies, iterations, batches) as dicts; large
        tables are queried through flywheel.lake.catalog."""
        return self.read(table).to_pylist()

    def ids(self, table: str) -> set[str]:
        return set(self.read(table, ["id"]).column("id").to_pylist())

    def version(self, table: str) -> int | None:
        """The table's current version, None when nothing was written to it yet."""
        return delta.version(self.table_uri(table))

    def versions(self, tables=None) -> dict[str, int | None]:
        return {t: self.version(t) for t in (tables or SCHEMAS)}

    def history(self, table: str, limit: int | None = None) -> list[dict]:
        """The table's commits, newest first, each with its lineage and code revision."""
        out = []
        for commit in delta.history(self.table_uri(table), limit):
            entry = dict(commit)
            if isinstance(entry.get("lineage"), str):
                entry["lineage"] = json.loads(entry["lineage"])
            out.append(entry)
        return out

    def files(self, table: str, version: int | None = None) -> tuple[list[str], int | None]:
        """The data files of a table's snapshot and its version, for DuckDB to scan."""
        return delta.file_uris(self.table_uri(table), version)

    def write(self, table: str, rows: list[dict], lineage: dict | None = None) -> WriteResult:
        """Insert the rows whose id is new, in one commit. Returns what was written."""
        _check_table(table)
        schema = SCHEMAS[table]
        fresh = [{k: r.get(k) for k in schema.names} for r in rows]
        return self.write_table(table, pa.Table.from_pylist(fresh, schema=schema), lineage)

    def write_table(self, table: str, data: pa.Table, lineage: dict | None = None,
                    replace_where: str | None = None) -> WriteResult:
        """Insert the rows of an Arrow table whose id is new (the columnar path, for large
        batches) in one commit: all of them or, if the writer dies, none. Rows already there
        are kept, except those matching the SQL predicate `replace_where` (on `t.<column>`),
        which are replaced."""
        self._writable()
        _check_table(table)
        schema = SCHEMAS[table]
        data = delta.conform(data, schema)
        total = data.num_rows
        if not total:
            return WriteResult(table, None, 0, 0)
        if pc.count_distinct(data.column("id")).as_py() < total:
            data = data.take(_first_occurrences(data.column("id")))
        if "created_at" in schema.names:
            col = data.column("created_at")
            if col.null_count:
                stamp = pa.array([_now()] * data.num_rows, schema.field("created_at").type)
                data = data.set_column(schema.get_field_index("created_at"), "created_at",
                                       pc.if_else(pc.is_null(col), stamp, col))
        meta = {"lineage": json.dumps(lineage or {}, default=str, sort_keys=True),
                "code_version": code_revision()}
        uri = self.table_uri(table)
        written = delta.merge_new(uri, data, meta, replace_where)
        return WriteResult(table, delta.version(uri) if written else None, written,
                           total - written)

    def update(self, table: str, predicate: str, values: dict[str, str | None],
               lineage: dict | None = None) -> int:
        """Set `values` on the rows matching a SQL `predicate`, in one commit (the earlier
        versions stay readable). Returns how many rows changed."""
        self._writable()
        meta = {"lineage": json.dumps(lineage or {}, default=str, sort_keys=True),
                "code_version": code_revision()}
        return delta.update(self.table_uri(table), predicate, values, meta)

    def _writable(self) -> None:
        if self.read_only:
            raise LakeError(f"lake {self.uri} was opened read-only; this command writes to it")

    def _write_atomic(self, path: str, data: bytes) -> None:
        """Write a file so a reader (or a writer killed half-way) never leaves it partial: a
        local file is written aside and renamed into place; an S3 put is atomic already."""
        self._writable()
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if not self.local:
            with self.fs.open(path, "wb") as f:
                f.write(data)
            return
        folder, name = path.rsplit("/", 1)
        tmp = f"{folder}/.{name}.tmp-{uuid.uuid4().hex}"  # hidden: listdir skips it
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _write_json(self, path: str, obj: dict) -> None:
        self._write_atomic(path, json.dumps(obj, indent=2, default=str).encode())

    # artifacts ---------------------------------------------------------------------------
    def artifact_uri(self, kind: str, artifact_id: str) -> str:
        """Where an artifact lives, relative to the lake (what rows store; see `url`)."""
        return f"artifacts/{kind}/{artifact_id}"

    def has_artifact(self, kind: str, artifact_id: str) -> bool:
        marker = self._p("artifacts", kind, artifact_id, "COMPLETE.json")
        # listings are cached per filesystem (s3fs): drop it, or an artifact written since by
        # another process stays invisible to this one
        self.fs.invalidate_cache(marker.rsplit("/", 1)[0])
        return self.fs.exists(marker)

    def put_artifact(self, kind: str, artifact_id: str, local_dir: str | Path, meta: dict) -> str:
        """Copy a finished local folder into the lake, then mark it complete; returns its
        location relative to the lake."""
        self._writable()
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
        """Write a file of the lake whole (never seen half-written); returns `relpath`."""
        self._write_atomic(self._p(relpath), data)
        return relpath

    def read_bytes(self, relpath: str) -> bytes:
        with self.fs.open(self._p(relpath), "rb") as f:
            return f.read()

    def listdir(self, relpath: str) -> list[str]:
        """Names of the files directly under a folder of the lake (none if it is missing)."""
        folder = self._p(relpath)
        self.fs.invalidate_cache(folder)  # see has_artifact(): a poller must see new files
        if not self.fs.exists(folder):
            return []
        names = (p.rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)
                 if self.fs.isfile(p))
        return sorted(n for n in names if not n.startswith("."))

    def exists(self, relpath: str) -> bool:
        path = self._p(relpath)
        self.fs.invalidate_cache(path.rsplit("/", 1)[0])  # see has_artifact()
        return self.fs.exists(path)


def _first_occurrences(ids) -> pa.Array:
    """Indices of the first row of each distinct id, in their original order."""
    idx = pa.table({"id": ids, "i": pa.array(range(len(ids)), pa.int64())})
    first = idx.group_by("id", use_threads=False).aggregate([("i", "min")]).column("i_min")
    return pc.take(first, pc.sort_indices(first))


def _check_table(table: str) -> None:
    if table not in SCHEMAS:
        raise LakeError(f"unknown table {table!r}; the lake's tables are {', '.join(SCHEMAS)}")
