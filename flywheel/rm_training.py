"""Retraining the helpfulness and the safety reward model on the lake, the Llama 2 way:

    the data mixes (flywheel/mixes.py, as `reward_model.mix` configures them)
    -> one training run per model (flywheel/reward_model.py)
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

import gzip
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel import models
from flywheel.catalog import connect
from flywheel.config import FlywheelConfig
from flywheel.errors import DataError
from flywheel.lake import Lake
from flywheel.mixes import IN_HOUSE, EmptyMixError, MixResult, mix_record, mixes_for
from flywheel.reward_model import PreferencePair, evaluate, summarise, train_reward_model
from flywheel.schemas import content_id
from flywheel.scoring import ScoringEngine

KINDS = ("helpfulness", "safety")
SEP = " · "
MIX_FILE = "data_mix.parquet"  # id of every comparison the model trained on
TEST_FILE = "test_sets.parquet"  # (set, id) of every test row it was scored on
TRAIN_ACCURACY_ROWS = 1000  # train accuracy is measured on at most this many mix rows


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
            FROM comparisons c LEFT JOIN prompts p ON p.id = c.prompt_id
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
        for kind in kinds:
            try:
                mixes[kind] = mixes_for(con, cfg.reward_model.mix, kinds=(kind,))[kind]
            except EmptyMixError as err:  # other errors (a ratio not met) stop the retrain
                empty[kind] = str(err)
        if not mixes:
            raise DataError("no reward model can be trained: " + "; ".join(empty.values()))
        sets = find_test_sets(con)
        deliveries = sorted(b["id"] for b in lake.rows("batches"))  # all a mix could draw on
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
                       rm_cfg.model_dump(), cfg.models.reward_backbone, [s.ids for s in sets])
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
    model, training = train_reward_model(backbone, [pairs[i] for i in ids], rm_cfg,
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
    data_mix = {**record, "ids_file": MIX_FILE, "test_file": TEST_FILE, "batches": batches,
                "deliveries": deliveries, "config": rm_cfg.mix.model_dump()}
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


# evaluating a trained model on any comparison file --------------------------------------------
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


def evaluate_file(model_dir: str, path: str, fmt: str | None = None,
                  max_length: int | None = None) -> dict:
    """Accuracy of a reward model on a comparison file: a delivery in the Llama 2 protocol
    (inline prompt and responses, JSONL / CSV / Parquet) or Anthropic HH-RLHF. Each row goes
    through the same validation as an ingested batch; every accepted row is scored, whatever
    its split. Returns overall accuracy and the per strength / safety label buckets."""
    from flywheel.config import AnnotationConfig
    from flywheel.importers import convert, detect_format, hh_criterion, write_delivery
    from flywheel.ingest import ingest_bytes
    from flywheel.reward_model import RewardModel

    src = Path(path)
    if not src.is_file():
        raise DataError(f"comparison file {path} does not exist")
    fmt = fmt or _guess_format(src)
    meta = json.loads((Path(model_dir) / "reward_model.json").read_text() or "{}")
    max_length = max_length or meta.get("max_length") or 512
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake.open(f"{tmp}/lake")
        if fmt == "hh-rlhf":
            try:  # the criterion labels the rows only; it does not change a score
                criterion = hh_criterion(str(src))
            except DataError:
                criterion = "helpfulness"
            delivery = write_delivery(convert(str(src), "hh-rlhf", criterion, split="test"),
                                      Path(tmp) / "hh-rlhf.jsonl")
            data, name = delivery.read_bytes(), delivery.name
        elif fmt == "llama2":
            data, name = src.read_bytes(), src.name
        else:
            raise DataError(f"format {fmt!r} is not one of llama2, hh-rlhf (detected "
                            f"{detect_format(str(src))!r}); pass --format")
        # nothing held out and no size cap: every valid row is a test row here
        result = ingest_bytes(lake, data, name, "evaluation",
                              AnnotationConfig(heldout_fraction=0, max_text_chars=10**9))
        con = connect(lake)
        try:
            ids = [i for (i,) in con.sql("SELECT id FROM comparisons ORDER BY id").fetchall()]
            pairs = load_pairs(con, ids)
        finally:
            con.close()
    if not ids:
        raise DataError(f"{path}: no row could be evaluated ({result.rejected} rejected: "
                        f"{result.reasons}); rows need an inline prompt and both responses")
    model = RewardModel.load(model_dir)
    summary, _ = evaluate(model, [pairs[i] for i in ids], max_length)
    return {"model": model_dir, "kind": meta.get("kind"), "file": str(src), "format": fmt,
            "delivered": result.delivered, "evaluated": len(ids), "rejected": result.reasons,
            "max_length": max_length, **summary}


def _guess_format(path) -> str:
    """hh-rlhf when the first record has only `chosen` and `rejected` dialogues."""
    name = path.name.lower()
    if name.removesuffix(".gz").endswith((".jsonl", ".json", ".ndjson")):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            first = f.readline()
        try:
            record = json.loads(first)
        except ValueError:
            return "llama2"
        if isinstance(record, dict) and {"chosen", "rejected"} <= set(record) and not (
                {"response_a", "prompt", "prompt_id"} & set(record)):
            return "hh-rlhf"
    return "llama2"
