"""A fake Genesys Cloud server on loopback, with state, a request log and fault injection, for end-to-end tests."""

from __future__ import annotations

import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from flask import Flask, Response, g, jsonify, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

Json = dict[str, Any]

USER_CONTEXT = "This request requires a user context. Client credentials cannot be used for requests to this resource."
REFUSALS: dict[str, tuple[int, str]] = {
    "not.a.user": (400, USER_CONTEXT),
    "conversation.error.forbidden.not.active.participant": (403, "The user is not an active participant."),
    "conversation.error.not.conversation.participant": (404, "The user is not a participant of the conversation."),
    "missing.permissions": (403, "You are missing the following permission(s): conversation:communication:mute"),
}


class FakeClock:
    """A settable clock with a sleep that only moves it forward and records each wait."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """Record the wait and move the clock on."""
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        """Move the clock on without recording a sleep."""
        self.now += seconds


@dataclass
class LoggedRequest:
    """One request the fake received, and the status it was answered with."""

    method: str
    path: str
    body: Any
    time: float
    authorization: str  # "basic", "bearer" or "" (never the credential itself)
    status: int | None = None
    client_port: int | None = None  # the caller's TCP port: tells which process sent it
    correlation_id: str = ""  # the ININ-Correlation-Id it was answered with (the client keeps it with the event)


@dataclass
class Fault:
    """An injected failure: answer `status` (or only wait `delay`) for the next `count` requests or until `until`."""

    status: int | None
    path_prefix: str
    count: int | None = None
    until: float | None = None
    retry_after: int | None = None
    delay: float = 0.0

    def active(self, now: float) -> bool:
        """Tell whether the fault still applies."""
        if self.count is not None:
            return self.count > 0
        return self.until is not None and now < self.until


@dataclass
class FakeParticipant:
    """One participant of a fake call."""

    id: str
    purpose: str
    state: str
    start_time: str
    user_id: str | None = None
    muted: bool = False
    held: bool = False

    def as_json(self) -> Json:
        """Return the participant in the CallConversation shape."""
        body: Json = {"id": self.id, "name": self.purpose.title(), "purpose": self.purpose, "state": self.state,
                      "muted": self.muted, "held": self.held, "startTime": self.start_time,
                      "direction": "inbound", "confined": False, "recording": False}
        if self.user_id:
            body["user"] = {"id": self.user_id, "selfUri": f"/api/v2/users/{self.user_id}"}
        if self.purpose == "customer":
            body["address"] = "tel:+15551234567"
        return body


@dataclass
class FakeCall:
    """One fake voice conversation."""

    id: str
    start_time: str
    participants: list[FakeParticipant] = field(default_factory=list)
    ended: bool = False
    in_analytics_after_end: bool = False

    def participant(self, participant_id: str) -> FakeParticipant | None:
        """Return a participant by id."""
        return next((p for p in self.participants if p.id == participant_id), None)


class FakeGenesys:
    """A fake Genesys Cloud (login host and API host in one) running on 127.0.0.1 in a background thread."""

    def __init__(self, *, client_id: str = "fake-client-id", client_secret: str = "fake-client-secret",
                 expires_in: int = 86400, clock: Callable[[], float] = time.monotonic) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.clock = clock
        self.users: dict[str, Json] = {}
        self.calls: dict[str, FakeCall] = {}
        self.log: list[LoggedRequest] = []
        self._tokens: set[str] = set()
        self._faults: list[Fault] = []
        self._refusals: dict[str | None, str] = {}
        self._after_get: dict[str, Callable[[], None]] = {}
        self._rate: tuple[int, float] | None = None  # (requests, window seconds) per bearer token; None = no limit
        self._windows: dict[str, tuple[float, int]] = {}  # bearer token -> (its window's end, requests counted)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._last_stamp = datetime.now(UTC) - timedelta(minutes=5)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # -- running --

    def start(self) -> Self:
        """Serve on a free loopback port in a daemon thread."""
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        daemon=True, name="fake-genesys")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; slow answers in progress stop waiting."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Return the base URL (it serves both /oauth/token and /api/v2)."""
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_port}"

    # -- state --

    def add_user(self, email: str, name: str | None = None) -> str:
        """Create a user and return its id."""
        user_id = str(uuid.uuid4())
        with self._lock:
            display = name or email.split("@", maxsplit=1)[0].title()
            self.users[user_id] = {"id": user_id, "email": email, "name": display}
        return user_id

    def start_call(self, user_id: str, *, customer: bool = True, transferred: bool = False,
                   purpose: str = "agent") -> tuple[str, str]:
        """Start a live voice call with the user connected and return (conversation id, participant id)."""
        with self._lock:
            call = FakeCall(str(uuid.uuid4()), self._stamp())
            if customer:
                call.participants.append(FakeParticipant(str(uuid.uuid4()), "customer", "connected", call.start_time))
                call.participants.append(FakeParticipant(str(uuid.uuid4()), "acd", "disconnected", self._stamp()))
            if transferred:  # the agent left (transfer away) and came back: an older disconnected leg
                call.participants.append(
                    FakeParticipant(str(uuid.uuid4()), purpose, "disconnected", self._stamp(), user_id))
            self.calls[call.id] = call
        return call.id, self.join_call(call.id, user_id, purpose=purpose)

    def join_call(self, conversation_id: str, user_id: str, *, purpose: str = "agent") -> str:
        """Add a connected participant of a user to a call (a consult or conference) and return its id."""
        with self._lock:
            participant = FakeParticipant(str(uuid.uuid4()), purpose, "connected", self._stamp(), user_id)
            self.calls[conversation_id].participants.append(participant)
        return participant.id

    def end_call(self, conversation_id: str, *, still_in_analytics: bool = False) -> None:
        """Disconnect everyone; with still_in_analytics the details query keeps listing it (index lag)."""
        with self._lock:
            call = self.calls[conversation_id]
            call.ended, call.in_analytics_after_end = True, still_in_analytics
            for participant in call.participants:
                participant.state = "disconnected"

    def muted(self, conversation_id: str, participant_id: str) -> bool:
        """Return a participant's muted flag."""
        with self._lock:
            participant = self.calls[conversation_id].participant(participant_id)
            assert participant is not None
            return participant.muted

    @property
    def patches(self) -> list[LoggedRequest]:
        """Return every PATCH received, in order."""
        with self._lock:
            return [r for r in self.log if r.method == "PATCH"]

    @property
    def token_requests(self) -> int:
        """Return how many token requests arrived."""
        with self._lock:
            return sum(1 for r in self.log if r.path == "/oauth/token")

    @property
    def requests_count(self) -> int:
        """Return how many requests arrived."""
        with self._lock:
            return len(self.log)

    def requests(self, method: str | None = None, path_prefix: str = "") -> list[LoggedRequest]:
        """Return the logged requests with this method and path prefix."""
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method) and r.path.startswith(path_prefix)]

    # -- faults --

    def rate_limit(self, *, retry_after: int = 1, count: int | None = None, seconds: float | None = None,
                   path_prefix: str = "/api/") -> None:
        """Answer 429 with Retry-After for the next `count` requests, or for `seconds` on the fake's clock."""
        if count is None and seconds is None:
            count = 1
        self._add_fault(Fault(429, path_prefix, count, self._until(seconds), retry_after=retry_after))

    def fail(self, status: int = 503, *, count: int = 1, path_prefix: str = "/api/") -> None:
        """Answer a 5xx for the next `count` requests."""
        self._add_fault(Fault(status, path_prefix, count))

    def slow(self, seconds: float, *, count: int = 1, path_prefix: str = "/api/") -> None:
        """Wait `seconds` (real time) before answering the next `count` requests: a hanging server."""
        self._add_fault(Fault(None, path_prefix, count, delay=seconds))

    def revoke_tokens(self) -> None:
        """Make every issued token invalid (answered 401), as an expiry or a revocation would."""
        with self._lock:
            self._tokens.clear()

    def refuse_mutes(self, code: str = "not.a.user", *, user_id: str | None = None) -> None:
        """Refuse mute PATCHes with a participant-rule error, for everyone or for one user's participants."""
        assert code in REFUSALS, f"unknown refusal {code}"
        with self._lock:
            self._refusals[user_id] = code

    def allow_mutes(self) -> None:
        """Stop refusing mute PATCHes."""
        with self._lock:
            self._refusals.clear()

    def clear_faults(self) -> None:
        """Drop every injected 429, 5xx and delay still pending (refusals stay; see allow_mutes)."""
        with self._lock:
            self._faults.clear()

    def after_get(self, conversation_id: str, action: Callable[[], None]) -> None:
        """Run action once, right after the next GET of this call is answered (e.g. end it before the PATCH)."""
        with self._lock:
            self._after_get[conversation_id] = action

    def limit_rate(self, requests: int | None, *, window: float = 60.0) -> None:
        """Allow each bearer token `requests` API requests per fixed `window` seconds (from its first request), as
        Genesys does (300 a minute by default): over it, 429 too.many.requests with an integer Retry-After; every
        counted answer carries inin-ratelimit-allowed, -count and -reset (whole seconds left). None = no limit."""
        with self._lock:
            self._rate = None if requests is None else (requests, window)
            self._windows.clear()

    @property
    def too_many_requests(self) -> int:
        """Return how many requests were answered 429."""
        with self._lock:
            return sum(1 for r in self.log if r.status == 429)

    def _add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _until(self, seconds: float | None) -> float | None:
        return None if seconds is None else self.clock() + seconds

    def _take_fault(self, path: str) -> Fault | None:
        """Return the first active fault for this path, spending one of its count."""
        with self._lock:
            now = self.clock()
            self._faults = [f for f in self._faults if f.active(now)]
            fault = next((f for f in self._faults if path.startswith(f.path_prefix)), None)
            if fault is not None and fault.count is not None:
                fault.count -= 1
            return fault

    def _stamp(self) -> str:
        """Return a strictly increasing ISO time, as Genesys writes startTime."""
        with self._lock:
            now = datetime.now(UTC)
            self._last_stamp = max(now, self._last_stamp + timedelta(milliseconds=1))
            return self._last_stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self._last_stamp.microsecond // 1000:03d}Z"

    # -- the HTTP app --

    def _build_app(self) -> Flask:
        """Return the Flask app serving the fake endpoints."""
        app = Flask("fake_genesys")
        app.before_request(self._before)
        app.after_request(self._after)
        app.add_url_rule("/oauth/token", view_func=self._token, methods=["POST"])
        app.add_url_rule("/api/v2/organizations/me", view_func=self._organization, methods=["GET"])
        app.add_url_rule("/api/v2/users/search", view_func=self._search_users, methods=["POST"])
        app.add_url_rule("/api/v2/analytics/conversations/details/query", view_func=self._analytics,
                         methods=["POST"])
        app.add_url_rule("/api/v2/conversations/calls/<cid>", view_func=self._get_call, methods=["GET"])
        app.add_url_rule("/api/v2/conversations/calls/<cid>/participants/<pid>", view_func=self._patch,
                         methods=["PATCH"])
        return app

    def _before(self) -> Response | None:
        """Log the request, apply an injected fault, and check the bearer token on /api/."""
        g.correlation_id = str(uuid.uuid4())
        scheme = (request.headers.get("Authorization") or "").split(" ")[0].lower()
        g.logged = LoggedRequest(request.method, request.path, request.get_json(silent=True), self.clock(), scheme,
                                 client_port=int(request.environ.get("REMOTE_PORT") or 0) or None)
        with self._lock:
            self.log.append(g.logged)
        fault = self._take_fault(request.path)
        if fault is not None and fault.delay:
            self._stopping.wait(fault.delay)
        if fault is not None and fault.status is not None:
            return self._fault_answer(fault)
        if request.path.startswith("/api/") and not self._valid_bearer():
            return error(401, "bad.credentials", "Invalid login credentials.")
        return self._count_request() if request.path.startswith("/api/") else None

    def _after(self, response: Response) -> Response:
        response.headers["ININ-Correlation-Id"] = g.get("correlation_id", "")
        if "logged" in g:
            g.logged.status = response.status_code
            g.logged.correlation_id = g.get("correlation_id", "")
        for name, value in g.get("ratelimit", {}).items():
            response.headers[name] = value
        return response

    def _count_request(self) -> Response | None:
        """Count an API request against its token's window (limit_rate); answer 429 when the window is spent."""
        with self._lock:
            if self._rate is None:
                return None
            allowed, window = self._rate
            token = (request.headers.get("Authorization") or "").partition(" ")[2]
            now = self.clock()
            end, count = self._windows.get(token, (now, 0))
            if now >= end:
                end, count = now + window, 0
            reset = max(1, math.ceil(end - now))
            spent = count >= allowed
            if not spent:
                count += 1
            self._windows[token] = (end, count)
        g.ratelimit = {"inin-ratelimit-allowed": str(allowed), "inin-ratelimit-count": str(count),
                       "inin-ratelimit-reset": str(reset)}
        if not spent:
            return None
        response = error(429, "too.many.requests", "Rate limit exceeded the maximum. Retry the request later.")
        response.headers["Retry-After"] = str(reset)
        return response

    def _fault_answer(self, fault: Fault) -> Response:
        if fault.status == 429:
            response = error(429, "too.many.requests", "Rate limit exceeded the maximum. Retry the request later.")
            response.headers["Retry-After"] = str(fault.retry_after or 1)
            return response
        assert fault.status is not None
        return error(fault.status, "service.unavailable" if fault.status != 502 else "bad.gateway",
                     "The service is currently unavailable.")

    def _valid_bearer(self) -> bool:
        header = request.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        with self._lock:
            return scheme.lower() == "bearer" and token in self._tokens

    def _token(self) -> Response:
        """POST /oauth/token: client credentials with Basic auth."""
        auth = request.authorization
        if auth is None or auth.type != "basic" or (auth.username, auth.password) != (self.client_id,
                                                                                      self.client_secret):
            return oauth_error(401, "invalid_client")
        if request.form.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens.add(token)
        return jsonify(access_token=token, token_type="bearer", expires_in=self.expires_in)

    def _organization(self) -> Response:
        return jsonify(id=str(uuid.UUID(int=1)), name="Fake Org", defaultLanguage="en-us", state="active",
                       thirdPartyOrgName="fakeorg", selfUri="/api/v2/organizations/me")

    def _search_users(self) -> Response:
        """POST /api/v2/users/search: an EXACT e-mail query as the client sends it."""
        body = request.get_json(silent=True) or {}
        query = body.get("query") if isinstance(body, dict) else None
        if not isinstance(query, list) or not query or query[0].get("type") != "EXACT" \
                or query[0].get("fields") != ["email"] or not isinstance(query[0].get("value"), str):
            return error(400, "bad.request", "The request could not be understood by the server due to malformed "
                                             "syntax.")
        email = query[0]["value"].lower()
        with self._lock:
            found = [dict(u, state="active", selfUri=f"/api/v2/users/{u['id']}", version=1)
                     for u in self.users.values() if u["email"].lower() == email]
        answer: Json = {"total": len(found), "pageCount": 1 if found else 0,
                        "pageSize": body.get("pageSize", 25), "pageNumber": body.get("pageNumber", 1)}
        if found:
            answer["results"] = found[: answer["pageSize"]]
        return jsonify(answer)

    def _analytics(self) -> Response:
        """POST conversation details query: the live voice calls of the userId in the segment predicates."""
        body = request.get_json(silent=True) or {}
        user_id = _predicate(body, "segmentFilters", "userId")
        if not body.get("interval") or user_id is None:
            return error(400, "bad.request", "interval and a userId predicate are required by this fake")
        with self._lock:
            calls = [c for c in self.calls.values() if _listed(c, user_id)]
            calls.sort(key=lambda c: c.start_time, reverse=body.get("order") != "asc")
            conversations = [_analytics_conversation(c) for c in calls]
        answer: Json = {"totalHits": len(conversations)}
        if conversations:
            answer["conversations"] = conversations
        return jsonify(answer)

    def _get_call(self, cid: str) -> Response:
        """GET /api/v2/conversations/calls/{id}: the CallConversation."""
        with self._lock:
            call = self.calls.get(cid)
            if call is None:
                return error(404, "not.found", "The requested conversation was not found.")
            answer = jsonify(id=call.id, participants=[p.as_json() for p in call.participants],
                             recordingState="none", selfUri=f"/api/v2/conversations/calls/{call.id}")
            hook = self._after_get.pop(cid, None)
            if hook is not None:
                hook()
            return answer

    def _patch(self, cid: str, pid: str) -> Response:
        """PATCH a participant: {"muted": bool}; 202 with an empty body."""
        body = request.get_json(silent=True)
        with self._lock:
            call = self.calls.get(cid)
            participant = call.participant(pid) if call is not None else None
            if call is None or participant is None:
                return error(404, "not.found", "The requested conversation was not found.")
            refusal = self._refusals.get(participant.user_id) or self._refusals.get(None)
            if refusal is not None:
                status, message = REFUSALS[refusal]
                return error(status, refusal, message)
            if call.ended or participant.state == "disconnected":
                return error(404, "not.found", "The requested conversation was not found.")
            if not isinstance(body, dict) or set(body) != {"muted"} or not isinstance(body["muted"], bool):
                return error(400, "bad.request", "The request could not be understood by the server due to "
                                                 "malformed syntax.")
            participant.muted = body["muted"]
        return Response(status=202)


