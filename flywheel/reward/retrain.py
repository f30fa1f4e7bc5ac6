"""Retraining the helpfulness and the safety reward model on the lake, the Llama 2 way:

    the data mixes (flywheel/reward/mixes.py, as `reward_model.mix` configures them)
    -> one training run per model (flywheel/reward/model.py)
    -> accuracy on every test set of the lake, per strength bucket and safety label
    -> the promotion gate against the current model of the same kind
    -> the checkpoint, with the exact ids of its mix and of its test sets, and its
       `reward_models` row (promoted or not, and why)

Test sets are the test rows (split 'test') of each in-house batch, per criterion
("<batch> · helpfulness"), and of each open-source set ("<source> · safety"). Each model is
scored on all of them, as in Llama 2's Table 7; its own test sets are those of its criterion.

The gate: a retrained model replaces the current one of its kind only if, on each of the current
model's own test sets (the same rows, read back from the ids stored with it), its accuracy is at
most `reward_model.promotion_tolerance` below the current model's. Otherwise the current model
stays in use and the new row says why. The first model of a kind is promoted.
"""

from __future__ import annotations

import io
import json
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq

from flywheel import models
from flywheel.annotation.annotators import left_out
from flywheel.config import FlywheelConfig
from flywheel.config.resources import identity
from flywheel.errors import DataError
from flywheel.lake.catalog import connect, versions_of
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.reward.evaluation import (
    evaluate,
    evaluate_sets,
    find_test_sets,
    load_pairs,
    summarise,
)
from flywheel.reward.mixes import IN_HOUSE, EmptyMixError, MixResult, mix_record, mixes_for
from flywheel.reward.scoring import ScoringEngine
from flywheel.reward.train import fit_reward_model

KINDS = ("helpfulness", "safety")

MIX_FILE = "data_mix.parquet"  # id of every comparison the model trained on


TEST_FILE = "test_sets.parquet"  # (set, id) of every test row it was scored on


TRAIN_ACCURACY_ROWS = 1000  # train accuracy is measured on at most this many mix rows


def current_models(lake: Lake) -> dict[str, dict]:
    """The reward model in use for each kind: its latest promoted row."""
    out = {}
    rows = sorted(lake.rows("reward_models"), key=lambda r: (r["created_at"], r["id"]))
    for row in rows:
        if row["criterion"] in KINDS and row.get("promoted"):
            out[row["criterion"]] = row
    return out


def gate(hits: dict[str, bool], current: dict | None, current_sets: dict[str, list[str]],
         tolerance: float) -> tuple[bool, str, list[dict]]:
    """Promote or keep the current model. `hits`: the candidate's result per comparison id;
    `current`: the current model's row (None: there is none); `current_sets`: its own test
    sets' ids, by name. Returns (promote, why, the comparison per test set)."""
    if current is None:
        return True, "promoted: the first reward model of its kind", []
    acc = json.loads(current["metrics"] or "{}").get("test_sets", {})
    compared = []
    for name, ids in sorted(current_sets.items()):
        scored = [hits[i] for i in ids if i in hits]
        old = acc.get(name, {}).get("accuracy")
        if not scored or old is None:
            continue
        new = sum(scored) / len(scored)
        compared.append({"test set": name, "n": len(scored), "current": old, "candidate": new,
                         "change": new - old})
    if not compared:
        return True, f"promoted: current model {current['id']} has no test set to compare on", []
    worse = [c for c in compared if c["candidate"] < c["current"] - tolerance - 1e-12]
    if worse:
        return False, (
            f"kept {current['id']}: accuracy fell by more than {tolerance} on "
            + "; ".join(f"{c['test set']} {c['current']:.3f} -> {c['candidate']:.3f}"
                        for c in worse)
        ), compared
    worst = min(c["change"] for c in compared)
    return True, (f"promoted over {current['id']}: within {tolerance} on its "
                  f"{len(compared)} test set(s) (largest change {worst:+.3f})"), compared


def _read_test_ids(lake: Lake, row: dict) -> dict[str, list[str]]:
    """The ids of the row's own test sets, read from the file stored with its checkpoint."""
    rel = f"artifacts/reward_models/{row['id']}/{TEST_FILE}"
    if not lake.exists(rel):
        return {}
    table = pq.read_table(io.BytesIO(lake.read_bytes(rel)))
    own = {name for name, m in json.loads(row["metrics"] or "{}").get("test_sets", {}).items()
           if m.get("criterion") == row["criterion"]}
    out: dict[str, list[str]] = {}
    for name, cid in zip(table.column("set").to_pylist(), table.column("id").to_pylist()):
        if name in own:
            out.setdefault(name, []).append(cid)
    return out


def _ids_parquet(columns: dict[str, list]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()}), buf)
    return buf.getvalue()


