"""A fake Genesys Cloud server on loopback, with state, a request log and fault injection, for end-to-end tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
DISCONNECT = "conversation:communication:disconnect"  # lets a user change any participant leg (the participant rule)
ANALYTICS_VIEW = "analytics:conversationDetail:view"
RECORDING_PAUSE = "conversation:recording:pauseOthers"  # PUT .../recordingstate (secure pause)
DIRECTORY_VIEW = "directory:user:view"
CODE_LIFETIME = 60.0  # seconds an authorization code can be exchanged, on the fake's clock
PAGE_SIZE = 25
GRANTS = {"client_credentials", "authorization_code", "refresh_token"}


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
    user_id: str | None = None  # the user of the bearer token (None for client credentials or no token)
    grant: str | None = None  # the grant_type of an /oauth/token request


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
    connected_time: str | None = None  # defaults to start_time for a participant created connected
    start_hold_time: str | None = None
    monitored_participant_id: str | None = None
    coached_participant_id: str | None = None

    def __post_init__(self) -> None:
        if self.connected_time is None and self.state == "connected":
            self.connected_time = self.start_time

    def as_json(self) -> Json:
        """Return the participant in the CallConversation (CallMediaParticipant) shape."""
        body: Json = {"id": self.id, "name": self.purpose.title(), "purpose": self.purpose, "state": self.state,
                      "muted": self.muted, "held": self.held, "startTime": self.start_time,
                      "direction": "inbound", "confined": False, "recording": False}
        if self.connected_time:
            body["connectedTime"] = self.connected_time
        if self.held and self.start_hold_time:
            body["startHoldTime"] = self.start_hold_time
        if self.user_id:
            body["user"] = {"id": self.user_id, "selfUri": f"/api/v2/users/{self.user_id}"}
        if self.purpose == "customer":
            body["address"] = "tel:+15551234567"
        if self.monitored_participant_id:
            body["monitoredParticipantId"] = self.monitored_participant_id
        if self.coached_participant_id:
            body["coachedParticipantId"] = self.coached_participant_id
        return body


@dataclass
class FakeCall:
    """One fake voice conversation."""

    id: str
    start_time: str
    participants: list[FakeParticipant] = field(default_factory=list)
    ended: bool = False
    in_analytics_after_end: bool = False
    recording_state: str = "none"  # none | active | paused (CallConversation.recordingState)

    def participant(self, participant_id: str) -> FakeParticipant | None:
        """Return a participant by id."""
        return next((p for p in self.participants if p.id == participant_id), None)

    def as_json(self) -> Json:
        """Return the call in the CallConversation shape."""
        return {"id": self.id, "participants": [p.as_json() for p in self.participants],
                "recordingState": self.recording_state, "securePause": self.recording_state == "paused",
                "selfUri": f"/api/v2/conversations/calls/{self.id}"}


@dataclass
class IssuedToken:
    """An access token the fake issued: whose it is (None for client credentials) and its expiry on the fake's clock."""

    user_id: str | None
    expires_at: float


@dataclass
class RefreshToken:
    """A refresh token of a user, with its expiry on the fake's clock (None = never)."""

    user_id: str
    expires_at: float | None

    def valid(self, now: float) -> bool:
        """Tell whether the refresh token has not expired."""
        return self.expires_at is None or now < self.expires_at


@dataclass
class AuthorizationCode:
    """A code the authorize step issued, with what its exchange must match."""

    user_id: str
    redirect_uri: str
    challenge: str | None
    method: str | None
    expires_at: float


