"""The built-in review page: people label the week's pairs in a browser, without a labelling tool.

    serve(lake_uri, iteration, token)   prints the link, serves until Ctrl-C

The page (flywheel/data/review.html, its script review.js and style review.css) shows one pair at
a time, in the order and A/B presentation of `flywheel.annotation.pairs.week_pairs`: the prompt,
the two responses side by side, the choice, the four strength levels, the safety labels and the
annotator's name. Each Submit is saved to the lake at once (`flywheel.annotation.review_round`);
when every pair is labelled, or on "close the round", the labels are ingested as batch
`review-<round_id>` and the page shows the ingest summary.

Access needs the token (`review_token`: FLYWHEEL_REVIEW_TOKEN, a file, or a random one; never
the command line, where `ps` shows it): the link `/?token=...` once (the server answers with a
cookie and a redirect to `/`), then the cookie; the JSON API also takes `Authorization: Bearer
<token>`.

    GET  /            the page            GET  /api/state    progress and the next pair
    POST /api/submit  {pair_id, chosen, strength, safety_label, annotator}
    POST /api/close   ingest what is labelled now

What a request must be (`flywheel.annotation.review_guard`): a POST whose Origin names another
site is refused (403), and so is a cookie-authenticated POST without the `X-Flywheel-Review: 1`
header the page sets (a page of another site cannot send it without a CORS preflight, which this
server never grants); a submission is a JSON object (`Content-Type: application/json`, else 415)
of at most 64 KiB (else 413) whose fields are text (else 422). Refusals give a short reason and
never repeat what was posted; no answer names a path of the server. Every answer carries a
Content-Security-Policy that allows only this server's own script and style, and
`X-Content-Type-Options: nosniff`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from flywheel.annotation.pairs import SAFETY_TITLES, STRENGTH_TITLES
from flywheel.annotation.review_guard import (
    SECURITY_HEADERS,
    Refused,
    read_json,
    refuse_cross_site,
    scrubbed,
)
from flywheel.annotation.review_round import Round, SubmissionError
from flywheel.config import AnnotationConfig
from flywheel.errors import DataError, FlywheelError
from flywheel.lake.store import Lake

COOKIE = "flywheel_review"
TOKEN_ENV = "FLYWHEEL_REVIEW_TOKEN"
ASSETS = {"review.js": "text/javascript", "review.css": "text/css"}
UNAUTHORIZED = """<!doctype html><html lang="en"><meta charset="utf-8">
<title>flywheel review: link needed</title>
<link rel="stylesheet" href="/review.css">
<body class="notice">
<h1>401: this page needs its link</h1>
<p>The review page opens only from the link with its token, <code>/?token=...</code>, that
<code>flywheel annotate serve</code> printed when it started. Ask whoever started the server for
that link (or start it yourself and open the link it prints).</p>
</body></html>"""
log = logging.getLogger(__name__)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())  # constant time, any text


def _data(name: str) -> str:
    return (resources.files("flywheel") / "data" / name).read_text()


def review_token(token_file: str | None = None) -> tuple[str, str]:
    """(the token, where it came from): the file `token_file` when given, else the environment
    variable FLYWHEEL_REVIEW_TOKEN, else a new random one ("generated")."""
    if token_file is not None:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise FlywheelError(f"no token file {token_file}; write the token into it (e.g. "
                                f"`openssl rand -hex 16 > {token_file}`) or set {TOKEN_ENV}")
        token = path.read_text().strip()
        if not token:
            raise FlywheelError(f"token file {token_file} is empty; write the token into it")
        return token, f"the file {token_file}"
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    return secrets.token_urlsafe(16), "generated"


def create_app(lake_uri: str | Lake, iteration: int, token: str, round_id: str | None = None,
               cfg: AnnotationConfig | None = None) -> FastAPI:
    """The review app for one round; the round's state is read from the lake at start, so a
    restarted server resumes where the last one stopped. `cfg` sets the ingest of the completed
    round (held-out share, text limits)."""
    if not token:
        raise DataError(f"the review page needs a token; set {TOKEN_ENV}, pass --token-file, "
                        "or let serve() make one")
    lake = lake_uri if isinstance(lake_uri, Lake) else Lake.open(lake_uri)
    rnd = Round(lake, iteration, round_id, cfg)
    if not rnd.closed and rnd.submissions and rnd.next_pair() is None:
        rnd.close()  # every pair was saved, but the server stopped before ingesting
    session = hmac.new(token.encode(), b"flywheel-review-cookie", hashlib.sha256).hexdigest()
    page = _data("review.html")
    assets = {name: _data(name) for name in ASSETS}
    app = FastAPI(title=f"flywheel review {rnd.round_id}", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.round = rnd

    @app.middleware("http")
    async def headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def bearer(request: Request) -> bool:
        return request.headers.get("authorization", "").lower().startswith("bearer ")

    def authorised(request: Request) -> bool:
        if bearer(request):
            return _same(request.headers["authorization"][7:].strip(), token)
        return _same(request.cookies.get(COOKIE, ""), session)

    def denied() -> JSONResponse:
        return JSONResponse({"error": "missing or wrong token: open the review link with "
                                      "?token=... or send Authorization: Bearer <token>"},
                            status_code=401)

    def refused(err: Refused) -> JSONResponse:
        return JSONResponse({"error": err.reason}, status_code=err.status)

    def guard(request: Request) -> JSONResponse | None:
        """The answer refusing a POST before its body is read, or None."""
        if not authorised(request):
            return denied()
        try:
            refuse_cross_site(request.headers, by_cookie=not bearer(request))
        except Refused as err:
            return refused(err)
        return None

    def failed(err: FlywheelError) -> JSONResponse:
        """Ingest of the round refused the delivery: its reason without the lake's paths; the
        server's log has it whole."""
        log.warning("review round %s: %s", rnd.round_id, err)
        return JSONResponse({"error": scrubbed(str(err), lake)}, status_code=422)

    def state() -> dict:
        s = rnd.state()
        if s["summary"]:
            s["summary"] = scrubbed(s["summary"], lake)
        return {**s, "strengths": list(STRENGTH_TITLES.items()),
                "safety_labels": list(SAFETY_TITLES.items())}

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        given = request.query_params.get("token")
        if given is not None:
            if not _same(given, token):
                return HTMLResponse(UNAUTHORIZED, status_code=401)
            res = RedirectResponse("/", status_code=303)  # drop the token from the address bar
            res.set_cookie(COOKIE, session, httponly=True, samesite="strict")
            return res
        if not authorised(request):
            return HTMLResponse(UNAUTHORIZED, status_code=401)
        return HTMLResponse(page)

    @app.get("/review.js")
    @app.get("/review.css")
    def asset(request: Request):
        name = request.url.path.lstrip("/")
        return Response(assets[name], media_type=ASSETS[name])

    @app.get("/api/state")
    def get_state(request: Request):
        return state() if authorised(request) else denied()

    @app.post("/api/submit")
    async def submit(request: Request):
        if (answer := guard(request)) is not None:
            return answer
        try:
            body = await read_json(request)
        except Refused as err:
            return refused(err)
        try:
            await run_in_threadpool(rnd.submit, body)  # disk writes, maybe the ingest
        except SubmissionError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except FlywheelError as err:
            return failed(err)
        return state()

    @app.post("/api/close")
    def close(request: Request):
        if (answer := guard(request)) is not None:
            return answer
        try:
            rnd.close()
        except SubmissionError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except FlywheelError as err:
            return failed(err)
        return state()

    return app


def serve(lake_uri: str, iteration: int, token: str | None = None, host: str = "127.0.0.1",
          port: int = 8765, round_id: str | None = None,
          cfg: AnnotationConfig | None = None, token_source: str | None = None) -> None:
    """Serve the review page until interrupted; prints the link to share. Without a token, a
    random one is made and printed in the link; a token from elsewhere (`token_source` names
    where) is not printed."""
    import uvicorn

    if not token:
        token, token_source = review_token()
    app = create_app(lake_uri, iteration, token, round_id, cfg)
    rnd = app.state.round
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    print(f"review round {rnd.round_id}: {len(rnd.submissions)} of {len(rnd.pairs)} pairs "
          f"labelled", flush=True)
    if token_source == "generated":
        print(f"open http://{shown}:{port}/?token={token}", flush=True)
    else:
        print(f"open http://{shown}:{port}/?token=TOKEN with the token of "
              f"{token_source or 'the caller'}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("note: plain HTTP; put it behind TLS before sharing the link beyond a trusted "
              "network", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