class _QuietHandler(WSGIRequestHandler):
    """A keep-alive request handler that does not log every request to stderr."""

    protocol_version = "HTTP/1.1"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def error(status: int, code: str, message: str) -> Response:
    """Return an answer in Genesys' ErrorBody shape."""
    correlation_id = g.get("correlation_id", "")
    response = jsonify(message=message, code=code, status=status, messageWithParams=message, messageParams={},
                       contextId=correlation_id, details=[], errors=[])
    response.status_code = status
    return response


def oauth_error(status: int, code: str) -> Response:
    """Return an answer in the login host's OAuth error shape."""
    response = jsonify(error=code, description="authentication failed", error_description="authentication failed")
    response.status_code = status
    return response


def _predicate(body: Json, filters: str, dimension: str) -> str | None:
    """Return the value of a dimension predicate in a details query."""
    for group in body.get(filters) or []:
        for predicate in group.get("predicates") or []:
            if predicate.get("dimension") == dimension and predicate.get("operator", "matches") == "matches":
                return str(predicate.get("value"))
    return None


def _listed(call: FakeCall, user_id: str) -> bool:
    """Tell whether the details query lists a call for this user (live, or ended but not yet re-indexed)."""
    if call.ended and not call.in_analytics_after_end:
        return False
    return any(p.user_id == user_id and (p.state != "disconnected" or call.ended) for p in call.participants)


def _analytics_conversation(call: FakeCall) -> Json:
    """Return a call in the shape of an analytics conversation."""
    return {
        "conversationId": call.id,
        "conversationStart": call.start_time,
        "originatingDirection": "inbound",
        "participants": [{
            "participantId": p.id,
            "participantName": p.purpose.title(),
            "purpose": p.purpose,
            **({"userId": p.user_id} if p.user_id else {}),
            "sessions": [{"mediaType": "voice", "sessionId": str(uuid.uuid5(uuid.NAMESPACE_URL, p.id)),
                          "direction": "inbound",
                          "segments": [{"segmentStart": p.start_time, "segmentType": "interact"}]}],
        } for p in call.participants],
    }


def running_fake(**kwargs: Any) -> Iterator[FakeGenesys]:
    """Yield a started fake and stop it afterwards (wrap in a pytest fixture)."""
    with FakeGenesys(**kwargs) as fake:
        yield fake
