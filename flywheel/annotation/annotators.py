"""Annotator quality read from the lake: every in-house comparison and every quarantined gold
label as `Rating`s (flywheel/annotation/quality.py measures them), and the annotators whose
comparisons the reward-model mixes leave out (`annotation.quality.min_kappa`,
`min_gold_accuracy`).

An item is a pair of responses to a prompt, whoever labelled it: its responses are keyed by
sample id (or by text when delivered inline), and a rating's choice is which of the two keys,
in sorted order, was preferred. Gold labels are the rows ingest quarantined as `gold_pair`,
scored against the known answer the lake registered (flywheel/annotation/gold.py).

Leaving an annotator out deletes nothing: the mix query skips their rows, the mix records whom
it left out and why, and a config without the threshold (or an annotator who improves) brings
them back at the next retrain.
"""

from __future__ import annotations

import json

import duckdb

from flywheel.annotation.gold import REASON, gold_key, registered
from flywheel.annotation.quality import Rating, annotator_report, batch_agreement, below_threshold
from flywheel.config.annotators import AnnotatorQualityConfig
from flywheel.lake.store import Lake

IN_HOUSE = "in-house"

_COMPARISONS = f"""
SELECT prompt_id, criterion, strength, annotator, batch_id, seconds,
  coalesce(chosen_sample_id, 'text:' || md5(chosen_text)) AS chosen_key,
  coalesce(rejected_sample_id, 'text:' || md5(rejected_text)) AS rejected_key
FROM comparisons
WHERE coalesce(source, '{IN_HOUSE}') = '{IN_HOUSE}' AND ($batch IS NULL OR batch_id = $batch)
"""

_GOLD = f"""
SELECT row, batch_id FROM quarantine
WHERE reason = '{REASON}' AND ($batch IS NULL OR batch_id = $batch)
"""


def ratings(con: duckdb.DuckDBPyConnection, lake: Lake, batch: str | None = None
            ) -> list[Rating]:
    """The in-house comparisons (of `batch`, or all) and the gold labels, as ratings."""
    return [r for _, r in batch_ratings(con, lake, batch)]


def batch_ratings(con: duckdb.DuckDBPyConnection, lake: Lake, batch: str | None = None
                  ) -> list[tuple[str, Rating]]:
    """`ratings`, each with its batch id."""
    out = []
    for prompt_id, criterion, strength, annotator, batch_id, seconds, chosen, rejected in (
            con.execute(_COMPARISONS, {"batch": batch}).fetchall()):
        first, second = sorted((chosen, rejected))
        out.append((batch_id, Rating(f"{prompt_id}|{first}|{second}", annotator,
                                     "first" if chosen == first else "second", strength,
                                     criterion, seconds=seconds)))
    rows = con.execute(_GOLD, {"batch": batch}).fetchall()
    known = registered(lake) if rows else {}
    for blob, batch_id in rows:
        r = json.loads(blob)
        a, b = (r.get("response_a") or "").strip(), (r.get("response_b") or "").strip()
        chosen = {"a": a, "b": b}.get((r.get("chosen") or "").strip().lower())
        g = known.get(gold_key(a, b))
        if g is None or chosen is None or not r.get("annotator"):
            continue  # a gold pair no longer registered, or a label without a choice
        first = min(a, b)
        out.append((batch_id, Rating(g["gold_id"], r["annotator"].strip(),
                                     "first" if chosen == first else "second",
                                     _strength(r.get("strength")), g["criterion"],
                                     gold="first" if g["better"] == first else "second",
                                     seconds=_seconds(r.get("seconds")))))
    return out


def _seconds(value) -> float | None:
    """A gold label's delivered seconds (a number, or its text), when it is a valid one."""
    try:
        seconds = (float(value) if isinstance(value, (int, float, str))
                   and not isinstance(value, bool) else None)
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < float("inf") else None


def _strength(value: str | None) -> str | None:
    """A delivered strength spelled as the lake spells it (as ingest's labels are)."""
    return value.strip().lower().replace(" ", "_").replace("-", "_") if value else None


def report(con: duckdb.DuckDBPyConnection, lake: Lake, batch: str | None = None) -> dict:
    """{batch, annotators: per-annotator rows, agreement: the batch's, batches: per batch}."""
    tagged = batch_ratings(con, lake, batch)
    rs = [r for _, r in tagged]
    per_batch = {}
    if batch is None:
        grouped: dict[str, list[Rating]] = {}
        for b, r in tagged:
            grouped.setdefault(b, []).append(r)
        per_batch = {b: batch_agreement(grouped[b]) for b in sorted(grouped)}
    return {"batch": batch, "annotators": annotator_report(rs),
            "agreement": batch_agreement(rs), "batches": per_batch}


def left_out(con: duckdb.DuckDBPyConnection, lake: Lake, q: AnnotatorQualityConfig
             ) -> dict[str, str]:
    """Annotators whose comparisons the mixes leave out, with why (none without thresholds)."""
    if q.min_kappa is None and q.min_gold_accuracy is None:
        return {}
    return below_threshold(annotator_report(ratings(con, lake)), q.min_kappa,
                           q.min_gold_accuracy, q.min_items)
