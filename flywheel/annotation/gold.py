"""Gold pairs: comparisons whose answer is known, mixed into a round to measure annotators.

Where they come from: `annotation.quality.gold_path`, the team's own file (the delivery
format: prompt, response_a, response_b, chosen, criterion; or HH-RLHF or UltraFeedback, the
chosen response the known answer), else the human-labelled HH-RLHF
helpful-base and harmless-base test files of the data folder (`evaluation.data_dir`,
$FLYWHEEL_DATA, or ../shared/data beside the checkout), read when a round is planned. Which
response is shown as A is decided by a hash, so the known answer is A for about half of them.

A round registers its gold pairs in the lake (gold/<id>.jsonl, one per set of pairs). Ingest
quarantines every delivered row that labels a registered gold pair (its two responses, whichever
side each is on) with the reason `gold_pair` before any other check: the label is kept, with
its annotator, for gold accuracy, and never becomes a training comparison or a test row. A
delivery that does not know what is gold (a vendor's file, a tool's export) is covered the same
way.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from flywheel.annotation.importers import convert, load_records
from flywheel.config import FlywheelConfig
from flywheel.errors import DataError
from flywheel.evaluation.suites import data_dir
from flywheel.lake.schemas import CRITERIA, content_id
from flywheel.lake.store import Lake

FOLDER = "gold"
REASON = "gold_pair"
IN_HOUSE = "in-house"
HH_FILES = {"hh_rlhf_helpful_base_test.jsonl.gz": "helpfulness",
            "hh_rlhf_harmless_base_test_dev.jsonl.gz": "safety"}


def gold_key(text_a: str, text_b: str) -> str:
    """The key of a pair of responses, whichever order they are in."""
    return content_id("gold", sorted([text_a.strip(), text_b.strip()]))


def gold_pairs(cfg: FlywheelConfig, n: int, salt: str) -> list[dict]:
    """`n` gold pairs, chosen by a hash of `salt` (a round's), each: gold_id, messages,
    criterion, text_a, text_b, answer ("a" | "b", the known better side)."""
    if n == 0:
        return []
    path = cfg.annotation.quality.gold_path
    if path:
        rows = [(r, None) for r in _team_rows(path)]
    else:
        folder = data_dir(cfg)
        missing = [f for f in HH_FILES if not (folder / f).is_file()]
        if missing:
            raise DataError(f"no gold pairs: {', '.join(missing)} missing from {folder}; set "
                            "annotation.quality.gold_path to the team's gold file, or "
                            "evaluation.data_dir to a folder holding them")
        rows = [(r, c) for f, c in HH_FILES.items() for r in convert(str(folder / f), criterion=c)]
    pool = {}
    for row, criterion in rows:
        if row["reject_reason"] is not None:
            continue
        key = gold_key(row["response_a"], row["response_b"])
        pool[key] = {"gold_id": key, "messages": json.loads(row["prompt"]),
                     "criterion": criterion or row["criterion"],
                     "chosen": row["response_a"], "rejected": row["response_b"]}
    if len(pool) < n:
        raise DataError(f"annotation.quality.gold_pairs is {n} but the gold file(s) hold "
                        f"{len(pool)} usable pairs; lower gold_pairs or supply more")
    picked = sorted(pool, key=lambda k: content_id(salt, k))[:n]
    out = []
    for key in picked:
        g = pool[key]
        a_first = int(content_id("gold-side", salt, key), 16) % 2 == 0
        a, b = (g["chosen"], g["rejected"]) if a_first else (g["rejected"], g["chosen"])
        out.append({"gold_id": key, "messages": g["messages"], "criterion": g["criterion"],
                    "text_a": a, "text_b": b, "answer": "a" if a_first else "b"})
    return out


def _team_rows(path: str) -> list[dict]:
    """The team's gold file as importer rows (prompt as JSON messages, the known-better
    response as response_a): a delivery-format file as it is, else through the importers."""
    first = next(iter(load_records(path)), None)
    if not (isinstance(first, dict) and "response_a" in first):
        return convert(path)
    out = []
    for n, r in enumerate(load_records(path)):
        prompt, side = r.get("prompt"), str(r.get("chosen") or "").strip().lower()
        texts = {"a": r.get("response_a"), "b": r.get("response_b")}
        if not (prompt and side in texts and all(isinstance(t, str) and t.strip()
                                                  for t in texts.values())
                and r.get("criterion") in CRITERIA):
            raise DataError(f"{path}, record {n}: a gold pair needs prompt, response_a, "
                            f"response_b, chosen (a or b) and criterion ({' or '.join(CRITERIA)})"
                            "; fix the record")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        out.append({"prompt": json.dumps(messages), "response_a": texts[side].strip(),
                    "response_b": texts["b" if side == "a" else "a"].strip(),
                    "criterion": r["criterion"], "reject_reason": None})
    return out


def register(lake: Lake, pairs: list[dict]) -> str | None:
    """Record the pairs in the lake as gold (once per set); returns the file's path."""
    if not pairs:
        return None
    lines = [json.dumps({"gold_id": p["gold_id"], "criterion": p["criterion"],
                         "better": (p["text_a"] if p["answer"] == "a" else p["text_b"]).strip()},
                        sort_keys=True) for p in sorted(pairs, key=lambda p: p["gold_id"])]
    rel = f"{FOLDER}/{content_id('gold-set', [p['gold_id'] for p in pairs])}.jsonl"
    if not lake.exists(rel):
        lake.write_text(rel, "\n".join(lines) + "\n")
    return rel


