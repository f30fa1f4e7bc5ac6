"""Reward-model accuracy: overall, per strength and per safety label, on every test set of the
lake (any comparison file: file_eval.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from flywheel.errors import DataError
from flywheel.lake.schemas import SAFETY_LABELS, STRENGTHS
from flywheel.lake.store import Lake
from flywheel.reward.mixes import IN_HOUSE
from flywheel.reward.model import PreferencePair, RewardModel
from flywheel.reward.scoring import Group, ScoringEngine

SEP = " · "


def evaluate(model: RewardModel, pairs: list[PreferencePair], max_length: int = 512,
             engine=None) -> tuple[dict, list[bool]]:
    """Score both responses of every pair through the scoring engine (the pair's prompt runs
    once for both where the backbone allows it). Returns (summary, hits): hits[i] is whether
    pair i's chosen response scored above its rejected one; the summary is
    `summarise(pairs, hits)`. `engine`: a configured ScoringEngine (default: one with
    `max_length` and the default token budget)."""

    if not pairs:
        return summarise([], []), []
    engine = engine or ScoringEngine(max_length=max_length)
    scores = engine.rewards(model, [Group(p.messages, [p.chosen, p.rejected]) for p in pairs],
                            desc="evaluating")
    hits = [c > r for c, r in scores]
    return summarise(pairs, hits), hits


def summarise(pairs: list[PreferencePair], hits: list[bool]) -> dict:
    """Accuracy overall, per strength bucket and per safety label (the buckets of Llama 2's
    Table 8); a bucket with no pairs is left out."""
    def bucket(key, levels):
        out = {}
        for level in levels:
            sel = [h for h, p in zip(hits, pairs) if getattr(p, key) == level]
            if sel:
                out[level] = {"accuracy": sum(sel) / len(sel), "n": len(sel)}
        return out

    return {
        "accuracy": sum(hits) / len(hits) if hits else None,
        "n": len(hits),
        "by_strength": bucket("strength", STRENGTHS),
        "by_safety_label": bucket("safety_label", SAFETY_LABELS),
    }


def accuracy(model: RewardModel, pairs: list[PreferencePair], max_length: int = 512) -> dict:
    """Accuracy overall, per strength bucket and per safety label: the share of pairs scored
    chosen > rejected."""
    return evaluate(model, pairs, max_length)[0]


@dataclass(frozen=True)
class EvalSet:
    name: str
    criterion: str
    source: str  # in-house, or the open-source set's name
    ids: tuple[str, ...]


def find_test_sets(con: duckdb.DuckDBPyConnection) -> list[EvalSet]:
    """The lake's test sets: in-house test rows by batch and criterion, open-source ones by
    source and criterion; in-house sets first."""
    rows = con.sql(f"""SELECT id, coalesce(source, '{IN_HOUSE}'), batch_id, criterion
                       FROM comparisons WHERE split = 'test' ORDER BY id""").fetchall()
    groups: dict[tuple, list[str]] = {}
    for cid, source, batch, criterion in rows:
        group = batch if source == IN_HOUSE else source
        groups.setdefault((source != IN_HOUSE, str(group), criterion, source), []).append(cid)
    return [EvalSet(f"{group}{SEP}{criterion}", criterion, source, tuple(ids))
            for (_, group, criterion, source), ids in sorted(groups.items())]


def load_pairs(con: duckdb.DuckDBPyConnection, ids) -> dict[str, PreferencePair]:
    """The comparisons with these ids as training pairs, by id (prompts joined in)."""
    wanted = pa.table({"id": pa.array(list(ids), pa.string())})
    con.register("_wanted_ids", wanted)
    try:
        rows = con.sql("""
            SELECT c.id, p.messages, c.chosen_text, c.rejected_text, c.strength, c.safety_label
            FROM comparison_texts c LEFT JOIN prompts p ON p.id = c.prompt_id
            WHERE c.id IN (SELECT id FROM _wanted_ids)""").fetchall()
    finally:
        con.unregister("_wanted_ids")
    out = {}
    for cid, messages, chosen, rejected, strength, label in rows:
        if messages is None:
            raise DataError(f"comparison {cid} refers to a prompt the lake does not hold; "
                            "re-ingest its batch (flywheel ingest) so its prompt lands too")
        out[cid] = PreferencePair(json.loads(messages), chosen, rejected, strength, label)
    missing = len(set(wanted.column("id").to_pylist()) - out.keys())
    if missing:
        raise DataError(f"{missing} comparison ids are not in the lake's comparisons table")
    return out


def evaluate_sets(model, con, sets: list[EvalSet], max_length: int,
                  pairs: dict[str, PreferencePair] | None = None, engine=None):
    """Score every test row once. Returns ({set name: summary}, {comparison id: hit}, the
    pairs by id)."""
    ids = sorted({i for s in sets for i in s.ids})
    pairs = dict(pairs or {})
    pairs.update(load_pairs(con, [i for i in ids if i not in pairs]))
    _, hits = evaluate(model, [pairs[i] for i in ids], max_length, engine)
    hit = dict(zip(ids, hits))
    per_set = {
        s.name: {"criterion": s.criterion, "source": s.source,
                 **summarise([pairs[i] for i in s.ids], [hit[i] for i in s.ids])}
        for s in sets
    }
    return per_set, hit, pairs


def resolve_model(spec: str, lake: Lake | None = None) -> tuple[str, dict]:
    """A reward-model checkpoint folder, or the id (or a unique prefix) of one in `lake`.
    Returns (local folder, its reward_models row or {})."""
    if Path(spec).is_dir():
        if not (Path(spec) / "head.safetensors").is_file():
            raise DataError(f"{spec} is not a reward-model checkpoint (no head.safetensors); "
                            "give a folder written by rlhf-flywheel or a reward model id")
        return spec, {}
    if lake is None:
        raise DataError(f"{spec!r} is not a checkpoint folder; to name a reward model by id, "
                        "pass the lake that holds it (--lake or --config)")
    rows = [r for r in lake.rows("reward_models") if r["id"].startswith(spec)]
    if len(rows) != 1:
        known = ", ".join(f"{r['id']} ({r['criterion']})"
                          for r in lake.rows("reward_models")[:8]) or "none yet"
        raise DataError(f"{spec!r} {'matches several' if rows else 'matches no'} reward model "
                        f"ids in {lake.uri}; its reward models: {known}")
    return lake.artifact_path("reward_models", rows[0]["id"]), rows[0]
