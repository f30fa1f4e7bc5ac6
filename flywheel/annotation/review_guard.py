"""What a request to the review page (flywheel/annotation/review.py) must be, and what its
answers must not carry.

- `refuse_cross_site`: a POST from another site is refused: an `Origin` that is not this server
  (scheme aside, it must name the Host the request was sent to) or a `Sec-Fetch-Site` other than
  same-origin; and a POST authenticated by the cookie must carry `X-Flywheel-Review: 1`, which
  the page sets and a page of another site cannot send without a CORS preflight (never granted
  here). The cookie is SameSite=Strict besides. Behind a reverse proxy (for TLS), pass the
  browser's Host through (nginx: `proxy_set_header Host $host;`), or every POST is refused.
- `read_json`: a submission is `Content-Type: application/json` (else 415) of at most
  `MAX_BODY` bytes (else 413, found from Content-Length before anything is read, or while
  reading a body sent without one) holding one JSON value (else 400).
- `scrubbed`: text for the page without the lake's location (the ingest summary names where the
  delivered file is kept; annotators have no need of the server's paths).

Refusals carry a short reason and never repeat a posted value.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request

from flywheel.lake.store import Lake

MAX_BODY = 64 * 1024  # a label is under 1 KiB; the limit leaves room for long annotator names
HEADER = "x-flywheel-review"  # set by the page (review.js) on every POST
SECURITY_HEADERS = {
    # only this server's own script, style and API; no inline code, no framing, no forms
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """A request the review page does not serve: `status` and a short `reason` to answer."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def refuse_cross_site(headers: Headers, by_cookie: bool) -> None:
    """Raises Refused (403) for a POST that another site's page may have sent."""
    origin = headers.get("origin")
    if origin is not None:
        host = headers.get("host", "").lower()
        if origin == "null" or not host or urlsplit(origin).netloc.lower() != host:
            raise Refused(403, "a request from another site is refused; use the review page "
                               "itself")
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise Refused(403, "a request from another site is refused; use the review page itself")
    if by_cookie and headers.get(HEADER) != "1":
        raise Refused(403, "the request lacks the X-Flywheel-Review: 1 header the review page "
                           "sends; reload the page (or send Authorization: Bearer <token>)")


def _json_type(headers: Headers) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


async def read_json(request: Request, limit: int = MAX_BODY):
    """The request's body as JSON, or Refused (413, 415 or 400)."""
    too_big = Refused(413, f"the request is over {limit // 1024} KiB; a label is much smaller")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_big
    if not _json_type(request.headers):
        raise Refused(415, "send the label as JSON (Content-Type: application/json)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        raise Refused(400, "the body is not JSON; send the label as a JSON object") from None


def scrubbed(text: str, lake: Lake) -> str:
    """`text` without the line naming where the delivered file is kept, and with any other
    mention of the lake's location replaced by "the lake"."""
    lines = [line for line in text.splitlines() if not line.startswith("delivered file kept at")]
    out = "\n".join(lines)
    for where in sorted({lake.uri, lake.root, f"file://{lake.root}"}, key=len, reverse=True):
        if where:
            out = out.replace(where, "the lake")
    return out
