"""What the review page refuses, by crafted requests (FastAPI's TestClient on a real app and
lake; any exception in the app fails the test, so a refusal is never a 500): another site's
requests, bodies that are not a JSON label, wrong types, unknown ids, oversized bodies; and what
no answer carries: posted values, the server's paths. Every answer has the CSP and nosniff
headers; the token comes from the environment or a file, never the command line."""

from __future__ import annotations

import json
import logging

import pytest
from annotation_lake import build_lake
from fastapi.testclient import TestClient

from flywheel.annotation.pairs import week_pairs
from flywheel.annotation.review import TOKEN_ENV, create_app, review_token
from flywheel.annotation.review_guard import MAX_BODY
from flywheel.errors import FlywheelError

TOKEN = "t0k3n-for-refusals"
PAGE = {"X-Flywheel-Review": "1"}  # what the page's script sends
SAME = "http://testserver"  # the TestClient's own origin (its Host is "testserver")


@pytest.fixture
def lake(tmp_path):
    return build_lake(tmp_path / "lake")


@pytest.fixture
def browser(lake):
    """A client holding the page's cookie, as a browser that opened the link does."""
    c = TestClient(create_app(lake, 1, TOKEN))
    assert c.get(f"/?token={TOKEN}").status_code == 200
    return c


def _label(pair, **changes):
    safety = "both_safe" if pair["criterion"] == "safety" else None
    return {"pair_id": pair["pair_id"], "chosen": "a", "strength": "better",
            "safety_label": safety, "annotator": "ana", **changes}


def _labelled(c) -> int:
    return c.get("/api/state").json()["labelled"]


def test_the_page_s_own_request_is_served(lake, browser):
    """The baseline the refusals below differ from by one thing each."""
    pair = week_pairs(lake, 1)[0]
    res = browser.post("/api/submit", json=_label(pair), headers={**PAGE, "Origin": SAME,
                                                                   "Sec-Fetch-Site": "same-origin"})
    assert res.status_code == 200 and _labelled(browser) == 1


