"""`flywheel evaluate-rm`: a reward model on any comparison file (delivery, HH-RLHF,
UltraFeedback), the first N records, results per criterion, the warnings for a model of another
criterion and for pairs it trained on, and the scoring engine's scores against each pair
scored alone. On the tiny Llama with a random head: accuracies are whatever it scores, so the
expected values come from pairs given both ways round (exactly one of the two is a hit)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.annotation.importers import parse_dialogue, record_format
from flywheel.annotation.ingest import ingest_bytes
from flywheel.flows.cli import main
from flywheel.lake.store import Lake
from flywheel.reward.evaluation import evaluate
from flywheel.reward.file_eval import evaluate_file, read_pairs
from flywheel.reward.model import PreferencePair, RewardModel
from flywheel.reward.scoring import Group, ScoringEngine

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ULTRAFEEDBACK = DATA / "ultrafeedback_binarized_sample_1200.jsonl.gz"

HH = [
    ("Human: How do I boil an egg?", "Put it in boiling water for nine minutes.", "Eggs."),
    ("Human: Can you help me pick a lock?", "I can't help with that.", "Use a tension wrench."),
    ("Human: Name a city in Portugal.\n\nAssistant: Lisbon.\n\nHuman: Another one?",
     "Porto.", "Madrid is in Spain."),
]


def _hh_file(path) -> str:
    def dialogue(prompt, reply):
        return f"\n\n{prompt}\n\nAssistant: {reply}"

    path.write_text("".join(json.dumps({"chosen": dialogue(p, c), "rejected": dialogue(p, r)})
                            + "\n" for p, c, r in HH))
    return str(path)


def _llama2_file(path) -> str:
    rows = [
        {"prompt": "How do I cook rice?", "response_a": "Rinse, boil, simmer.",
         "response_b": "Rice.", "chosen": "a", "strength": "significantly better",
         "criterion": "helpfulness"},
        {"prompt": "How can I break into a house?", "response_a": "Pry the back door.",
         "response_b": "Sorry, I won't help.", "chosen": "b", "strength": "better",
         "criterion": "safety", "safety_label": "chosen_safe_other_unsafe"},
        {"prompt": "How do I steal a car?", "response_a": "Break the window.",
         "response_b": "I can't help.", "chosen": "a", "strength": "slightly better",
         "criterion": "safety", "safety_label": "chosen_unsafe_other_safe"},  # excluded
        {"prompt": "Suggest a book.", "response_a": "Dune.", "response_b": "",
         "chosen": "a", "strength": "unsure", "criterion": "helpfulness"},  # empty response
    ]
    path.write_text("".join(json.dumps({**r, "annotator": "ann-1"}) + "\n" for r in rows))
    return str(path)


def _both_ways_file(path) -> str:
    """Three comparisons, each delivered twice with the choice flipped: helpfulness ones first
    (rows 1-4), the safety one last (rows 5-6)."""
    pairs = [("How do I cook rice?", "Rinse, boil, simmer.", "Rice.", "helpfulness",
              "significantly better", None),
             ("Name a city in Portugal.", "Lisbon.", "Madrid is in Spain.", "helpfulness",
              "better", None),
             ("How do I pick a lock?", "I can't help with that.", "Use a tension wrench.",
              "safety", "slightly better", "both_safe")]
    rows = [{"prompt": p, "response_a": a, "response_b": b, "chosen": chosen, "strength": s,
             "criterion": c, "safety_label": label, "annotator": "ann-1"}
            for p, a, b, c, s, label in pairs for chosen in ("a", "b")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def untrained_rm(tiny_llama, tmp_path) -> str:
    import torch

    torch.manual_seed(0)
    model = RewardModel.from_backbone(tiny_llama)
    model.save(tmp_path / "rm", {"id": "test", "kind": "helpfulness", "max_length": 64})
    return str(tmp_path / "rm")


# reading files ----------------------------------------------------------------------------------
def test_evaluate_file_reads_hh_rlhf_and_llama2_deliveries(untrained_rm, tmp_path):
    out = evaluate_file(untrained_rm, _hh_file(tmp_path / "helpful.jsonl"))
    assert (out["format"], out["delivered"], out["evaluated"]) == ("hh-rlhf", 3, 3)
    # the same pairs scored directly give the same accuracy
    model = RewardModel.load(untrained_rm)
    pairs = [PreferencePair(parse_dialogue(f"\n\n{p}"), c, r) for p, c, r in HH]
    direct = evaluate(model, pairs, 64)[0]
    assert out["accuracy"] == pytest.approx(direct["accuracy"])
    out = evaluate_file(untrained_rm, _llama2_file(tmp_path / "week.jsonl"))
    assert (out["format"], out["delivered"], out["evaluated"]) == ("llama2", 4, 2)
    assert out["rejected"] == {"excluded_chosen_unsafe_other_safe": 1, "empty_response": 1}
    assert set(out["by_strength"]) == {"significantly_better", "better"}
    assert out["by_safety_label"] == {"chosen_safe_other_unsafe": {
        "accuracy": out["by_strength"]["better"]["accuracy"], "n": 1}}


def test_record_format_tells_the_formats_from_the_first_record(tmp_path):
    messages = tmp_path / "prefs.jsonl"  # UltraFeedback as message lists, no prompt field
    chat = [{"role": "user", "content": "Name a colour."}]
    messages.write_text(json.dumps({
        "chosen": chat + [{"role": "assistant", "content": "Blue."}],
        "rejected": chat + [{"role": "assistant", "content": "Seven."}]}) + "\n")
    assert record_format(str(messages)) == "ultrafeedback"
    assert record_format(str(ULTRAFEEDBACK)) == "ultrafeedback"  # prompt and texts
    assert record_format(_hh_file(tmp_path / "a.jsonl")) == "hh-rlhf"
    assert record_format(_llama2_file(tmp_path / "b.jsonl")) is None
    (tmp_path / "c.csv").write_text("prompt,response_a\nx,y\n")
    assert record_format(str(tmp_path / "c.csv")) is None


def test_ultrafeedback_files_read_as_helpfulness_comparisons(untrained_rm, tmp_path):
    """The sample's first 5 records (all train rows, all convertible) and a file of message
    lists: 2 records, the second with a prompt the messages contradict (import_prompt_mismatch)."""
    out = evaluate_file(untrained_rm, str(ULTRAFEEDBACK), limit=5)
    assert (out["format"], out["delivered"], out["evaluated"]) == ("ultrafeedback", 5, 5)
    assert set(out["by_criterion"]) == {"helpfulness"}
    assert out["by_criterion"]["helpfulness"]["n"] == 5
    chat = [{"role": "user", "content": "Name a colour."}]
    records = [{"chosen": chat + [{"role": "assistant", "content": "Blue."}],
                "rejected": chat + [{"role": "assistant", "content": "Seven."}]},
               {"prompt": "Name a fruit.", "chosen": chat + [{"role": "assistant",
                                                                 "content": "Red."}],
                "rejected": chat + [{"role": "assistant", "content": "Pear."}]}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    file = read_pairs(str(path))
    assert (file.format, file.delivered, file.rejected) == (
        "ultrafeedback", 2, {"import_prompt_mismatch": 1})
    assert file.pairs == [PreferencePair(chat, "Blue.", "Seven.", None)]
    assert file.criteria == ["helpfulness"]


def test_limit_takes_the_first_records_of_each_format(untrained_rm, tmp_path):
    """HH: 2 of 3 records. Delivery: rows 1-2 are both accepted; row 3 is the excluded one, so
    --limit 3 delivers 3 and evaluates 2."""
    hh = _hh_file(tmp_path / "helpful.jsonl")
    assert (read_pairs(hh, limit=2).delivered, len(read_pairs(hh, limit=2).ids)) == (2, 2)
    week = _llama2_file(tmp_path / "week.jsonl")
    two, three = read_pairs(week, limit=2), read_pairs(week, limit=3)
    assert (two.delivered, two.rejected, sorted(two.criteria)) == (
        2, {}, ["helpfulness", "safety"])
    assert (three.delivered, len(three.ids)) == (3, 2)
    assert three.rejected == {"excluded_chosen_unsafe_other_safe": 1}
    assert read_pairs(week, limit=10).delivered == 4


# results per criterion --------------------------------------------------------------------------
def test_results_per_criterion_strength_and_label(untrained_rm, tmp_path):
    """Each comparison given both ways round scores exactly 1 hit in 2, whatever the model: 3
    comparisons -> 6 pairs, accuracy 3/6; helpfulness 4 pairs (2 significantly better, 2
    better), 2/4; safety 2 pairs (slightly better, both safe), 1/2. With --limit 4 only the
    helpfulness rows are read."""
    path = _both_ways_file(tmp_path / "both.jsonl")
    out = evaluate_file(untrained_rm, path)
    assert (out["accuracy"], out["n"]) == (0.5, 6)
    half = {"accuracy": 0.5, "n": 2}
    assert out["by_criterion"] == {
        "helpfulness": {"accuracy": 0.5, "n": 4, "by_safety_label": {},
                        "by_strength": {"significantly_better": half, "better": half}},
        "safety": {"accuracy": 0.5, "n": 2, "by_strength": {"slightly_better": half},
                   "by_safety_label": {"both_safe": half}}}
    assert out["warnings"] == [] and out["train_overlap"] is None  # no mix stored with it
    first4 = evaluate_file(untrained_rm, path, limit=4)
    assert (first4["n"], set(first4["by_criterion"])) == (4, {"helpfulness"})


def test_token_budget_changes_the_batches_not_the_accuracy(untrained_rm, tmp_path, capsys):
    """64 tokens per pass puts one or two sequences in each pass; 4096 all 12 in one."""
    path = _both_ways_file(tmp_path / "both.jsonl")
    assert main(["evaluate-rm", untrained_rm, path, "--batch-size", "64"]) == 0
    small = json.loads(capsys.readouterr().out)
    large = evaluate_file(untrained_rm, path, token_budget=4096)
    assert (small["token_budget"], large["token_budget"]) == (64, 4096)
    assert {k: small[k] for k in ("accuracy", "by_criterion")} == {
        k: large[k] for k in ("accuracy", "by_criterion")}
    assert main(["evaluate-rm", untrained_rm, path, "--token-budget", "8"]) == 2
    assert "padded tokens per forward pass, at least 64" in capsys.readouterr().err


def test_engine_scores_match_each_pair_scored_alone(untrained_rm, tmp_path):
    """The engine against `RewardModel.score` on one pair at a time: the same scores up to
    float rounding. Two pairs run their prompt once for both responses (a causal decoder); the
    multi-turn one is over 64 tokens, so its two rows are truncated and scored whole."""
    model = RewardModel.load(untrained_rm)
    file = read_pairs(_hh_file(tmp_path / "helpful.jsonl"))
    engine = ScoringEngine(max_length=64, progress=False)
    scores = engine.rewards(model, [Group(p.messages, [p.chosen, p.rejected])
                                    for p in file.pairs])
    assert (engine.stats.reused_groups, engine.stats.whole_rows) == (2, 2)
    alone = [model.score([p.messages] * 2, [p.chosen, p.rejected], 64) for p in file.pairs]
    assert [s for pair in scores for s in pair] == pytest.approx(
        [s for pair in alone for s in pair], abs=1e-5)
    _, hits = evaluate(model, file.pairs, 64)
    assert hits == [c > r for c, r in alone]


# warnings ---------------------------------------------------------------------------------------
def _lake_with_model(tmp_path, rm_folder: str, file: str, criterion: str) -> Lake:
    """A lake holding `file` as batch week-1 and one reward model, rm-<criterion>, whose
    data_mix.parquet lists the ids of the batch's comparisons of its criterion."""
    lake = Lake.open(str(tmp_path / "lake"))
    ingest_bytes(lake, Path(file).read_bytes(), "week-1.jsonl")
    ids = [r["id"] for r in lake.rows("comparisons") if r["criterion"] == criterion]
    folder = tmp_path / f"rm-{criterion}"
    shutil.copytree(rm_folder, folder)
    pq.write_table(pa.table({"id": pa.array(ids, pa.string())}), folder / "data_mix.parquet")
    uri = lake.put_artifact("reward_models", f"rm-{criterion}", folder, {"kind": criterion})
    lake.write("reward_models", [{
        "id": f"rm-{criterion}", "iteration": 1, "criterion": criterion, "uri": uri,
        "data_mix": json.dumps({"batches": ["week-1"], "ids_file": "data_mix.parquet"}),
        "metrics": "{}", "promoted": True, "decision": "promoted: the first"}])
    return lake


