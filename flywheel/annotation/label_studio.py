"""Label Studio, live: the week's pairs pushed to a project through the official SDK
(`label-studio-sdk`), the submitted annotations pulled back as a batch through ingest.

    ls = connect()                      # $LABEL_STUDIO_URL, $LABEL_STUDIO_API_KEY
    push(ls, lake, cfg, iteration)      # the project (made once, found by its title), tasks
    pull(ls, lake, cfg, iteration)      # -> IngestResult of the iteration's batch

The project has the pairwise config of `exchange.label_studio_config()` (the better response,
the four strength levels, the safety label, an optional comment). It is found by its title
(`project_title`), so pushing again reuses it, and a task is its pair's (keyed by `pair_id`), so
pushing again uploads only the pairs the project lacks. Overlap and gold follow
`annotation.quality`, the round planned by `rounds.round_items` (its manifest and the gold set
kept in the lake, as for the simulated round): an overlap pair's task asks for
`overlap_annotators` annotations, a gold pair's one from every annotator (Label Studio gives a
task to an annotator at most once).

A pull reads every task with its annotations, converts them with `exchange.from_label_studio`
(cancelled ones skipped, the comment kept, the annotator named by e-mail) and ingests them as one
delivery of the iteration's batch (`annotation.batch_name`, the batch a weekly run in human mode
waits for) through `ingest_bytes`, as `flywheel annotate import` does. The rows come in a fixed
order, so a pull with nothing new delivers the same bytes (a no-op) and a pull after more
annotations adds only their rows. A pull after an annotation was edited (or deleted) retracts the
project's earlier deliveries of the batch that hold its old label (`supersede`): their other rows
come back with the new delivery, so the lake holds the project's current labels, once each.

The API key is a personal access token (Label Studio's default since 1.22; the SDK trades it for
short-lived access tokens) or a legacy token where the organization allows them. It is read from
the environment and never printed.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from flywheel.annotation.batches import COMPLETE, RETRACTED, set_deliveries
from flywheel.annotation.exchange import (
    GUIDELINES,
    from_label_studio,
    label_studio_config,
    to_label_studio,
)
from flywheel.annotation.ingest import ingest_bytes
from flywheel.annotation.pairs import require_pairs, write_delivery_jsonl
from flywheel.annotation.rounds import round_items
from flywheel.errors import ConfigError, DataError
from flywheel.lake.store import Lake

URL_ENV, KEY_ENV = "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"
INSTALL = 'pip install "rlhf-flywheel[labelstudio]" (or pip install label-studio-sdk)'
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
SECRET_HEADER = "X-Flywheel-Secret"
GOLD_OVERLAP = 100  # a gold task's annotations: every annotator's (each takes it at most once)


@dataclass(frozen=True)
class Server:
    """A Label Studio server: its address (for messages; the key stays in `sdk`) and the
    SDK's client."""

    url: str
    sdk: object  # label_studio_sdk.LabelStudio


def connect(url: str | None = None, api_key: str | None = None) -> Server:
    """The server at `url` (default $LABEL_STUDIO_URL) with `api_key` (default
    $LABEL_STUDIO_API_KEY), the key checked with one request."""
    try:
        from label_studio_sdk import LabelStudio
    except ImportError:
        raise ConfigError(f"the Label Studio SDK is not installed; {INSTALL}") from None
    url = (url or os.environ.get(URL_ENV) or "").rstrip("/")
    api_key = api_key or os.environ.get(KEY_ENV)
    missing = [n for n, v in ((URL_ENV, url), (KEY_ENV, api_key)) if not v]
    if missing:
        raise ConfigError(f"set {' and '.join(missing)}: the Label Studio server's address and "
                          "an API key (Account & Settings > Personal Access Token)")
    ls = Server(url, LabelStudio(base_url=url, api_key=api_key, timeout=60))
    with _api(ls, "check the API key"):
        ls.sdk.users.whoami()
    return ls


@contextmanager
def _api(ls: Server, what: str):
    """Label Studio's failures as ConfigError / DataError naming the fix (never the key)."""
    from label_studio_sdk.core.api_error import ApiError

    url = ls.url
    try:
        yield
    except httpx.TransportError as err:
        raise ConfigError(f"cannot reach Label Studio at {url} to {what} ({type(err).__name__}: "
                          f"{err}); check {URL_ENV} and that the server runs") from None
    except ApiError as err:
        body = err.body if isinstance(err.body, dict | str) else None
        detail = body.get("detail", body) if isinstance(body, dict) else body
        if err.status_code in (401, 403):
            raise ConfigError(
                f"Label Studio at {url} refused to {what} ({err.status_code}: {detail}); set "
                f"{KEY_ENV} to a personal access token of an account that may, or enable legacy "
                "tokens for the organization") from None
        raise DataError(f"Label Studio at {url} failed to {what} ({err.status_code}: "
                        f"{detail})") from None


