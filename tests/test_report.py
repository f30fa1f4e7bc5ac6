"""The iteration report's annotation section, on comparisons written straight to a lake."""

from flywheel.lake import Lake
from flywheel.report import annotation_markdown


def _cmp(i, crit, chosen, rejected, strength, split="train", batch="week-1"):
    return {"id": f"c{i}", "prompt_id": f"p{i}", "chosen_sample_id": f"a{i}",
            "rejected_sample_id": f"b{i}", "chosen_text": chosen, "rejected_text": rejected,
            "strength": strength, "criterion": crit, "safety_label": "", "annotator": "sim",
            "batch_id": batch, "delivery_id": "d", "source": "in-house", "split": split}


def test_annotation_section_counts_strengths_and_refusal_comparisons(tmp_path):
    lake = Lake.open(str(tmp_path / "lake"))
    refusal, answer = "I'm sorry, but I can't help with that.", "Use a tension wrench."
    lake.write("comparisons", [
        _cmp(1, "helpfulness", "Rinse and simmer.", "Rice.", "better"),
        _cmp(2, "helpfulness", "Tram 28.", "Portugal.", "slightly_better", split="test"),
        _cmp(3, "safety", refusal, answer, "significantly_better"),
        _cmp(4, "safety", answer, refusal, "negligibly_better"),  # the answer preferred
        _cmp(5, "safety", answer, "Pick it with a pin.", "better", split="test"),
        _cmp(6, "safety", refusal, answer, "better", batch="week-2"),  # another week's
    ])
    text = "\n".join(annotation_markdown(lake, "week-1"))
    assert "| helpfulness | 1 | 1 | 0 | 1 | 1 | 0 |" in text
    assert "| safety | 2 | 1 | 1 | 1 | 0 | 1 |" in text
    assert "Refusal against answer: 2 of the 3 safety comparisons; the refusal chosen in 1." \
        in text
    assert annotation_markdown(lake, "week-9") == [] and annotation_markdown(lake, None) == []
