"""The simulated annotator: labels response pairs in the Llama 2 protocol from the proxy judge.

For each pair it emits which response was chosen (higher judge score), the strength of the
preference from the score margin (`AnnotationConfig.strength_thresholds`), the criterion of the
prompt, and the safety label of the pair. Pairs whose chosen response is unsafe while the other is
safe are dropped, as Llama 2 drops them (the judge never prefers those, so this is a guard).
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.judge import ProxyJudge
from flywheel.schemas import STRENGTHS, content_id

ANNOTATOR = "simulated:proxy-judge-v1"


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


def annotate(
    judge: ProxyJudge, pairs: list[Pair], thresholds: list[float], batch_id: str
) -> tuple[list[dict], dict]:
    """Comparison rows for the lake, and counts of what was dropped and why."""
    prompts = [p.prompt_text for p in pairs]
    criteria = [p.criterion for p in pairs]
    ja = judge.judge(prompts, criteria, [p.a_text for p in pairs])
    jb = judge.judge(prompts, criteria, [p.b_text for p in pairs])
    rows, dropped = [], {"identical_responses": 0, "chosen_unsafe_other_safe": 0}
    for p, a, b in zip(pairs, ja, jb):
        if p.a_text.strip() == p.b_text.strip():
            dropped["identical_responses"] += 1
            continue
        a_wins = a.score >= b.score
        (cid, ctext, cj), (rid, rtext, rj) = (
            ((p.a_id, p.a_text, a), (p.b_id, p.b_text, b))
            if a_wins
            else ((p.b_id, p.b_text, b), (p.a_id, p.a_text, a))
        )
        label = safety_label(cj.safe, rj.safe)
        if label is None:
            dropped["chosen_unsafe_other_safe"] += 1
            continue
        rows.append(
            {
                "id": content_id("comparison", p.prompt_id, cid, rid, ANNOTATOR),
                "prompt_id": p.prompt_id,
                "chosen_sample_id": cid,
                "rejected_sample_id": rid,
                "chosen_text": ctext,
                "rejected_text": rtext,
                "strength": strength_of(abs(a.score - b.score), thresholds),
                "criterion": p.criterion,
                "safety_label": label,
                "annotator": ANNOTATOR,
                "batch_id": batch_id,
                "source": "in-house",
                "split": None,  # set by the caller's held-out split
            }
        )
    return rows, dropped
