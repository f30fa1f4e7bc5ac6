"""What a user sees in the Prefect UI, checked in headless Chromium: a real `prefect server
start` with its UI (the session's `live_server`), one weekly iteration of the tiny config run
against it by `flywheel run`, then the flow run's page (each stage a task run, the artifacts)
and the iteration's report artifact (headings, tables, the three plots as images). Screenshots
of both pages are saved as test output: the test prints their folder, and copies them to
test-output/ui/ in the repository (git-ignored).

Needs `pip install playwright` and `apt-get install chromium`; never `playwright install`.
About 2-3 minutes on an idle 2-core machine: slow marker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from servers import BIN, tail

from flywheel.stages.report import PLOTS

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing: .venv/bin/pip install playwright")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium",
                allow_module_level=True)
expect = sync_api.expect

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
REPO = Path(__file__).resolve().parents[1]
STAGES = ["sample-for-annotation", "annotate", "train-reward-models", "rejection-sampling",
          "evaluate", "promote-or-roll-back"]
UI_WAIT_MS = 90_000  # the UI's first load compiles nothing, but a loaded machine is slow


def _post(api: str, path: str, body: dict) -> list[dict]:
    req = urllib.request.Request(f"{api}/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read())


def _screenshot(page, path: Path) -> None:
    """The whole page: the UI scrolls inside an inner element, so a full-page screenshot would
    stop at the window; grow the window to the tallest element's content first."""
    height = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*'), "
                           "e => e.scrollHeight))")
    page.set_viewport_size({"width": 1400, "height": min(max(1000, height + 40), 8000)})
    page.wait_for_timeout(500)  # a re-layout for the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})


def test_flow_run_and_report_in_the_browser(tmp_path, tiny_config, live_server):
    ui, api = live_server.ui, live_server.api
    env = {**os.environ, **live_server.client_env(tmp_path / "prefect")}
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config.model_dump()))
    shots = tmp_path / "ui"
    shots.mkdir()
    try:
        run = subprocess.run([str(BIN / "flywheel"), "run", "--config", str(cfg)], env=env,
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "iteration 1:" in run.stdout

        # by name: the shared server also holds other tests' runs
        (flow_run,) = _post(api, "flow_runs/filter",
                            {"flow_runs": {"name": {"any_": ["iteration-1"]}}})
        arts = {a["key"]: a for a in _post(api, "artifacts/filter", {
            "artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}}) if a["key"]}
        assert {"iteration-1-report", "iteration-1-rates", "iteration-1-policy-fine-tune",
                "iteration-1-reward-model-accuracy"} <= set(arts)

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})

            # the flow run: its name, its state, each stage a completed task run
            page.goto(f"{ui}/runs/flow-run/{flow_run['id']}")
            expect(page.get_by_text("iteration-1").first).to_be_visible(timeout=UI_WAIT_MS)
            expect(page.get_by_text("Completed").first).to_be_visible(timeout=UI_WAIT_MS)
            page.get_by_text("Task Runs", exact=True).click()
            for stage in STAGES:
                expect(page.get_by_text(f"{stage}-", exact=False).first).to_be_visible(
                    timeout=UI_WAIT_MS)
            _screenshot(page, shots / "flow-run-task-runs.png")
            page.get_by_text("Artifacts", exact=True).first.click()
            for key in ("iteration-1-report", "iteration-1-policy-fine-tune"):
                expect(page.get_by_text(key).first).to_be_visible(timeout=UI_WAIT_MS)
            _screenshot(page, shots / "flow-run-artifacts.png")

            # the report: headings, the metrics tables and the three plots, each an image
            # that loaded (a data: URI that did not decode has no natural width)
            page.goto(f"{ui}/artifacts/artifact/{arts['iteration-1-report']['id']}")
            for heading in ("Iteration 1", "Plots", "Across iterations", "Annotation batch",
                            "Reward models", "Stage wall time (s)", "Lineage"):
                expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible(
                    timeout=UI_WAIT_MS)
            expect(page.get_by_role("cell", name="judge win rate (all held-out)")).to_be_visible()
            # by strength twice: the week's comparisons, then reward-model accuracy (Table 8)
            expect(page.get_by_role("columnheader", name="significantly better")).to_have_count(2)
            expect(page.get_by_role("columnheader", name="avg")).to_be_visible()
            for caption in PLOTS.values():
                img = page.get_by_role("img", name=caption)
                expect(img).to_be_visible()
                img.scroll_into_view_if_needed()
                width = img.evaluate("e => e.complete ? e.naturalWidth : 0")
                assert width == 520, f"plot {caption!r} did not load (natural width {width})"
            _screenshot(page, shots / "report.png")
            browser.close()
    finally:
        copy = REPO / "test-output" / "ui"
        copy.mkdir(parents=True, exist_ok=True)
        for png in shots.glob("*.png"):
            shutil.copy(png, copy / png.name)
        print(f"\nscreenshots: {shots} (copied to {copy})\n" + tail(live_server.log, 10))
