"""The HTTP edge: /webhooks/<source>, /healthz, /readyz, /genesys/connect and /genesys/callback. Translates requests
to pure calls and back."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Flask, Response, jsonify, redirect, render_template, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Response as BaseResponse

from webhook import intake, oauth_flow
from webhook.app_state import get_state
from webhook.errors import SchemaError, SignatureError, StoreError
from webhook.events import InvalidItem
from webhook.genesys.auth import Me
from webhook.metrics import authorized
from webhook.store import Saved

logger = logging.getLogger(__name__)
bp = Blueprint("webhook", __name__)

BODY_SECONDS = 10.0  # a body that takes longer to arrive is refused (408): a slow client holds nothing for long
READY_SECONDS = 1.5  # /readyz answers within this (2 s promised), whatever the database does


@bp.post("/webhooks/<source>")
def receive(source: str) -> tuple[Response, int] | Response:
    """Verify, parse and store a delivery, answer at once, then hand the new events to the worker."""
    state = get_state()
    src = state.settings.sources.get(source)
    if src is None:
        return error(404, "unknown_source", f"no source named {source[:64]!r} is configured")
    body = read_body()
    if body is None:
        response = error(408, "request_timeout", f"the body did not arrive within {BODY_SECONDS:g} s")
        response[0].headers["Connection"] = "close"
        return response
    if len(body) > state.settings.max_body_bytes:  # a chunked body is cut one byte past the limit, not refused
        raise RequestEntityTooLarge
    try:
        received = intake.receive(src, body, request.headers, method=request.method, url=signed_url(),
                                  now=state.clock(), store=state.store, agents=state.settings.agents)
    except SignatureError as exc:
        logger.warning("signature refused: %s", exc, extra={"source": source})
        return error(401, "invalid_signature", str(exc))
    except StoreError as exc:
        detail = "the event could not be stored; retry later"
        if isinstance(exc, SchemaError):
            detail = "the service's database is not set up yet (its operator runs the schema migration); retry later"
        response = error(503, "store_unavailable", detail)
        response[0].headers["Retry-After"] = "5"
        return response
    state.worker.submit([s.id for s in received.saved if not s.duplicate and s.state == "received" and s.id])
    return answer(received.saved, received.invalid)


def read_body() -> bytes | None:
    """Read the request body; None when it does not arrive within BODY_SECONDS. Under gunicorn's gevent worker a
    connection is a greenlet, so a client that trickles its body costs memory, not a thread: the limit bounds how
    long (gunicorn bounds a request head by its keepalive, 5 s)."""
    timeout = _gevent_timeout()
    if timeout is None:
        return request.get_data(cache=True)
    with timeout(BODY_SECONDS, False):
        return request.get_data(cache=True)
    return None


def _gevent_timeout() -> Any:
    """gevent.Timeout when this process runs gevent's patched sockets, else None (threads, tests, the CLI)."""
    import sys

    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return None
    from gevent import Timeout  # type: ignore[import-untyped]

    return Timeout


def answer(saved: list[Saved], invalid: list[InvalidItem]) -> tuple[Response, int]:
    """Build the intake answer: 202 when something new was stored, 200 when all were duplicates, 400 if invalid."""
    accepted = [s for s in saved if not s.duplicate and s.state != "invalid"]
    body: dict[str, Any] = {
        "accepted": [{"id": s.id, "source": s.source, "event_id": s.event_id} for s in accepted],
        "duplicates": [{"id": s.id, "source": s.source, "event_id": s.event_id} for s in saved if s.duplicate],
    }
    for s in saved:
        if s.state != "invalid":
            (get_state().metrics.duplicates if s.duplicate else get_state().metrics.received).labels(s.source).inc()
        message = "duplicate delivery" if s.duplicate else "event stored"
        if s.id is None:
            message = "duplicate delivery of an event received before and since purged"
        logger.info(message, extra={"source": s.source, "event": s.id, "state": s.state})
    if invalid:
        get_state().metrics.rejected.labels("invalid_event").inc()
        body.update(error="invalid_event", detail="; ".join(i.reason for i in invalid)[:2000],
                    invalid=[{"id": s.id, "event_id": s.event_id} for s in saved if s.state == "invalid"])
        return jsonify(body), 400
    return jsonify(body), 202 if accepted else 200