def test_another_site_s_requests_are_refused(lake, browser):
    body = json.dumps(_label(week_pairs(lake, 1)[0]))
    # a form or no-cors fetch from another site: text/plain, the cookie, another Origin
    res = browser.post("/api/submit", content=body, headers={
        "Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert res.status_code == 403 and "another site" in res.json()["error"]
    # even with the page's header and JSON, another Origin is refused; so is a sandboxed one
    for origin in ("http://evil.example", "http://testserver.evil.example", "null",
                   "http://testserver:8080"):
        res = browser.post("/api/submit", content=body, headers={
            **PAGE, "Content-Type": "application/json", "Origin": origin})
        assert res.status_code == 403, origin
    res = browser.post("/api/submit", content=body, headers={
        **PAGE, "Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"})
    assert res.status_code == 403
    # the cookie without the page's header (what a cross-site simple request looks like)
    res = browser.post("/api/submit", content=body, headers={"Content-Type": "application/json"})
    assert res.status_code == 403 and "X-Flywheel-Review" in res.json()["error"]
    assert browser.post("/api/close", headers={"Origin": "http://evil.example", **PAGE}
                        ).status_code == 403
    assert browser.post("/api/close").status_code == 403
    # same origin, the page's header, but not JSON
    res = browser.post("/api/submit", content=body, headers={**PAGE, "Content-Type": "text/plain",
                                                             "Origin": SAME})
    assert res.status_code == 415
    assert _labelled(browser) == 0


def test_a_bearer_client_needs_no_page_header_but_no_other_origin(lake):
    """Authorization is never sent by a browser on its own, so a bearer request is not a
    forgery; an Origin of another site still is refused."""
    c = TestClient(create_app(lake, 1, TOKEN))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    pairs = week_pairs(lake, 1)
    assert c.post("/api/submit", json=_label(pairs[0]), headers=auth).status_code == 200
    res = c.post("/api/submit", json=_label(pairs[1]), headers={**auth, "Origin": "http://x.y"})
    assert res.status_code == 403
    res = c.post("/api/submit", content=json.dumps(_label(pairs[1])), headers=auth)
    assert res.status_code == 415  # no Content-Type


@pytest.mark.parametrize("value", [["a"], {"a": 1}, 1, 1.5, True])
@pytest.mark.parametrize("field", ["pair_id", "chosen", "strength", "safety_label", "annotator"])
def test_wrong_types_are_a_422_naming_the_field(lake, browser, caplog, field, value):
    pair = week_pairs(lake, 1)[0]
    with caplog.at_level(logging.WARNING):
        res = browser.post("/api/submit", json=_label(pair, **{field: value}), headers=PAGE)
    assert res.status_code == 422
    assert res.json() == {"error": f"{field} must be text (a JSON string)"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("body", [[], "a label", 3, None, [{"pair_id": "x"}]])
def test_a_body_that_is_not_an_object_is_a_422(browser, body):
    res = browser.post("/api/submit", content=json.dumps(body),
                       headers={**PAGE, "Content-Type": "application/json"})
    assert res.status_code == 422 and "send a JSON object" in res.json()["error"]


def test_a_body_that_is_not_json_is_a_400(browser):
    for raw in (b"{", b"\xff\xfe{}", b"[" * 20000 + b"]" * 20000):  # the last: nested too deep
        res = browser.post("/api/submit", content=raw,
                           headers={**PAGE, "Content-Type": "application/json"})
        assert res.status_code == 400, raw[:10]


def test_an_unknown_pair_is_a_422_that_does_not_repeat_it(lake, browser):
    marker = "UNKNOWN-PAIR-7f3a"
    res = browser.post("/api/submit", json=_label(week_pairs(lake, 1)[0], pair_id=marker),
                       headers=PAGE)
    assert res.status_code == 422 and "not in round iteration-0001" in res.json()["error"]
    assert marker not in res.text


def test_an_oversized_body_is_a_413_before_it_is_read(lake, browser):
    pair = week_pairs(lake, 1)[0]
    big = json.dumps(_label(pair, annotator="x" * MAX_BODY)).encode()
    res = browser.post("/api/submit", content=big,
                       headers={**PAGE, "Content-Type": "application/json"})
    assert res.status_code == 413 and len(res.content) < 200

    def chunks():  # no Content-Length: chunked transfer, counted while read
        for _ in range(40):
            yield b" " * 4096
        yield json.dumps(_label(pair)).encode()

    res = browser.post("/api/submit", content=chunks(),
                       headers={**PAGE, "Content-Type": "application/json"})
    assert res.status_code == 413
    lying = browser.post("/api/submit", content=b"{}", headers={
        **PAGE, "Content-Type": "application/json", "Content-Length": "-1"})
    assert lying.status_code in (400, 413)
    assert _labelled(browser) == 0


def test_no_answer_repeats_a_posted_value(lake, browser):
    """Each field carries a marker (a wrong value where one is checked, so the label is
    refused); no answer contains it, whatever the refusal."""
    pairs = week_pairs(lake, 1)
    marker = "ECHO-MARKER-" + "z" * 40
    bodies = [
        _label(pairs[0], strength=marker, safety_label=marker, chosen=marker),
        _label(pairs[0], annotator=marker * 3),  # longer than 100 characters
        _label(pairs[0], pair_id=marker),
        {"pair_id": pairs[0]["pair_id"], marker: marker},
        [marker],
    ]
    for body in bodies:
        res = browser.post("/api/submit", json=body, headers=PAGE)
        assert res.status_code == 422 and marker not in res.text, body
    res = browser.post("/api/submit", content=json.dumps([marker] * 20000),
                       headers={**PAGE, "Content-Type": "application/json"})
    assert res.status_code == 413 and marker not in res.text and len(res.content) < 200


def test_every_answer_carries_the_security_headers(lake, browser):
    anonymous = TestClient(browser.app)
    answers = [browser.get("/"), browser.get("/api/state"), browser.get("/review.js"),
               browser.get("/review.css"), anonymous.get("/"), anonymous.get("/api/state"),
               browser.post("/api/submit", json={}, headers=PAGE),
               browser.post("/api/submit", content=b"x", headers={"Content-Type": "text/plain"}),
               anonymous.get(f"/?token={TOKEN}", follow_redirects=False)]
    for res in answers:
        csp = res.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp, res.request.url
        assert "unsafe-inline" not in csp
        assert res.headers["x-content-type-options"] == "nosniff"
    assert browser.get("/review.js").headers["content-type"].startswith("text/javascript")
    assert browser.get("/review.css").headers["content-type"].startswith("text/css")


def test_the_page_has_no_inline_script_or_style(browser):
    page = browser.get("/").text
    assert '<script src="review.js"' in page and '<link rel="stylesheet" href="review.css"' in page
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    assert " on" + "click=" not in page.lower()
    notice = TestClient(browser.app).get("/").text  # the 401 page
    assert "<style" not in notice and " style=" not in notice


def test_no_answer_names_the_lake(lake, browser):
    """The ingest summary names where the delivered file is kept (in the lake); the page's
    copy of it does not, nor does any other answer."""
    where = {lake.uri, lake.root, str(lake.root).rsplit("/", 1)[0]}
    answers = [browser.get("/"), browser.get("/api/state")]
    for p in week_pairs(lake, 1):
        answers.append(browser.post("/api/submit", json=_label(p), headers=PAGE))
    answers.append(browser.post("/api/close", headers=PAGE))
    state = answers[-2].json()
    assert state["closed"] and "3 delivered, 3 accepted" in state["summary"]
    closed = json.loads(open(lake._p("annotation", "rounds", "iteration-0001",
                                     "closed.json")).read())
    assert lake.root in closed["summary"]  # the team's record keeps it
    for res in answers:
        assert not any(w in res.text for w in where), res.request.url


def test_the_token_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token, source = review_token()
    assert source == "generated" and len(token) >= 16
    monkeypatch.setenv(TOKEN_ENV, "from-env ")
    assert review_token() == ("from-env", f"${TOKEN_ENV}")
    path = tmp_path / "token"
    path.write_text("from-file\n")
    assert review_token(str(path)) == ("from-file", f"the file {path}")
    path.write_text("\n")
    with pytest.raises(FlywheelError, match="is empty"):
        review_token(str(path))
    with pytest.raises(FlywheelError, match="no token file"):
        review_token(str(tmp_path / "missing"))


def test_a_token_on_the_command_line_is_refused_naming_the_fix(capsys, lake):
    from flywheel.flows.cli import main

    rc = main(["annotate", "serve", "--iteration", "1", "--lake", lake.uri, "--token", "abc"])
    err = capsys.readouterr().err
    assert rc == 2 and TOKEN_ENV in err and "--token-file" in err and "ps" in err
    assert "Traceback" not in err
