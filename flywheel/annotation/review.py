"""The built-in review page: people label the week's pairs in a browser, without a labelling tool.

    serve(lake_uri, iteration, token)   prints the link, serves until Ctrl-C

The page (flywheel/data/review.html) shows one pair at a time, in the order and A/B presentation
of `flywheel.pairs.week_pairs`: the prompt, the two responses side by side, the choice, the four
strength levels, the safety labels and the annotator's name. Each Submit is saved to the lake at
once (`flywheel.review_round`); when every pair is labelled, or on "close the round", the labels
are ingested as batch `review-<round_id>` and the page shows the ingest summary.

Access needs the token: the link `/?token=...` once (the server answers with a cookie and a
redirect to `/`), then the cookie; the JSON API also takes `Authorization: Bearer <token>`.

    GET  /            the page            GET  /api/state    progress and the next pair
    POST /api/submit  {pair_id, chosen, strength, safety_label, annotator}
    POST /api/close   ingest what is labelled now
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from flywheel.annotation.pairs import SAFETY_TITLES, STRENGTH_TITLES
from flywheel.annotation.review_round import Round, SubmissionError
from flywheel.config import AnnotationConfig
from flywheel.errors import DataError, FlywheelError
from flywheel.lake.store import Lake

COOKIE = "flywheel_review"
UNAUTHORIZED = """<!doctype html><html lang="en"><meta charset="utf-8">
<title>flywheel review: link needed</title>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 3em auto">
<h1>401: this page needs its link</h1>
<p>The review page opens only from the link with its token, <code>/?token=...</code>, that
<code>flywheel annotate serve</code> printed when it started. Ask whoever started the server for
that link (or start it yourself and open the link it prints).</p>
</body></html>"""


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())  # constant time, any text


def _page() -> str:
    return (resources.files("flywheel") / "data" / "review.html").read_text()


def create_app(lake_uri: str | Lake, iteration: int, token: str, round_id: str | None = None,
               cfg: AnnotationConfig | None = None) -> FastAPI:
    """The review app for one round; the round's state is read from the lake at start, so a
    restarted server resumes where the last one stopped. `cfg` sets the ingest of the completed
    round (held-out share, text limits)."""
    if not token:
        raise DataError("the review page needs a token; pass --token or let serve() make one")
    lake = lake_uri if isinstance(lake_uri, Lake) else Lake.open(lake_uri)
    rnd = Round(lake, iteration, round_id, cfg)
    if not rnd.closed and rnd.submissions and rnd.next_pair() is None:
        rnd.close()  # every pair was saved, but the server stopped before ingesting
    session = hmac.new(token.encode(), b"flywheel-review-cookie", hashlib.sha256).hexdigest()
    page = _page()
    app = FastAPI(title=f"flywheel review {rnd.round_id}", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.round = rnd

    def authorised(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return _same(auth[7:].strip(), token)
        return _same(request.cookies.get(COOKIE, ""), session)

    def denied() -> JSONResponse:
        return JSONResponse({"error": "missing or wrong token: open the review link with "
                                      "?token=... or send Authorization: Bearer <token>"},
                            status_code=401)

    def state() -> dict:
        return {**rnd.state(), "strengths": list(STRENGTH_TITLES.items()),
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
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/state")
    def get_state(request: Request):
        return state() if authorised(request) else denied()

    @app.post("/api/submit")
    async def submit(request: Request):
        if not authorised(request):
            return denied()
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "send the label as a JSON object"}, status_code=400)
        try:
            await run_in_threadpool(rnd.submit, body)  # disk writes, maybe the ingest
        except SubmissionError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except FlywheelError as err:  # ingest of the completed round refused the delivery
            return JSONResponse({"error": str(err)}, status_code=422)
        return state()

    @app.post("/api/close")
    def close(request: Request):
        if not authorised(request):
            return denied()
        try:
            rnd.close()
        except SubmissionError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except FlywheelError as err:
            return JSONResponse({"error": str(err)}, status_code=422)
        return state()

    return app


def serve(lake_uri: str, iteration: int, token: str | None = None, host: str = "127.0.0.1",
          port: int = 8765, round_id: str | None = None,
          cfg: AnnotationConfig | None = None) -> None:
    """Serve the review page until interrupted; prints the link to share. Without a token, a
    random one is made."""
    import uvicorn

    token = token or secrets.token_urlsafe(16)
    app = create_app(lake_uri, iteration, token, round_id, cfg)
    rnd = app.state.round
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
    print(f"review round {rnd.round_id}: {len(rnd.submissions)} of {len(rnd.pairs)} pairs "
          f"labelled", flush=True)
    print(f"open http://{shown}:{port}/?token={token}", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("note: plain HTTP; put it behind TLS before sharing the link beyond a trusted "
              "network", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
