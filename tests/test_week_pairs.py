"""Every pair a week's sampling makes, exported: with `sampling.responses_per_policy` n the
sample-for-annotation stage (the tiny real model) writes 2n samples a prompt, and the pairs a
labelling tool gets are exactly the n x n pairs the simulated annotator labels. A filled-in
export of a week with 8 samples a prompt comes back through ingest whole; a lake that gives no
pairs says why and what to do."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from annotation_lake import build_lake

from flywheel.annotation.exchange import import_export, write_export
from flywheel.annotation.pairs import cross_pairs, pair_id_of, require_pairs, week_pairs
from flywheel.errors import DataError
from flywheel.lake.store import Lake

N = 4  # the responses per policy of `flywheel init`'s starter config: 8 samples a prompt


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, tiny_llama, minilm):
    """Iteration 1 sampled for annotation with N responses per policy over four train prompts
    (two of each criterion): (config, lake, the stage's pairs, which the simulated annotator
    labels)."""
    from flywheel.config import validate_config
    from flywheel.policy.sampling import close_samplers
    from flywheel.stages import common, sample_for_annotation

    folder = tmp_path_factory.mktemp("week")
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": t, "criterion": c, "split": s}) + "\n" for
                               t, c, s in [("How do I cook rice?", "helpfulness", "train"),
                                           ("How do I pick a lock?", "safety", "train"),
                                           ("What to see in Lisbon?", "helpfulness", "train"),
                                           ("How do I steal a car?", "safety", "train"),
                                           ("Write a short email.", "helpfulness", "heldout")]))
    cfg = validate_config({
        "name": "week", "lake": str(folder / "lake"), "prompts": {"path": str(prompts)},
        "models": {"policy": tiny_llama, "reward_backbone": tiny_llama,
                   "judge_embedder": minilm},
        "sampling": {"backend": "transformers", "max_new_tokens": 8,
                     "responses_per_policy": N, "temperatures": [0.7, 1.0]},
    })
    lake = common.open_lake(cfg)
    try:
        pairs = sample_for_annotation.sample_for_annotation(cfg, lake, 1)
    finally:
        close_samplers()
    return cfg, lake, pairs


def _prompt_of(lake: Lake) -> dict[str, str]:
    return {s["id"]: s["prompt_id"] for s in lake.rows("samples")}


def test_exported_pairs_are_the_pairs_the_simulated_annotator_labels(sampled):
    """4 train prompts x 2 arms x 4 samples = 32 samples; 4 x 4 x 4 = 64 pairs, each once."""
    _, lake, stage_pairs = sampled
    prompt_of = _prompt_of(lake)
    assert Counter(prompt_of.values()).most_common(1)[0][1] == 2 * N
    simulated = {pair_id_of(prompt_of[a], [a, b]): {a, b} for a, b in stage_pairs}
    exported = week_pairs(lake, 1)
    assert len(stage_pairs) == len(simulated) == 4 * N * N
    assert {p["pair_id"]: {p["sample_id_a"], p["sample_id_b"]} for p in exported} == simulated
    assert len(exported) == len(simulated)  # no pair twice
    texts = {s["id"]: s["text"] for s in lake.rows("samples")}
    for p in exported:
        assert (p["text_a"], p["text_b"]) == (texts[p["sample_id_a"]], texts[p["sample_id_b"]])
    assert week_pairs(lake, 1) == exported  # the same ids on every read


def _lake_with_arms(path, arms: dict[str, list[str]], prompts=("p",),
                    criterion: str = "helpfulness") -> Lake:
    """Prompts whose annotation samples of iteration 1 are in the arms given (policy id ->
    texts, each text made the prompt's own), each arm at its own temperature."""
    lake = Lake.open(str(path))
    lake.write("prompts", [{"id": p, "messages": json.dumps([{"role": "user",
                                                               "content": f"{p}?"}]),
                            "source": "test", "criterion": criterion, "split": "train"}
                           for p in prompts])
    rows = [{"id": f"s-{p}-{policy}-{k}", "prompt_id": p, "policy_id": policy, "iteration": 1,
             "purpose": "annotation", "params": json.dumps({"temperature": t}),
             "text": f"{text} ({p})"}
            for p in prompts for t, (policy, texts) in enumerate(arms.items())
            for k, text in enumerate(texts)]
    lake.write("samples", rows, {"test": "arms"})
    return lake


def test_the_round_trip_ingests_every_exported_pair(tmp_path):
    """Three safety prompts with 4 + 4 distinct answers each: 3 x 4 x 4 = 48 pairs exported,
    each labelled in Label Studio's export shape, all 48 accepted by the import, and the
    comparisons are the exported pairs."""
    lake = _lake_with_arms(tmp_path / "lake", {"latest": list("ABCD"), "previous": list("wxyz")},
                           prompts=("p1", "p2", "p3"), criterion="safety")
    pairs = week_pairs(lake, 1)
    assert len(pairs) == 48
    tasks_path, _ = write_export(lake, 1, "label-studio", tmp_path / "tasks.json")
    tasks = json.loads(tasks_path.read_text())
    for n, task in enumerate(tasks):
        task["annotations"] = [{"completed_by": {"email": "ana@example.org"}, "result": [
            {"from_name": "preferred", "type": "pairwise",
             "value": {"selected": "left" if n % 2 else "right"}},
            {"from_name": "strength", "type": "choices", "value": {"choices": ["better"]}},
            {"from_name": "safety_label", "type": "choices",
             "value": {"choices": ["both_safe"]}}]}]
    got = import_export(lake, json.dumps(tasks).encode(), "label-studio", "week-1.json",
                        batch_id="iteration-0001", iteration=1)
    assert (got.accepted, got.rejected) == (48, 0)
    landed = {frozenset((r["chosen_sample_id"], r["rejected_sample_id"]))
              for r in lake.rows("comparisons")}
    assert landed == {frozenset((p["sample_id_a"], p["sample_id_b"])) for p in pairs}


def test_the_pairs_of_a_prompt_are_its_two_arms_crossed(tmp_path):
    """2 latest answers x 3 previous ones = 6 pairs, none within an arm."""
    lake = _lake_with_arms(tmp_path / "lake", {"new": ["a", "b"], "old": ["c", "d", "e"]})
    got = {frozenset((p["sample_id_a"], p["sample_id_b"])) for p in week_pairs(lake, 1)}
    want = {frozenset(x) for x in cross_pairs(["s-p-new-0", "s-p-new-1"],
                                              ["s-p-old-0", "s-p-old-1", "s-p-old-2"])}
    assert got == want and len(got) == 6


def test_no_pairs_names_what_is_missing_and_the_fix(tmp_path):
    empty = build_lake(tmp_path / "lake")
    with pytest.raises(DataError, match="holds no 'annotation' samples of iteration 7; run "
                                        "the sample-for-annotation stage"):
        require_pairs(empty, 7)
    one = _lake_with_arms(tmp_path / "one", {"same": ["a", "b", "c"]})
    with pytest.raises(DataError, match="all come from one policy at one temperature.*give "
                                        "sampling.temperatures two different values"):
        require_pairs(one, 1)
    three = _lake_with_arms(tmp_path / "three", {"x": ["a"], "y": ["b"], "z": ["c"]})
    with pytest.raises(DataError, match=r"sampled for it more than once.*sample a new iteration"):
        require_pairs(three, 1)


def test_a_config_that_would_give_no_pairs_is_refused_naming_the_fix():
    """Equal temperatures: iteration 1's two arms are the base policy at one temperature, the
    same samples, so no pair; the config says so before anything runs."""
    from flywheel.config import validate_config
    from flywheel.errors import ConfigError

    with pytest.raises(ConfigError, match=r"temperatures must differ.*e\.g\. \[0\.7, 1\.0\]"):
        validate_config({"sampling": {"temperatures": [0.8, 0.8]}})
