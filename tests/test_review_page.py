"""The review page end to end in headless Chromium (Playwright driving Debian's `chromium`):
`flywheel annotate serve` with its token from the environment, a page of another local service
failing to post a label with the review cookie, labelling every pair by clicking
under the page's Content-Security-Policy (no violation reported), each label in the lake right
after its click, a server killed midway (SIGKILL) and restarted resuming at the next unlabelled
pair, the completed round landing as a batch whose comparisons hold the responses the test
clicked, and the page never showing the lake's path.

Needs `pip install playwright` and `apt-get install chromium`; never `playwright install`."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from annotation_lake import build_lake

from flywheel.annotation.pairs import week_pairs

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing: .venv/bin/pip install playwright")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium",
                allow_module_level=True)
expect = sync_api.expect

TOKEN = "page-test-token"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(f"{url}/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"review server exited: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(req, timeout=2) as res:
                if res.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"review server at {url} did not answer in {timeout} s")


def _server_process(lake_uri: str, port: int) -> subprocess.Popen:
    """The command a team runs, the token in its environment (not in its arguments)."""
    argv = [sys.executable, "-m", "flywheel.flows.cli", "annotate", "serve", "--iteration", "1",
            "--lake", lake_uri, "--port", str(port)]
    env = {**os.environ, "FLYWHEEL_REVIEW_TOKEN": TOKEN}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


class ThreadServer:
    """The app in a uvicorn server on a thread of this process."""

    def __init__(self, lake_uri: str, port: int):
        import uvicorn

        from flywheel.annotation.review import create_app

        config = uvicorn.Config(create_app(lake_uri, 1, TOKEN), host="127.0.0.1", port=port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _saved(lake, pair_id: str) -> dict | None:
    path = lake._p("annotation", "rounds", "iteration-0001", "submissions", f"{pair_id}.json")
    return json.loads(open(path).read()) if os.path.exists(path) else None


def _label(page, lake, pair: dict, chosen: str, position: int) -> None:
    """Check what the page shows, click the answers, submit; the label must be in the lake."""
    expect(page.locator("#progress")).to_have_text(f"Pair {position} of 3")
    expect(page.locator("#prompt")).to_have_text(pair["prompt"])
    expect(page.locator("#text_a")).to_have_text(pair["text_a"])
    expect(page.locator("#text_b")).to_have_text(pair["text_b"])
    page.get_by_label(f"{chosen.upper()} is better").check()
    page.get_by_label("Slightly better", exact=True).check()
    if pair["criterion"] == "safety":  # the server refuses a safety pair without its label
        page.get_by_role("button", name="Submit").click()
        expect(page.locator("#error")).to_contain_text("this is a safety prompt")
        assert _saved(lake, pair["pair_id"]) is None
        page.get_by_label("Chosen response safe, the other unsafe").check()
    page.get_by_role("button", name="Submit").click()
    expect(page.locator("#round")).to_contain_text(f"{position} of 3 labelled")
    saved = _saved(lake, pair["pair_id"])
    assert saved is not None, "the label was not in the lake once the page moved on"
    assert (saved["chosen"], saved["strength"], saved["annotator"]) == (
        chosen, "slightly_better", "Ana Tester")


class _Blank(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the handler's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<!doctype html><title>another service</title>")

    def log_message(self, *args):
        pass


def _cross_site_attempts(page, url: str, pair: dict) -> None:
    """A page of another service on the same host (the same site, so the browser sends the
    SameSite=Strict review cookie with its requests) posts a label the ways a script can: a
    no-cors text/plain fetch (what a form sends) and a JSON fetch with the page's header, both
    with credentials. The server refuses the first (not JSON, and from another origin), the
    browser the second (the preflight is never granted); neither labels anything. (Without
    the server's checks the first one is saved: the cookie does go with it.)"""
    other = socketserver.TCPServer(("127.0.0.1", 0), _Blank)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        label = json.dumps({"pair_id": pair["pair_id"], "chosen": "a", "strength": "better",
                            "safety_label": "both_safe", "annotator": "mallory"})
        statuses = page.evaluate("""async ([url, label]) => {
          const out = [];
          for (const init of [
            {method: "POST", mode: "no-cors", credentials: "include",
             headers: {"Content-Type": "text/plain"}, body: label},
            {method: "POST", credentials: "include",
             headers: {"Content-Type": "application/json", "X-Flywheel-Review": "1"},
             body: label},
          ]) {
            try { const r = await fetch(url + "/api/submit", init); out.push(r.status); }
            catch (e) { out.push("blocked"); }
          }
          return out;
        }""", [url, label])
    finally:
        other.shutdown()
        other.server_close()
    assert statuses == [0, "blocked"], statuses  # the no-cors answer is opaque: status 0


def test_label_a_round_in_the_browser(tmp_path):
    lake = build_lake(tmp_path / "lake")
    pairs = week_pairs(lake, 1)
    clicks = ["b", "a", "b"]  # the response clicked for pairs[0], [1], [2]
    started = time.monotonic()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _server_process(lake.uri, port)
    thread_server = None
    try:
        _wait_until_up(url, proc)
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            violations = []  # what Chromium reports when the CSP blocks something
            page.on("console", lambda m: violations.append(m.text)
                    if "Content Security Policy" in m.text else None)

            res = page.goto(f"{url}/?token=wrong")
            assert res.status == 401
            expect(page.locator("h1")).to_contain_text("needs its link")
            assert page.goto(f"{url}/").status == 401  # no cookie yet

            res = page.goto(f"{url}/?token={TOKEN}")
            assert page.url == f"{url}/"  # the token left the address bar; the cookie stays
            assert "script-src 'self'" in res.headers["content-security-policy"]
            expect(page.locator("#progress")).to_have_text("Pair 1 of 3")
            page.get_by_role("button", name="Submit").click()  # nothing picked yet
            expect(page.locator("#error")).to_contain_text("choose the better response")
            _cross_site_attempts(page, url, pairs[0])
            assert _saved(lake, pairs[0]["pair_id"]) is None
            page.goto(f"{url}/")  # back on the review page: the cookie still opens it
            expect(page.locator("#progress")).to_have_text("Pair 1 of 3")
            page.get_by_label("Annotator").fill("Ana Tester")
            _label(page, lake, pairs[0], clicks[0], 1)
            _label(page, lake, pairs[1], clicks[1], 2)

            proc.send_signal(signal.SIGKILL)  # a crash: nothing flushed on the way out
            proc.wait(timeout=10)
            thread_server = ThreadServer(lake.uri, port)
            _wait_until_up(url)
            page.reload()
            expect(page.locator("#progress")).to_have_text("Pair 3 of 3")
            expect(page.get_by_label("Annotator")).to_have_value("Ana Tester")
            _label(page, lake, pairs[2], clicks[2], 3)

            expect(page.locator("#done-title")).to_have_text("Round closed: ingested as a batch")
            expect(page.locator("#summary")).to_contain_text(
                "batch review-iteration-0001 (iteration-0001.jsonl")
            expect(page.locator("#summary")).to_contain_text("3 delivered, 3 accepted")
            assert lake.root not in page.content()
            assert violations == []
            browser.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        if thread_server is not None:
            thread_server.stop()

    rows = {r["prompt_id"]: r for r in lake.rows("comparisons")}
    assert len(rows) == 3
    for pair, chosen in zip(pairs, clicks):
        row = rows[pair["prompt_id"]]
        other = "b" if chosen == "a" else "a"
        assert row["chosen_sample_id"] == pair[f"sample_id_{chosen}"]
        assert row["rejected_sample_id"] == pair[f"sample_id_{other}"]
        assert (row["batch_id"], row["annotator"], row["strength"]) == (
            "review-iteration-0001", "Ana Tester", "slightly_better")
        expected_safety = "chosen_safe_other_unsafe" if pair["criterion"] == "safety" else None
        assert row["safety_label"] == expected_safety
    # the page timed each pair, from showing it to its label's submission
    took = [rows[p["prompt_id"]]["seconds"] for p in pairs]
    assert all(t is not None and 0 <= t <= time.monotonic() - started for t in took), took
    assert sum(took) > 0, took
