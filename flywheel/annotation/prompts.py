"""Prompts: the shipped demo set (392 helpful and 60 harmful requests, written for this project)
or a user's JSONL file of {"text", "criterion", "split"} rows."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from flywheel.errors import DataError
from flywheel.lake.schemas import CRITERIA, content_id

SPLITS = ("train", "heldout")


def _shipped_path() -> Path:
    return Path(str(resources.files("flywheel") / "data" / "demo_prompts.jsonl"))


def load_prompts(path: str | None = None, limit: int | None = None) -> list[dict]:
    """Prompt rows for the `prompts` table, validated; every bad line is reported together."""
    source_path = Path(path) if path else _shipped_path()
    source = "rlhf-flywheel-demo" if path is None else source_path.name
    if not source_path.is_file():
        raise DataError(f"prompt file {source_path} does not exist; fix prompts.path in the config")
    rows, problems = [], []
    for n, line in enumerate(source_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {n}: not JSON ({err.msg})")
            continue
        text = entry.get("text")
        criterion = entry.get("criterion", "helpfulness")
        split = entry.get("split", "train")
        if not isinstance(text, str) or not text.strip():
            problems.append(f"line {n}: 'text' must be a non-empty string")
        elif criterion not in CRITERIA:
            problems.append(f"line {n}: criterion {criterion!r} is not one of {CRITERIA}")
        elif split not in SPLITS:
            problems.append(f"line {n}: split {split!r} is not one of {SPLITS}")
        else:
            messages = [{"role": "user", "content": text.strip()}]
            rows.append(
                {
                    "id": content_id("prompt", messages),
                    "messages": json.dumps(messages),
                    "source": source,
                    "criterion": criterion,
                    "split": split,
                }
            )
    if problems:
        raise DataError(f"{source_path}: {len(problems)} bad line(s):\n  " + "\n  ".join(problems))
    if limit:
        rows = [r for s in SPLITS for r in [x for x in rows if x["split"] == s][:limit]]
    for split in SPLITS:
        if not any(r["split"] == split for r in rows):
            raise DataError(f"{source_path} has no '{split}' prompts; the loop needs both splits")
    return rows


def messages_of(row: dict) -> list[dict]:
    return json.loads(row["messages"])


def user_text(row: dict) -> str:
    return "\n".join(m["content"] for m in messages_of(row) if m["role"] == "user")
