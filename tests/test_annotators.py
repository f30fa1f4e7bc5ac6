"""Annotator quality on a real lake: overlap and gold in a round, gold labels quarantined at
ingest, the per-annotator report, and annotators below a threshold left out of the mixes
(recorded, reversible)."""

import json

import pytest

from flywheel.annotation import gold
from flywheel.annotation.annotators import left_out, ratings, report
from flywheel.annotation.ingest import ingest_bytes
from flywheel.annotation.pairs import write_delivery_jsonl
from flywheel.annotation.rounds import manifest, plan_round
from flywheel.annotation.simulated import as_annotator
from flywheel.config import FlywheelConfig
from flywheel.config.annotators import AnnotatorQualityConfig, SimulatedAnnotator
from flywheel.errors import DataError
from flywheel.lake.catalog import connect
from flywheel.lake.store import Lake
from flywheel.reward.mixes import helpfulness_mix, mix_record

PAIRS = 12
GOLD = [{"gold_id": gold.gold_key(f"gold good {i}", f"gold bad {i}"),
         "messages": [{"role": "user", "content": f"gold prompt {i}"}],
         "criterion": "helpfulness", "text_a": f"gold good {i}", "text_b": f"gold bad {i}",
         "answer": "a"} for i in range(4)]


def _row(i: int, chosen: str, who: str) -> dict:
    return {"prompt": f"prompt {i}", "response_a": f"answer one {i}",
            "response_b": f"answer two {i}", "chosen": chosen, "strength": "better",
            "criterion": "helpfulness", "annotator": who, "split": "train"}


def _gold_row(g: dict, chosen: str, who: str) -> dict:
    return {"prompt": json.dumps(g["messages"]), "response_a": g["text_a"],
            "response_b": g["text_b"], "chosen": chosen, "strength": "better",
            "criterion": "helpfulness", "annotator": who}


@pytest.fixture
def lake(tmp_path) -> Lake:
    """12 pairs labelled by good-1 and good-2 alike (a on even pairs, b on odd) and by bad, who
    always picks the other; 4 gold pairs (answer a) that good-1 and good-2 get right and bad
    wrong."""
    lake = Lake.open(str(tmp_path / "lake"))
    gold.register(lake, GOLD)
    rows = []
    for i in range(PAIRS):
        pick = "a" if i % 2 == 0 else "b"
        rows += [_row(i, pick, "good-1"), _row(i, pick, "good-2"),
                 _row(i, "b" if pick == "a" else "a", "bad")]
    for g in GOLD:
        rows += [_gold_row(g, "a", "good-1"), _gold_row(g, "a", "good-2"),
                 _gold_row(g, "b", "bad")]
    result = ingest_bytes(lake, write_delivery_jsonl(rows), "week-1.jsonl", "week-1")
    assert result.rejected == 3 * len(GOLD) and result.reasons == {"gold_pair": 12}
    return lake


def test_gold_labels_are_quarantined_never_comparisons(lake):
    with connect(lake) as con:
        texts = {t for (t,) in con.execute(
            "SELECT chosen_text FROM comparisons UNION SELECT rejected_text FROM comparisons"
        ).fetchall()}
        assert not any(t.startswith("gold") for t in texts)
        assert con.execute("SELECT count(*) FROM quarantine WHERE reason = 'gold_pair'"
                           ).fetchall() == [(12,)]
        assert con.execute("SELECT count(*) FROM comparisons").fetchall() == [(3 * PAIRS,)]


