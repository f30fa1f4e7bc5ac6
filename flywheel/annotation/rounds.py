"""A round of annotation: the week's pairs as items for annotators, with overlap and gold.

`plan_round` turns the week's pairs into items. A share of the pairs (`annotation.quality.
overlap_share`, chosen by hash) goes to `overlap_annotators` annotators each; `gold_pairs` gold
pairs (flywheel/annotation/gold.py) go to every annotator. With named annotators (the simulated
ones) every item names its annotator: single pairs in turn, overlap pairs to consecutive ones.
Without (a tool where whoever is free takes the next task) an overlap pair is there as that many
copies and a gold pair once.

Items are shuffled together and each has an opaque `item_id`: nothing an annotator sees says
whether an item is an overlap copy or gold. What each item is, is in the round's manifest
(`manifest`, kept in the lake at rounds/iteration-NNNN.json by `save_manifest`), for the team;
quality is measured from what lands whatever the manifest says (an item labelled by several
annotators is overlap, a pair the lake knows as gold is gold).

Overlap labels are comparisons like any other: each annotator's row is kept and trained on (a
pair people disagree on gives both directions). Gold labels are quarantined at ingest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from flywheel.annotation.gold import gold_pairs, register
from flywheel.annotation.pairs import render_prompt
from flywheel.config import FlywheelConfig
from flywheel.config.annotators import AnnotatorQualityConfig
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake

ROLES = ("single", "overlap", "gold")


@dataclass(frozen=True)
class Item:
    item_id: str  # what a tool shows: says nothing of the role
    role: str  # single | overlap | gold
    annotator: str | None  # None: whoever takes it
    pair: dict  # week_pairs' shape; a gold pair has no sample ids, and `gold_id`, `answer`

    def shown(self) -> dict:
        """What an annotator's tool may carry: the pair without its role or known answer."""
        return {"item_id": self.item_id,
                **{k: v for k, v in self.pair.items() if k not in ("gold_id", "answer")}}


def gold_as_pair(g: dict) -> dict:
    """A gold pair in week_pairs' shape (no prompt or sample ids: its texts travel inline)."""
    return {"pair_id": g["gold_id"], "prompt_id": None, "messages": g["messages"],
            "prompt": render_prompt(g["messages"]), "criterion": g["criterion"],
            "sample_id_a": None, "text_a": g["text_a"], "sample_id_b": None,
            "text_b": g["text_b"], "gold_id": g["gold_id"], "answer": g["answer"]}


def plan_round(pairs: list[dict], gold: list[dict], q: AnnotatorQualityConfig,
               annotators: list[str], salt: str) -> list[Item]:
    """The round's items (see the module's docstring), in a shuffled order fixed by `salt`."""
    order = sorted(pairs, key=lambda p: content_id(salt, "overlap", p["pair_id"]))
    n_overlap = int(q.overlap_share * len(order) + 0.5)  # half up
    if len(annotators) == 1:
        n_overlap = 0  # one annotator cannot overlap with itself
    width = min(q.overlap_annotators, len(annotators)) if annotators else q.overlap_annotators
    plan: list[tuple[str, str | None, dict, int]] = []
    for k, p in enumerate(order):
        if k < n_overlap:
            for j in range(width):
                who = annotators[(k + j) % len(annotators)] if annotators else None
                plan.append(("overlap", who, p, j))
        else:
            plan.append(("single", annotators[k % len(annotators)] if annotators else None, p, 0))
    for g in gold:
        for who in annotators or [None]:
            plan.append(("gold", who, gold_as_pair(g), 0))
    items = [Item(content_id(salt, "item", p["pair_id"], who, copy), role, who, p)
             for role, who, p, copy in plan]
    return sorted(items, key=lambda i: i.item_id)


def round_items(cfg: FlywheelConfig, lake: Lake, iteration: int, pairs: list[dict],
                annotators: list[str]) -> list[Item]:
    """The iteration's round as `annotation.quality` asks: its gold pairs drawn and registered
    in the lake, the items planned, the manifest saved. The same iteration and seed give the
    same round."""
    q = cfg.annotation.quality
    salt = f"{cfg.seed}:{iteration}"
    gold = gold_pairs(cfg, q.gold_pairs, salt)
    register(lake, gold)
    items = plan_round(pairs, gold, q, annotators, salt)
    save_manifest(lake, items, iteration)
    return items


def manifest(items: list[Item], iteration: int) -> dict:
    """What each item of the round is: role, annotator, pair, and a gold item's answer."""
    counts = {r: sum(i.role == r for i in items) for r in ROLES}
    return {"iteration": iteration, "counts": counts, "items": [
        {"item_id": i.item_id, "role": i.role, "annotator": i.annotator,
         "pair_id": i.pair["pair_id"], **({"answer": i.pair["answer"]} if i.role == "gold" else {})}
        for i in items]}


def save_manifest(lake: Lake, items: list[Item], iteration: int) -> str:
    return lake.write_text(f"rounds/iteration-{iteration:04d}.json",
                           json.dumps(manifest(items, iteration), indent=1, sort_keys=True))


def delivery_of(item: Item, label: dict) -> dict:
    """The delivery row of a labelled item: by sample ids for the week's pairs, with the texts
    inline for a gold pair. `label`: chosen, strength, safety_label, annotator."""
    p = item.pair
    row = {"criterion": p["criterion"], "source": "in-house",
           **{k: label.get(k) for k in ("chosen", "strength", "safety_label", "annotator")}}
    if p["sample_id_a"] is None:
        row.update(prompt=json.dumps(p["messages"]), response_a=p["text_a"],
                   response_b=p["text_b"])
    else:
        row.update(prompt_id=p["prompt_id"], sample_id_a=p["sample_id_a"],
                   sample_id_b=p["sample_id_b"])
    return {k: v for k, v in row.items() if v is not None}
