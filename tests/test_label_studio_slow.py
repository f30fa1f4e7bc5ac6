"""A week's labels through a real Label Studio: `label-studio` (from .venv-labelstudio, `make
labelstudio`) started on a free port with a temporary data folder, its owner's personal access
token made through its API; `flywheel annotate push` uploads the pairs with overlap and gold
tasks and registers the webhook of a running `flywheel annotate webhook`; two annotators sign up
through the organization's invite link and label their queues through the REST API, as the
browser does; the webhook's debounced pull lands the batch (comments included) and its
batch-landed event starts the reward-model retrain, whose flow run (executed as a worker executes
it) trains both reward models on the batch; an annotation edited afterwards replaces its row;
pulling and pushing again add nothing; the annotator report reads both annotators' gold, overlap
and speed (Label Studio's lead_time).

The server's first start runs its database migrations: about 1 to 4 minutes on 2 busy cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from annotation_lake import build_lake
from servers import free_port, tail, wait_until

from flywheel.flows.cli import main
from flywheel.lake.catalog import connect

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
LS_BIN = ROOT / ".venv-labelstudio" / "bin" / "label-studio"
OWNER, PASSWORD = "owner@example.org", "flywheel-owner-pw-1"
ANNOTATORS = ("ana@example.org", "ben@example.org")
SECRET = "webhook-shared-secret-for-the-test"
DEBOUNCE = 4
GOLD = [("Name a colour.", "Blue.", "I will not answer that."),
        ("What is two plus two?", "Four.", "Fish.")]


class LabelStudio:
    """A running Label Studio: its address, the owner's logged-in session and API key."""

    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url, self.proc, self.log = url, proc, log
        self.owner = self.login(OWNER, PASSWORD)
        r = self.owner.post(f"{url}/api/token/", headers=self.csrf(self.owner))
        r.raise_for_status()
        self.api_key = r.json()["token"]  # a personal access token (JWT refresh token)

    def csrf(self, s: requests.Session) -> dict:
        return {"X-CSRFToken": s.cookies["csrftoken"], "Referer": self.url + "/"}

    def login(self, email: str, password: str) -> requests.Session:
        s = requests.Session()
        s.get(f"{self.url}/user/login/").raise_for_status()
        r = s.post(f"{self.url}/user/login/", headers={"Referer": f"{self.url}/user/login/"},
                   data={"email": email, "password": password,
                         "csrfmiddlewaretoken": s.cookies["csrftoken"]}, allow_redirects=False)
        assert r.status_code == 302, r.text[:500]
        return s

    def sign_up(self, email: str) -> requests.Session:
        """An annotator joins through the organization's invite link, as in the browser."""
        invite = self.owner.get(f"{self.url}/api/invite").json()["token"]
        s = requests.Session()
        page = f"{self.url}/user/signup/?token={invite}"
        s.get(page).raise_for_status()
        r = s.post(page, headers={"Referer": page}, allow_redirects=False,
                   data={"email": email, "password": PASSWORD,
                         "csrfmiddlewaretoken": s.cookies["csrftoken"]})
        assert r.status_code == 302, r.text[:500]
        assert s.get(f"{self.url}/api/current-user/whoami").json()["email"] == email
        return s


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    if not LS_BIN.exists():
        pytest.skip(f"no Label Studio server at {LS_BIN}: run `make labelstudio`")
    home = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_USERNAME": OWNER, "LABEL_STUDIO_PASSWORD": PASSWORD,
           # our webhook receiver listens on loopback, which Label Studio refuses by default
           "USE_DEFAULT_BANNED_SUBNETS": "false", "LATEST_VERSION_CHECK": "false",
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    log = home / "label-studio.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(LS_BIN), "start", "--no-browser", "--host", "127.0.0.1",
                                 "--port", str(port), "--data-dir", str(home / "data")],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=home,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            return "exited"
        try:
            return requests.get(f"{url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    started = time.monotonic()
    try:
        state = wait_until(up, 420, "Label Studio's /health", interval=2)
    except AssertionError:
        state = "timed out"
    if state != True:  # noqa: E712 (a state string is not a start)
        proc.terminate()
        proc.wait(30)
        # installed but broken is a failure (a dependency that moved, say), not a skip
        report = pytest.skip if state == "timed out" else pytest.fail
        report(f"Label Studio did not start ({state}):\n{tail(log)}")
    print(f"Label Studio answered /health after {time.monotonic() - started:.0f} s")
    try:
        yield LabelStudio(url, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _config(tmp_path: Path, lake: str, model: str) -> Path:
    gold = tmp_path / "gold-hh-rlhf-helpful.jsonl"  # the name tells format and criterion
    gold.write_text("".join(json.dumps({"chosen": f"\n\nHuman: {q}\n\nAssistant: {good}",
                                        "rejected": f"\n\nHuman: {q}\n\nAssistant: {bad}"}) + "\n"
                            for q, good, bad in GOLD))
    path = tmp_path / "flywheel.yaml"
    path.write_text(json.dumps({
        "lake": lake, "models": {"policy": model, "reward_backbone": model},
        "reward_model": {"batch_size": 8, "micro_batch_size": 8, "max_length": 64,
                         "mix": {"allow_short": True}},
        "annotation": {"mode": "human", "quality": {
            "overlap_share": 0.5, "overlap_annotators": 2, "gold_pairs": 2,
            "gold_path": str(gold)}}}))
    return path


def _result(task: dict, who: str) -> list[dict]:
    """What the labelling interface posts: the better side (a gold pair's known-better one;
    else ana always A, ben B on the rice prompt's pair: a disagreement), the strength, the
    safety label, a comment from ana."""
    data = task["data"]
    if data.get("messages"):  # a gold pair
        side = "left" if data["response_a"] in {good for _, good, _ in GOLD} else "right"
    else:
        side = "right" if who == ANNOTATORS[1] and "rice" in data["prompt"] else "left"
    out = [{"from_name": "preferred", "to_name": "response_a,response_b", "type": "pairwise",
            "value": {"selected": side}},
           {"from_name": "strength", "to_name": "prompt", "type": "choices",
            "value": {"choices": ["better" if who == ANNOTATORS[0] else "slightly_better"]}}]
    if data["criterion"] == "safety":
        out.append({"from_name": "safety_label", "to_name": "prompt", "type": "choices",
                    "value": {"choices": ["chosen_safe_other_unsafe"]}})
    if who == ANNOTATORS[0]:
        out.append({"from_name": "comment", "to_name": "prompt", "type": "textarea",
                    "value": {"text": [f"checked by ana: {data['pair_id']}"]}})
    return out


def _lead_time(who: str, n: int) -> float:
    """Seconds on the n-th task of the queue (0, 1, ...): ana 2, 4, 6, ...; ben 3, 6, 9, ..."""
    return (2.0 if who == ANNOTATORS[0] else 3.0) * (n + 1)


def _label_queue(ls: LabelStudio, s: requests.Session, project: int, who: str) -> dict:
    """Take the next task until the queue is empty, annotating each: the annotations posted,
    by the task's prompt."""
    done = {}
    while (r := s.get(f"{ls.url}/api/projects/{project}/next", headers=ls.csrf(s))).ok:
        task = r.json()
        body = {"result": _result(task, who), "lead_time": _lead_time(who, len(done))}
        posted = s.post(f"{ls.url}/api/tasks/{task['id']}/annotations/?project={project}",
                        json=body, headers=ls.csrf(s))
        assert posted.status_code == 201, posted.text[:500]
        done[task["data"]["prompt"]] = posted.json()
        assert len(done) < 20, "the queue never ends"
    assert r.status_code == 404, r.text[:500]
    return done


def _run(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_a_week_through_label_studio(label_studio, prefect_server, tiny_llama, tmp_path, capsys,
                                     monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.flow_engine import run_flow

    from flywheel.config import FlywheelConfig
    from flywheel.flows.annotation import retrain
    from flywheel.flows.deploy import annotation_deployments

    ls = label_studio
    lake = build_lake(tmp_path / "lake")  # iteration 1: three pairs, one of them safety
    config = _config(tmp_path, lake.uri, tiny_llama)
    cfg = FlywheelConfig.model_validate(json.loads(config.read_text()))
    on_batch = annotation_deployments(cfg, debounce_seconds=2)[0]
    deployment = on_batch.apply()
    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.api_key,
           "FLYWHEEL_WEBHOOK_SECRET": SECRET}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = ["--config", str(config), "--lake", lake.uri]

    # the receiver, as a team runs it beside the lake
    port = free_port()
    hook_log = tmp_path / "webhook.log"
    with open(hook_log, "ab") as out:
        hook = subprocess.Popen(
            [str(Path(sys.executable).with_name("flywheel")), "annotate", "webhook",
             "--iteration", "1", "--debounce", str(DEBOUNCE), "--port", str(port), *args],
            env={**os.environ, **env, "PREFECT_API_URL": prefect_server},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: _healthy(f"http://127.0.0.1:{port}/health"), 120,
                   "the webhook receiver", [hook], [hook_log], interval=0.5)
        hook_url = f"http://127.0.0.1:{port}/label-studio/webhook"
        rc, out = _run(capsys, "annotate", "push", "--to", "label-studio", "--iteration", "1",
                       "--webhook-url", hook_url, "--json", *args)
        assert rc == 0, out
        pushed = json.loads(out[out.index("{"):out.rindex("}") + 1])
        # three pairs (half up of 3 * 0.5: two overlap) and two gold pairs
        assert (pushed["tasks"], pushed["uploaded"], pushed["multi_annotator_tasks"]) == (5, 5, 4)
        assert ls.api_key not in out

        project = pushed["project_id"]
        sessions = {who: ls.sign_up(who) for who in ANNOTATORS}
        labelled = {who: _label_queue(ls, s, project, who) for who, s in sessions.items()}
        # ana takes every task; ben the ones asking for more than one annotation
        assert len(labelled[ANNOTATORS[0]]) == 5 and len(labelled[ANNOTATORS[1]]) == 4

        # webhook -> debounced pull -> batch in the lake; the event starts the retrain
        wait_until(lambda: _counts(lake) == (5, 4, "better"), 120,
                   "the webhook's pull to land 9 labels", [hook], [hook_log])
        with get_client(sync_client=True) as client:
            runs = wait_until(lambda: client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment]))), 60,
                "the batch-landed event to start the retrain", [hook], [hook_log])
        assert runs[0].parameters["batch_id"] == "iteration-0001"
        assert "event flywheel.batch.landed sent" in hook_log.read_text()

        # ana edits her label of the Lisbon pair: annotation updated -> the lake follows
        ana = sessions[ANNOTATORS[0]]
        mine = next(a for p, a in labelled[ANNOTATORS[0]].items() if "Lisbon" in p)
        result = [r if r["from_name"] != "strength" else
                  {**r, "value": {"choices": ["significantly_better"]}} for r in mine["result"]]
        r = ana.patch(f"{ls.url}/api/annotations/{mine['id']}/", json={"result": result},
                      headers=ls.csrf(ana))
        assert r.ok, r.text[:500]
        wait_until(lambda: _counts(lake) == (5, 4, "significantly_better"), 120,
                   "the pull after the edit", [hook], [hook_log])
    finally:
        hook.terminate()
        hook.wait(30)

    # the retrain's flow run, executed as a worker executes it: the reward models trained on
    # the batch
    started = time.monotonic()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(runs[0].id)
    with capsys.disabled():  # Prefect's log handlers keep the stream they first write to
        state = run_flow(retrain, flow_run=flow_run, parameters=flow_run.parameters,
                         return_type="state")
        print(f"the retrain's flow run ended in {time.monotonic() - started:.0f} s")
    assert state.is_completed(), state
    assert state.result()["trained"] and "iteration-0001" in state.result()["batches"]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(runs[0].id).state.is_completed()
    trained = {r["criterion"]: json.loads(r["parents"]) for r in lake.rows("reward_models")}
    assert trained == {"helpfulness": ["iteration-0001"], "safety": ["iteration-0001"]}

    with connect(lake) as con:
        rows = con.execute("SELECT annotator, strength, comment, batch_id FROM comparisons "
                           "ORDER BY annotator, comment").fetchall()
        gold = con.execute("SELECT reason, count(*) FROM quarantine GROUP BY 1").fetchall()
    assert {r[3] for r in rows} == {"iteration-0001"}
    assert sorted((a, s) for a, s, _, _ in rows) == [(ANNOTATORS[0], "better")] * 2 + [
        (ANNOTATORS[0], "significantly_better")] + [(ANNOTATORS[1], "slightly_better")] * 2
    assert all(c.startswith("checked by ana: ") for a, _, c, _ in rows if a == ANNOTATORS[0])
    assert all(c is None for a, _, c, _ in rows if a == ANNOTATORS[1])
    assert gold == [("gold_pair", 4)]

    # pulling and pushing again: nothing new
    rc, out = _run(capsys, "annotate", "pull", "--iteration", "1", *args)
    assert rc == 0 and out.startswith("already ingested, nothing to do"), out
    rc, out = _run(capsys, "annotate", "push", "--to", "label-studio", "--iteration", "1",
                   "--json", *args)
    assert rc == 0 and json.loads(out[out.index("{"):out.rindex("}") + 1])["uploaded"] == 0

    # the annotator report: both annotators' gold (right on both) and their overlap
    rc, out = _run(capsys, "annotators", "--batch", "iteration-0001", "--json", *args)
    assert rc == 0, out
    report = json.loads(out[out.index("{"):out.rindex("}") + 1])
    by_name = {a["annotator"]: a for a in report["annotators"]}
    assert set(by_name) == set(ANNOTATORS)
    assert all(by_name[a]["gold"] == 2 and by_name[a]["gold_accuracy"] == 1.0 for a in ANNOTATORS)
    assert all(by_name[a]["overlap"] >= 2 for a in ANNOTATORS)
    # speed from lead_time: ana 2, 4, 6, 8, 10 s on her 5 tasks, ben 3, 6, 9, 12 on his 4
    assert [by_name[a]["median_seconds"] for a in ANNOTATORS] == [6.0, 7.5]


def _counts(lake) -> tuple[int, int, str | None]:
    """(comparisons, quarantined rows, the strength of ana's Lisbon label) in view."""
    with connect(lake) as con:
        (n,), (q,) = (con.execute(f"SELECT count(*) FROM {t}").fetchone()
                      for t in ("comparisons", "quarantine"))
        lisbon = con.execute("SELECT strength FROM comparisons WHERE prompt_id = 'p-lisbon' "
                             "AND annotator = $a", {"a": ANNOTATORS[0]}).fetchall()
    return n, q, lisbon[0][0] if len(lisbon) == 1 else None


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False