def project_title(lake: Lake, iteration: int) -> str:
    """The default project title: the iteration, and a short hash of the lake's address (two
    lakes' weeks never share a project)."""
    tag = hashlib.sha256(lake.uri.encode()).hexdigest()[:8]
    return f"flywheel iteration {iteration:04d} ({tag})"


def latest_iteration(lake: Lake) -> int:
    """The lake's latest iteration with samples drawn for annotation."""
    samples = lake.read("samples", ["iteration", "purpose"])
    its = [i for i, p in zip(samples["iteration"].to_pylist(), samples["purpose"].to_pylist())
           if p == "annotation" and i is not None]
    if not its:
        raise DataError(f"lake {lake.uri} holds no samples drawn for annotation; run an "
                        "iteration in human mode first (or pass --iteration)")
    return max(its)


def find_project(ls: Server, title: str):
    """The project titled exactly `title`, or None."""
    with _api(ls, "list projects"):
        found = [p for p in ls.sdk.projects.list(title=title) if p.title == title]
    return min(found, key=lambda p: p.id) if found else None


def ensure_project(ls: Server, title: str):
    """The project titled `title`, made with the pairwise config when there is none."""
    project = find_project(ls, title)
    if project is not None:
        return project
    with _api(ls, f"create project {title!r}"):
        return ls.sdk.projects.create(
            title=title, label_config=label_studio_config(), expert_instruction=GUIDELINES,
            show_instruction=True, show_skip_button=True, maximum_annotations=1,
            description="Pairs of the RLHF flywheel: `flywheel annotate pull` lands the labels")


def task_data(ls: Server, project_id: int) -> dict[str, tuple[int, int]]:
    """pair_id -> (task id, annotations the task asks for) of the project's tasks."""
    with _api(ls, f"list the tasks of project {project_id}"):
        return {t.data.get("pair_id"): (t.id, t.overlap or 1)
                for t in ls.sdk.tasks.list(project=project_id, fields="task_only")}


def round_tasks(cfg, lake: Lake, iteration: int) -> list[tuple[dict, int]]:
    """The round's pairs and how many annotations each asks for (see the module docstring);
    registers the gold set and keeps the round's manifest in the lake."""
    # no annotator names: in Label Studio whoever is free takes the next task
    items = round_items(cfg, lake, iteration, require_pairs(lake, iteration), [])
    wanted: dict[str, list] = {}
    for item in items:
        pair, n = wanted.get(item.pair["pair_id"], (item.pair, 0))
        wanted[pair["pair_id"]] = [pair, GOLD_OVERLAP if item.role == "gold" else n + 1]
    return [(pair, n) for pair, n in wanted.values()]


def push(ls: Server, lake: Lake, cfg, iteration: int, title: str | None = None,
         webhook_url: str | None = None, secret: str | None = None) -> dict:
    """Create or reuse the iteration's project, upload the pairs it lacks, set each overlap and
    gold task's number of annotations, and, with `webhook_url`, register (or update) the
    webhook that Label Studio calls when an annotation is created or updated, sending `secret`
    in the SECRET_HEADER header. Returns a summary."""
    title = title or project_title(lake, iteration)
    wanted = round_tasks(cfg, lake, iteration)
    project = ensure_project(ls, title)
    have = task_data(ls, project.id)
    new = [pair for pair, _ in wanted if pair["pair_id"] not in have]
    if new:
        with _api(ls, f"import {len(new)} tasks into project {project.id}"):
            ls.sdk.projects.import_tasks(project.id, request=to_label_studio(new))
        have = task_data(ls, project.id)
    overlap = 0
    for pair, n in wanted:
        task_id, asks = have[pair["pair_id"]]
        if asks != n:
            with _api(ls, f"set the annotations task {task_id} asks for"):
                ls.sdk.tasks.update(str(task_id), overlap=n)
        overlap += n > 1
    out = {"project_id": project.id, "title": title, "url": f"{ls.url}/projects/"
           f"{project.id}", "tasks": len(wanted), "uploaded": len(new),
           "already_there": len(wanted) - len(new), "multi_annotator_tasks": overlap}
    if webhook_url:
        out["webhook_id"] = register_webhook(ls, project.id, webhook_url, secret)
    return out


