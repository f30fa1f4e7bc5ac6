"""The week's pairs, and delivery files built from labels of them.

Each weekly iteration N writes, per train prompt, `sampling.responses_per_policy` `samples` rows
with purpose "annotation" and iteration N from each of two arms: the latest policy at the first
temperature, the previous one at the second (`flywheel.stages.sample_for_annotation`). The pairs
of a prompt are every answer of one arm against every answer of the other (`cross_pairs`, the
one pairing of the simulated annotator and of people), n x n of them. `week_pairs` reads them
back from the lake, whatever the tool (Label Studio, Argilla, the built-in review page). Which
response is shown as A (left) is decided by a hash of the pair id, so half the pairs show the
latest policy first: position bias is not systematic, and every tool shows the same pair the
same way.

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


def cross_pairs(latest: list[str], previous: list[str]) -> list[list[str]]:
    """The pairs of one prompt: each latest answer against each previous one, as
    [latest sample id, previous sample id], latest-major."""
    return [[x, y] for x in latest for y in previous]


def _arms(group: list[dict]) -> list[list[str]]:
    """A prompt's annotation samples split into arms: one per policy and sampling parameters
    (temperature, the safety preprompt), each arm's ids sorted."""
    arms: dict[tuple, list[str]] = defaultdict(list)
    for s in group:
        arms[(s["policy_id"], s["params"])].append(s["id"])
    return [sorted(ids) for _, ids in sorted(arms.items())]


def _week(lake: Lake, iteration: int) -> tuple[list[dict], dict[str, int]]:
    """(the pairs of iteration `iteration`, {prompt id: its number of arms} of the prompts whose
    annotation samples do not come in two arms, which give no pairs)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    with connect(lake) as con:
        for s in query(con, "SELECT id, prompt_id, policy_id, params, text FROM samples WHERE "
                       "purpose = 'annotation' AND iteration = $iteration",
                       {"iteration": iteration}):
            groups[s["prompt_id"]].append(s)
        prompts = rows_by_id(con, "prompts", groups)
    missing = sorted(set(groups) - set(prompts))
    if missing:
        raise DataError(f"annotation samples of iteration {iteration} name prompts the lake "
                        f"does not hold: {', '.join(missing)}; write those prompts to the "
                        "`prompts` table or re-run sample-for-annotation")
    out, unpaired = [], {}
    for prompt_id, group in groups.items():
        arms = _arms(group)
        if len(arms) != 2:
            unpaired[prompt_id] = len(arms)
            continue
        texts = {s["id"]: s["text"] for s in group}
        messages = json.loads(prompts[prompt_id]["messages"])
        for ids in cross_pairs(*arms):
            first, second = sorted(ids)
            pid = pair_id_of(prompt_id, ids)
            a, b = (first, second) if a_first(pid) else (second, first)
            out.append({
                "pair_id": pid, "prompt_id": prompt_id, "messages": messages,
                "prompt": render_prompt(messages), "criterion": prompts[prompt_id]["criterion"],
                "sample_id_a": a, "text_a": texts[a], "sample_id_b": b, "text_b": texts[b],
            })
    return sorted(out, key=lambda p: p["pair_id"]), unpaired


def week_pairs(lake: Lake, iteration: int) -> list[dict]:
    """The pairs of iteration `iteration`, sorted by pair id: per prompt, `cross_pairs` of its
    two arms of annotation samples (prompts with samples in one arm or in more than two give
    none). Each pair: pair_id, prompt_id, messages, prompt (rendered), criterion, sample_id_a,
    text_a, sample_id_b, text_b."""
    return _week(lake, iteration)[0]


def require_pairs(lake: Lake, iteration: int) -> list[dict]:
    """`week_pairs`, or a DataError saying what is missing and how to get some."""
    pairs, unpaired = _week(lake, iteration)
    if pairs:
        return pairs
    if not unpaired:
        raise DataError(f"lake {lake.uri} has no pairs to label for iteration {iteration}: it "
                        f"holds no 'annotation' samples of iteration {iteration}; run the "
                        "sample-for-annotation stage for it, or pass another --iteration")
    one = sorted(p for p, n in unpaired.items() if n == 1)
    if one:
        raise DataError(f"lake {lake.uri} has no pairs to label for iteration {iteration}: the "
                        f"annotation samples of {len(one)} prompt(s) (e.g. {one[0]}) all come "
                        "from one policy at one temperature, so there is no latest and previous "
                        "answer to compare; give sampling.temperatures two different values "
                        "and sample another iteration")
    many = sorted(unpaired)
    raise DataError(f"lake {lake.uri} has no pairs to label for iteration {iteration}: "
                    f"{len(many)} prompt(s) (e.g. {many[0]}, {unpaired[many[0]]} arms) were "
                    "sampled for it more than once with other policies or settings, so which "
                    "answers are the latest and the previous cannot be told; sample a new "
                    "iteration and label that one")


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
