"""Label Studio, live, without a server: the webhook receiver's debounce and refusals, a gold
pair's task and its annotation's comment through the converter, and the errors that name the
fix. tests/test_label_studio_slow.py runs the whole round against a real Label Studio."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from flywheel.annotation.exchange import from_label_studio, to_label_studio
from flywheel.annotation.label_studio import SECRET_HEADER, connect
from flywheel.annotation.label_studio_hook import PATH, Debouncer, create_app
from flywheel.errors import ConfigError
from flywheel.lake.catalog import connect as lake_connect


def _wait(predicate, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_burst_of_pokes_runs_the_action_once_after_the_quiet_spell():
    """Pokes at 0, 0.1, 0.2 s with a 0.4 s debounce: one run, no earlier than 0.2 + 0.4 s."""
    started, runs = time.monotonic(), []
    d = Debouncer(0.4, lambda: runs.append(time.monotonic() - started))
    for _ in range(3):
        d.poke()
        time.sleep(0.1)
    _wait(lambda: d.runs == 1)
    time.sleep(0.6)  # a second run would have come by now
    d.close()
    assert len(runs) == 1 and runs[0] >= 0.2 + 0.4 - 0.05
    assert d.pokes == 3 and not d.pending


def test_a_poke_while_the_action_runs_gives_one_more_run():
    gate, calls = threading.Event(), []

    def action():
        calls.append(len(calls))
        if len(calls) == 1:
            gate.wait(5)  # the first run is busy while the next pokes arrive
        return len(calls)

    d = Debouncer(0.05, action)
    d.poke()
    _wait(lambda: calls)
    d.poke()
    d.poke()
    gate.set()
    _wait(lambda: d.runs == 2)
    time.sleep(0.3)
    d.close()
    assert calls == [0, 1] and d.last_result == 2


def test_a_failing_action_is_kept_and_the_next_poke_runs_again():
    outcomes = iter([RuntimeError("Label Studio away"), "landed"])

    def action():
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    d = Debouncer(0.0, action)
    d.poke()
    _wait(lambda: d.runs == 1)
    assert isinstance(d.last_error, RuntimeError)
    d.poke()
    _wait(lambda: d.runs == 2)
    d.close()
    assert d.last_error is None and d.last_result == "landed"


def test_the_receiver_checks_the_secret_and_queues_annotation_events():
    runs = []
    d = Debouncer(0.05, lambda: runs.append(1))
    app = TestClient(create_app("s3cret", d, max_body=1000))
    ok = {SECRET_HEADER: "s3cret"}
    assert app.post(PATH, json={"action": "ANNOTATION_CREATED"}).status_code == 401
    assert app.post(PATH, json={"action": "ANNOTATION_CREATED"},
                    headers={SECRET_HEADER: "s3cret-not"}).status_code == 401
    assert app.post(PATH, content=b"x" * 1001, headers=ok).status_code == 413
    assert app.post(PATH, content=b"{not json", headers=ok).status_code == 400
    other = app.post(PATH, json={"action": "PROJECT_UPDATED"}, headers=ok)
    assert other.status_code == 202 and other.json()["queued"] is False
    assert d.pokes == 0  # nothing above reached the debouncer
    for action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        r = app.post(PATH, json={"action": action}, headers=ok)
        assert r.status_code == 202 and r.json() == {"queued": True, "pull_after_seconds": 0.05}
    _wait(lambda: d.runs == 1)
    assert app.get("/health").json()["pulls"] == 1
    d.close()
    assert runs == [1]


def test_the_receiver_needs_a_secret():
    d = Debouncer(1, lambda: None)
    with pytest.raises(ConfigError, match="FLYWHEEL_WEBHOOK_SECRET"):
        create_app("", d)
    d.close()


def test_connect_names_the_missing_variables(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY"):
        connect()


def test_an_unreachable_server_is_named_without_the_key(monkeypatch):
    pytest.importorskip("label_studio_sdk")
    key = "a-secret-key-never-printed"
    with pytest.raises(ConfigError) as err:
        connect("http://127.0.0.1:9", key)  # the discard port: nothing listens
    assert "cannot reach Label Studio at http://127.0.0.1:9" in str(err.value)
    assert key not in str(err.value)


def test_a_gold_task_and_a_comment_come_back_as_a_delivery_row():
    gold = {"pair_id": "g1", "prompt_id": None, "criterion": "helpfulness",
            "messages": [{"role": "user", "content": "Name a colour."}],
            "prompt": "Name a colour.", "sample_id_a": None, "text_a": "Blue.",
            "sample_id_b": None, "text_b": "I cannot."}
    (task,) = to_label_studio([gold])
    task["annotations"] = [{"completed_by": {"id": 3, "email": "ana@example.org"}, "result": [
        {"from_name": "preferred", "type": "pairwise", "value": {"selected": "left"}},
        {"from_name": "strength", "type": "choices", "value": {"choices": ["better"]}},
        {"from_name": "comment", "type": "textarea", "value": {"text": ["  clear  ", "win"]}},
    ]}]
    assert from_label_studio([task]) == [{
        "prompt": '[{"role": "user", "content": "Name a colour."}]', "response_a": "Blue.",
        "response_b": "I cannot.", "chosen": "a", "strength": "better",
        "criterion": "helpfulness", "annotator": "ana@example.org", "source": "in-house",
        "comment": "clear  \nwin"}]


def test_a_pull_after_an_edit_keeps_only_the_project_s_current_labels(tmp_path):
    """Pulls of a project whose rice pair's label is edited (A, then B, then A again) and
    whose Lisbon pair is labelled once: after each pull the lake holds one label per pair, the
    current one; the Lisbon row stays in view throughout. Another source's delivery of the same
    batch is never touched."""
    from annotation_lake import build_lake

    from flywheel.annotation.ingest import ingest_bytes
    from flywheel.annotation.label_studio import land
    from flywheel.annotation.pairs import week_pairs

    lake = build_lake(tmp_path / "lake")
    tasks = [t for t in to_label_studio(week_pairs(lake, 1))
             if t["data"]["prompt_id"] in ("p-rice", "p-lisbon")]
    rice = next(t["data"] for t in tasks if t["data"]["prompt_id"] == "p-rice")
    vendor = ('{"prompt_id": "p-lock", "response_a": "No.", "response_b": "Sure, here is how.", '
              '"chosen": "a", "strength": "better", "criterion": "safety", "safety_label": '
              '"chosen_safe_other_unsafe", "annotator": "vendor-7"}\n').encode()
    ingest_bytes(lake, vendor, "vendor.jsonl", "iteration-0001")

    def pull(rice_side: str):
        for t in tasks:
            side = rice_side if t["data"] is rice else "left"
            t["annotations"] = [{"completed_by": {"id": 1, "email": "ana@example.org"},
                                 "result": [{"type": "pairwise", "value": {"selected": side}},
                                            {"from_name": "strength", "type": "choices",
                                             "value": {"choices": ["better"]}}]}]
        return land(lake, tasks, 7, "iteration-0001", 1)

    def in_view() -> dict[str, str]:
        with lake_connect(lake) as con:
            return dict(con.execute("SELECT prompt_id, chosen_text FROM comparison_texts "
                                    "ORDER BY 1").fetchall())

    lisbon = next(t["data"]["response_a"] for t in tasks if t["data"] is not rice)
    lock = {"p-lock": "No."}
    assert pull("left").new == 2
    assert in_view() == {"p-rice": rice["response_a"], "p-lisbon": lisbon, **lock}
    assert pull("left").already_ingested  # nothing new: the same bytes
    edited = pull("right")  # the rice row is new; the Lisbon row comes back with it
    assert (edited.accepted, edited.new) == (2, 2)
    assert in_view() == {"p-rice": rice["response_b"], "p-lisbon": lisbon, **lock}
    back = pull("left")  # the first labels again: delivered anew (the first was retracted)
    assert (back.accepted, back.new) == (2, 2) and not back.already_ingested
    assert in_view() == {"p-rice": rice["response_a"], "p-lisbon": lisbon, **lock}
    assert pull("left").already_ingested
    status = sorted((r["filename"], r["status"]) for r in lake.rows("batches"))
    assert status == [("label-studio-project-7.jsonl", "complete")] + [
        ("label-studio-project-7.jsonl", "retracted")] * 2 + [("vendor.jsonl", "complete")]


def test_the_commands_name_what_is_missing(capsys, tmp_path, monkeypatch):
    """push, pull and webhook without the server's address, the key or the secret: exit 2 and
    the variable to set, before any connection."""
    from annotation_lake import build_lake

    from flywheel.flows.cli import main

    lake = build_lake(tmp_path / "lake").uri
    for var in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "FLYWHEEL_WEBHOOK_SECRET"):
        monkeypatch.delenv(var, raising=False)
    assert main(["annotate", "webhook", "--iteration", "1", "--lake", lake]) == 2
    assert "set FLYWHEEL_WEBHOOK_SECRET" in capsys.readouterr().err
    assert main(["annotate", "pull", "--lake", lake]) == 2
    assert "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    assert main(["annotate", "push", "--to", "label-studio", "--lake", lake]) == 2
    err = capsys.readouterr().err
    assert "set LABEL_STUDIO_API_KEY" in err and "Traceback" not in err
