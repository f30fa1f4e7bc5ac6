"""The receiver of Label Studio's webhooks: annotations created or updated -> after a quiet
spell, one pull.

    app = create_app(secret, Debouncer(seconds, action))      serve(app, host, port)

Label Studio calls `POST /label-studio/webhook` with the shared secret in the X-Flywheel-Secret
header (`flywheel annotate push --webhook-url URL` registers the webhook so). Each call it
accepts pokes a `Debouncer`: the action (`flywheel annotate webhook` wires it: pull the project's
annotations, land them as the iteration's batch, emit the batch-landed event that starts the
retrain) runs once `seconds` have passed since the last call, so a burst of annotations makes one
delivery; a call while the action runs schedules one more run after it. The answer is immediate
(202): a Label Studio without a job queue sends its webhooks inside the annotator's request.

A missing or wrong secret gets 401, a body over 1 MiB 413, an action other than annotation
created / updated 202 with nothing queued. `GET /health` answers how many pulls ran and whether
one is pending. Pokes still pending at shutdown are dropped: the next call, or `flywheel annotate
pull`, lands those annotations.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from flywheel.annotation.label_studio import SECRET_HEADER, WEBHOOK_ACTIONS
from flywheel.errors import ConfigError, FlywheelError

PATH = "/label-studio/webhook"
MAX_BODY = 1 << 20  # Label Studio's payload carries the task's texts; ours asks for none
SECRET_ENV = "FLYWHEEL_WEBHOOK_SECRET"
log = logging.getLogger(__name__)


class Debouncer:
    """Runs `action` in a thread of its own, `seconds` after the latest `poke`; pokes while it
    waits push the run back, a poke while it runs schedules one more run after it. An action
    that raises is logged (with its traceback) and kept in `last_error`; the next poke tries
    again."""

    def __init__(self, seconds: float, action: Callable[[], object]):
        if seconds < 0:
            raise ConfigError(f"the debounce must be >= 0 seconds, got {seconds}")
        self.seconds, self.action = seconds, action
        self.pokes = self.runs = 0
        self.last_result: object = None
        self.last_error: BaseException | None = None
        self._due: float | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="label-studio-debounce",
                                        daemon=True)
        self._thread.start()

    @property
    def pending(self) -> bool:
        return self._due is not None

    def poke(self) -> None:
        with self._cond:
            self.pokes += 1
            self._due = time.monotonic() + self.seconds
            self._cond.notify()

    def close(self, timeout: float | None = None) -> None:
        """Stop: a run in progress finishes, pending pokes are dropped."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._due is None or time.monotonic() < self._due):
                    self._cond.wait(None if self._due is None else self._due - time.monotonic())
                if self._closed:
                    return
                self._due = None
            try:
                self.last_result, self.last_error = self.action(), None
            except FlywheelError as err:  # bad input or a server away: the message says why
                log.error("the pull after Label Studio's webhook failed: %s", err)
                self.last_error = err
            except Exception as err:  # a bug: its traceback, and the receiver keeps serving
                log.exception("the pull after Label Studio's webhook failed")
                self.last_error = err
            self.runs += 1


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())  # constant time


def create_app(secret: str, debouncer: Debouncer, max_body: int = MAX_BODY) -> FastAPI:
    """The webhook receiver (see the module docstring)."""
    if not secret:
        raise ConfigError(f"the webhook receiver needs its shared secret; set {SECRET_ENV} (the "
                          "same value `flywheel annotate push --webhook-url` registers)")
    app = FastAPI(title="flywheel Label Studio webhook", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.debouncer = debouncer

    def answer(body: dict, status: int) -> JSONResponse:
        return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})

    @app.post(PATH)
    async def hook(request: Request):
        if not _same(request.headers.get(SECRET_HEADER, ""), secret):
            return answer({"error": f"missing or wrong {SECRET_HEADER} header"}, 401)
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > max_body:
            return answer({"error": f"the body must be at most {max_body} bytes"}, 413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                return answer({"error": f"the body must be at most {max_body} bytes"}, 413)
        try:
            payload = json.loads(body) if body.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            return answer({"error": "the body must be JSON"}, 400)
        action = payload.get("action") if isinstance(payload, dict) else None
        if action is not None and action not in WEBHOOK_ACTIONS:
            return answer({"queued": False, "ignored": "not an annotation created / updated"},
                          202)
        debouncer.poke()
        return answer({"queued": True, "pull_after_seconds": debouncer.seconds}, 202)

    @app.get("/health")
    def health():
        return {"status": "ok", "pulls": debouncer.runs, "pending": debouncer.pending,
                "last_error": None if debouncer.last_error is None else
                type(debouncer.last_error).__name__}

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8766) -> None:
    """Serve the receiver until interrupted."""
    import uvicorn

    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        app.state.debouncer.close(timeout=5)
