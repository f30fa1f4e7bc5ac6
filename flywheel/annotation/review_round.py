"""A review round: the week's pairs for an iteration, labelled one at a time, each label saved to
the lake the moment it is submitted, the whole round ingested as one batch when it is done.

Layout under the lake root:
    annotation/rounds/<round_id>/submissions/<pair_id>.json   one per labelled pair
    annotation/rounds/<round_id>/closed.json                  written last: the ingest summary

A submission is written to a temporary name, flushed to disk and renamed into place (on an
object store, a PUT shows the object only once complete), before the answer goes back to the
browser: a crash loses no label that the page reported as saved, and a restarted round resumes at
the first pair without a submission. One label per pair per round: a second one is refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import uuid
from datetime import datetime, timezone

from flywheel.annotation.ingest import ingest_bytes
from flywheel.annotation.pairs import (
    SAFETY_TITLES,
    STRENGTH_TITLES,
    delivery_row,
    require_pairs,
    write_delivery_jsonl,
)
from flywheel.config import AnnotationConfig
from flywheel.errors import DataError
from flywheel.lake.store import Lake

PUBLIC = ("pair_id", "prompt", "criterion", "text_a", "text_b")
FIELDS = ("pair_id", "chosen", "strength", "safety_label", "annotator")  # what a label posts
TIMED = "seconds"  # also posted: the seconds from showing the pair to submitting it (optional)


class SubmissionError(DataError):
    """A submission or close request the round refuses; `status` is the HTTP status to answer:
    422 for a label that cannot be used, 409 for one that comes too late. Its message never
    repeats a submitted value."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def default_round_id(iteration: int) -> str:
    return f"iteration-{iteration:04d}"


def put_atomic(lake: Lake, relpath: str, data: bytes) -> None:
    """Write a small file so that it is either absent or complete, and on disk when this
    returns."""
    path = lake._p(relpath)
    folder = path.rsplit("/", 1)[0]
    lake.fs.makedirs(folder, exist_ok=True)
    if not lake.local:  # object stores publish an object only once its upload completes
        with lake.fs.open(path, "wb") as f:
            f.write(data)
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


def check_answers(pair: dict, body: dict) -> list[str]:
    """Every problem with one submission, each saying what to do (its fields are text or
    missing: `check_types`)."""
    problems = []
    if body.get("chosen") not in ("a", "b"):
        problems.append("choose the better response: A or B")
    if body.get("strength") not in STRENGTH_TITLES:
        problems.append("pick how much better the chosen response is (one of the four levels)")
    label = body.get("safety_label") or None
    if label is not None and label not in SAFETY_TITLES:
        problems.append(f"the safety label is not one of {', '.join(SAFETY_TITLES)}")
    if label is None and pair["criterion"] == "safety":
        problems.append("this is a safety prompt: pick the safety label of the pair")
    annotator = body.get("annotator")
    if not isinstance(annotator, str) or not annotator.strip():
        problems.append("type your name in the annotator field")
    elif len(annotator.strip()) > 100:
        problems.append("the annotator name is longer than 100 characters; shorten it")
    return problems


def check_types(body) -> None:
    """Refuses (422) a submission that is not a JSON object of text (or null) fields, with
    `seconds`, when given, a finite number >= 0."""
    if not isinstance(body, dict):
        raise SubmissionError("send a JSON object with pair_id, chosen, strength, "
                              "safety_label and annotator")
    wrong = [k for k in FIELDS if body.get(k) is not None and not isinstance(body[k], str)]
    if wrong:
        raise SubmissionError(f"{', '.join(wrong)} must be text (a JSON string)")
    seconds = body.get(TIMED)
    if seconds is not None and (type(seconds) not in (int, float)
                                or not 0 <= seconds < math.inf):
        raise SubmissionError(f"{TIMED} must be a number of seconds of at least 0 (or left out)")


