"""The simulated annotator: labels response pairs in the Llama 2 protocol from the proxy judge.

For each pair it emits which response was chosen (higher judge score), the strength of the
preference from the score margin (`AnnotationConfig.strength_thresholds`), the criterion of the
prompt, and the safety label of the pair. Pairs whose chosen response is unsafe while the other is
safe are labelled so, and ingest drops them, as Llama 2 does (the judge never prefers those).
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.evaluation.proxy import ProxyJudge
from flywheel.lake.schemas import STRENGTHS

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
