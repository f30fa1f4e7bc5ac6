"""Processes that race on one lake: what the concurrency and kill -9 tests of the lake
(tests/test_lake_crash.py) run. Functions here run in `spawn`ed workers (delta-rs' runtime does
not survive `fork`), so they take plain arguments and return plain data."""

from __future__ import annotations

import json
import sys
import time

from flywheel.annotation.ingest import ingest_bytes
from flywheel.config import AnnotationConfig
from flywheel.lake.store import Lake

CFG = AnnotationConfig(max_text_chars=200, heldout_fraction=0.2)


def delivery(tag: str, good: int = 60, bad: int = 20) -> bytes:
    """A week's delivery: `good` valid rows (inline prompts, a fifth of them safety rows) and
    `bad` rejected ones (identical responses, a bad strength, a broken line)."""
    lines = []
    for i in range(good):
        row = {"prompt": f"{tag} question {i}?", "response_a": f"{tag} answer {i}.",
               "response_b": f"{tag} other {i}.", "chosen": "ab"[i % 2], "strength": "better",
               "criterion": "helpfulness", "annotator": f"ann-{i % 3}"}
        if i % 5 == 0:
            row |= {"criterion": "safety", "safety_label": "both_safe"}
        lines.append(json.dumps(row))
    for i in range(bad):
        kind = i % 3
        if kind == 2:
            lines.append('{"prompt": "broken ' + str(i))
            continue
        row = {"prompt": f"{tag} bad {i}?", "response_a": "same", "chosen": "a",
               "response_b": "same" if kind == 0 else "other", "criterion": "helpfulness",
               "annotator": "ann-1", "strength": "better" if kind == 0 else "much better"}
        lines.append(json.dumps(row))
    return ("\n".join(lines) + "\n").encode()


def ingest(lake_uri: str, data: bytes, filename: str, start_at: float) -> dict:
    """Ingest at the agreed moment (so two workers really race); the result as a dict."""
    lake = Lake.open(lake_uri)
    time.sleep(max(0.0, start_at - time.time()))
    return ingest_bytes(lake, data, filename, cfg=CFG).to_dict()


def main() -> None:
    """Child of a kill test: open the lake, say so, wait for the word, ingest, say done."""
    lake_uri, path = sys.argv[1:]
    lake = Lake.open(lake_uri)
    data = open(path, "rb").read()
    print("ready", flush=True)
    sys.stdin.readline()
    ingest_bytes(lake, data, "week-1.jsonl", cfg=CFG)
    print("done", flush=True)


if __name__ == "__main__":
    main()