def register_webhook(ls: Server, project_id: int, url: str, secret: str | None) -> int:
    """The project's webhook to `url` on annotation created / updated, made or updated; the
    payload is not needed (the receiver pulls) and not sent. Returns its id."""
    if not secret:
        raise ConfigError("a webhook needs its shared secret: set FLYWHEEL_WEBHOOK_SECRET (the "
                          "receiver, `flywheel annotate webhook`, checks it)")
    spec = {"url": url, "actions": list(WEBHOOK_ACTIONS), "headers": {SECRET_HEADER: secret},
            "send_payload": False, "send_for_all_actions": False, "is_active": True}
    with _api(ls, f"register the webhook of project {project_id}"):
        mine = [w for w in ls.sdk.webhooks.list(project=str(project_id)) if w.url == url]
        if mine:
            ls.sdk.webhooks.update(mine[0].id, **spec)
            return mine[0].id
        return ls.sdk.webhooks.create(project=project_id, **spec).id


def export(ls: Server, project_id: int) -> list[dict]:
    """The project's tasks with their annotations, as the JSON export has them, each
    annotation's `completed_by` expanded to {id, email} (the annotator's name in the lake)."""
    with _api(ls, f"read the annotations of project {project_id}"):
        emails = {u.id: u.email for u in ls.sdk.users.list()}
        tasks = [t.model_dump(mode="json") for t in
                 ls.sdk.tasks.list(project=project_id, fields="all", only_annotated=True)]
    tasks.sort(key=lambda t: t["id"])
    for t in tasks:
        t["annotations"] = sorted(t.get("annotations") or [], key=lambda a: a.get("id") or 0)
        for a in t["annotations"]:
            who = a.get("completed_by")
            who = who.get("id") if isinstance(who, dict) else who
            a["completed_by"] = {"id": who, "email": emails.get(who)}
    return tasks


def pull(ls: Server, lake: Lake, cfg, iteration: int, title: str | None = None,
         batch_id: str | None = None):
    """Land the project's submitted annotations as a delivery of the iteration's batch
    (default `annotation.batch_name`). Returns the IngestResult."""
    title = title or project_title(lake, iteration)
    project = find_project(ls, title)
    if project is None:
        raise DataError(f"Label Studio at {ls.url} has no project {title!r}; run "
                        f"`flywheel annotate push --to label-studio --iteration {iteration}` "
                        "first (or pass --project)")
    tasks = export(ls, project.id)
    if not any(a for t in tasks for a in t["annotations"] if not a.get("was_cancelled")):
        raise DataError(f"project {title!r} holds no submitted annotations yet; label some in "
                        f"{ls.url}/projects/{project.id} and pull again")
    batch = batch_id or cfg.annotation.batch_name.format(iteration=iteration)
    return land(lake, tasks, project.id, batch, iteration, cfg.annotation)


def land(lake: Lake, tasks: list[dict], project_id: int, batch: str, iteration: int | None,
         annotation_cfg=None):
    """A project's tasks with annotations (`export`) as a delivery of `batch`, the project's
    earlier deliveries of it superseded first. Returns the IngestResult."""
    data = write_delivery_jsonl(from_label_studio(tasks))
    filename = f"label-studio-project-{project_id}.jsonl"
    data = supersede(lake, batch, filename, data)
    return ingest_bytes(lake, data, filename, batch, annotation_cfg, iteration)


def supersede(lake: Lake, batch: str, filename: str, data: bytes) -> bytes:
    """Before a pull lands `data`: retract this project's earlier deliveries of the batch that
    hold a row `data` no longer has (an annotation edited or deleted in Label Studio since), so
    only the project's current labels stay in view (their other rows come back with `data`).
    Returns the bytes to deliver: `data`, or, when those very bytes were delivered and
    retracted before (a label edited back), `data` with spaces after its last row, which JSON
    Lines ignores, so that they land as a new delivery."""
    checksum = hashlib.sha256(data).hexdigest()
    rows = lake.rows("batches")
    now = set(data.splitlines())
    stale = [d["id"] for d in rows if d["batch_id"] == batch and d["filename"] == filename
             and d["status"] == COMPLETE and d["checksum"] != checksum
             and not {line.rstrip() for line in
                      lake.read_bytes(d["raw_uri"]).splitlines()} <= now]
    if stale:
        set_deliveries(lake, batch, stale, RETRACTED,
                       "annotations edited in Label Studio after an earlier pull")
    retracted = {d["checksum"] for d in rows if d["status"] == RETRACTED}
    retracted |= {d["checksum"] for d in rows if d["id"] in stale}
    while hashlib.sha256(data).hexdigest() in retracted:
        data = data[:-1] + b" \n"
    return data