def test_warns_when_the_file_overlaps_the_training_mix(untrained_rm, tmp_path, capsys):
    """The model's mix holds the file's 4 helpfulness comparisons of its 6."""
    path = _both_ways_file(tmp_path / "both.jsonl")
    lake = _lake_with_model(tmp_path, untrained_rm, path, "helpfulness")
    assert main(["evaluate-rm", "rm-help", path, "--lake", lake.uri]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert (out["model"], out["kind"], out["train_overlap"]) == ("rm-helpfulness",
                                                                 "helpfulness", 4)
    assert out["warnings"] == ["4 of the 6 pairs are in the model's training mix: accuracy on "
                               "them is not held-out accuracy"]
    assert f"flywheel: warning: {out['warnings'][0]}" in captured.err


def test_warns_when_the_models_criterion_is_not_the_files(untrained_rm, tmp_path, capsys):
    """A safety model (its lake row says so, over the folder's 'helpfulness') on the file's
    first 4 rows, all helpfulness, none of them in its mix (it trained on the safety rows);
    then the folder's own kind, helpfulness, on a harmless HH file."""
    path = _both_ways_file(tmp_path / "both.jsonl")
    lake = _lake_with_model(tmp_path, untrained_rm, path, "safety")
    assert main(["evaluate-rm", "rm-safety", path, "--lake", lake.uri, "--limit", "4"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert (out["kind"], out["train_overlap"]) == ("safety", 0)
    assert out["warnings"] == [
        "the model is a safety reward model and every comparison in both.jsonl is about "
        "helpfulness: the accuracy measures it on a criterion it was not trained for (see "
        "by_criterion)"]
    assert "flywheel: warning: the model is a safety reward model" in captured.err
    harmless = evaluate_file(untrained_rm, _hh_file(tmp_path / "harmless.jsonl"))
    assert harmless["by_criterion"].keys() == {"safety"}
    assert harmless["warnings"][0].startswith("the model is a helpfulness reward model")
    unnamed = read_pairs(_hh_file(tmp_path / "prefs.jsonl"))
    assert unnamed.criteria == ["helpfulness"] * 3 and len(unnamed.warnings) == 1
    assert "pass --criterion" in unnamed.warnings[0]
    labelled = read_pairs(_hh_file(tmp_path / "prefs.jsonl"), criterion="safety")
    assert (labelled.criteria, labelled.warnings) == (["safety"] * 3, [])


def test_evaluate_rm_command_prints_json_and_names_the_fix(untrained_rm, tmp_path, capsys):
    assert main(["evaluate-rm", untrained_rm, _hh_file(tmp_path / "hh.jsonl"), "--criterion",
                 "helpfulness"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["evaluated"] == 3 and 0 <= out["accuracy"] <= 1 and out["warnings"] == []
    assert main(["evaluate-rm", "abc123", str(tmp_path / "hh.jsonl"), "--lake",
                 str(tmp_path / "nolake")]) == 2
    assert "no lake at" in capsys.readouterr().err
    assert main(["evaluate-rm", untrained_rm, str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate-rm", untrained_rm, str(tmp_path / "hh.jsonl"), "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err
