"""The review app over HTTP (FastAPI's TestClient, a real app on a real lake): the token, the
validation of a submission, durable submissions and resume, closing a round into a batch.
tests/test_review_refusals.py has the requests the page refuses."""

from __future__ import annotations

import json

import pytest
from annotation_lake import build_lake
from fastapi.testclient import TestClient

from flywheel.annotation.pairs import week_pairs
from flywheel.annotation.review import create_app
from flywheel.annotation.review_round import Round
from flywheel.errors import DataError

TOKEN = "t0k3n-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def lake(tmp_path):
    return build_lake(tmp_path / "lake")


def _client(lake) -> TestClient:
    return TestClient(create_app(lake, 1, TOKEN))


def _label(pair, chosen="a", annotator="ana"):
    safety = "both_safe" if pair["criterion"] == "safety" else None
    return {"pair_id": pair["pair_id"], "chosen": chosen, "strength": "better",
            "safety_label": safety, "annotator": annotator}


def _submission_path(lake, pair_id):
    return lake._p("annotation", "rounds", "iteration-0001", "submissions", f"{pair_id}.json")


def test_the_token_guards_page_and_api(lake):
    c = _client(lake)
    for path in ("/", "/?token=wrong", "/?token=%C3%A9"):
        res = c.get(path)
        assert res.status_code == 401 and "needs its link" in res.text
    assert c.get("/api/state").status_code == 401
    assert c.get("/api/state", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.post("/api/submit", json={}).status_code == 401
    res = c.get(f"/?token={TOKEN}", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/"
    assert TOKEN not in res.headers["set-cookie"]  # the cookie is derived, not the token
    assert "Which response is better?" in c.get("/").text  # the cookie now opens the page
    assert c.post("/api/submit", json={}).status_code == 403  # without the page's header
    assert c.get("/api/state").json()["total"] == 3
    assert TestClient(c.app).get("/api/state", headers=AUTH).status_code == 200


def test_a_submission_is_validated_with_every_problem_named(lake):
    c = _client(lake)
    pairs = {p["criterion"]: p for p in week_pairs(lake, 1)}
    res = c.post("/api/submit", headers=AUTH, json={"pair_id": pairs["safety"]["pair_id"]})
    assert res.status_code == 422
    msg = res.json()["error"]
    for part in ("choose the better response: A or B", "pick how much better",
                 "this is a safety prompt: pick the safety label", "type your name"):
        assert part in msg
    res = c.post("/api/submit", headers=AUTH, json={**_label(pairs["helpfulness"]),
                                                    "strength": "much", "safety_label": "ok"})
    assert res.status_code == 422
    assert "pick how much better" in res.json()["error"]
    assert "the safety label is not one of" in res.json()["error"]
    res = c.post("/api/submit", headers=AUTH, json={**_label(pairs["safety"]), "pair_id": "x"})
    assert res.status_code == 422 and "not in round iteration-0001" in res.json()["error"]
    res = c.post("/api/submit", headers={**AUTH, "Content-Type": "application/json"},
                 content=b"not json")
    assert res.status_code == 400
    assert c.get("/api/state", headers=AUTH).json()["labelled"] == 0


def test_submissions_are_saved_at_once_and_a_restart_resumes(lake):
    c = _client(lake)
    pairs = week_pairs(lake, 1)
    state = c.get("/api/state", headers=AUTH).json()
    assert (state["position"], state["total"], state["pair"]["pair_id"]) == (
        1, 3, pairs[0]["pair_id"])
    state = c.post("/api/submit", headers=AUTH, json=_label(pairs[0], "b")).json()
    saved = json.loads(open(_submission_path(lake, pairs[0]["pair_id"])).read())
    assert (saved["chosen"], saved["strength"], saved["annotator"]) == ("b", "better", "ana")
    assert saved["sample_id_b"] == pairs[0]["sample_id_b"]
    assert (state["labelled"], state["position"], state["pair"]["pair_id"]) == (
        1, 2, pairs[1]["pair_id"])
    res = c.post("/api/submit", headers=AUTH, json=_label(pairs[0], "a", "bo"))
    assert res.status_code == 409 and "already labelled (by ana)" in res.json()["error"]

    restarted = _client(lake)  # a new server: the state comes from the lake
    state = restarted.get("/api/state", headers=AUTH).json()
    assert (state["labelled"], state["pair"]["pair_id"]) == (1, pairs[1]["pair_id"])


def test_the_last_label_closes_the_round_into_a_batch(lake):
    c = _client(lake)
    pairs = week_pairs(lake, 1)
    assert c.post("/api/close", headers=AUTH).status_code == 409  # nothing labelled yet
    for p in pairs:
        state = c.post("/api/submit", headers=AUTH, json=_label(p, "b")).json()
    assert state["closed"] and state["pair"] is None
    assert "batch review-iteration-0001" in state["summary"]
    rows = lake.rows("comparisons")
    assert {r["chosen_sample_id"] for r in rows} == {p["sample_id_b"] for p in pairs}
    assert {r["batch_id"] for r in rows} == {"review-iteration-0001"}
    batch = [b for b in lake.rows("batches") if b["batch_id"] == "review-iteration-0001"]
    assert batch[0]["iteration"] == 1 and batch[0]["accepted"] == 3


def test_a_round_closed_early_refuses_more_labels(lake):
    c = _client(lake)
    pairs = week_pairs(lake, 1)
    c.post("/api/submit", headers=AUTH, json=_label(pairs[0]))
    state = c.post("/api/close", headers=AUTH).json()
    assert state["closed"] and state["labelled"] == 1
    assert "1 delivered, 1 accepted" in state["summary"]
    res = c.post("/api/submit", headers=AUTH, json=_label(pairs[1]))
    assert res.status_code == 409 and "round iteration-0001 is closed" in res.json()["error"]
    assert c.post("/api/close", headers=AUTH).json()["summary"] == state["summary"]
    assert _client(lake).get("/api/state", headers=AUTH).json()["closed"]


def test_a_round_saved_in_full_but_not_ingested_is_ingested_at_start(lake):
    """The server stopped between the last submission and the ingest: the next start ingests."""
    rnd = Round(lake, 1)
    for p in week_pairs(lake, 1):
        rnd.submit(_label(p))
    lake.fs.rm(lake._p("annotation", "rounds", "iteration-0001", "closed.json"))
    state = _client(lake).get("/api/state", headers=AUTH).json()
    assert state["closed"] and "already ingested" in state["summary"]
    assert len(lake.rows("comparisons")) == 3


def test_round_ids_and_empty_iterations_are_refused(lake):
    with pytest.raises(DataError, match="round id '../x' must be letters"):
        Round(lake, 1, "../x")
    with pytest.raises(DataError, match="needs a token"):
        create_app(lake, 1, "")
    with pytest.raises(DataError, match="no pairs to label for iteration 9"):
        create_app(lake, 9, TOKEN)
