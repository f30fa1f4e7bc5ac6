"""Deliveries for a small lake of comparisons, landed through the real ingest path: what the
mix tests (tests/test_mixes.py) and the S3 tests (tests/test_s3.py) build their lakes from.

    delivery            source                            train rows             test rows
    week-1.jsonl        in-house                          6 helpful, 4 safety    2 helpful, 1 safety
    week-2.jsonl        in-house                          4 helpful, 2 safety    1 helpful, 1 safety
    hh-harmless.jsonl   anthropic-hh-rlhf/harmless-base   8 safety               2 safety
    open-helpful.jsonl  anthropic-hh-rlhf/helpful-base    2 helpful
                        ultrafeedback-binarized           2 helpful              1 helpful

Train rows: 10 in-house helpfulness, 6 in-house safety, 8 harmless, 4 open-source helpfulness;
8 test rows, which no mix may contain.
"""

from __future__ import annotations

import json

from flywheel.annotation.ingest import ingest_bytes
from flywheel.lake.store import Lake

HARMLESS = "anthropic-hh-rlhf/harmless-base"
HELPFUL = "anthropic-hh-rlhf/helpful-base"
ULTRAFEEDBACK = "ultrafeedback-binarized"

# delivery -> [(source, criterion, split, rows)]
LAYOUT = {
    "week-1.jsonl": [("in-house", "helpfulness", "train", 6), ("in-house", "safety", "train", 4),
                     ("in-house", "helpfulness", "test", 2), ("in-house", "safety", "test", 1)],
    "week-2.jsonl": [("in-house", "helpfulness", "train", 4), ("in-house", "safety", "train", 2),
                     ("in-house", "helpfulness", "test", 1), ("in-house", "safety", "test", 1)],
    "hh-harmless.jsonl": [(HARMLESS, "safety", "train", 8), (HARMLESS, "safety", "test", 2)],
    "open-helpful.jsonl": [(HELPFUL, "helpfulness", "train", 2),
                           (ULTRAFEEDBACK, "helpfulness", "train", 2),
                           (ULTRAFEEDBACK, "helpfulness", "test", 1)],
}


def row(tag: str, source: str, criterion: str, split: str) -> dict:
    """One delivery row whose texts are unique to `tag`."""
    out = {"prompt": f"prompt {tag}", "response_a": f"a good answer {tag}",
           "response_b": f"a worse answer {tag}", "chosen": "a", "criterion": criterion,
           "annotator": "annotator-1", "source": source, "split": split}
    if source == "in-house":
        out["strength"] = "better"
        if criterion == "safety":
            out["safety_label"] = "both_safe"
    return out


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def deliveries(layout: dict = LAYOUT) -> dict[str, bytes]:
    files = {}
    for name, groups in layout.items():
        rows = []
        for source, criterion, split, n in groups:
            rows += [row(f"{name}/{source}/{criterion}/{split}/{i}", source, criterion, split)
                     for i in range(n)]
        files[name] = jsonl(rows)
    return files


def build(lake: Lake, layout: dict = LAYOUT) -> Lake:
    for name, data in deliveries(layout).items():
        result = ingest_bytes(lake, data, name)
        if result.rejected:
            raise RuntimeError(f"test delivery {name} had rejected rows: {result.reasons}")
    return lake


def ids_by_group(lake: Lake) -> dict[tuple[str, str, str], set[str]]:
    """Comparison ids by (in-house | harmless | open-source, criterion, split)."""
    groups: dict[tuple[str, str, str], set[str]] = {}
    for r in lake.read("comparisons", ["id", "source", "criterion", "split"]).to_pylist():
        kind = ("in-house" if r["source"] == "in-house"
                else "harmless" if "harmless" in r["source"] else "open-source")
        groups.setdefault((kind, r["criterion"], r["split"]), set()).add(r["id"])
    return groups
