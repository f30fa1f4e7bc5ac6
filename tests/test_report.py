"""The iteration report: its annotation section, on comparisons written straight to a lake, and
the win rates it states."""

from flywheel.lake.store import Lake
from flywheel.stages.report import annotation_markdown, stage_seconds_markdown, vs_base_markdown


def _cmp(i, crit, chosen, rejected, strength, split="train", batch="week-1", delivery="d"):
    return {"id": f"c{i}", "prompt_id": f"p{i}", "chosen_sample_id": f"a{i}",
            "rejected_sample_id": f"b{i}", "chosen_text": chosen, "rejected_text": rejected,
            "strength": strength, "criterion": crit, "safety_label": "", "annotator": "sim",
            "batch_id": batch, "delivery_id": delivery, "source": "in-house", "split": split}


def _lake(tmp_path) -> Lake:
    """A lake where delivery "d" is complete: the report shows a delivery's rows only then."""
    lake = Lake.open(str(tmp_path / "lake"))
    lake.write("batches", [{"id": "d", "batch_id": "week-1", "status": "complete"}])
    return lake


def test_annotation_section_counts_strengths_and_refusal_comparisons(tmp_path):
    lake = _lake(tmp_path)
    refusal, answer = "I'm sorry, but I can't help with that.", "Use a tension wrench."
    lake.write("comparisons", [
        _cmp(1, "helpfulness", "Rinse and simmer.", "Rice.", "better"),
        _cmp(2, "helpfulness", "Tram 28.", "Portugal.", "slightly_better", split="test"),
        _cmp(3, "safety", refusal, answer, "significantly_better"),
        _cmp(4, "safety", answer, refusal, "negligibly_better"),  # the answer preferred
        _cmp(5, "safety", answer, "Pick it with a pin.", "better", split="test"),
        _cmp(6, "safety", refusal, answer, "better", batch="week-2"),  # another week's
        # a delivery cut short before its batches row: not shown
        _cmp(7, "safety", refusal, answer, "better", delivery="cut"),
    ])
    text = "\n".join(annotation_markdown(lake, "week-1"))
    assert "| helpfulness | 1 | 1 | 0 | 1 | 1 | 0 |" in text
    assert "| safety | 2 | 1 | 1 | 1 | 0 | 1 |" in text
    assert "Refusal against answer: 2 of the 3 safety comparisons; the refusal chosen in 1." \
        in text
    assert "harmless request" not in text  # no helpful comparison set a refusal against one
    assert annotation_markdown(lake, "week-9") == [] and annotation_markdown(lake, None) == []


def test_annotation_section_counts_refusals_of_harmless_requests(tmp_path):
    # a policy that learned to refuse harmless requests: its refusals meet answers on helpful
    # prompts, and the annotator prefers the answer (twice) or, once, the refusal
    lake = _lake(tmp_path)
    refusal = "I'm sorry, but I'm unable to suggest alternatives."
    lake.write("comparisons", [
        _cmp(1, "helpfulness", "Use applesauce.", refusal, "significantly_better"),
        _cmp(2, "helpfulness", "Mashed banana works.", refusal, "better", split="test"),
        _cmp(3, "helpfulness", refusal, "Eggs.", "negligibly_better"),
        _cmp(4, "helpfulness", "Flax seed.", "Chia seed.", "slightly_better"),
    ])
    text = "\n".join(annotation_markdown(lake, "week-1"))
    assert ("Refusal of a harmless request against an answer: 3 of the 4 helpfulness "
            "comparisons; the answer chosen in 2.") in text
    assert "safety comparisons" not in text


def test_win_rates_are_reported_with_their_interval():
    vs = {"base": "b0", "win_rate": 0.5, "win_rate_helpful": 4 / 7,
          "win_rate_helpful_ci95": [0.4406, 0.7022], "win_rate_harmful": 0.25,
          "harmful_answered_new": 0.5, "harmful_answered_old": 1.0,
          "helpful_refused_new": 0.0, "helpful_refused_old": 0.0}
    text = "\n".join(vs_base_markdown(vs))
    assert "(helpful prompts 0.571 (95 % CI 0.441-0.702), harmful prompts 0.250)" in text
    # evaluations recorded before the interval existed still render
    old = {k: v for k, v in vs.items() if k != "win_rate_helpful_ci95"}
    assert "(helpful prompts 0.571, harmful prompts 0.250)" in "\n".join(vs_base_markdown(old))


def test_stage_table_names_the_policy_update_methods_that_ran():
    """An RRHF-then-PPO iteration: a row for each method, none called rejection_sampling;
    total 10.0 + 2.5 + 30.25 + 40.0 + 5.0 = 87.75, printed to one decimal as 87.8."""
    seconds = {"sample_for_annotation": 10.0, "annotate": 2.5, "train_reward_models": 30.25,
               "rrhf": 40.0, "ppo": 5.0}
    lines = stage_seconds_markdown(seconds)
    rows = [line for line in lines if line.startswith("| ") and "seconds" not in line]
    assert rows == ["| sample_for_annotation | 10.0 |", "| annotate | 2.5 |",
                    "| train_reward_models | 30.2 |", "| policy update: rrhf | 40.0 |",
                    "| policy update: ppo | 5.0 |", "| total | 87.8 |"]
    assert "rejection_sampling" not in "\n".join(lines)