class FakeGenesys:
    """A fake Genesys Cloud (login host and API host in one) running on 127.0.0.1 in a background thread.

    Two OAuth clients: `client_id` (client credentials; acts as a role with every permission) and `user_client_id`
    (grant type code: authorize with PKCE, code exchange, refresh). With `strict`, the participant rule of the
    reference is enforced: call control needs a user token whose user owns the leg or holds DISCONNECT.
    """

    def __init__(self, *, client_id: str = "fake-client-id", client_secret: str = "fake-client-secret",
                 expires_in: int = 86400, clock: Callable[[], float] = time.monotonic,
                 user_client_id: str = "fake-user-client-id", user_client_secret: str = "fake-user-client-secret",
                 user_expires_in: int = 86400, refresh_expires_in: float | None = None, rotate_refresh: bool = True,
                 strict: bool = False) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.clock = clock
        self.user_client_id = user_client_id
        self.user_client_secret = user_client_secret
        self.user_expires_in = user_expires_in
        self.refresh_expires_in = refresh_expires_in
        self.rotate_refresh = rotate_refresh
        self.strict = strict
        self.users: dict[str, Json] = {}
        self.permissions: dict[str, set[str]] = {}  # user id -> the permissions of the user's roles
        self.calls: dict[str, FakeCall] = {}
        self.log: list[LoggedRequest] = []
        self.refreshes = 0  # successful refresh_token grants
        self.code_exchanges = 0  # successful authorization_code grants
        self.revoked_tokens = 0  # DELETE /api/v2/tokens/me answered
        self._tokens: dict[str, IssuedToken] = {}  # access token -> whose and until when
        self._refresh_tokens: dict[str, RefreshToken] = {}
        self._codes: dict[str, AuthorizationCode] = {}
        self._issued: list[str] = []  # every access token, refresh token and code ever handed out
        self._consenting: str | None = None  # the user who approves the next authorize requests
        self._deny: str | None = None  # the error the next authorize answers with
        self._faults: list[Fault] = []
        self._refusals: dict[str | None, str] = {}
        self._recording_refusal: str | None = None  # refuse_recording(): a code of REFUSALS for every PUT
        self._pending_mutes: dict[tuple[str, str], tuple[bool, float]] = {}  # asynchronous mutes not shown yet
        self.mute_delay = 0.0  # seconds (fake clock) between a PATCH's 202 and the leg showing it; inf = never
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

    def add_user(self, email: str, name: str | None = None, *, permissions: Iterable[str] = ()) -> str:
        """Create a user whose roles hold these permissions and return its id."""
        user_id = str(uuid.uuid4())
        with self._lock:
            display = name or email.split("@", maxsplit=1)[0].title()
            self.users[user_id] = {"id": user_id, "email": email, "name": display}
            self.permissions[user_id] = set(permissions)
        return user_id

    def grant(self, user_id: str, permission: str) -> None:
        """Give a user a permission (a "domain:entity:action" string; "*" matches any one part)."""
        with self._lock:
            assert user_id in self.users, "unknown user"
            self.permissions[user_id].add(permission)

    def start_call(self, user_id: str, *, customer: bool = True, transferred: bool = False,
                   purpose: str = "agent", held: bool = False, recording: str = "none") -> tuple[str, str]:
        """Start a live voice call with the user connected (held if asked; recorded when recording="active") and
        return (conversation id, participant id)."""
        with self._lock:
            call = FakeCall(str(uuid.uuid4()), self._stamp(), recording_state=recording)
            if customer:
                call.participants.append(FakeParticipant(str(uuid.uuid4()), "customer", "connected", call.start_time))
                call.participants.append(FakeParticipant(str(uuid.uuid4()), "acd", "disconnected", self._stamp()))
            if transferred:  # the agent left (transfer away) and came back: an older disconnected leg
                stamp = self._stamp()
                call.participants.append(FakeParticipant(str(uuid.uuid4()), purpose, "disconnected", stamp, user_id,
                                                         connected_time=stamp))
            self.calls[call.id] = call
            participant_id = self.join_call(call.id, user_id, purpose=purpose)
            if held:
                self.hold(call.id, participant_id)
        return call.id, participant_id

    def hold(self, conversation_id: str, participant_id: str, held: bool = True) -> None:
        """Put a participant on hold (with a startHoldTime) or take it off hold."""
        with self._lock:
            participant = self._participant(conversation_id, participant_id)
            participant.held = held
            participant.start_hold_time = self._stamp() if held else None

    def monitor(self, conversation_id: str, supervisor_user_id: str, monitored_participant_id: str, *,
                coach: bool = False) -> str:
        """Add a supervisor's connected participant that monitors (or coaches) another one and return its id."""
        with self._lock:
            self._participant(conversation_id, monitored_participant_id)
            participant = FakeParticipant(str(uuid.uuid4()), "agent", "connected", self._stamp(), supervisor_user_id)
            if coach:
                participant.coached_participant_id = monitored_participant_id
            else:
                participant.monitored_participant_id = monitored_participant_id
            self.calls[conversation_id].participants.append(participant)
        return participant.id

    def disconnect(self, conversation_id: str, participant_id: str) -> None:
        """Disconnect one participant while the call goes on (a transfer away, or one leg hanging up)."""
        with self._lock:
            self._participant(conversation_id, participant_id).state = "disconnected"

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
        """Return a participant's muted flag (as a GET would show it now)."""
        with self._lock:
            self._settle_mutes()
            return self._participant(conversation_id, participant_id).muted

    def recording(self, conversation_id: str) -> str:
        """Return a call's recordingState: none, active or paused."""
        with self._lock:
            return self.calls[conversation_id].recording_state

    def refuse_recording(self, code: str | None = "missing.permissions") -> None:
        """Refuse every recording-state PUT with a code of REFUSALS (None: accept again)."""
        assert code is None or code in REFUSALS, f"unknown refusal {code}"
        with self._lock:
            self._recording_refusal = code

    def _participant(self, conversation_id: str, participant_id: str) -> FakeParticipant:
        """Return a participant of a call; AssertionError when there is none."""
        participant = self.calls[conversation_id].participant(participant_id)
        assert participant is not None, "unknown participant"
        return participant

    # -- users' tokens --

    def consent_as(self, user_id: str | None) -> None:
        """Make this user the one who approves the authorize requests from now on (None: nobody is logged in)."""
        with self._lock:
            assert user_id is None or user_id in self.users, "unknown user"
            self._consenting = user_id

    def deny_next(self, error: str = "access_denied") -> None:
        """Make the next authorize request redirect back with this error instead of a code."""
        with self._lock:
            self._deny = error

    def issued_secrets(self) -> list[str]:
        """Return every access token, refresh token and code the fake ever handed out (for log-scrub tests)."""
        with self._lock:
            return list(self._issued)

    def revoke_refresh(self, user_id: str) -> None:
        """Make every refresh token of the user invalid, as a logout or a password change does."""
        with self._lock:
            self._refresh_tokens = {t: r for t, r in self._refresh_tokens.items() if r.user_id != user_id}

    def expire_user_tokens(self, user_id: str) -> None:
        """Make the user's access tokens answer 401 from now on, as an idle timeout does (refresh still works)."""
        with self._lock:
            now = self.clock()
            for issued in self._tokens.values():
                if issued.user_id == user_id:
                    issued.expires_at = min(issued.expires_at, now)

    def refresh_tokens_of(self, user_id: str) -> int:
        """Return how many valid refresh tokens the user has."""
        with self._lock:
            now = self.clock()
            return sum(1 for r in self._refresh_tokens.values() if r.user_id == user_id and r.valid(now))

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
        """Make every issued access token invalid (answered 401), as an expiry would; refresh tokens stay valid."""
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
        app.add_url_rule("/oauth/authorize", view_func=self._authorize, methods=["GET"])
        app.add_url_rule("/api/v2/organizations/me", view_func=self._organization, methods=["GET"])
        app.add_url_rule("/api/v2/users/me", view_func=self._me, methods=["GET"])
        app.add_url_rule("/api/v2/tokens/me", view_func=self._delete_token, methods=["DELETE"])
        app.add_url_rule("/api/v2/users/search", view_func=self._search_users, methods=["POST"])
        app.add_url_rule("/api/v2/analytics/conversations/details/query", view_func=self._analytics,
                         methods=["POST"])
        app.add_url_rule("/api/v2/conversations/calls", view_func=self._my_calls, methods=["GET"])
        app.add_url_rule("/api/v2/conversations/calls/<cid>", view_func=self._get_call, methods=["GET"])
        app.add_url_rule("/api/v2/conversations/calls/<cid>/recordingstate", view_func=self._put_recording,
                         methods=["PUT"])
        app.add_url_rule("/api/v2/conversations/calls/<cid>/participants/<pid>", view_func=self._patch,
                         methods=["PATCH"])
        return app

    def _before(self) -> Response | None:
        """Log the request, apply an injected fault, and check the bearer token on /api/."""
        g.correlation_id = str(uuid.uuid4())
        scheme = (request.headers.get("Authorization") or "").split(" ")[0].lower()
        with self._lock:
            issued = self._tokens.get(_bearer_token())
        g.user_id = issued.user_id if issued is not None else None
        grant = request.form.get("grant_type") if request.path == "/oauth/token" else None
        g.logged = LoggedRequest(request.method, request.path, request.get_json(silent=True), self.clock(), scheme,
                                 client_port=int(request.environ.get("REMOTE_PORT") or 0) or None,
                                 user_id=g.user_id, grant=grant)
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
        """Tell whether the request carries a bearer token the fake issued that has not expired or been deleted."""
        with self._lock:
            issued = self._tokens.get(_bearer_token())
            return issued is not None and self.clock() < issued.expires_at

    def _issue(self, user_id: str | None, lifetime: float) -> str:
        """Issue an access token (call with the lock held)."""
        token = secrets.token_urlsafe(24)
        self._tokens[token] = IssuedToken(user_id, self.clock() + lifetime)
        self._issued.append(token)
        return token

    def _issue_refresh(self, user_id: str) -> str:
        """Issue a refresh token (call with the lock held)."""
        token = secrets.token_urlsafe(32)
        self._issued.append(token)
        lifetime = self.refresh_expires_in
        self._refresh_tokens[token] = RefreshToken(user_id, None if lifetime is None else self.clock() + lifetime)
        return token

    def _has(self, user_id: str | None, permission: str) -> bool:
        """Tell whether a user holds a permission; client credentials (None) hold every one."""
        if user_id is None:
            return True
        wanted = permission.split(":")
        with self._lock:
            held = [p.split(":") for p in self.permissions.get(user_id, set())]
        return any(len(p) == len(wanted) and all(h in {"*", w} for h, w in zip(p, wanted, strict=True))
                   for p in held)

    def _token(self) -> Response:
        """POST /oauth/token: client credentials (the API client); authorization code and refresh (the user client)."""
        auth = request.authorization
        credentials = (auth.username, auth.password) if auth is not None and auth.type == "basic" else None
        if credentials == (self.client_id, self.client_secret):
            user_client = False
        elif credentials == (self.user_client_id, self.user_client_secret):
            user_client = True
        else:
            return oauth_error(401, "invalid_client")
        grant = request.form.get("grant_type")
        if grant not in GRANTS:
            return oauth_error(400, "unsupported_grant_type")
        if user_client == (grant == "client_credentials"):
            return oauth_error(400, "unauthorized_client", "the client is not allowed to use this grant type")
        if grant == "authorization_code":
            return self._exchange_code(request.form)
        if grant == "refresh_token":
            return self._refresh(request.form)
        with self._lock:
            token = self._issue(None, self.expires_in)
        return jsonify(access_token=token, token_type="bearer", expires_in=self.expires_in)

    def _exchange_code(self, form: Mapping[str, str]) -> Response:
        """Exchange an authorization code (single use, CODE_LIFETIME s) for an access and a refresh token."""
        with self._lock:
            code = self._codes.pop(form.get("code") or "", None)
            if code is None or self.clock() >= code.expires_at:
                return oauth_error(400, "invalid_grant", "the authorization code is invalid, expired or used")
            if form.get("redirect_uri") != code.redirect_uri:
                return oauth_error(400, "invalid_grant", "redirect_uri does not match the authorization request")
            if code.challenge is not None and not _verifies(form.get("code_verifier"), code.challenge):
                return oauth_error(400, "invalid_grant", "code_verifier does not match the code_challenge")
            self.code_exchanges += 1
            access, refresh = self._issue(code.user_id, self.user_expires_in), self._issue_refresh(code.user_id)
        return jsonify(access_token=access, token_type="bearer", expires_in=self.user_expires_in,
                       refresh_token=refresh)

    def _refresh(self, form: Mapping[str, str]) -> Response:
        """Use a refresh token: a new access token, and with rotate_refresh a new refresh token replacing it."""
        with self._lock:  # one refresh at a time: of two uses of a rotated token, exactly one succeeds
            presented = form.get("refresh_token") or ""
            record = self._refresh_tokens.get(presented)
            if record is None or not record.valid(self.clock()):
                self._refresh_tokens.pop(presented, None)
                return oauth_error(400, "invalid_grant", "the refresh token is invalid, expired or revoked")
            self.refreshes += 1
            answer: Json = {"access_token": self._issue(record.user_id, self.user_expires_in),
                            "token_type": "bearer", "expires_in": self.user_expires_in}
            if self.rotate_refresh:
                del self._refresh_tokens[presented]
                answer["refresh_token"] = self._issue_refresh(record.user_id)
        return jsonify(answer)

    def _authorize(self) -> Response:
        """GET /oauth/authorize: the consenting user (consent_as) approves, or refuses once (deny_next); 302 back."""
        args = request.args
        redirect_uri, state = args.get("redirect_uri") or "", args.get("state")
        challenge, method = args.get("code_challenge"), args.get("code_challenge_method")
        problem = self._authorize_problem(args)
        if problem is not None:
            return login_error(problem)
        with self._lock:
            denied, self._deny = self._deny, None
            if denied is not None:
                return redirect_back(redirect_uri, {"error": denied, "state": state})
            if self._consenting is None:
                return login_error("Nobody is logged in to approve this request.")
            code = secrets.token_urlsafe(24)
            self._issued.append(code)
            self._codes[code] = AuthorizationCode(self._consenting, redirect_uri, challenge,
                                                  method if challenge is not None else None,
                                                  self.clock() + CODE_LIFETIME)
        return redirect_back(redirect_uri, {"code": code, "state": state})

    def _authorize_problem(self, args: Mapping[str, str]) -> str | None:
        """Return why an authorize request cannot even be redirected back, or None."""
        if args.get("client_id") != self.user_client_id:
            return "The client is unknown or not allowed to use this grant."
        if args.get("response_type") != "code":
            return "The response_type is not supported."
        if not args.get("redirect_uri"):
            return "A redirect_uri is required."
        if args.get("code_challenge") is not None and args.get("code_challenge_method") != "S256":
            return "The code_challenge_method must be S256."
        return None

    def _me(self) -> Response:
        """GET /api/v2/users/me: the token's user; not valid with client credentials."""
        user_id = g.get("user_id")
        if user_id is None:
            return error(400, "not.a.user", USER_CONTEXT)
        with self._lock:
            user = self.users[user_id]
        return jsonify(id=user_id, name=user["name"], email=user["email"], state="active",
                       selfUri=f"/api/v2/users/{user_id}", version=1)

    def _delete_token(self) -> Response:
        """DELETE /api/v2/tokens/me: delete the bearer token of this request; 204 with an empty body."""
        with self._lock:
            self._tokens.pop(_bearer_token(), None)
            self.revoked_tokens += 1
        return Response(status=204)

    def _my_calls(self) -> Response:
        """GET /api/v2/conversations/calls: the token user's live calls (a CallConversationEntityListing)."""
        user_id = g.get("user_id")
        if user_id is None:
            return error(400, "not.a.user", USER_CONTEXT)
        with self._lock:
            self._settle_mutes()
            calls = [c for c in self.calls.values()
                     if not c.ended and any(p.user_id == user_id and p.state != "disconnected" for p in c.participants)]
            calls.sort(key=lambda c: c.start_time, reverse=True)
            entities = [c.as_json() for c in calls[:PAGE_SIZE]]
        pages = math.ceil(len(calls) / PAGE_SIZE)
        uri = "/api/v2/conversations/calls?pageSize=25&pageNumber="
        return jsonify(entities=entities, pageSize=PAGE_SIZE, pageNumber=1, total=len(calls), pageCount=pages,
                       selfUri=f"{uri}1", firstUri=f"{uri}1", lastUri=f"{uri}{max(pages, 1)}")

    def _permission_refusal(self, permission: str) -> Response | None:
        """In strict mode, refuse a user token whose user lacks the permission (403 missing.permissions)."""
        if not self.strict or self._has(g.get("user_id"), permission):
            return None
        return missing_permission(permission)

    def _participant_rule(self, participant: FakeParticipant) -> Response | None:
        """Apply the strict participant rule: a user changes their own leg, or any leg with DISCONNECT."""
        user_id = g.get("user_id")
        if user_id is None:
            return error(400, "not.a.user", USER_CONTEXT)
        if participant.user_id == user_id or self._has(user_id, DISCONNECT):
            return None
        return missing_permission(DISCONNECT)

    def _organization(self) -> Response:
        return jsonify(id=str(uuid.UUID(int=1)), name="Fake Org", defaultLanguage="en-us", state="active",
                       thirdPartyOrgName="fakeorg", selfUri="/api/v2/organizations/me")

    def _search_users(self) -> Response:
        """POST /api/v2/users/search: an EXACT e-mail query as the client sends it."""
        refused = self._permission_refusal(DIRECTORY_VIEW)
        if refused is not None:
            return refused
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
        refused = self._permission_refusal(ANALYTICS_VIEW)
        if refused is not None:
            return refused
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
            self._settle_mutes()
            call = self.calls.get(cid)
            if call is None:
                return error(404, "not.found", "The requested conversation was not found.")
            answer = jsonify(call.as_json())
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
            refused = self._patch_refusal(call, participant)
            if refused is not None:
                return refused
            if not isinstance(body, dict) or set(body) != {"muted"} or not isinstance(body["muted"], bool):
                return error(400, "bad.request", "The request could not be understood by the server due to "
                                                 "malformed syntax.")
            if self.mute_delay:  # Genesys answers 202 before the change: the leg shows it only later
                self._pending_mutes[(cid, pid)] = (body["muted"], self.clock() + self.mute_delay)
            else:
                participant.muted = body["muted"]
        return Response(status=202)

    def _put_recording(self, cid: str) -> Response:
        """PUT /api/v2/conversations/calls/{id}/recordingstate: {"recordingState": "paused" | "active"}; 202."""
        body = request.get_json(silent=True)
        wanted = str(body.get("recordingState", "")).lower() if isinstance(body, dict) else ""
        with self._lock:
            call = self.calls.get(cid)
            if call is None:
                return error(404, "not.found", "The requested conversation was not found.")
            # Secure pause needs the permission, not a participant (Genesys' announcement of it): client
            # credentials hold every permission here; a user token needs it in strict mode.
            refused = self._permission_refusal(RECORDING_PAUSE)
            if refused is not None:
                return refused
            if self._recording_refusal is not None:
                status, message = REFUSALS[self._recording_refusal]
                return error(status, self._recording_refusal, message)
            if call.ended:
                return error(400, "conversation.error.call.disconnected", "The call is disconnected.")
            if not isinstance(body, dict) or set(body) != {"recordingState"} or wanted not in ("paused", "active"):
                return error(400, "bad.request", "The request could not be understood by the server due to "
                                                 "malformed syntax.")
            call.recording_state = wanted
        return Response(status=202)

    def _settle_mutes(self) -> None:
        """Apply the asynchronous mutes whose delay has passed (call with the lock held)."""
        now = self.clock()
        for (cid, pid), (value, at) in list(self._pending_mutes.items()):
            if now >= at:
                participant = self.calls[cid].participant(pid)
                if participant is not None:
                    participant.muted = value
                del self._pending_mutes[(cid, pid)]

    def _patch_refusal(self, call: FakeCall, participant: FakeParticipant) -> Response | None:
        """Return the refusal of a PATCH of a known participant (the rule when strict, refuse_mutes, a gone call)."""
        refused = self._participant_rule(participant) if self.strict else None
        if refused is not None:
            return refused
        refusal = self._refusals.get(participant.user_id) or self._refusals.get(None)
        if refusal is not None:
            status, message = REFUSALS[refusal]
            return error(status, refusal, message)
        if not call.ended and participant.state != "disconnected":
            return None
        if self.strict:
            return error(400, "conversation.error.call.disconnected", "The call is disconnected.")
        return error(404, "not.found", "The requested conversation was not found.")


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


