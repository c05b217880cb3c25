"""The HTTP edge: /webhooks/<source>, /healthz, /readyz, /genesys/connect and /genesys/callback. Translates requests
to pure calls and back."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Flask, Response, jsonify, redirect, render_template, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Response as BaseResponse

from webhook import oauth_flow, signatures
from webhook.app_state import get_state
from webhook.errors import SignatureError, StoreError
from webhook.events import Envelope, InvalidItem, TicketEvent, parse, usable_message_id
from webhook.genesys.auth import Me
from webhook.metrics import authorized
from webhook.store import NewEvent, Saved

logger = logging.getLogger(__name__)
bp = Blueprint("webhook", __name__)

# Headers never stored with an event: signatures and credentials are not needed to replay it.
UNSTORED_HEADERS = frozenset({
    "authorization", "cookie", "proxy-authorization", "webhook-signature", "svix-signature",
    "x-zendesk-webhook-signature", "x-hubspot-signature", "x-hubspot-signature-v3", "x-hub-signature",
    "x-hub-signature-256",
})
MAX_STORED_HEADER_CHARS = 1024


@bp.post("/webhooks/<source>")
def receive(source: str) -> tuple[Response, int] | Response:
    """Verify, parse and store a delivery, answer at once, then hand the new events to the worker."""
    state = get_state()
    src = state.settings.sources.get(source)
    if src is None:
        return error(404, "unknown_source", f"no source named {source[:64]!r} is configured")
    body = request.get_data(cache=True)
    if len(body) > state.settings.max_body_bytes:  # a chunked body is cut one byte past the limit, not refused
        raise RequestEntityTooLarge
    now = state.clock()
    try:
        verified = signatures.verify(src.scheme, body=body, headers=request.headers, secrets=src.secrets, now=now,
                                     tolerance=src.tolerance_seconds, method=request.method,
                                     url=signed_url(), header=src.header)
    except SignatureError as exc:
        logger.warning("signature refused: %s", exc, extra={"source": source})
        return error(401, "invalid_signature", str(exc))
    envelope = Envelope(source, now, verified.signed_at, usable_message_id(verified.message_id))
    items = parse(body, src.mapping, envelope, state.settings.agents)
    headers = stored_headers(request.headers.items(), src.header)
    try:
        saved = state.store.save([new_event(item, body, headers, envelope) for item in items])
    except StoreError:
        response = error(503, "store_unavailable", "the event could not be stored; retry later")
        response[0].headers["Retry-After"] = "5"
        return response
    state.worker.submit([s.id for s in saved if not s.duplicate and s.state == "received"])
    return answer(saved, [item for item in items if isinstance(item, InvalidItem)])


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
        logger.info("duplicate delivery" if s.duplicate else "event stored",
                    extra={"source": s.source, "event": s.id, "state": s.state})
    if invalid:
        get_state().metrics.rejected.labels("invalid_event").inc()
        body.update(error="invalid_event", detail="; ".join(i.reason for i in invalid)[:2000],
                    invalid=[{"id": s.id, "event_id": s.event_id} for s in saved if s.state == "invalid"])
        return jsonify(body), 400
    return jsonify(body), 202 if accepted else 200


def new_event(item: TicketEvent | InvalidItem, body: bytes, headers: dict[str, str], envelope: Envelope) -> NewEvent:
    """Turn a parsed item into the row that intake stores."""
    row = NewEvent(source=item.source, event_id=item.event_id, state="received", detail="",
                   received_at=envelope.received_at, raw_body=body, headers=headers, signed_at=envelope.signed_at,
                   message_id=envelope.message_id)
    if isinstance(item, InvalidItem):
        return replace(row, state="invalid", detail=item.reason)
    return replace(row, ticket_id=item.ticket_id, status=item.status, previous_status=item.previous_status,
                   agent=item.agent, conversation_id=item.conversation_id, occurred_at=item.occurred_at)


def stored_headers(items: Any, signature_header: str) -> dict[str, str]:
    """Keep the request headers useful for replay and diagnosis; never signatures or credentials."""
    skip = UNSTORED_HEADERS | {signature_header.lower()}
    return {k: v[:MAX_STORED_HEADER_CHARS] for k, v in items if k.lower() not in skip}


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
    """Answer 200 when the store answers, 503 otherwise; show the Genesys mode and the oldest unfinished event."""
    state = get_state()
    mode = "dry_run" if state.settings.genesys.dry_run else "live"
    try:
        oldest = state.store.oldest_unfinished()
    except StoreError:
        return jsonify(status="unavailable", database="down", genesys=mode), 503
    age = round((state.clock() - oldest).total_seconds(), 1) if oldest else None
    return jsonify(status="ok", database="ok", genesys=mode, oldest_unfinished_seconds=age), 200


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
