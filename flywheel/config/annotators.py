"""`annotation.quality`: overlap and gold pairs in each round, the simulated annotators, and the
thresholds below which an annotator's comparisons are left out of the reward-model mixes
(flywheel/annotation/quality.py has the measures)."""

from __future__ import annotations

from pydantic import Field, model_validator

from flywheel.config.base import _Section


class SimulatedAnnotator(_Section):
    """One simulated annotator: the proxy judge's label, flipped on a share of the pairs."""

    id: str = Field(min_length=1, description="Its name in the lake's `annotator` column.")
    flip: float = Field(
        0.0, ge=0, le=1,
        description="Share of pairs on which it prefers the other response than the judge (at "
        "a strength drawn at random): 0 agrees with the judge, 0.5 is a coin.",
    )


class AnnotatorQualityConfig(_Section):
    overlap_share: float = Field(
        0.0, ge=0, le=1,
        description="Share of each round's pairs given to several annotators (Llama 2 measured "
        "agreement on such overlap). 0: each pair once.",
    )
    overlap_annotators: int = Field(
        2, ge=2, description="Annotators each overlap pair goes to."
    )
    gold_pairs: int = Field(
        0, ge=0,
        description="Gold pairs (known answer) mixed into each round, each given to every "
        "annotator of the round; their labels are kept for gold accuracy and never trained on.",
    )
    gold_path: str | None = Field(
        None,
        description="The team's gold pairs: a file in the delivery format (prompt, response_a, "
        "response_b, chosen, criterion), or HH-RLHF ({chosen, rejected}) or UltraFeedback, the "
        "chosen response the known answer. Empty: the human-labelled HH-RLHF "
        "helpful-base and harmless-base test files of the data folder (evaluation.data_dir).",
    )
    simulated_annotators: list[SimulatedAnnotator] = Field(
        [],
        description="Simulated mode: several annotators of different reliability, e.g. "
        "[{id: sim-1, flip: 0.0}, {id: sim-2, flip: 0.1}, {id: sim-3, flip: 0.4}]; each pair "
        "goes to one of them (overlap pairs to several). Empty: the proxy judge alone.",
    )
    min_kappa: float | None = Field(
        None, ge=-1, le=1,
        description="Leave out of the reward-model mixes the comparisons of annotators whose "
        "Cohen's kappa with the consensus of the others is below this (on at least min_items "
        "overlap items where the others did not tie). "
        "Empty: nobody is left out for it.",
    )
    min_gold_accuracy: float | None = Field(
        None, ge=0, le=1,
        description="The same for accuracy on gold pairs (on at least min_items gold items).",
    )
    min_items: int = Field(
        10, ge=1,
        description="Fewest overlap (or gold) items a kappa (or gold accuracy) must rest on "
        "before a threshold applies to it.",
    )

    @model_validator(mode="after")
    def _enough_annotators(self):
        names = [a.id for a in self.simulated_annotators]
        if len(set(names)) != len(names):
            raise ValueError(f"simulated_annotators ids must differ, got {names}")
        if names and self.overlap_share > 0 and len(names) < self.overlap_annotators:
            raise ValueError(
                f"overlap_annotators is {self.overlap_annotators} but only {len(names)} "
                "simulated_annotators are listed; list more or lower overlap_annotators")
        return self