def oauth_error(status: int, code: str, description: str = "authentication failed") -> Response:
    """Return an answer in the login host's OAuth error shape."""
    response = jsonify(error=code, description=description, error_description=description)
    response.status_code = status
    return response


def missing_permission(permission: str) -> Response:
    """Return Genesys' 403 missing.permissions answer naming one permission."""
    return error(403, "missing.permissions", f"You are missing the following permission(s): {permission}")


def login_error(message: str) -> Response:
    """Return the login host's error page (400, HTML): an authorize request it will not redirect back."""
    page = (f"<!DOCTYPE html><html><head><title>Genesys Cloud: error</title></head>"
            f"<body><h1>Something went wrong</h1><p>{html.escape(message)}</p></body></html>")
    return Response(page, status=400, mimetype="text/html")


def redirect_back(redirect_uri: str, params: Mapping[str, str | None]) -> Response:
    """Return a 302 to redirect_uri with params added to its query (its own query kept; None values left out)."""
    parts = urlsplit(redirect_uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + [(k, v) for k, v in params.items() if v is not None]
    return Response(status=302, headers={"Location": urlunsplit(parts._replace(query=urlencode(query)))})


def pkce_challenge(verifier: str) -> str:
    """Return the S256 code_challenge of a code_verifier: base64url, no padding, of its SHA-256."""
    digest = hashlib.sha256(verifier.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _verifies(verifier: str | None, challenge: str) -> bool:
    """Tell whether a code_verifier matches an S256 code_challenge."""
    return verifier is not None and hmac.compare_digest(pkce_challenge(verifier), challenge)


def _bearer_token() -> str:
    """Return the bearer token of the current request, or "" when there is none."""
    scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
    return token if scheme.lower() == "bearer" else ""


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
