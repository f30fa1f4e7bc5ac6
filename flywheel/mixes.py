"""The Llama 2 reward-model data mixes, as DuckDB queries over the lake's `comparisons` view.

Only train rows (split = 'train') ever enter a mix. Rows with source 'in-house' are the in-house
data; every other source is an open-source set, and a source containing 'harmless' (Anthropic
HH-RLHF harmless-base) is the Anthropic Harmless data.

    helpfulness RM   all in-house helpfulness rows, plus as many rows again sampled uniformly
                     from the in-house safety rows and all open-source rows
    safety RM        S = all in-house safety rows and all harmless rows (about 90 %), plus
                     round(|S| / 9) rows sampled uniformly from the in-house helpfulness rows and
                     the open-source helpfulness rows (about 10 %)

Sampling is seeded and deterministic: the pool is ordered by md5("<seed>:<id>") (then id) and
the first N rows are taken, so the same seed on the same lake gives the same ids, and a pool that
grows keeps the rows it had ranked first. When the pool holds fewer rows than wanted, all of them
are taken and the counts say so ("sample short"). `batches` limits the in-house rows to the
named batches (the lineage of a reward model); open-source rows are not filtered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.catalog import connect
from flywheel.errors import DataError
from flywheel.lake import Lake

IN_HOUSE = "in-house"

_BASE = f"""
WITH train AS (
  SELECT id, coalesce(source, '{IN_HOUSE}') AS source, criterion, batch_id
  FROM comparisons WHERE split = 'train'
), in_house AS (
  SELECT id, criterion FROM train
  WHERE source = '{IN_HOUSE}' AND ($batches IS NULL OR list_contains($batches, batch_id))
), open_source AS (
  SELECT id, criterion, source ILIKE '%harmless%' AS harmless FROM train
  WHERE source <> '{IN_HOUSE}'
)"""

_SAMPLE = """, sampled AS (
  SELECT id, part FROM pool ORDER BY md5(concat($seed, ':', id)), id
  LIMIT (SELECT {wanted} FROM kept)
)
SELECT id, part FROM kept UNION ALL SELECT id, part FROM sampled
ORDER BY id"""

HELPFULNESS_SQL = _BASE + """, kept AS (
  SELECT id, 'in-house helpfulness' AS part FROM in_house WHERE criterion = 'helpfulness'
), pool AS (
  SELECT id, 'in-house safety' AS part FROM in_house WHERE criterion = 'safety'
  UNION ALL SELECT id, 'open-source' AS part FROM open_source
)""" + _SAMPLE.format(wanted="count(*)")

SAFETY_SQL = _BASE + """, kept AS (
  SELECT id, 'in-house safety' AS part FROM in_house WHERE criterion = 'safety'
  UNION ALL SELECT id, 'anthropic harmless' AS part FROM open_source WHERE harmless
), pool AS (
  SELECT id, 'in-house helpfulness' AS part FROM in_house WHERE criterion = 'helpfulness'
  UNION ALL SELECT id, 'open-source helpfulness' AS part FROM open_source
  WHERE criterion = 'helpfulness' AND NOT harmless
)""" + _SAMPLE.format(wanted="round(count(*) / 9)::BIGINT")

# (parts taken whole, parts sampled from) of each mix, for the counts
_PARTS = {
    "helpfulness": (("in-house helpfulness",), ("in-house safety", "open-source")),
    "safety": (("in-house safety", "anthropic harmless"),
               ("in-house helpfulness", "open-source helpfulness")),
}


@dataclass(frozen=True)
class MixResult:
    mix: str  # helpfulness | safety
    ids: pa.Array  # comparison ids, sorted
    counts: dict[str, int]  # rows by part, "total", "sample wanted", "sample short"
    sql: str
    seed: int
    batches: list[str] | None


def helpfulness_mix(lake_or_con: Lake | duckdb.DuckDBPyConnection, seed: int = 0,
                    batches: list[str] | None = None) -> MixResult:
    """All in-house helpfulness train rows plus an equal number sampled from in-house safety
    and open-source train rows."""
    return _mix("helpfulness", HELPFULNESS_SQL, lake_or_con, seed, batches)


def safety_mix(lake_or_con: Lake | duckdb.DuckDBPyConnection, seed: int = 0,
               batches: list[str] | None = None) -> MixResult:
    """In-house safety and Anthropic Harmless train rows (90 %) plus in-house and open-source
    helpfulness train rows sampled to make the other 10 %."""
    return _mix("safety", SAFETY_SQL, lake_or_con, seed, batches)


def mix_record(result: MixResult) -> dict:
    """What to store with a reward model (`reward_models.data_mix`): JSON-serialisable."""
    ids = pc.sort_indices(result.ids)
    blob = "\n".join(pc.take(result.ids, ids).to_pylist()).encode()
    return {
        "mix": result.mix,
        "counts": dict(result.counts),
        "seed": result.seed,
        "batches": None if result.batches is None else list(result.batches),
        "ids_sha256": hashlib.sha256(blob).hexdigest(),
        "sql": result.sql,
    }


def _mix(name: str, sql: str, lake_or_con, seed: int, batches: list[str] | None) -> MixResult:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"mix seed must be an integer, got {seed!r}")
    if isinstance(batches, str):
        raise DataError(f"batches must be a list of batch ids, got the string {batches!r}; "
                        f"pass [{batches!r}]")
    own = isinstance(lake_or_con, Lake)
    con = connect(lake_or_con) if own else lake_or_con
    try:
        if batches is not None:
            _check_batches(con, batches)
        params = {"seed": str(seed), "batches": _batch_list(batches)}
        table = con.sql(sql, params=params).to_arrow_table()
    finally:
        if own:
            con.close()
    counts = _counts(name, table)
    if not counts["total"]:
        raise DataError(
            f"the {name} mix is empty: no train comparisons for it"
            + (f" in batches {batches}" if batches is not None else "")
            + "; ingest an annotation batch first (flywheel ingest) or name other batches"
        )
    ids = table.column("id").combine_chunks()
    return MixResult(name, ids, counts, sql.strip(), seed,
                     None if batches is None else list(batches))


def _batch_list(batches: list[str] | None) -> list[str] | None:
    return None if batches is None else [str(b) for b in batches]


def _check_batches(con, batches: list[str]) -> None:
    known = {b for (b,) in con.execute(
        f"SELECT DISTINCT batch_id FROM comparisons WHERE source = '{IN_HOUSE}'").fetchall()}
    unknown = sorted(set(map(str, batches)) - known)
    if unknown:
        raise DataError(
            f"unknown in-house batch ids {unknown}; the lake's in-house batches are "
            f"{sorted(b for b in known if b is not None) or 'none yet'}"
        )


def _counts(name: str, table: pa.Table) -> dict[str, int]:
    whole, sampled = _PARTS[name]
    by_part = dict.fromkeys(whole + sampled, 0)
    if table.num_rows:
        grouped = table.group_by("part").aggregate([("id", "count")])
        for part, n in zip(grouped["part"].to_pylist(), grouped["id_count"].to_pylist()):
            by_part[part] = n
    kept = sum(by_part[p] for p in whole)
    wanted = kept if name == "helpfulness" else round(kept / 9)
    got = sum(by_part[p] for p in sampled)
    return {**by_part, "total": kept + got, "sample wanted": wanted, "sample short": wanted - got}
