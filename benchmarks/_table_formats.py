"""Delta Lake and Iceberg tables behind the same few operations, for bench_table_formats.py:
create, append, merge by id (retrying conflicts), read as Arrow (now or at an older commit), the
Parquet files, row and distinct-id counts."""

from __future__ import annotations

import logging
import os

import duckdb
import pyarrow as pa

from flywheel.lake.schemas import SCHEMAS

SCHEMA = SCHEMAS["comparisons"]


class Delta:
    """A Delta table: its log of commits lives beside the data, in the same folder or bucket."""

    def __init__(self, warehouse: str, name: str):
        self.uri = f"{warehouse}/{name}"
        self.options = {"AWS_ALLOW_HTTP": "true"} if self.uri.startswith("s3://") else None

    def create(self) -> None:
        from deltalake import DeltaTable
        DeltaTable.create(self.uri, SCHEMA, storage_options=self.options)

    def _table(self, version: int | None = None):
        from deltalake import DeltaTable
        return DeltaTable(self.uri, version=version, storage_options=self.options)

    def _retrying(self, commit) -> tuple[int, object]:
        from deltalake.exceptions import CommitFailedError
        retries = 0
        while True:
            try:
                return retries, commit()
            except CommitFailedError:
                retries += 1

    def append(self, rows: pa.Table) -> int:
        from deltalake import write_deltalake
        return self._retrying(lambda: write_deltalake(self.uri, rows, mode="append",
                                                      storage_options=self.options))[0]

    def merge(self, rows: pa.Table) -> tuple[int, int]:
        """(retries, rows inserted): insert the rows whose id is not in the table yet."""
        retries, metrics = self._retrying(lambda: self._table().merge(
            rows, predicate="t.id = s.id", source_alias="s", target_alias="t")
            .when_not_matched_insert_all().execute())
        return retries, metrics["num_target_rows_inserted"]

    def arrow(self, version: int | None = None, columns=None):
        return self._table(version).to_pyarrow_dataset()

    def files(self) -> list[str]:
        return self._table().file_uris()

    def second_commit(self) -> int:
        return 2  # version 0 is the table's creation


class Iceberg:
    """An Iceberg table: data and metadata files in the warehouse, the pointer to the current
    metadata in a catalog database (SQLite here, beside the run).

    pyiceberg redoes a commit that lost a race by re-adding the same new files on top of the
    winner, without looking again at what the winner wrote: right for an append, wrong for a
    merge, whose rows to insert were chosen against the older snapshot. A table made with
    `library_retries=False` hands the conflict to the caller, which redoes the whole merge."""

    def __init__(self, warehouse: str, name: str, catalog_db: str, library_retries: bool = True):
        self.warehouse, self.name, self.catalog_db = warehouse, name, catalog_db
        self.library_retries = library_retries

    def _catalog(self):
        from pyiceberg.catalog.sql import SqlCatalog
        props = {"uri": f"sqlite:///{self.catalog_db}", "warehouse": self.warehouse}
        if self.warehouse.startswith("s3://"):
            props.update({"s3.endpoint": os.environ["AWS_ENDPOINT_URL"],
                          "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
                          "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
                          "s3.region": os.environ["AWS_DEFAULT_REGION"]})
        return SqlCatalog("bench", **props)

    def create(self) -> None:
        catalog = self._catalog()
        catalog.create_namespace_if_not_exists("bench")
        properties = {} if self.library_retries else {"commit.retry.num-retries": "0"}
        catalog.create_table(f"bench.{self.name}", SCHEMA, properties=properties)

    def _table(self):
        return self._catalog().load_table(f"bench.{self.name}")

    def _retrying(self, commit) -> tuple[int, object]:
        """(retries by the caller and by pyiceberg itself, what commit returned)."""
        from pyiceberg.exceptions import CommitFailedException
        from sqlalchemy.exc import OperationalError  # SQLite busy past its timeout

        class Count(logging.Handler):  # pyiceberg logs each of its own retries
            n = 0

            def emit(self, record):
                Count.n += "concurrent update" in record.getMessage()

        log = logging.getLogger("pyiceberg.table")
        log.addHandler(counter := Count())
        log.propagate, retries = False, 0
        try:
            while True:
                try:
                    result = commit(self._table())
                    return retries + counter.n, result
                except (CommitFailedException, OperationalError):
                    retries += 1
        finally:
            log.removeHandler(counter)

    def append(self, rows: pa.Table) -> int:
        return self._retrying(lambda t: t.append(rows))[0]

    def merge(self, rows: pa.Table) -> tuple[int, int]:
        retries, result = self._retrying(lambda t: t.upsert(
            rows, join_cols=["id"], when_matched_update_all=False))
        return retries, result.rows_inserted

    def arrow(self, version: int | None = None, columns=("*",)):
        return self._table().scan(snapshot_id=version, selected_fields=tuple(columns)) \
            .to_arrow_batch_reader()

    def files(self) -> list[str]:
        return [task.file.file_path for task in self._table().scan().plan_files()]

    def second_commit(self) -> int:
        return self._table().snapshots()[1].snapshot_id


def open_format(fmt: str, place: dict, name: str, library_retries: bool = True):
    """The table `name` of a format in a place: {"root": a local folder, "s3": "s3://bucket" or
    None}; Iceberg's catalog database is always in the local folder."""
    if fmt == "delta":
        return Delta(f"{place['s3'] or place['root']}/delta", name)
    return Iceberg(f"{place['s3'] or 'file://' + place['root']}/iceberg", name,
                   f"{place['root']}/catalog.db", library_retries)


def counts(table, version=None) -> tuple[int, int]:
    """(rows, distinct ids) of the table, by DuckDB over its Arrow stream."""
    con = duckdb.connect()
    con.register("t", table.arrow(version, columns=("id",)))
    return con.execute("SELECT count(*), count(DISTINCT id) FROM t").fetchone()