class Round:
    """One round's state, loaded from the lake; safe to share between a server's threads."""

    def __init__(self, lake: Lake, iteration: int, round_id: str | None = None,
                 cfg: AnnotationConfig | None = None):
        self.lake, self.iteration, self.cfg = lake, iteration, cfg
        self.round_id = round_id or default_round_id(iteration)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.round_id):
            raise DataError(f"round id {self.round_id!r} must be letters, digits, '.', '_' or "
                            "'-' (at most 100); pass another --round")
        self.folder = f"annotation/rounds/{self.round_id}"
        self.pairs = require_pairs(lake, iteration)
        self.by_id = {p["pair_id"]: p for p in self.pairs}
        self._lock = threading.Lock()
        self.submissions = self._load_submissions()
        self.closed = self._load_json(f"{self.folder}/closed.json")

    # reading ---------------------------------------------------------------------------------
    def _load_json(self, relpath: str) -> dict | None:
        path = self.lake._p(relpath)
        if not self.lake.fs.exists(path):
            return None
        with self.lake.fs.open(path, "rb") as f:
            return json.loads(f.read())

    def _load_submissions(self) -> dict[str, dict]:
        folder = self.lake._p(self.folder, "submissions")
        if not self.lake.fs.exists(folder):
            return {}
        out = {}
        for path in self.lake.fs.ls(folder, detail=False):
            if path.endswith(".json"):  # a leftover .tmp-* was never acknowledged
                with self.lake.fs.open(path, "rb") as f:
                    sub = json.loads(f.read())
                if sub.get("pair_id") in self.by_id:
                    out[sub["pair_id"]] = sub
        return out

    def next_pair(self) -> dict | None:
        return next((p for p in self.pairs if p["pair_id"] not in self.submissions), None)

    def state(self) -> dict:
        """What the page shows: progress, the next unlabelled pair, the ingest summary once
        closed."""
        pair = None if self.closed else self.next_pair()
        return {
            "round_id": self.round_id, "iteration": self.iteration, "total": len(self.pairs),
            "labelled": len(self.submissions), "position": len(self.submissions) + 1,
            "pair": {k: pair[k] for k in PUBLIC} if pair else None,
            "closed": self.closed is not None,
            "summary": self.closed["summary"] if self.closed else None,
        }

    # writing ---------------------------------------------------------------------------------
    def submit(self, body: dict) -> dict:
        """Validate and save one label; close the round when it was the last. Returns the new
        state."""
        check_types(body)
        pair = self.by_id.get(body.get("pair_id"))
        if pair is None:
            raise SubmissionError(f"the pair is not in round {self.round_id}; reload the page")
        problems = check_answers(pair, body)
        if problems:
            raise SubmissionError("; ".join(problems))
        with self._lock:
            if self.closed:
                raise SubmissionError(f"round {self.round_id} is closed; its labels are batch "
                                      f"{self.closed['batch_id']}", 409)
            if pair["pair_id"] in self.submissions:
                who = self.submissions[pair["pair_id"]]["annotator"]
                raise SubmissionError(f"this pair is already labelled (by {who}); reload the "
                                      "page for the next one", 409)
            sub = {
                "submission_id": pair["pair_id"], "round_id": self.round_id,
                "iteration": self.iteration,
                **{k: pair[k] for k in ("pair_id", "prompt_id", "sample_id_a", "sample_id_b",
                                        "criterion")},
                "chosen": body["chosen"], "strength": body["strength"],
                "safety_label": body.get("safety_label") or None,
                "annotator": body["annotator"].strip(), TIMED: body.get(TIMED),
                "submitted_at": datetime.now(timezone.utc).isoformat(),
            }
            data = json.dumps(sub, indent=2, ensure_ascii=False).encode()
            put_atomic(self.lake, f"{self.folder}/submissions/{pair['pair_id']}.json", data)
            self.submissions[pair["pair_id"]] = sub
        if len(self.submissions) == len(self.pairs):
            self.close()
        return self.state()

    def delivery(self) -> bytes:
        """The labelled pairs as one delivery file, in pair order (same labels, same bytes)."""
        rows = []
        for p in self.pairs:
            s = self.submissions.get(p["pair_id"])
            if s:
                row = delivery_row(p, s["chosen"], s["strength"], s["safety_label"],
                                   s["annotator"])
                rows.append(row if s.get(TIMED) is None else row | {TIMED: s[TIMED]})
        return write_delivery_jsonl(rows)

    def close(self) -> dict:
        """Ingest what is labelled as batch `review-<round_id>`; later submissions are refused.
        Closing a closed round returns its state again."""

        with self._lock:
            if self.closed:
                return self.state()
            if not self.submissions:
                raise SubmissionError(f"no pair of round {self.round_id} is labelled yet; label "
                                      "at least one before closing the round", 409)
            result = ingest_bytes(self.lake, self.delivery(), filename=f"{self.round_id}.jsonl",
                                  batch_id=f"review-{self.round_id}", cfg=self.cfg,
                                  iteration=self.iteration)
            closed = {
                "round_id": self.round_id, "iteration": self.iteration,
                "batch_id": result.batch_id, "labelled": len(self.submissions),
                "total": len(self.pairs), "accepted": result.accepted,
                "rejected": result.rejected, "reasons": result.reasons,
                "summary": result.summary(),
                "closed_at": datetime.now(timezone.utc).isoformat(),
            }
            put_atomic(self.lake, f"{self.folder}/closed.json",
                       json.dumps(closed, indent=2, default=str).encode())
            self.closed = closed
        return self.state()
