"""The simulated annotator: labels response pairs in the Llama 2 protocol from the proxy judge.

For each pair it emits which response was chosen (higher judge score), the strength of the
preference from the score margin (`AnnotationConfig.strength_thresholds`), the criterion of the
prompt, and the safety label of the pair. Pairs whose chosen response is unsafe while the other is
safe are labelled so, and ingest drops them, as Llama 2 does (the judge never prefers those).

`label_round` labels a round's items (flywheel/annotation/rounds.py) as several simulated
annotators of configured reliability (`annotation.quality.simulated_annotators`): each takes the
judge's label and, on a share `flip` of its items (chosen by a hash), prefers the other response
at a strength drawn by the same hash, so agreement and gold accuracy have something to measure.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.annotation.rounds import Item, delivery_of
from flywheel.config.annotators import SimulatedAnnotator
from flywheel.evaluation.proxy import ProxyJudge
from flywheel.lake.schemas import STRENGTHS, content_id

ANNOTATOR = "simulated:proxy-judge-v1"
EXCLUDED = "chosen_unsafe_other_safe"


@dataclass(frozen=True)
class Pair:
    prompt_id: str
    prompt_text: str
    criterion: str
    a_id: str
    a_text: str
    b_id: str
    b_text: str


def strength_of(margin: float, thresholds: list[float]) -> str:
    for level, bound in zip(STRENGTHS, thresholds):
        if margin >= bound:
            return level
    return STRENGTHS[-1]


def safety_label(chosen_safe: bool, other_safe: bool) -> str | None:
    if chosen_safe and other_safe:
        return "both_safe"
    if chosen_safe:
        return "chosen_safe_other_unsafe"
    if not other_safe:
        return "both_unsafe"
    return None  # chosen unsafe, other safe: excluded from the protocol


def annotate(judge: ProxyJudge, pairs: list[Pair], thresholds: list[float]) -> list[dict]:
    """One delivery row per pair (flywheel/annotation/ingest.py's format), labelled from the
    judge. Every pair yields a row, so ingest accounts for all of them: identical responses and
    the excluded chosen-unsafe category are rejected there, with their reason, like any
    annotator's."""
    prompts = [p.prompt_text for p in pairs]
    criteria = [p.criterion for p in pairs]
    ja = judge.judge(prompts, criteria, [p.a_text for p in pairs])
    jb = judge.judge(prompts, criteria, [p.b_text for p in pairs])
    rows = []
    for p, a, b in zip(pairs, ja, jb):
        a_wins = a.score >= b.score
        chosen, other = (a, b) if a_wins else (b, a)
        rows.append({
            "prompt_id": p.prompt_id,
            "sample_id_a": p.a_id,
            "sample_id_b": p.b_id,
            "chosen": "a" if a_wins else "b",
            "strength": strength_of(abs(a.score - b.score), thresholds),
            "criterion": p.criterion,
            "safety_label": safety_label(chosen.safe, other.safe) or EXCLUDED,
            "annotator": ANNOTATOR,
        })
    return rows


_FLIPPED_SAFETY = {"chosen_safe_other_unsafe": EXCLUDED, EXCLUDED: "chosen_safe_other_unsafe"}


def as_annotator(row: dict, who: SimulatedAnnotator, salt: str) -> dict:
    """The judge's label as `who` gives it: flipped on a hashed share `who.flip` of items."""
    u = int(content_id(salt, who.id, row.get("sample_id_a"), row.get("sample_id_b"),
                       row.get("response_a"), row.get("response_b")), 16)
    out = {**row, "annotator": who.id}
    if (u % 10_000) / 10_000 < who.flip:
        out["chosen"] = "b" if row["chosen"] == "a" else "a"
        out["strength"] = STRENGTHS[(u // 10_000) % len(STRENGTHS)]
        label = row.get("safety_label")
        out["safety_label"] = _FLIPPED_SAFETY.get(label, label)
    return out


def label_round(judge: ProxyJudge, items: list[Item], thresholds: list[float],
                annotators: list[SimulatedAnnotator], salt: str) -> list[dict]:
    """Delivery rows of a round's items, each labelled by its simulated annotator (the judge
    itself, as ANNOTATOR, when none is configured). The judge scores each pair once."""
    pairs = {i.pair["pair_id"]: i.pair for i in items}
    todo = [Pair(p["prompt_id"], p["prompt"], p["criterion"], p["sample_id_a"], p["text_a"],
                 p["sample_id_b"], p["text_b"]) for p in pairs.values()]
    labels = dict(zip(pairs, annotate(judge, todo, thresholds)))
    by_id = {a.id: a for a in annotators}
    rows = []
    for item in items:
        row = delivery_of(item, labels[item.pair["pair_id"]])
        rows.append(as_annotator(row, by_id[item.annotator], salt)
                    if item.annotator in by_id else {**row, "annotator": ANNOTATOR})
    return rows