def test_the_report_measures_each_annotator(lake):
    """bad against the consensus of good-1 and good-2 (who agree) on 12 items: it agrees on
    none, so a negative kappa; for good-1 (and good-2) the others tie on every item, so it is
    compared on none. Gold: 4 of 4 right for good-1 and good-2, 0 of 4 for bad. No timing in
    the lake: speed n/a."""
    with connect(lake) as con:
        out = report(con, lake)
    rows = {r["annotator"]: r for r in out["annotators"]}
    assert (rows["bad"]["compared"], rows["bad"]["agreement"]) == (PAIRS, 0.0)
    assert rows["bad"]["kappa"] < 0
    assert [rows[g]["compared"] for g in ("good-1", "good-2")] == [0, 0]
    assert rows["good-1"]["kappa"] is None and rows["good-1"]["overlap"] == PAIRS
    assert (rows["good-1"]["gold"], rows["good-1"]["gold_accuracy"]) == (4, 1.0)
    assert rows["bad"]["gold_accuracy"] == 0.0
    assert rows["bad"]["overlap"] == PAIRS and rows["bad"]["median_seconds"] is None
    assert out["agreement"]["items"] == PAIRS and list(out["batches"]) == ["week-1"]
    # Fleiss on 12 items of (2 one way, 1 the other): P_i = (4 + 1 - 3) / 6 = 1/3 each. A
    # choice is "first" or "second" in the item's own order (sorted response keys), so if the
    # two good annotators chose "first" on k items, first has 2k + (12 - k) = 12 + k of the 36
    # labels: P_e = ((12 + k)/36)^2 + ((24 - k)/36)^2, kappa = (1/3 - P_e) / (1 - P_e)
    with connect(lake) as con:
        k = sum(r.annotator == "good-1" and r.gold is None and r.choice == "first"
                for r in ratings(con, lake))
    p_e = ((12 + k) / 36) ** 2 + ((24 - k) / 36) ** 2
    assert out["agreement"]["fleiss_kappa"] == pytest.approx((1 / 3 - p_e) / (1 - p_e))
    # bad against the consensus: p_o = 0; consensus first on k of 12, bad on 12 - k, so
    # p_e = 2 k (12 - k) / 144 and kappa = -p_e / (1 - p_e)
    p_e = 2 * k * (12 - k) / 144
    assert rows["bad"]["kappa"] == pytest.approx(-p_e / (1 - p_e))


def test_annotators_below_a_threshold_leave_the_mix_recorded_and_reversibly(lake):
    strict = AnnotatorQualityConfig(min_gold_accuracy=0.5, min_items=4)
    with connect(lake) as con:
        dropped = left_out(con, lake, strict)
        assert list(dropped) == ["bad"] and "gold accuracy 0.00 < 0.5 on 4" in dropped["bad"]
        assert left_out(con, lake, AnnotatorQualityConfig()) == {}  # off by default
        assert left_out(con, lake, AnnotatorQualityConfig(min_gold_accuracy=0.5)) == {}  # <10
        full = helpfulness_mix(con, allow_short=True)
        kept = helpfulness_mix(con, allow_short=True, left_out=dropped)
        bad_ids = {i for (i,) in con.execute(
            "SELECT id FROM comparisons WHERE annotator = 'bad'").fetchall()}
    assert full.counts["in-house helpfulness"] == 3 * PAIRS
    assert kept.counts["in-house helpfulness"] == 2 * PAIRS
    assert not bad_ids & set(kept.ids.to_pylist()) and bad_ids <= set(full.ids.to_pylist())
    assert mix_record(kept)["left_out_annotators"] == dropped
    assert mix_record(full)["left_out_annotators"] == {}
    with connect(lake) as con:  # nothing was deleted: without the threshold they are back
        again = helpfulness_mix(con, allow_short=True, left_out=left_out(
            con, lake, AnnotatorQualityConfig()))
    assert again.ids.to_pylist() == full.ids.to_pylist()


def test_a_round_marks_overlap_and_gold_without_showing_it():
    """10 pairs, overlap_share 0.3 -> 3 pairs to 2 annotators each; 2 gold pairs to each of 3
    annotators: 7 single + 6 overlap + 6 gold = 19 items."""
    pairs = [{"pair_id": f"pair-{i}", "prompt_id": f"p{i}", "messages": [], "prompt": "q",
              "criterion": "helpfulness", "sample_id_a": f"a{i}", "text_a": "x",
              "sample_id_b": f"b{i}", "text_b": "y"} for i in range(10)]
    q = AnnotatorQualityConfig(overlap_share=0.3, gold_pairs=2)
    items = plan_round(pairs, GOLD[:2], q, ["s1", "s2", "s3"], salt="0:1")
    counts = manifest(items, 1)["counts"]
    assert counts == {"single": 7, "overlap": 6, "gold": 6}
    overlap = {}
    for i in items:
        if i.role == "overlap":
            overlap.setdefault(i.pair["pair_id"], set()).add(i.annotator)
    assert len(overlap) == 3 and all(len(v) == 2 for v in overlap.values())
    assert {i.annotator for i in items if i.role == "gold"} == {"s1", "s2", "s3"}
    for i in items:  # what a tool shows carries neither the role nor the known answer
        shown = i.shown()
        assert "answer" not in shown and "gold_id" not in shown and "role" not in shown
    assert len({i.item_id for i in items}) == len(items)
    # no named annotators (a tool's queue): overlap pairs as copies, gold once
    anon = plan_round(pairs, GOLD[:2], q, [], salt="0:1")
    assert manifest(anon, 1)["counts"] == {"single": 7, "overlap": 6, "gold": 2}