def signed_url() -> str:
    """Rebuild the URL the sender called (HubSpot signs it), as the proxy saw it (ProxyFix fixes scheme and host)."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not raw:
        raw = quote(request.path)
        if request.query_string:
            raw += "?" + request.query_string.decode("latin-1")
    return f"{request.scheme}://{request.host}{raw}"


@bp.get("/healthz")
def healthz() -> Response:
    """Answer 200 while the process is up."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Answer within 2 s: 200 when the database can be written (this process's heartbeat), 503 when it cannot, or
    has no current schema, or does not answer in time; show the Genesys mode and the oldest unfinished event."""
    state = get_state()
    mode = "dry_run" if state.settings.genesys.dry_run else "live"
    outcome: list[Any] = []
    check = threading.Thread(target=_ready_check, args=(state, outcome), name="webhook-readyz", daemon=True)
    check.start()
    check.join(READY_SECONDS)
    if not outcome:
        return jsonify(status="unavailable", database="not answering",
                       detail=f"the database did not answer within {READY_SECONDS:g} s", genesys=mode), 503
    result = outcome[0]
    if isinstance(result, SchemaError):
        return jsonify(status="unavailable", database="schema", detail=str(result), genesys=mode), 503
    if isinstance(result, StoreError):
        return jsonify(status="unavailable", database="down", detail="the database cannot be written: "
                       f"{str(result).removeprefix('the database cannot be used: ')}", genesys=mode), 503
    age = round((state.clock() - result).total_seconds(), 1) if result else None
    return jsonify(status="ok", database="ok", genesys=mode, oldest_unfinished_seconds=age), 200


def _ready_check(state: Any, outcome: list[Any]) -> None:
    """Write this process's heartbeat and read the oldest unfinished event; put the result or the StoreError in
    outcome (a thread of its own, so that readyz answers in time even while the database hangs)."""
    try:
        outcome.append(state.liveness.ready(state.store))
    except StoreError as exc:
        outcome.append(exc)


@bp.get("/metrics")
def metrics() -> Response | tuple[Response, int]:
    """Prometheus text format, for a bearer token from METRICS_TOKEN; disabled when it is unset."""
    state = get_state()
    token = state.settings.metrics_token
    if token is None:
        return error(404, "not_found", "metrics are disabled; set METRICS_TOKEN to enable /metrics")
    if not authorized(request.headers.get("Authorization"), token):
        response = error(401, "unauthorized", "send Authorization: Bearer <METRICS_TOKEN>")
        response[0].headers["WWW-Authenticate"] = "Bearer"
        return response
    try:
        oldest = state.store.oldest_unfinished()
    except StoreError:
        oldest = None
    body = state.metrics.render(oldest, state.clock())
    return Response(body, mimetype="text/plain", headers={"Content-Type": CONTENT_TYPE_LATEST})


@bp.get("/genesys/connect")
def genesys_connect() -> BaseResponse:
    """Send the browser to the Genesys login (an agent's connection, or the service user's with ?link=)."""
    state = get_state()
    if state.users is None:
        return page(404, "Connecting to Genesys is not set up",
                    "The service has no authorization-code client: its operator sets GENESYS_USER_CLIENT_ID, "
                    "GENESYS_USER_CLIENT_SECRET, PUBLIC_URL and TOKEN_ENCRYPTION_KEY.")
    try:
        started = oauth_flow.start(state.store, state.users, link=request.args.get("link"), now=state.clock())
    except oauth_flow.FlowError as exc:
        return page(400, exc.title, exc.detail)
    except StoreError:
        return page(503, "The service cannot store the sign-in", "Its database is not answering; try again shortly.")
    response = redirect(started.authorize_url, 302)
    response.set_cookie(oauth_flow.COOKIE, started.cookie, max_age=int(oauth_flow.FLOW_SECONDS), httponly=True,
                        secure=(state.settings.genesys.public_url or "").startswith("https://"), samesite="Lax",
                        path="/genesys")
    _private(response)
    return response


@bp.get("/genesys/callback")
def genesys_callback() -> BaseResponse:
    """Finish a connection: check state, cookie and PKCE, exchange the code, store the user; say who is connected."""
    state = get_state()
    if state.users is None:
        return page(404, "Connecting to Genesys is not set up", "The service has no authorization-code client.")
    args = request.args
    try:
        connection = oauth_flow.finish(
            state.store, state.users, state=args.get("state"), code=args.get("code"), error=args.get("error"),
            error_description=args.get("error_description"), cookie=request.cookies.get(oauth_flow.COOKIE),
            now=state.clock(), deadline=time.monotonic() + state.settings.retry_budget_seconds)
    except oauth_flow.FlowError as exc:
        logger.warning("genesys connection refused: %s", exc.title)
        response = page(400, exc.title, exc.detail)
    except StoreError:
        response = page(503, "The service cannot store the connection", "Its database is not answering; start "
                                                                         "again shortly.")
    else:
        if isinstance(connection, Me):  # a console login: the console decides whether this user may enter
            from webhook.console.auth import genesys_login_finished

            entered = genesys_login_finished(connection)
            entered.delete_cookie(oauth_flow.COOKIE, path="/genesys")
            return entered
        role = "the service user" if connection.kind == "service_user" else "an agent"
        logger.info("genesys user connected (%s)", connection.kind)
        response = page(200, "Connected", f"{connection.name or connection.email} ({connection.email or 'no e-mail'}, "
                        f"Genesys user {connection.user_id}) is now connected as {role}: the service mutes and "
                        "unmutes with this user's own Genesys token.",
                        disconnect=f"flask --app wsgi genesys disconnect {connection.email or connection.user_id}")
    response.delete_cookie(oauth_flow.COOKIE, path="/genesys")
    return response


def page(status: int, title: str, detail: str, **extra: str) -> Response:
    """Return a small HTML page (the browser flows), never cached and never leaking its URL as a referrer."""
    response = Response(render_template("genesys_page.html", title=title, detail=detail, **extra), status=status,
                        mimetype="text/html")
    _private(response)
    return response


def _private(response: BaseResponse) -> None:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the callback's URL holds the code and the state
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"


def error(status: int, code: str, detail: str) -> tuple[Response, int]:
    """Return the JSON error body every refusal uses; a refused webhook is counted by reason."""
    if request.endpoint == "webhook.receive":
        get_state().metrics.rejected.labels(code).inc()
    return jsonify(error=code, detail=detail), status


def handle_http_exception(exc: HTTPException) -> tuple[Response, int]:
    """Turn Werkzeug's HTTP errors (404, 405, 413, ...) into JSON instead of HTML."""
    code = (exc.name or "error").lower().replace(" ", "_")
    detail = exc.description or exc.name or "error"
    if exc.code == 413:
        detail = f"the body is larger than {get_state().settings.max_body_bytes} bytes"
        response = error(413, code, detail)
        response[0].headers["Connection"] = "close"  # the rest of the body is unread: do not keep the connection
        return response
    return error(exc.code or 500, code, detail)


def init_app(app: Flask) -> None:
    """Register the blueprint and the JSON error handler."""
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, handle_http_exception)