def registered(lake: Lake) -> dict[str, dict]:
    """Every gold pair the lake knows: gold_id -> {criterion, better (the known-better text)}."""
    out = {}
    for name in lake.listdir(FOLDER):
        for line in lake.read_bytes(f"{FOLDER}/{name}").decode().splitlines():
            if line.strip():
                g = json.loads(line)
                out[g["gold_id"]] = g
    return out


def mark(lake: Lake, table: pa.Table) -> pa.Table:
    """The delivery table (after labels.normalised_labels) with `reject_reason` set to
    `gold_pair` on in-house rows labelling a registered gold pair (ingest then quarantines them
    first). Unchanged without gold; an open-source set imported whole (HH-RLHF's test files,
    where the default gold comes from) keeps its rows."""
    gold = registered(lake)
    if not gold or not table.num_rows:
        return table
    better = pa.array(sorted({g["better"] for g in gold.values()}), pa.string())
    a, b = table.column("response_a"), table.column("response_b")
    # candidates: one side is a known-better text (as delivered, or trimmed)
    sides = [a, b, pc.utf8_trim_whitespace(a), pc.utf8_trim_whitespace(b)]
    maybe = pc.equal(table.column("source_n"), IN_HOUSE)
    found = pc.is_in(sides[0], better)
    for side in sides[1:]:
        found = pc.or_kleene(found, pc.is_in(side, better))
    maybe = pc.and_kleene(maybe, found)
    free = pc.is_null(table.column("reject_reason"))
    hits = pc.indices_nonzero(pc.fill_null(pc.and_kleene(maybe, free), False))
    if not len(hits):
        return table
    # only the candidates' texts come into Python (200k rows: 0.8 s when all of them did)
    is_gold = [gold_key(x, y) in gold for x, y in zip(pc.take(a, hits).to_pylist(),
                                                        pc.take(b, hits).to_pylist())]
    if not any(is_gold):
        return table
    mask = [False] * table.num_rows
    for i, g in zip(hits.to_pylist(), is_gold):
        mask[i] = g
    at = table.schema.get_field_index("reject_reason")
    marked = pc.if_else(pa.array(mask), pa.scalar(REASON), table.column("reject_reason"))
    return table.set_column(at, "reject_reason", marked)
