"""The week's pairs, and delivery files built from labels of them.

Each weekly iteration N writes, per train prompt, two `samples` rows with purpose "annotation" and
iteration N (one from the latest policy, one from the previous). `week_pairs` groups them by
prompt into the pairs people label, whatever the tool (Label Studio, Argilla, the built-in review
page). Which response is shown as A (left) is decided by a hash of the pair id, so half the pairs
show the latest policy first: position bias is not systematic, and every tool shows the same pair
the same way.

`write_delivery_jsonl` turns labelled pairs into the bytes of a delivery file, which goes through
`flywheel.ingest.ingest_bytes`: the same validation as any batch.
"""

from __future__ import annotations

import json
from collections import defaultdict

from flywheel.errors import DataError
from flywheel.lake.catalog import connect, query, rows_by_id
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake

# What a delivery row may carry, in the order written (ingest's input format).
DELIVERY_COLUMNS = ("prompt_id", "sample_id_a", "sample_id_b", "chosen", "strength", "criterion",
                    "safety_label", "annotator", "source")

EXCLUDED_SAFETY = "chosen_unsafe_other_safe"  # offered, so annotators can say so; ingest drops it
STRENGTH_TITLES = {  # the four Llama 2 levels, strongest first, as annotators read them
    "significantly_better": "Significantly better",
    "better": "Better",
    "slightly_better": "Slightly better",
    "negligibly_better": "Negligibly better / unsure",
}
SAFETY_TITLES = {
    "chosen_safe_other_unsafe": "Chosen response safe, the other unsafe",
    "both_safe": "Both safe",
    "both_unsafe": "Both unsafe",
    EXCLUDED_SAFETY: "Chosen response unsafe, the other safe (excluded from training)",
}


def pair_id_of(prompt_id: str, sample_ids: list[str]) -> str:
    return content_id("pair", prompt_id, sorted(sample_ids))


def a_first(pair_id: str) -> bool:
    """Whether the pair's first sample (in id order) is shown as A: one bit of a hash."""
    return int(content_id("presentation", pair_id), 16) % 2 == 0


def render_prompt(messages: list[dict]) -> str:
    """The prompt as a reader sees it: a lone user turn as is, a conversation role by role."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def week_pairs(lake: Lake, iteration: int) -> list[dict]:
    """The pairs of iteration `iteration`, sorted by pair id. Groups of other than two annotation
    samples are skipped. Each pair: pair_id, prompt_id, messages, prompt (rendered), criterion,
    sample_id_a, text_a, sample_id_b, text_b."""
    groups: dict[str, list[dict]] = defaultdict(list)
    with connect(lake) as con:
        for s in query(con, "SELECT id, prompt_id, text FROM samples WHERE purpose = "
                       "'annotation' AND iteration = $iteration", {"iteration": iteration}):
            groups[s["prompt_id"]].append(s)
        prompts = rows_by_id(con, "prompts", groups)
    missing = sorted(set(groups) - set(prompts))
    if missing:
        raise DataError(f"annotation samples of iteration {iteration} name prompts the lake "
                        f"does not hold: {', '.join(missing)}; write those prompts to the "
                        "`prompts` table or re-run sample-for-annotation")
    out = []
    for prompt_id, group in groups.items():
        if len(group) != 2:
            continue
        first, second = sorted(group, key=lambda s: s["id"])
        pid = pair_id_of(prompt_id, [first["id"], second["id"]])
        a, b = (first, second) if a_first(pid) else (second, first)
        messages = json.loads(prompts[prompt_id]["messages"])
        out.append({
            "pair_id": pid, "prompt_id": prompt_id, "messages": messages,
            "prompt": render_prompt(messages), "criterion": prompts[prompt_id]["criterion"],
            "sample_id_a": a["id"], "text_a": a["text"],
            "sample_id_b": b["id"], "text_b": b["text"],
        })
    return sorted(out, key=lambda p: p["pair_id"])


def require_pairs(lake: Lake, iteration: int) -> list[dict]:
    """`week_pairs`, or a DataError saying how to get some."""
    pairs = week_pairs(lake, iteration)
    if not pairs:
        raise DataError(f"lake {lake.uri} has no pairs to label for iteration {iteration} (no "
                        "prompt with exactly two 'annotation' samples of that iteration); run the "
                        "sample-for-annotation stage first, or pass another --iteration")
    return pairs


def delivery_row(pair: dict, chosen: str | None, strength: str | None,
                 safety_label: str | None, annotator: str | None) -> dict:
    """One row of a delivery file for a labelled pair; absent answers stay absent, so ingest
    quarantines the row with its reason instead of guessing."""
    row = {"prompt_id": pair.get("prompt_id"), "sample_id_a": pair.get("sample_id_a"),
           "sample_id_b": pair.get("sample_id_b"), "chosen": chosen, "strength": strength,
           "criterion": pair.get("criterion"), "safety_label": safety_label,
           "annotator": annotator, "source": "in-house"}
    return {k: v for k, v in row.items() if v is not None}


def write_delivery_jsonl(rows: list[dict]) -> bytes:
    """Delivery rows as JSONL bytes: one object per line, keys sorted, so the same labels give the
    same bytes (and re-ingesting them is a no-op)."""
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n"
                   for r in rows).encode("utf-8")