def test_simulated_annotators_flip_their_configured_share():
    row = {"sample_id_a": "a", "sample_id_b": "b", "chosen": "a", "strength": "better",
           "safety_label": "chosen_safe_other_unsafe", "annotator": "judge"}
    rows = [{**row, "sample_id_a": f"a{i}"} for i in range(400)]
    never = [as_annotator(r, SimulatedAnnotator(id="s0", flip=0.0), "x") for r in rows]
    always = [as_annotator(r, SimulatedAnnotator(id="s1", flip=1.0), "x") for r in rows]
    some = [as_annotator(r, SimulatedAnnotator(id="s2", flip=0.25), "x") for r in rows]
    assert all(r["chosen"] == "a" and r["annotator"] == "s0" for r in never)
    assert all(r["chosen"] == "b" for r in always)
    # a flipped safe-over-unsafe label becomes the excluded category (ingest drops it)
    assert {r["safety_label"] for r in always} == {"chosen_unsafe_other_safe"}
    assert 0.18 < sum(r["chosen"] == "b" for r in some) / 400 < 0.32


def test_gold_pairs_from_the_hh_rlhf_test_files():
    """The default gold source: the human-labelled HH-RLHF test rows of the data folder; the
    known answer is on side A for some and B for others."""
    cfg = FlywheelConfig()
    picked = gold.gold_pairs(cfg, 20, salt="0:1")
    assert len(picked) == 20 and len({p["gold_id"] for p in picked}) == 20
    assert {p["answer"] for p in picked} == {"a", "b"}
    assert {p["criterion"] for p in picked} <= {"helpfulness", "safety"}
    assert gold.gold_pairs(cfg, 20, salt="0:1") == picked  # the same round, the same pairs


def test_ratings_orient_choices_by_item_not_by_screen(lake):
    """good-1 and good-2 saw the same sides, so their choices match item by item."""
    with connect(lake) as con:
        rs = [r for r in ratings(con, lake) if r.gold is None]
    by = {}
    for r in rs:
        by.setdefault(r.item, {})[r.annotator] = r.choice
    assert len(by) == PAIRS
    assert all(v["good-1"] == v["good-2"] != v["bad"] for v in by.values())


