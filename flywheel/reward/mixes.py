"""The Llama 2 reward-model data mixes, as DuckDB queries over the lake's `comparisons` view.

Only train rows (split = 'train') ever enter a mix. Rows with source 'in-house' are the in-house
data; every other source is an open-source set, and a source containing 'harmless' (Anthropic
HH-RLHF harmless-base) is the Anthropic Harmless data.

    helpfulness RM   all in-house helpfulness rows H, plus round(|H| x extra) rows sampled
                     uniformly from the in-house safety rows and all open-source rows
                     (Llama 2: an equal amount, extra = 1)
    safety RM        S = all in-house safety rows and all harmless rows, plus
                     round(|S| x share / (1 - share)) rows sampled uniformly from the in-house
                     helpfulness rows and the open-source helpfulness rows, so that they make
                     `share` of the mix (Llama 2: 90 % / 10 %, share = 0.1)

Sampling is seeded and deterministic: the pool is ordered by md5("<seed>:<id>") (then id) and
the first N rows are taken, so the same seed on the same lake gives the same ids, and a pool that
grows keeps the rows it had ranked first. When the pool holds fewer rows than wanted, the mix
fails with an error naming what is missing, or, with `allow_short`, takes all of them and the
counts say so ("sample short"). `batches` limits the in-house rows to the
named batches (the lineage of a reward model); open-source rows are not filtered.

`left_out` names in-house annotators whose rows no mix takes, with why (annotators below the
quality thresholds of `annotation.quality`: flywheel/annotation/annotators.py); the record
keeps the names and reasons, and nothing is deleted, so a mix without them takes their rows
again.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.errors import DataError
from flywheel.lake.catalog import connect
from flywheel.lake.store import Lake

IN_HOUSE = "in-house"

_BASE = f"""
WITH train AS (
  SELECT id, coalesce(source, '{IN_HOUSE}') AS source, criterion, batch_id, annotator
  FROM comparisons WHERE split = 'train'
), in_house AS (
  SELECT id, criterion FROM train
  WHERE source = '{IN_HOUSE}' AND ($batches IS NULL OR list_contains($batches, batch_id))
    AND NOT list_contains($left_out::VARCHAR[], coalesce(annotator, ''))
), open_source AS (
  SELECT id, criterion, source ILIKE '%harmless%' AS harmless FROM train
  WHERE source <> '{IN_HOUSE}'
)"""

_SAMPLE = """, sampled AS (
  SELECT id, part FROM pool ORDER BY md5(concat($seed, ':', id)), id
  LIMIT (SELECT round(count(*) * $ratio)::BIGINT FROM kept)
)
SELECT id, part FROM kept UNION ALL SELECT id, part FROM sampled
ORDER BY id"""

HELPFULNESS_SQL = _BASE + """, kept AS (
  SELECT id, 'in-house helpfulness' AS part FROM in_house WHERE criterion = 'helpfulness'
), pool AS (
  SELECT id, 'in-house safety' AS part FROM in_house WHERE criterion = 'safety'
  UNION ALL SELECT id, 'open-source' AS part FROM open_source
)""" + _SAMPLE

SAFETY_SQL = _BASE + """, kept AS (
  SELECT id, 'in-house safety' AS part FROM in_house WHERE criterion = 'safety'
  UNION ALL SELECT id, 'anthropic harmless' AS part FROM open_source WHERE harmless
), pool AS (
  SELECT id, 'in-house helpfulness' AS part FROM in_house WHERE criterion = 'helpfulness'
  UNION ALL SELECT id, 'open-source helpfulness' AS part FROM open_source
  WHERE criterion = 'helpfulness' AND NOT harmless
)""" + _SAMPLE

# (parts taken whole, parts sampled from) of each mix, for the counts
_PARTS = {
    "helpfulness": (("in-house helpfulness",), ("in-house safety", "open-source")),
    "safety": (("in-house safety", "anthropic harmless"),
               ("in-house helpfulness", "open-source helpfulness")),
}


class EmptyMixError(DataError):
    """A mix with no rows: the lake lacks the data the mix is built on."""


@dataclass(frozen=True)
class MixResult:
    mix: str  # helpfulness | safety
    ids: pa.Array  # comparison ids, sorted
    counts: dict[str, int]  # rows by part, "total", "sample wanted", "sample short"
    sql: str
    seed: int
    batches: list[str] | None
    ratio: float  # rows sampled per row kept whole
    left_out: dict[str, str] = field(default_factory=dict)  # annotator -> why


def helpfulness_mix(lake_or_con: Lake | duckdb.DuckDBPyConnection, seed: int = 0,
                    batches: list[str] | None = None, extra: float = 1.0,
                    allow_short: bool = False, left_out: dict[str, str] | None = None
                    ) -> MixResult:
    """All in-house helpfulness train rows plus `extra` times as many sampled from in-house
    safety and open-source train rows."""
    if not (isinstance(extra, int | float) and extra >= 0):
        raise DataError(f"helpfulness extra must be a number >= 0, got {extra!r}")
    return _mix("helpfulness", HELPFULNESS_SQL, lake_or_con, seed, batches, float(extra),
                allow_short, left_out)


def safety_mix(lake_or_con: Lake | duckdb.DuckDBPyConnection, seed: int = 0,
               batches: list[str] | None = None, helpfulness_share: float = 0.1,
               allow_short: bool = False, left_out: dict[str, str] | None = None) -> MixResult:
    """In-house safety and Anthropic Harmless train rows plus in-house and open-source
    helpfulness train rows sampled to make `helpfulness_share` of the mix (Llama 2: 10 %)."""
    if not (isinstance(helpfulness_share, int | float) and 0 <= helpfulness_share < 1):
        raise DataError(f"safety helpfulness_share must be in [0, 1), got {helpfulness_share!r}")
    ratio = helpfulness_share / (1 - helpfulness_share)
    return _mix("safety", SAFETY_SQL, lake_or_con, seed, batches, ratio, allow_short, left_out)


def mixes_for(lake_or_con, mix_cfg, batches: list[str] | None = None,
              kinds: tuple[str, ...] = ("helpfulness", "safety"),
              left_out: dict[str, str] | None = None) -> dict[str, MixResult]:
    """The mixes of `kinds` as a `MixConfig` (flywheel.config) describes them, without the
    rows of the `left_out` annotators."""
    make = {
        "helpfulness": lambda: helpfulness_mix(lake_or_con, mix_cfg.seed, batches,
                                               mix_cfg.helpfulness_extra, mix_cfg.allow_short,
                                               left_out),
        "safety": lambda: safety_mix(lake_or_con, mix_cfg.seed, batches,
                                     mix_cfg.safety_helpfulness_share, mix_cfg.allow_short,
                                     left_out),
    }
    return {kind: make[kind]() for kind in kinds}


def mix_record(result: MixResult) -> dict:
    """What to store with a reward model (`reward_models.data_mix`): JSON-serialisable."""
    ids = pc.sort_indices(result.ids)
    blob = "\n".join(pc.take(result.ids, ids).to_pylist()).encode()
    return {
        "mix": result.mix,
        "counts": dict(result.counts),
        "seed": result.seed,
        "ratio": result.ratio,
        "batches": None if result.batches is None else list(result.batches),
        "left_out_annotators": dict(sorted(result.left_out.items())),
        "ids_sha256": hashlib.sha256(blob).hexdigest(),
        "sql": result.sql,
    }


def _mix(name: str, sql: str, lake_or_con, seed: int, batches: list[str] | None,
         ratio: float, allow_short: bool, left_out: dict[str, str] | None = None) -> MixResult:
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
        left_out = dict(left_out or {})
        params = {"seed": str(seed), "batches": _batch_list(batches), "ratio": ratio,
                  "left_out": sorted(left_out)}
        table = con.sql(sql, params=params).to_arrow_table()
    finally:
        if own:
            con.close()
    counts = _counts(name, table, ratio)
    whole, sampled = _PARTS[name]
    if not counts["total"]:
        # the sampled part is sized from the part taken whole, so an empty mix lacks the latter
        raise EmptyMixError(
            f"the {name} mix is empty: no {' or '.join(whole)} train comparisons"
            + (f" in batches {batches}" if batches is not None else "")
            + f"; ingest an annotation batch with {name} comparisons first (flywheel ingest)"
            + (", or import Anthropic HH-RLHF harmless-base (flywheel import)"
               if name == "safety" else "")
            + (" or name other batches" if batches is not None else "")
            + (f" (the rows of {', '.join(sorted(left_out))} are left out for their quality: "
               "annotation.quality.min_kappa / min_gold_accuracy)" if left_out else "")
        )
    if counts["sample short"] > 0 and not allow_short:
        have = counts["sample wanted"] - counts["sample short"]
        raise DataError(
            f"the {name} mix cannot meet its ratio: it wants {counts['sample wanted']} rows "
            f"sampled from {' + '.join(sampled)} but the lake holds {have} train rows there "
            f"({counts['sample short']} missing); import more (flywheel import of an "
            f"open-source set), lower reward_model.mix.{_RATIO[name]}, or set "
            "reward_model.mix.allow_short: true to take them all"
        )
    ids = table.column("id").combine_chunks()
    return MixResult(name, ids, counts, sql.strip(), seed,
                     None if batches is None else list(batches), ratio, left_out)


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


_RATIO = {"helpfulness": "helpfulness_extra", "safety": "safety_helpfulness_share"}


def _counts(name: str, table: pa.Table, ratio: float) -> dict[str, int]:
    whole, sampled = _PARTS[name]
    by_part = dict.fromkeys(whole + sampled, 0)
    if table.num_rows:
        grouped = table.group_by("part").aggregate([("id", "count")])
        for part, n in zip(grouped["part"].to_pylist(), grouped["id_count"].to_pylist()):
            by_part[part] = n
    kept = sum(by_part[p] for p in whole)
    wanted = int(_round_half_away(kept * ratio))
    got = sum(by_part[p] for p in sampled)
    return {**by_part, "total": kept + got, "sample wanted": wanted, "sample short": wanted - got}


def _round_half_away(x: float) -> float:
    """DuckDB's round(): halves away from zero (Python's round() goes to even)."""
    return math.floor(x + 0.5)