def retrain(cfg: FlywheelConfig, lake: Lake, iteration: int, batch_id: str | None = None,
            kinds: tuple[str, ...] = KINDS) -> dict[str, dict]:
    """Train, evaluate and gate each kind of reward model on the lake as it is now. Returns,
    per kind, {id, promoted, decision, current}: `current` is the id in use after the gate.
    A kind whose mix is empty (say, no safety comparisons yet) is not trained, and says so;
    when no kind can be trained, one DataError names what is missing."""
    con = connect(lake)
    try:
        mixes, empty = {}, {}
        # annotators below annotation.quality's thresholds: their rows stay out of both mixes
        dropped = left_out(con, lake, cfg.annotation.quality)
        for kind in kinds:
            try:
                mixes[kind] = mixes_for(con, cfg.reward_model.mix, kinds=(kind,),
                                        left_out=dropped)[kind]
            except EmptyMixError as err:  # other errors (a ratio not met) stop the retrain
                empty[kind] = str(err)
        if not mixes:
            raise DataError("no reward model can be trained: " + "; ".join(empty.values()))
        sets = find_test_sets(con)
        # all a mix could draw on, in the snapshot the mix was drawn from
        deliveries = [d for (d,) in con.execute("SELECT id FROM batches ORDER BY id").fetchall()]
        out = {}
        for kind in kinds:
            if kind in empty:  # e.g. no safety comparisons yet: the current model stays
                current = current_models(lake).get(kind)
                out[kind] = {"id": None, "promoted": False, "current": current and current["id"],
                             "decision": f"not trained: {empty[kind]}"}
                continue
            out[kind] = _train_one(cfg, lake, con, iteration, kind, mixes[kind], sets,
                                   deliveries, batch_id)
        return out
    finally:
        con.close()


def _train_one(cfg, lake, con, iteration, kind, mix: MixResult, sets, deliveries, batch_id):
    rm_cfg = cfg.reward_model
    record = mix_record(mix)
    rm_id = content_id("reward_model", kind, iteration, record["ids_sha256"],
                       identity(rm_cfg), cfg.models.reward_backbone, [s.ids for s in sets])
    done = {r["id"]: r for r in lake.rows("reward_models")}
    if rm_id in done and lake.has_artifact("reward_models", rm_id):  # a retry after a crash
        row = done[rm_id]
    else:
        row = _fit(cfg, lake, con, iteration, kind, mix, record, sets, deliveries, rm_id,
                   batch_id)
    current = current_models(lake).get(kind)
    return {"id": rm_id, "promoted": bool(row["promoted"]), "decision": row["decision"],
            "current": current["id"] if current else None}


def _fit(cfg, lake, con, iteration, kind, mix, record, sets, deliveries, rm_id, batch_id):
    rm_cfg = cfg.reward_model
    ids = mix.ids.to_pylist()
    pairs = load_pairs(con, ids)
    backbone = models.resolve(cfg.models.reward_backbone)
    model, training = fit_reward_model(backbone, [pairs[i] for i in ids], rm_cfg,
                                         desc=f"{kind} reward model")
    engine = ScoringEngine.from_config(cfg.scoring, rm_cfg.max_length)
    per_set, hits, pairs = evaluate_sets(model, con, sets, rm_cfg.max_length, pairs, engine)
    sample = ids[:TRAIN_ACCURACY_ROWS]  # ids are content hashes: a uniform sample
    train_acc, _ = evaluate(model, [pairs[i] for i in sample], rm_cfg.max_length, engine)
    current = current_models(lake).get(kind)
    current_sets = _read_test_ids(lake, current) if current else {}
    unseen = sorted({i for v in current_sets.values() for i in v} - hits.keys())
    if unseen:  # rows of the current model's test sets no longer in the lake's test sets
        more = load_pairs(con, unseen)
        _, extra = evaluate(model, [more[i] for i in unseen], rm_cfg.max_length, engine)
        hits.update(zip(unseen, extra))
    promoted, why, compared = gate(hits, current, current_sets, rm_cfg.promotion_tolerance)
    batches = [b for (b,) in con.sql(
        f"SELECT DISTINCT batch_id FROM comparisons WHERE source = '{IN_HOUSE}' AND "
        "id IN (SELECT unnest($ids)) ORDER BY 1", params={"ids": ids}).fetchall()]
    in_house = [i for s in sets if s.criterion == kind and s.source == IN_HOUSE for i in s.ids]
    metrics = {
        "in_house": summarise([pairs[i] for i in in_house], [hits[i] for i in in_house]),
        "test_sets": per_set,
        "train": {**train_acc, "rows": len(sample)},
        "training": training,
        "gate": {"promoted": promoted, "decision": why, "compared": compared,
                 "tolerance": rm_cfg.promotion_tolerance},
    }
    # the table versions the mix and the test sets were read at: `Lake.read(table,
    # version=...)` gives back the rows exactly as the model saw them
    data_mix = {**record, "ids_file": MIX_FILE, "test_file": TEST_FILE, "batches": batches,
                "deliveries": deliveries, "table_versions": versions_of(con),
                "config": rm_cfg.mix.model_dump()}
    with tempfile.TemporaryDirectory() as tmp:
        model.save(tmp, {"id": rm_id, "kind": kind, "backbone": cfg.models.reward_backbone,
                         "margin": rm_cfg.margin, "max_length": rm_cfg.max_length})
        with open(f"{tmp}/{MIX_FILE}", "wb") as f:
            f.write(_ids_parquet({"id": ids}))
        with open(f"{tmp}/{TEST_FILE}", "wb") as f:
            f.write(_ids_parquet({"set": [s.name for s in sets for _ in s.ids],
                                  "id": [i for s in sets for i in s.ids]}))
        del model
        uri = lake.put_artifact("reward_models", rm_id, tmp, {"backbone": backbone, "kind": kind})
    row = {"id": rm_id, "iteration": iteration, "criterion": kind, "uri": uri,
           "backbone": cfg.models.reward_backbone, "parents": json.dumps(batches),
           "data_mix": json.dumps(data_mix), "metrics": json.dumps(metrics),
           "promoted": promoted, "decision": why}
    lake.write("reward_models", [row], {"batch": batch_id, "kind": kind})
    return row
