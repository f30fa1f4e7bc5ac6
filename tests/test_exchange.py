"""The week's pairs, and round trips through Label Studio and Argilla: tasks/records out, a
completed export written by hand in each tool's export shape, rows back in through ingest."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from annotation_lake import ANSWERS, build_lake, sample_id

from flywheel.annotation.exchange import (
    argilla_settings,
    from_argilla,
    from_label_studio,
    import_export,
    label_studio_config,
    to_argilla,
    to_label_studio,
    week_pairs,
    write_delivery_jsonl,
    write_export,
)
from flywheel.annotation.pairs import a_first, pair_id_of
from flywheel.errors import DataError
from flywheel.lake.schemas import SAFETY_LABELS, STRENGTHS


@pytest.fixture
def lake(tmp_path):
    return build_lake(tmp_path / "lake")


def _by_prompt(items, key=lambda x: x["prompt_id"]):
    return {key(x): x for x in items}


def _expected_row(pairs):
    """A builder of the delivery row a tool's export of a pair should give (None fields left
    out, as the converters leave them)."""
    def row(pid, chosen, strength, annotator, safety=None):
        p = pairs[pid]
        r = {"prompt_id": pid, "sample_id_a": p["sample_id_a"],
             "sample_id_b": p["sample_id_b"], "chosen": chosen, "strength": strength,
             "criterion": p["criterion"], "safety_label": safety, "annotator": annotator,
             "source": "in-house"}
        return {k: v for k, v in r.items() if v is not None}
    return row


def _ids(pair, chosen):
    """(chosen sample id, rejected sample id) of a pair when `chosen` ("a" | "b") won."""
    a, b = pair["sample_id_a"], pair["sample_id_b"]
    return (a, b) if chosen == "a" else (b, a)


# the week's pairs --------------------------------------------------------------------------
def test_week_pairs_are_the_two_annotation_samples_per_prompt(lake):
    pairs = week_pairs(lake, 1)
    # p-three has three samples; the week-2 and rejection samples are not this week's pairs
    assert sorted(p["prompt_id"] for p in pairs) == ["p-lisbon", "p-lock", "p-rice"]
    assert [p["pair_id"] for p in pairs] == sorted(p["pair_id"] for p in pairs)
    for p in pairs:
        latest, previous = sample_id(p["prompt_id"], "latest"), sample_id(p["prompt_id"],
                                                                          "previous")
        assert p["pair_id"] == pair_id_of(p["prompt_id"], [latest, previous])
        first, second = sorted([latest, previous])
        assert (p["sample_id_a"], p["sample_id_b"]) == (
            (first, second) if a_first(p["pair_id"]) else (second, first))
        texts = {sample_id(p["prompt_id"], k): t
                 for k, t in zip(("latest", "previous"), ANSWERS[p["prompt_id"]])}
        assert (p["text_a"], p["text_b"]) == (texts[p["sample_id_a"]], texts[p["sample_id_b"]])
    assert _by_prompt(pairs)["p-lock"]["criterion"] == "safety"
    assert _by_prompt(pairs)["p-rice"]["prompt"] == "How do I cook rice?"
    assert week_pairs(lake, 1) == pairs  # stable
    assert week_pairs(lake, 3) == []


def test_presentation_order_is_balanced_over_pairs():
    """One hash bit per pair: over 2000 pair ids, A is the first sample about half the time
    (binomial sd = sqrt(2000 / 4) = 22.4, so 1000 +- 100 is a 4.5 sd band)."""
    firsts = sum(a_first(pair_id_of(f"p{i}", [f"x{i}", f"y{i}"])) for i in range(2000))
    assert 900 <= firsts <= 1100


def test_delivery_jsonl_is_one_sorted_object_per_line():
    data = write_delivery_jsonl([{"chosen": "a", "annotator": "ann"}, {"prompt_id": "p"}])
    assert data == b'{"annotator": "ann", "chosen": "a"}\n{"prompt_id": "p"}\n'


# Label Studio ------------------------------------------------------------------------------
def test_label_studio_config_matches_the_tasks(lake):
    root = ET.fromstring(label_studio_config())
    pairwise = root.find(".//Pairwise")
    assert pairwise.get("toName") == "response_a,response_b"  # left = A, right = B
    texts = {t.get("name"): t.get("value") for t in root.iter("Text")}
    assert texts == {"prompt": "$prompt", "response_a": "$response_a",
                     "response_b": "$response_b"}
    choices = {c.get("name"): [x.get("alias") for x in c.iter("Choice")]
               for c in root.iter("Choices")}
    assert choices == {"strength": list(STRENGTHS),
                       "safety_label": [*SAFETY_LABELS, "chosen_unsafe_other_safe"]}
    assert root.find(".//TextArea") is not None
    task = to_label_studio(week_pairs(lake, 1))[0]
    assert {v[1:] for v in texts.values()} <= set(task["data"])
    assert {"pair_id", "prompt_id", "sample_id_a", "sample_id_b"} <= set(task["data"])


def _ls_result(selected=None, strength=None, safety=None):
    out = []
    if selected:
        out.append({"id": "pw1", "from_name": "preferred", "to_name": "preferred",
                    "type": "pairwise", "origin": "manual", "value": {"selected": selected}})
    if strength:
        out.append({"id": "st1", "from_name": "strength", "to_name": "prompt",
                    "type": "choices", "origin": "manual", "value": {"choices": [strength]}})
    if safety:
        out.append({"id": "sf1", "from_name": "safety_label", "to_name": "prompt",
                    "type": "choices", "origin": "manual", "value": {"choices": [safety]}})
    out.append({"id": "c1", "from_name": "comment", "to_name": "prompt", "type": "textarea",
                "value": {"text": ["looked fine"]}})
    return out


def _ls_annotation(n, completed_by, result, cancelled=False):
    return {"id": n, "completed_by": completed_by, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": "2026-11-20T10:00:00.000000Z",
            "updated_at": "2026-11-20T10:00:00.000000Z", "lead_time": 12.5, "task": n // 10,
            "result_count": 0}


def _ls_export(lake):
    """A Label Studio JSON export of the three tasks, as the tool writes it."""
    tasks = _by_prompt(to_label_studio(week_pairs(lake, 1)), lambda t: t["data"]["prompt_id"])
    anns = {
        "p-rice": [_ls_annotation(11, 10, _ls_result("right", "better")),
                   _ls_annotation(12, 11, _ls_result("left"), cancelled=True)],
        "p-lisbon": [
            _ls_annotation(21, {"id": 12, "email": "ana@example.org", "first_name": "Ana",
                                "last_name": ""}, _ls_result("left", "slightly_better")),
            _ls_annotation(22, 13, _ls_result("right", None)),  # no strength: quarantined
        ],
        "p-lock": [_ls_annotation(31, 10, _ls_result("left", "significantly_better",
                                                     "chosen_safe_other_unsafe"))],
    }
    return [{"id": n, "project": 7, "created_at": "2026-11-20T09:00:00.000000Z",
             "data": tasks[pid]["data"], "annotations": anns[pid], "predictions": [],
             "drafts": [], "meta": {}, "inner_id": n}
            for n, pid in enumerate(["p-rice", "p-lisbon", "p-lock"], 1)]


def test_from_label_studio_rows(lake):
    row = _expected_row(_by_prompt(week_pairs(lake, 1)))
    rows = from_label_studio(_ls_export(lake))

    assert rows == [  # the cancelled annotation (id 12) is skipped; comment and lead_time carried
        r | {"comment": "looked fine", "seconds": 12.5} for r in [
            row("p-rice", "b", "better", "label-studio:10"),
            row("p-lisbon", "a", "slightly_better", "ana@example.org"),
            row("p-lisbon", "b", None, "label-studio:13"),
            row("p-lock", "a", "significantly_better", "label-studio:10",
                "chosen_safe_other_unsafe")]
    ]


def test_label_studio_round_trip_through_ingest(lake):
    pairs = _by_prompt(week_pairs(lake, 1))
    data = json.dumps(_ls_export(lake)).encode()
    result = import_export(lake, data, "label-studio", "project-7-at-2026-11-20.json",
                           batch_id="week-1-ls", iteration=1)
    assert (result.delivered, result.accepted, result.rejected) == (4, 3, 1)
    assert result.reasons == {"missing_strength": 1}
    got = {(r["prompt_id"], r["chosen_sample_id"], r["rejected_sample_id"], r["strength"],
            r["safety_label"], r["annotator"], r["batch_id"]) for r in lake.rows("comparisons")}
    assert got == {
        ("p-rice", *_ids(pairs["p-rice"], "b"), "better", None, "label-studio:10", "week-1-ls"),
        ("p-lisbon", *_ids(pairs["p-lisbon"], "a"), "slightly_better", None,
         "ana@example.org", "week-1-ls"),
        ("p-lock", *_ids(pairs["p-lock"], "a"), "significantly_better",
         "chosen_safe_other_unsafe", "label-studio:10", "week-1-ls"),
    }
    again = import_export(lake, data, "label-studio", "project-7-at-2026-11-20.json",
                          batch_id="week-1-ls", iteration=1)
    assert again.already_ingested and len(lake.rows("comparisons")) == 3
    assert [r["comment"] for r in lake.rows("comparisons")] == ["looked fine"] * 3
    assert [r["seconds"] for r in lake.rows("comparisons")] == [12.5] * 3


def test_label_studio_exports_with_broken_structure_are_refused(lake):
    with pytest.raises(DataError, match="must be a JSON list, got dict"):
        from_label_studio({"tasks": []})
    json_min = [{"id": 1, "prompt": "q", "sample_id_a": "x", "sample_id_b": "y",
                 "strength": "better"}]
    with pytest.raises(DataError, match="task 0: no 'data' object"):
        from_label_studio(json_min)
    export = _ls_export(lake)
    del export[0]["annotations"]
    export[1]["data"].pop("sample_id_b")
    with pytest.raises(DataError, match="2 problem") as err:
        from_label_studio(export)
    assert "task 1: no 'annotations' list (export the project as JSON" in str(err.value)
    assert "task 2: data lacks sample_id_b" in str(err.value)
    with pytest.raises(DataError, match="not JSON"):
        import_export(lake, b"{oops", "label-studio", "x.json")
    with pytest.raises(DataError, match="unknown annotation tool format 'prodigy'"):
        import_export(lake, b"[]", "prodigy", "x.json")


# Argilla -----------------------------------------------------------------------------------
def test_argilla_settings_and_records(lake):
    s = argilla_settings()
    assert [f["name"] for f in s["fields"]] == ["prompt", "response_a", "response_b"]
    questions = {q["name"]: q for q in s["questions"]}
    assert list(questions) == ["preferred", "strength", "safety_label"]
    assert all(q["settings"]["type"] == "label_selection" for q in questions.values())
    values = {n: [o["value"] for o in q["settings"]["options"]] for n, q in questions.items()}
    assert values == {"preferred": ["a", "b"], "strength": list(STRENGTHS),
                      "safety_label": [*SAFETY_LABELS, "chosen_unsafe_other_safe"]}
    assert [q["required"] for q in questions.values()] == [True, True, False]
    assert s["allow_extra_metadata"] is True
    pairs = week_pairs(lake, 1)
    rec = to_argilla(pairs)[0]
    assert rec["id"] == pairs[0]["pair_id"]
    assert rec["fields"] == {"prompt": pairs[0]["prompt"], "response_a": pairs[0]["text_a"],
                             "response_b": pairs[0]["text_b"]}
    assert rec["metadata"]["sample_id_a"] == pairs[0]["sample_id_a"]


U1, U2, U3 = ("0b8d3a4e-0000-4000-8000-000000000001", "0b8d3a4e-0000-4000-8000-000000000002",
              "0b8d3a4e-0000-4000-8000-000000000003")


def _ag_answers(user, status, preferred, strength, safety=None):
    out = {"preferred": preferred, "strength": strength, "safety_label": safety}
    return {q: {"value": v, "user_id": user, "status": status}
            for q, v in out.items() if v is not None}


def _ag_record(rec, *answers, status="completed"):
    """A record as `dataset.records.to_json` writes it (Record.to_dict)."""
    responses: dict[str, list] = {}
    for a in answers:
        for q, r in a.items():
            responses.setdefault(q, []).append(r)
    return {**rec, "suggestions": {}, "responses": responses, "vectors": {}, "status": status,
            "_server_id": "5f0c1a2b-0000-4000-8000-00000000000" + rec["id"][-1]}


def _ag_export(lake):
    recs = _by_prompt(to_argilla(week_pairs(lake, 1)), lambda r: r["metadata"]["prompt_id"])
    old_style = {"preferred": {"value": "b", "user_id": U3},  # an SDK without response status
                 "strength": {"value": "negligibly_better", "user_id": U3}}
    return [
        _ag_record(recs["p-rice"], _ag_answers(U1, "submitted", "a", "significantly_better"),
                   _ag_answers(U2, "draft", "b", "better")),
        _ag_record(recs["p-lisbon"], old_style),
        _ag_record(recs["p-lock"], _ag_answers(U1, "submitted", "b", "better", "both_safe"),
                   _ag_answers(U2, "submitted", "a", "better", "chosen_unsafe_other_safe"),
                   _ag_answers(U3, "discarded", "a", "better", "both_safe")),
        _ag_record(recs["p-rice"], old_style, status="pending"),  # not completed: skipped
    ]


def test_from_argilla_rows(lake):
    row = _expected_row(_by_prompt(week_pairs(lake, 1)))

    assert from_argilla(_ag_export(lake)) == [
        row("p-rice", "a", "significantly_better", U1),
        row("p-lisbon", "b", "negligibly_better", U3),
        row("p-lock", "b", "better", U1, "both_safe"),
        row("p-lock", "a", "better", U2, "chosen_unsafe_other_safe"),
    ]


def test_argilla_round_trip_through_ingest(lake):
    pairs = _by_prompt(week_pairs(lake, 1))
    data = json.dumps(_ag_export(lake)).encode()
    result = import_export(lake, data, "argilla", "records.json", iteration=1)
    assert result.batch_id == "argilla-records"
    assert (result.delivered, result.accepted, result.rejected) == (4, 3, 1)
    assert result.reasons == {"excluded_chosen_unsafe_other_safe": 1}
    got = {(r["prompt_id"], r["chosen_sample_id"], r["strength"], r["annotator"])
           for r in lake.rows("comparisons")}
    assert got == {
        ("p-rice", pairs["p-rice"]["sample_id_a"], "significantly_better", U1),
        ("p-lisbon", pairs["p-lisbon"]["sample_id_b"], "negligibly_better", U3),
        ("p-lock", pairs["p-lock"]["sample_id_b"], "better", U1),
    }


def test_argilla_exports_with_broken_structure_are_refused(lake):
    with pytest.raises(DataError, match="Argilla export must be a JSON list"):
        from_argilla({"records": []})
    rec = to_argilla(week_pairs(lake, 1))[0]
    rec["metadata"] = {"pair_id": rec["id"]}
    with pytest.raises(DataError, match="metadata lacks sample_id_a / sample_id_b"):
        from_argilla([rec])
    pending = [_ag_record(r, status="pending") for r in to_argilla(week_pairs(lake, 1))]
    with pytest.raises(DataError, match="holds no completed labels"):
        import_export(lake, json.dumps(pending).encode(), "argilla", "records.json")


def test_write_export_files(lake, tmp_path):
    ls = write_export(lake, 1, "label-studio", tmp_path / "out" / "tasks.json")
    assert [p.name for p in ls] == ["tasks.json", "tasks.xml"]
    assert len(json.loads(ls[0].read_text())) == 3
    assert ls[1].read_text() == label_studio_config()
    ag = write_export(lake, 1, "argilla", tmp_path / "out" / "records.json")
    assert [p.name for p in ag] == ["records.json", "records.settings.json"]
    assert json.loads(ag[1].read_text()) == argilla_settings()
    with pytest.raises(DataError, match="no pairs to label for iteration 5"):
        write_export(lake, 5, "argilla", tmp_path / "x.json")


def test_cli_export_then_import_a_label_studio_round(lake, tmp_path, capsys, monkeypatch):
    """`flywheel annotate export` writes the tasks and config; `flywheel annotate import` of the
    tool's export lands a batch: 3 labelled answers pass, the one without a strength is
    quarantined (the cancelled annotation is not a label)."""
    from flywheel.flows.cli import main

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    out = tmp_path / "ls" / "tasks.json"
    assert main(["annotate", "export", "--format", "label-studio", "--iteration", "1",
                 "--out", str(out), "--lake", lake.uri]) == 0
    assert len(json.loads(out.read_text())) == 3 and out.with_suffix(".xml").exists()
    export = tmp_path / "project-7-export.json"
    export.write_text(json.dumps(_ls_export(lake)))
    assert main(["annotate", "import", str(export), "--format", "label-studio", "--lake",
                 lake.uri, "--batch-id", "week-47-ls"]) == 0
    printed = capsys.readouterr().out
    assert "batch week-47-ls" in printed and "4 delivered, 3 accepted" in printed
    assert "missing_strength" in printed