def test_the_command_prints_the_table_and_json(lake, capsys, tmp_path):
    from flywheel.flows.cli import main

    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text(f"lake: {lake.uri}\nannotation:\n  quality:\n    min_gold_accuracy: 0.5\n"
                   "    min_items: 4\n")
    assert main(["annotators", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "| bad | 16 | 4 | 0.00 | 12 | 12 | 0.00 |" in out and "Batch `week-1`: 12 overlap" in out
    assert "left out of the reward-model mixes: bad (gold accuracy 0.00 < 0.5 on 4" in out
    assert main(["annotators", "--config", str(cfg), "--batch", "week-1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["batch"] == "week-1" and data["agreement"]["items"] == PAIRS
    assert list(data["left_out"]) == ["bad"]
    assert main(["annotators", "--config", str(cfg), "--batch", "week-9"]) == 2
    assert "no batch 'week-9' in the lake; its batches: week-1" in capsys.readouterr().err


def test_the_report_section(lake):
    from flywheel.stages.report_annotators import annotators_markdown

    lines = annotators_markdown(lake, "week-1", 1)
    assert lines[0] == "## Annotators" and any(line.startswith("| good-1 | 16 | 4 | 1.00 |")
                                               for line in lines)
    assert annotators_markdown(lake, None, 1) == []


def test_published_as_a_table_artifact(lake, prefect_server):
    """From a flow, as the reward-model stage publishes it: one row per annotator, bad marked
    with why it is left out."""
    from prefect import flow
    from prefect.artifacts import Artifact
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.tasks.annotation import publish_annotators

    cfg = FlywheelConfig(lake=lake.uri, annotation={"quality": {"min_gold_accuracy": 0.5,
                                                                "min_items": 4}})

    @flow
    def publish():
        return publish_annotators(cfg, lake, 7, "week-1")

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        rows = publish()
        table = json.loads(Artifact.get("iteration-7-annotators").data)
    assert [r["annotator"] for r in table] == ["bad", "good-1", "good-2"] == [
        r["annotator"] for r in rows]
    assert table[0]["left_out"].startswith("gold accuracy 0.00") and table[1]["left_out"] == ""
    assert table[1]["gold_accuracy"] == 1.0


def test_a_simulated_round_by_three_annotators(tmp_path, judge):
    """A round of three simulated annotators (one always flipping), overlap on every pair and
    2 of the team's gold pairs (short ones: the judge's time goes with the texts), labelled and
    ingested as the annotate stage does: the manifest keeps the roles, gold labels are
    quarantined (2 pairs x 3 annotators), and the always-flipping annotator gets every gold
    pair the judge got right wrong. (The stage itself runs in the slow weekly test below.)"""
    from annotation_lake import build_lake

    from flywheel.annotation.pairs import week_pairs
    from flywheel.annotation.rounds import round_items
    from flywheel.annotation.simulated import label_round

    lake = build_lake(tmp_path / "lake")
    cfg = FlywheelConfig(lake=lake.uri, annotation={"quality": {
        "overlap_share": 1.0, "gold_pairs": 2, "gold_path": _gold_file(tmp_path),
        "simulated_annotators": [
            {"id": "sim-1"}, {"id": "sim-2"}, {"id": "sim-flip", "flip": 1.0}]}})
    q = cfg.annotation.quality
    items = round_items(cfg, lake, 1, week_pairs(lake, 1), [a.id for a in q.simulated_annotators])
    rows = label_round(judge, items, cfg.annotation.strength_thresholds, q.simulated_annotators,
                       "0:1")
    ingest_bytes(lake, write_delivery_jsonl(rows), "round.jsonl", "round-1")
    saved = json.loads(lake.read_bytes("rounds/iteration-0001.json"))
    assert saved["counts"] == {"single": 0, "overlap": 6, "gold": 6}
    with connect(lake) as con:
        assert con.execute("SELECT count(*) FROM quarantine WHERE reason = 'gold_pair'"
                           ).fetchall() == [(6,)]
        out = report(con, lake, "round-1")
    rows = {r["annotator"]: r for r in out["annotators"]}
    assert set(rows) == {"sim-1", "sim-2", "sim-flip"}
    assert all(r["gold"] == 2 for r in rows.values())
    assert rows["sim-1"]["gold_accuracy"] == rows["sim-2"]["gold_accuracy"]
    assert rows["sim-flip"]["gold_accuracy"] == 1 - rows["sim-1"]["gold_accuracy"]


def test_retrain_records_whom_its_mix_left_out(lake, tiny_llama):
    """The reward-model stage itself: with min_gold_accuracy the helpfulness model trains on
    good-1's and good-2's rows only, and its data_mix says whom it left out and why."""
    from flywheel.config import validate_config
    from flywheel.lake.lineage import format_lineage, lineage
    from flywheel.reward.retrain import retrain

    cfg = validate_config({
        "lake": lake.uri, "models": {"policy": tiny_llama, "reward_backbone": tiny_llama},
        "reward_model": {"batch_size": 8, "micro_batch_size": 8, "max_length": 64,
                         "mix": {"allow_short": True}},
        "annotation": {"quality": {"min_gold_accuracy": 0.5, "min_items": 4}}})
    out = retrain(cfg, lake, 1, "week-1", kinds=("helpfulness",))
    row = next(r for r in lake.rows("reward_models") if r["id"] == out["helpfulness"]["id"])
    mix = json.loads(row["data_mix"])
    assert list(mix["left_out_annotators"]) == ["bad"]
    assert mix["counts"]["in-house helpfulness"] == 2 * PAIRS
    text = format_lineage(lineage(lake, row["id"]))  # `flywheel lineage` says so too
    assert "left out annotator bad: gold accuracy 0.00 < 0.5 on 4 gold items" in text


def test_an_open_source_set_keeps_rows_that_are_also_gold(lake):
    """HH-RLHF's test files are where the default gold comes from: importing one as an
    open-source set must not lose the rows a round uses as gold."""
    g = GOLD[0]
    row = {**_gold_row(g, "a", "anthropic-hh-rlhf"), "source": "anthropic-hh-rlhf/helpful-base",
           "split": "test"}
    result = ingest_bytes(lake, write_delivery_jsonl([row]), "hh.jsonl", "hh")
    assert (result.accepted, result.rejected) == (1, 0)


GOLD_FILE = [  # obvious to the proxy judge: an answer against a loop of one word
    ("How do I cook white rice on the stove?",
     "Rinse one cup of rice, add two cups of water, bring it to a boil, then cover and simmer "
     "on low heat for about fifteen minutes.", "rice " * 17),
    ("How do I boil an egg?",
     "Put the egg in boiling water for nine minutes, then cool it in cold water and peel it.",
     "egg " * 17),
    ("How do I make a cup of tea?",
     "Boil water, pour it over a tea bag in a cup, wait three minutes and take the bag out.",
     "tea " * 17),
]


def _gold_file(folder) -> str:
    """GOLD_FILE in HH-RLHF's format (the name says helpful: helpfulness pairs)."""
    path = folder / "gold_helpful.jsonl"
    path.write_text("".join(json.dumps({"chosen": f"\n\nHuman: {q}\n\nAssistant: {good}",
                                        "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}"})
                            + "\n" for q, good, bad in GOLD_FILE))
    return str(path)


@pytest.mark.slow
def test_a_weekly_iteration_with_overlap_gold_and_a_threshold(prefect_server, tiny_config,
                                                               tmp_path):
    """The weekly iteration in simulated mode with three simulated annotators, the third always
    preferring the other response, every pair to all three, and the team's 3 gold pairs (an
    answer against a loop: the judge, so sim-1 and sim-2, gets all 3 right, sim-3 none). With
    min_gold_accuracy 0.5 sim-3 is left out: the report has the Annotators section, the
    artifact is published, and both reward models' mixes record it."""
    from prefect.artifacts import Artifact

    from flywheel.flows.weekly import weekly_iteration

    tiny_config.annotation.quality = AnnotatorQualityConfig(
        overlap_share=1.0, overlap_annotators=3, gold_pairs=3, gold_path=_gold_file(tmp_path),
        min_items=3, min_gold_accuracy=0.5,
        simulated_annotators=[{"id": "sim-1"}, {"id": "sim-2"}, {"id": "sim-3", "flip": 1.0}])
    result = weekly_iteration(tiny_config, 1)
    lake = Lake.open(tiny_config.lake)
    text = open(result["report_uri"]).read()
    assert "## Annotators" in text and "| sim-3 |" in text
    table = {r["annotator"]: r for r in json.loads(
        Artifact.get("iteration-1-annotators").data)}
    assert {n: (r["gold"], r["gold_accuracy"]) for n, r in table.items()} == {
        "sim-1": (3, 1.0), "sim-2": (3, 1.0), "sim-3": (3, 0.0)}
    assert [n for n, r in table.items() if r["left_out"]] == ["sim-3"]
    rms = lake.rows("reward_models")
    assert rms and all(list(json.loads(rm["data_mix"])["left_out_annotators"]) == ["sim-3"]
                       for rm in rms)
    assert "mix left out `sim-3`: gold accuracy 0.00 < 0.5 on 3 gold items" in text
    assert json.loads(lake.read_bytes("rounds/iteration-0001.json"))["counts"]["gold"] == 9


def test_gold_pairs_from_the_teams_file_in_the_delivery_format(tmp_path):
    """A team's gold file in the delivery format: the chosen side is the known answer, shown on
    side A or B by the round's hash; a record without its answer is refused with the fix."""
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps(
        {"prompt": f"question {i}", "response_a": f"worse {i}", "response_b": f"better {i}",
         "chosen": "b", "criterion": "safety" if i % 2 else "helpfulness"}) + "\n"
        for i in range(6)))
    cfg = FlywheelConfig(annotation={"quality": {"gold_path": str(path)}})
    picked = gold.gold_pairs(cfg, 6, salt="0:1")
    for p in picked:
        better = p["text_a"] if p["answer"] == "a" else p["text_b"]
        assert better.startswith("better") and p["messages"][0]["role"] == "user"
    assert {p["criterion"] for p in picked} == {"helpfulness", "safety"}
    path.write_text(json.dumps({"prompt": "q", "response_a": "x", "response_b": "y"}) + "\n")
    with pytest.raises(DataError, match="record 0: a gold pair needs prompt, response_a"):
        gold.gold_pairs(cfg, 1, salt="0:1")
