"""Genesys Cloud client: a cached OAuth token, bounded retries, the agent's live call, and mute."""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import requests
from cachetools import TTLCache

from webhook.errors import (
    STATUS_ERRORS,
    GenesysAuthError,
    GenesysBadRequestError,
    GenesysBudgetError,
    GenesysError,
    GenesysNotFoundError,
    GenesysPermissionError,
    GenesysRateLimitedError,
    GenesysThrottledError,
    GenesysUnavailableError,
)
from webhook.regions import region_hosts

logger = logging.getLogger(__name__)

Json = dict[str, Any]
V = TypeVar("V")

DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)
MAX_ATTEMPTS = 6  # tries of one request, the first included (a 401 re-login is not counted)
MAX_RETRY_AFTER = 180.0  # the official SDKs give up on a longer Retry-After
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
RETRYABLE_STATUSES = frozenset({502, 503, 504})
DEFAULT_EXPIRES_IN = 300.0  # Genesys' shortest token lifetime, assumed when the login omits expires_in
CORRELATION_HEADER = "ININ-Correlation-Id"
# Genesys' default limit per client-credentials token (client.credentials.token.rate.per.minute on its limits page).
DEFAULT_REQUESTS_PER_MINUTE = 300.0
MIN_REQUESTS_PER_MINUTE = 10.0  # below this the bucket would hold under one request
BURST_SHARE = 0.1  # the bucket holds a tenth of the minute's allowance; the rest refills over the minute
LIMIT_WINDOW = 60.0
NEW_WINDOW_SLACK = 1.5  # inin-ratelimit-reset is whole seconds: an end this much past the known one is a new window
RATELIMIT_ALLOWED = "inin-ratelimit-allowed"
RATELIMIT_COUNT = "inin-ratelimit-count"
RATELIMIT_RESET = "inin-ratelimit-reset"

TOKEN_PATH = "/oauth/token"
USERS_SEARCH_PATH = "/api/v2/users/search"
ANALYTICS_PATH = "/api/v2/analytics/conversations/details/query"
ORGANIZATION_PATH = "/api/v2/organizations/me"
AGENT_PURPOSES = frozenset({"agent", "user"})
CALL_DISCONNECTED = "conversation.error.call.disconnected"
PROBE_EMAIL = "genesys-check@example.invalid"
PROBE_USER_ID = "00000000-0000-0000-0000-000000000000"

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TOKEN_KEY = "token"
_TRANSIENT = (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError)


@dataclass(frozen=True)
class Attempt:
    """One HTTP request to Genesys, as recorded with the event it served."""

    method: str
    path: str
    status: int | None
    code: str | None
    correlation_id: str | None
    duration_ms: float
    error: str | None


Recorder = Callable[[Attempt], None]


@dataclass(frozen=True)
class Target:
    """Where to apply a mute: the agent's connected participant on a live call."""

    user_id: str
    conversation_id: str
    participant_id: str
    muted: bool | None


@dataclass(frozen=True)
class CheckResult:
    """One line of `genesys check`."""

    name: str
    ok: bool
    detail: str


class TokenSource(Protocol):
    """Gives bearer tokens: client credentials now, a per-agent user token later."""

    def token(self, *, deadline: float, record: Recorder | None = None) -> str:
        """Return a bearer token, fetching one if needed before deadline."""
        ...

    def invalidate(self, token: str) -> None:
        """Drop token if it is still the cached one."""
        ...


# --- retry decisions (pure) -------------------------------------------------------------------------------------


def retry_delay(
    *,
    status: int | None,
    attempt: int,
    retry_after: float | None,
    now: float,
    deadline: float,
    rng: Callable[[], float],
) -> float | None:
    """Return the seconds to wait before retrying failed attempt number `attempt` (0 = first), or None: do not retry."""
    if attempt + 1 >= MAX_ATTEMPTS:
        return None
    if status == 429:
        if retry_after is not None and retry_after > MAX_RETRY_AFTER:
            return None
        wait = _backoff(attempt, rng) if retry_after is None else max(0.0, retry_after)
    elif status is None or status in RETRYABLE_STATUSES:
        wait = _backoff(attempt, rng)
    else:
        return None
    return wait if now + wait < deadline else None


def _backoff(attempt: int, rng: Callable[[], float]) -> float:
    """Return an equal-jitter exponential backoff: half of the step fixed, half random."""
    step = min(BACKOFF_CAP, BACKOFF_BASE * 2.0**attempt)
    return step / 2 + rng() * step / 2


# --- request spacing (a token bucket per process, i.e. per OAuth token) ---------------------------------------


@dataclass(frozen=True)
class RateLimitHeaders:
    """An answer's inin-ratelimit-* headers: `count` of `allowed` requests used; the window ends in `reset` s."""

    allowed: int
    count: int
    reset: float


def ratelimit_headers(headers: Mapping[str, str]) -> RateLimitHeaders | None:
    """Return the inin-ratelimit-* values of an answer, or None when one is missing or not a non-negative number."""
    try:
        values = RateLimitHeaders(int(headers[RATELIMIT_ALLOWED]), int(headers[RATELIMIT_COUNT]),
                                  float(headers[RATELIMIT_RESET]))
    except (KeyError, ValueError):
        return None
    if min(values.allowed, values.count, values.reset) < 0 or not math.isfinite(values.reset):
        return None
    return values


class RateLimiter:
    """Spaces this process's Genesys API requests: a thread-safe token bucket, narrowed by what Genesys reports.

    The bucket holds a tenth of the minute's allowance and refills the rest over the minute, so that no 60 s window
    ever carries more than `per_minute` requests (whether Genesys counts in fixed or sliding windows). When answers
    carry inin-ratelimit-* headers and the current window's allowance is spent, requests wait for its reset; a 429's
    Retry-After holds every thread, not only the one that got it. Slots are reserved under the lock (the bucket may go
    below zero) and waited for outside it, so waiting threads queue in order.
    """

    def __init__(self, per_minute: float, *, clock: Callable[[], float]) -> None:
        if per_minute < MIN_REQUESTS_PER_MINUTE:
            raise ValueError(f"requests per minute must be at least {MIN_REQUESTS_PER_MINUTE:g}, got {per_minute:g}")
        self.per_minute = per_minute
        self.capacity = max(1.0, per_minute * BURST_SHARE)
        self.rate = (per_minute - self.capacity) / LIMIT_WINDOW  # requests per second
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._stamp = clock()
        self._hold_until = -math.inf
        self._window_end = -math.inf  # the Genesys window the headers describe, and the requests it has left
        self._window_left = 0
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"RateLimiter({self.per_minute:g}/min)"

    def reserve(self, deadline: float) -> float:
        """Take the next free slot and return the seconds to wait for it; GenesysThrottledError when it is too late."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            bucket = now if self._tokens >= 1 else now + (1 - self._tokens) / self.rate
            window = self._window_end if now < self._window_end and self._window_left <= 0 else now
            at = max(now, self._hold_until, bucket, window)
            if at >= deadline:
                raise GenesysThrottledError(
                    f"rate limit: next Genesys slot in {at - now:.1f} s is past this event's budget "
                    f"({max(deadline - now, 0.0):.1f} s left; limit {self.per_minute:g} requests a minute)")
            self._tokens -= 1
            if at < self._window_end:
                self._window_left -= 1
            self._in_flight += 1
            return at - now

    def settle(self, reported: RateLimitHeaders | None = None, retry_after: float | None = None) -> None:
        """Close a reserved slot once its answer (or failure) is in, learning from the answer's rate-limit headers."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            now = self._clock()
            if retry_after is not None and retry_after <= MAX_RETRY_AFTER:  # past it the event gives up, nobody waits
                self._hold_until = max(self._hold_until, now + retry_after)
            if reported is not None:
                self._narrow(reported, now)

    def _narrow(self, reported: RateLimitHeaders, now: float) -> None:
        """Take Genesys' count for the current window; requests still in flight may not be in it yet."""
        left = reported.allowed - reported.count - self._in_flight
        end = now + reported.reset
        if now >= self._window_end or end > self._window_end + NEW_WINDOW_SLACK:
            self._window_end, self._window_left = end, left
        else:
            self._window_left = min(self._window_left, left)
            self._window_end = max(self._window_end, end)


# --- one HTTP exchange --------------------------------------------------------------------------------------------


def _exchange(
    session: requests.Session,
    method: str,
    url: str,
    path: str,
    *,
    clock: Callable[[], float],
    timeout: tuple[float, float],
    record: Recorder | None,
    **kwargs: Any,
) -> requests.Response:
    """Send one request and report it as an Attempt; no answer becomes GenesysUnavailableError."""
    started = clock()
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        _report(record, Attempt(method, path, None, None, None, _elapsed_ms(clock, started), f"no answer: {reason}"))
        logger.warning("genesys %s %s: no answer (%s)", method, path, reason)
        # A timeout or a broken connection may heal; anything else (a bad URL, say) will not.
        cls = GenesysUnavailableError if isinstance(exc, _TRANSIENT) else GenesysError
        raise cls(f"Genesys did not answer {method} {path} ({reason})") from exc
    code, message = _error_fields(response) if response.status_code >= 400 else (None, None)
    correlation_id = response.headers.get(CORRELATION_HEADER)
    attempt = Attempt(method, path, response.status_code, code, correlation_id, _elapsed_ms(clock, started), message)
    _report(record, attempt)
    _log_attempt(attempt)
    return response


def _report(record: Recorder | None, attempt: Attempt) -> None:
    """Hand an attempt to the caller's recorder, if any."""
    if record is not None:
        record(attempt)


def _log_attempt(attempt: Attempt) -> None:
    """Log an attempt's ids and status only (never a body or a token)."""
    level = logging.DEBUG if attempt.status is not None and attempt.status < 400 else logging.WARNING
    logger.log(level, "genesys %s %s -> %s code=%s correlation_id=%s", attempt.method, attempt.path,
               attempt.status, attempt.code, attempt.correlation_id)


def _elapsed_ms(clock: Callable[[], float], started: float) -> float:
    """Return the milliseconds since started."""
    return round((clock() - started) * 1000, 3)


def _bounded_timeout(timeout: tuple[float, float], remaining: float) -> tuple[float, float]:
    """Return the (connect, read) timeout cut to the time left; GenesysBudgetError when none is left."""
    if remaining <= 0:
        raise GenesysBudgetError("the deadline passed before the request to Genesys could be sent")
    return min(timeout[0], remaining), min(timeout[1], remaining)


def _error_fields(response: requests.Response) -> tuple[str | None, str]:
    """Return the Genesys (or OAuth) error code and message of an answer; a non-JSON body does not crash."""
    body = _json_or_none(response)
    if not isinstance(body, dict):
        return None, f"{response.reason or 'error'} (the answer is not JSON)"
    code = body.get("code") or body.get("error")
    message = body.get("message") or body.get("error_description") or body.get("description") or response.reason
    return (str(code) if code else None), str(message or "")


def _json_or_none(response: requests.Response) -> Any:
    """Return the JSON body of an answer, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _json_body(response: requests.Response) -> Json:
    """Return the JSON object of a successful answer; GenesysError when it is something else."""
    body = _json_or_none(response)
    if not isinstance(body, dict):
        raise GenesysError("Genesys answered without the expected JSON object", status=response.status_code,
                           correlation_id=response.headers.get(CORRELATION_HEADER))
    return body


def _error_from(response: requests.Response) -> GenesysError:
    """Return the error of an error answer: class by status, Genesys code, message and correlation id verbatim."""
    code, message = _error_fields(response)
    cls = STATUS_ERRORS.get(response.status_code, GenesysError)
    details: dict[str, Any] = {"status": response.status_code, "code": code,
                               "correlation_id": response.headers.get(CORRELATION_HEADER)}
    if issubclass(cls, GenesysRateLimitedError):
        return cls(message, retry_after=_retry_after(response), **details)
    return cls(message, **details)


def _retry_after(response: requests.Response) -> float | None:
    """Return the Retry-After header in seconds, or None when absent or not a finite number."""
    try:
        value = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
    return max(0.0, value) if math.isfinite(value) else None


# --- the token --------------------------------------------------------------------------------------------------


class ClientCredentials:
    """An OAuth client-credentials token source: one cached token, fetched by one thread at a time."""

    def __init__(
        self,
        login_url: str,
        client_id: str,
        client_secret: str,
        *,
        session: requests.Session,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        margin: float = 60.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = login_url.rstrip("/") + TOKEN_PATH
        self._auth = (client_id, client_secret)
        self._session = session
        self._timeout = timeout
        self._margin = margin
        self._timer = timer
        self._lock = threading.Lock()
        # Replaced whole, never changed in place, so the lock-free first read sees a finished cache.
        self._cache: TTLCache[str, str] = TTLCache(maxsize=1, ttl=1, timer=timer)
        self.fetches = 0

    def __repr__(self) -> str:
        return f"ClientCredentials({self._url!r}, fetches={self.fetches})"

    def token(self, *, deadline: float, record: Recorder | None = None) -> str:
        """Return the cached token, or log in for a new one (one thread at a time) before deadline."""
        cached = self._cache.get(_TOKEN_KEY)
        if cached is not None:
            return cached
        if not self._lock.acquire(timeout=max(0.0, deadline - self._timer())):
            raise GenesysBudgetError("the deadline passed while another thread was logging in to Genesys")
        try:
            cached = self._cache.get(_TOKEN_KEY)
            return cached if cached is not None else self._fetch(deadline, record)
        finally:
            self._lock.release()

    def invalidate(self, token: str) -> None:
        """Drop token if it is still the cached one (another thread may already have replaced it)."""
        with self._lock:
            if self._cache.get(_TOKEN_KEY) == token:
                self._cache = TTLCache(maxsize=1, ttl=1, timer=self._timer)

    def _fetch(self, deadline: float, record: Recorder | None) -> str:
        """POST the client credentials to the login host and cache the token for its lifetime minus the margin."""
        timeout = _bounded_timeout(self._timeout, deadline - self._timer())
        self.fetches += 1
        response = _exchange(self._session, "POST", self._url, TOKEN_PATH, clock=self._timer, timeout=timeout,
                             record=record, auth=self._auth, data={"grant_type": "client_credentials"},
                             headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise _login_error(response)
        token, expires_in = _token_fields(response)
        cache: TTLCache[str, str] = TTLCache(maxsize=1, ttl=token_ttl(expires_in, self._margin), timer=self._timer)
        cache[_TOKEN_KEY] = token
        self._cache = cache
        logger.info("genesys token fetched, expires_in=%s", expires_in)
        return token


def token_ttl(expires_in: float, margin: float) -> float:
    """Return how long to keep a token: its lifetime minus the margin, never under a tenth of the lifetime."""
    return max(expires_in - margin, expires_in / 10)


def _token_fields(response: requests.Response) -> tuple[str, float]:
    """Return the access token and its lifetime from a login answer."""
    body = _json_or_none(response)
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise GenesysAuthError("the Genesys login answered 200 without an access_token", status=response.status_code,
                               correlation_id=response.headers.get(CORRELATION_HEADER))
    try:
        expires_in = float(body["expires_in"])
    except (KeyError, TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    return token, expires_in if expires_in > 0 else DEFAULT_EXPIRES_IN


def _login_error(response: requests.Response) -> GenesysError:
    """Return the error of a failed login: a refusal is GenesysAuthError, 429 and 5xx stay retryable."""
    if response.status_code == 429 or response.status_code >= 500:
        return _error_from(response)
    code, message = _error_fields(response)
    return GenesysAuthError(f"the Genesys login refused the client credentials: {message}",
                            status=response.status_code, code=code,
                            correlation_id=response.headers.get(CORRELATION_HEADER))


# --- the client -------------------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    """Return the current UTC time."""
    return datetime.now(UTC)


class GenesysClient:
    """The Genesys Cloud Platform API calls of this service, each retried within the caller's deadline."""

    def __init__(
        self,
        api_url: str,
        tokens: TokenSource,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wallclock: Callable[[], datetime] = _utcnow,
        rng: Callable[[], float] = random.random,
        user_ttl: float = 3600,
        call_ttl: float = 30,
        requests_per_minute: float = DEFAULT_REQUESTS_PER_MINUTE,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.tokens = tokens
        self._session = session if session is not None else requests.Session()
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._wallclock = wallclock
        self._rng = rng
        self._lock = threading.Lock()  # TTLCache is not thread-safe
        self._users: TTLCache[str, str] = TTLCache(maxsize=4096, ttl=user_ttl, timer=clock)
        self._targets: TTLCache[str, Target] = TTLCache(maxsize=4096, ttl=call_ttl, timer=clock)
        # One bucket per client, i.e. per process and per OAuth token, shared by the worker threads; 0 turns it off.
        self.limiter = RateLimiter(requests_per_minute, clock=clock) if requests_per_minute else None

    @classmethod
    def from_credentials(
        cls,
        *,
        region: str,
        client_id: str,
        client_secret: str,
        api_url: str | None = None,
        login_url: str | None = None,
        **kwargs: Any,
    ) -> GenesysClient:
        """Build a client with a client-credentials token for a region; explicit URLs win over the region's."""
        if api_url is None or login_url is None:
            region_api, region_login = region_hosts(region)
            api_url, login_url = api_url or region_api, login_url or region_login
        session = kwargs.pop("session", None) or requests.Session()
        tokens = ClientCredentials(login_url, client_id, client_secret, session=session,
                                   timeout=kwargs.get("timeout", DEFAULT_TIMEOUT),
                                   timer=kwargs.get("clock", time.monotonic))
        return cls(api_url, tokens, session=session, **kwargs)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    # -- users, calls, mute --

    def resolve_user(self, agent: str, *, deadline: float, record: Recorder | None = None) -> str:
        """Return the Genesys user id of an agent given as a user id (used as is) or an e-mail (searched, cached)."""
        name = agent.strip()
        if _UUID.match(name):
            return name.lower()
        if not _EMAIL.match(name):
            raise GenesysNotFoundError(f"agent {agent!r} is neither a Genesys user id (UUID) nor an e-mail; "
                                       "send one of them, or map the CRM id in [agents] of the config")
        user_id = self._cached(self._users, name.lower())
        if user_id is None:
            user_id = self._search_user(name, deadline, record)
            self._remember(self._users, name.lower(), user_id)
        return user_id

    def find_target(
        self,
        agent: str,
        *,
        conversation_id: str | None = None,
        deadline: float,
        record: Recorder | None = None,
    ) -> Target | None:
        """Return the agent's connected participant on a live voice call, or None when there is no such call."""
        user_id = self.resolve_user(agent, deadline=deadline, record=record)
        cached = self._cached(self._targets, user_id)
        if cached is not None and conversation_id in (None, cached.conversation_id):
            return cached
        candidates = [conversation_id] if conversation_id else self._live_conversations(user_id, deadline, record)
        for candidate in candidates:
            target = self._target_in(candidate, user_id, deadline, record)
            if target is not None:
                self._remember(self._targets, user_id, target)
                return target
        return None

    def set_muted(self, target: Target, muted: bool, *, deadline: float, record: Recorder | None = None) -> None:
        """Mute or unmute the target participant (202, empty body); a vanished call drops the cached target."""
        path = (f"/api/v2/conversations/calls/{_segment(target.conversation_id)}"
                f"/participants/{_segment(target.participant_id)}")
        try:
            self._call("PATCH", path, deadline=deadline, record=record, body={"muted": muted})
        except (GenesysNotFoundError, GenesysBadRequestError) as error:
            if isinstance(error, GenesysNotFoundError) or error.code == CALL_DISCONNECTED:
                self.forget(target.user_id)
            raise
        # Genesys just accepted it, so the target is live: keep it, with the flag it now has.
        self._remember(self._targets, target.user_id, replace(target, muted=muted))

    def forget(self, user_id: str) -> None:
        """Drop the cached target of a user."""
        with self._lock:
            self._targets.pop(user_id, None)

    def check(self, *, deadline: float) -> list[CheckResult]:
        """Check the login, the org and the permissions this service needs; explain the participant rule."""
        results = [self._check_token(deadline)]
        if results[0].ok:
            results += [
                self._probe("organization", None, lambda: self._call("GET", ORGANIZATION_PATH, deadline=deadline)),
                self._probe("user search", "directory:user:view", lambda: self._call(
                    "POST", USERS_SEARCH_PATH, deadline=deadline, body=user_search_body(PROBE_EMAIL))),
                self._probe("analytics", "analytics:conversationDetail:view", lambda: self._call(
                    "POST", ANALYTICS_PATH, deadline=deadline, body=analytics_body(PROBE_USER_ID, self._wallclock()))),
            ]
        return [*results, CheckResult("participant rule", True, PARTICIPANT_RULE_NOTE)]

    # -- lookups --

    def _search_user(self, email: str, deadline: float, record: Recorder | None) -> str:
        """Return the id of the user with this e-mail; GenesysNotFoundError when there is none."""
        response = self._call("POST", USERS_SEARCH_PATH, deadline=deadline, record=record,
                              body=user_search_body(email))
        results = _json_body(response).get("results") or []
        if not results or not isinstance(results[0], dict) or not results[0].get("id"):
            raise GenesysNotFoundError(f"no Genesys user has the e-mail {email}; fix the agent's e-mail in the CRM "
                                       "or map the agent in [agents] of the config",
                                       correlation_id=response.headers.get(CORRELATION_HEADER))
        return str(results[0]["id"])

    def _live_conversations(self, user_id: str, deadline: float, record: Recorder | None) -> list[str]:
        """Return the ids of the user's live voice conversations, newest first, from the analytics query."""
        response = self._call("POST", ANALYTICS_PATH, deadline=deadline, record=record,
                              body=analytics_body(user_id, self._wallclock()))
        conversations = _json_body(response).get("conversations") or []
        return [str(c["conversationId"]) for c in conversations if isinstance(c, dict) and c.get("conversationId")]

    def _target_in(self, conversation_id: str, user_id: str, deadline: float, record: Recorder | None) -> Target | None:
        """Return the user's connected participant in one call, or None (no such participant, or the call is gone)."""
        try:
            response = self._call("GET", f"/api/v2/conversations/calls/{_segment(conversation_id)}",
                                  deadline=deadline, record=record)
        except GenesysNotFoundError:
            logger.info("genesys call %s not found for user %s", conversation_id, user_id)
            return None
        participant = agent_participant(_json_body(response), user_id)
        if participant is None:
            return None
        muted = participant.get("muted")
        return Target(user_id, conversation_id, str(participant["id"]), muted if isinstance(muted, bool) else None)

    def _probe(self, name: str, permission: str | None, run: Callable[[], object]) -> CheckResult:
        """Run one check request; a 403 names the permission the OAuth client's role lacks."""
        try:
            run()
        except GenesysPermissionError as error:
            return CheckResult(name, False, f"missing permission {permission or '(see the message)'}: add it to the "
                                            f"OAuth client's role. {explain(error)}")
        except GenesysError as error:
            return CheckResult(name, False, explain(error))
        return CheckResult(name, True, f"allowed ({permission})" if permission else f"reachable at {self.api_url}")

    def _check_token(self, deadline: float) -> CheckResult:
        """Check that the token source gives a token."""
        try:
            self.tokens.token(deadline=deadline)
        except GenesysError as error:
            return CheckResult("token", False, explain(error))
        return CheckResult("token", True, "the OAuth client credentials were accepted")

    # -- the one request path --

    def _call(
        self,
        method: str,
        path: str,
        *,
        deadline: float,
        record: Recorder | None = None,
        body: Json | None = None,
    ) -> requests.Response:
        """Send one API request: bearer token, one re-login on 401, retries per retry_delay, all before deadline."""
        attempt, relogged = 0, False
        while True:
            try:
                token = self.tokens.token(deadline=deadline, record=record)
                response = self._send(method, path, token, deadline, record, body)
            except (GenesysUnavailableError, GenesysRateLimitedError) as error:
                failure: GenesysError = error
            else:
                if response.status_code < 400:
                    return response
                if response.status_code == 401 and not relogged:
                    self.tokens.invalidate(token)
                    relogged = True
                    continue
                failure = _error_from(response)
            self._pause_or_raise(failure, attempt, deadline)
            attempt += 1

    def _send(self, method: str, path: str, token: str, deadline: float, record: Recorder | None,
              body: Json | None) -> requests.Response:
        """Wait for a rate-limiter slot, then send one request (bearer token, timeout cut to the time left)."""
        if self.limiter is None:
            return self._exchange(method, path, token, deadline, record, body)
        wait = self.limiter.reserve(deadline)
        response: requests.Response | None = None
        try:  # the slot is settled whatever happens from here on, or its request would count as in flight for good
            if wait > 0:
                logger.debug("genesys %s %s waits %.3fs for a rate-limit slot", method, path, wait)
                self._sleep(wait)
            response = self._exchange(method, path, token, deadline, record, body)
        finally:
            if response is None:
                self.limiter.settle()
            else:
                self.limiter.settle(ratelimit_headers(response.headers),
                                    _retry_after(response) if response.status_code == 429 else None)
        return response

    def _exchange(self, method: str, path: str, token: str, deadline: float, record: Recorder | None,
                  body: Json | None) -> requests.Response:
        """Send one request with the bearer token and a timeout cut to the time left."""
        timeout = _bounded_timeout(self._timeout, deadline - self._clock())
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        return _exchange(self._session, method, self.api_url + path, path, clock=self._clock, timeout=timeout,
                         record=record, json=body, headers=headers)

    def _pause_or_raise(self, failure: GenesysError, attempt: int, deadline: float) -> None:
        """Sleep before the next try, or raise the failure (GenesysBudgetError when only time stopped the retry)."""
        retry_after = failure.retry_after if isinstance(failure, GenesysRateLimitedError) else None
        now = self._clock()
        wait = retry_delay(status=failure.status, attempt=attempt, retry_after=retry_after, now=now,
                           deadline=deadline, rng=self._rng)
        if wait is not None:
            logger.info("genesys retry in %.2fs after %s %s", wait, failure.status, failure.code or "")
            self._sleep(wait)
            return
        if retry_delay(status=failure.status, attempt=attempt, retry_after=retry_after, now=now,
                       deadline=math.inf, rng=self._rng) is None:
            raise failure
        raise GenesysBudgetError(f"out of time after {attempt + 1} attempt(s); last answer: {failure.message}",
                                 status=failure.status, code=failure.code,
                                 correlation_id=failure.correlation_id) from failure

    # -- caches --

    def _cached(self, cache: TTLCache[str, V], key: str) -> V | None:
        """Return a cached value under the lock."""
        with self._lock:
            return cache.get(key)

    def _remember(self, cache: TTLCache[str, V], key: str, value: V) -> None:
        """Store a value under the lock."""
        with self._lock:
            cache[key] = value


# --- request bodies and answers (pure) ------------------------------------------------------------------------


def user_search_body(email: str) -> Json:
    """Return the users/search body that finds the one user with this e-mail."""
    return {"pageSize": 1, "pageNumber": 1, "query": [{"type": "EXACT", "fields": ["email"], "value": email}]}


def analytics_body(user_id: str, now: datetime) -> Json:
    """Return the conversation details query for a user's live voice calls, newest first."""
    interval = f"{_iso(now - timedelta(days=1))}/{_iso(now + timedelta(hours=1))}"
    return {
        "interval": interval,
        "order": "desc",
        "orderBy": "conversationStart",
        "paging": {"pageSize": 25, "pageNumber": 1},
        "conversationFilters": [{"type": "and", "predicates": [
            {"type": "dimension", "dimension": "conversationEnd", "operator": "notExists"}]}],
        "segmentFilters": [{"type": "and", "predicates": [
            {"type": "dimension", "dimension": "userId", "operator": "matches", "value": user_id},
            {"type": "dimension", "dimension": "mediaType", "operator": "matches", "value": "voice"},
            {"type": "dimension", "dimension": "segmentEnd", "operator": "notExists"}]}],
    }


def agent_participant(call: Json, user_id: str) -> Json | None:
    """Return the user's connected agent/user participant of a call, newest startTime first; never a customer."""
    mine = [p for p in call.get("participants") or [] if _is_live_agent(p, user_id)]
    return max(mine, key=lambda p: str(p.get("startTime") or ""), default=None)


def _is_live_agent(participant: Any, user_id: str) -> bool:
    """Tell whether a participant is this user's connected agent (or direct-call user) leg."""
    if not isinstance(participant, dict) or not participant.get("id"):
        return False
    user = participant.get("user")
    return (isinstance(user, dict) and str(user.get("id", "")).lower() == user_id.lower()
            and str(participant.get("state", "")).lower() == "connected"
            and str(participant.get("purpose", "")).lower() in AGENT_PURPOSES)


def _iso(moment: datetime) -> str:
    """Return a UTC time as Genesys writes it: 2026-11-23T10:00:00.000Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _segment(identifier: str) -> str:
    """Quote an id for use as one URL path segment."""
    return quote(identifier, safe="")


# --- explanations -----------------------------------------------------------------------------------------------

PARTICIPANT_RULE_CODES: frozenset[str] = frozenset({
    "not.a.user",
    "conversation.error.not.conversation.participant",
    "conversation.error.forbidden.not.active.participant",
    "missing.permissions",
})

_USER_TOKEN_REMEDY = ("give the service a user-context token per agent (authorization-code grant with a refresh "
                      "token) instead of client credentials (README: \"The participant rule\")")
_RULE_FACT = ("Genesys lets only a direct participant of a call change it (mute, hold, transfer), and a "
              "client-credentials token has no user")
_PARTICIPANT_RULE = f"{_RULE_FACT}, so this org refuses the mute from the service"

PARTICIPANT_RULE_NOTE = (f"informational: {_RULE_FACT}, so a real org may answer the mute with 400 not.a.user or a "
                         "participant error (403 conversation.error.forbidden.not.active.participant, 404 "
                         "conversation.error.not.conversation.participant); only a live call tells, so try "
                         f"`agent mute AGENT` during a test call; if it is refused, {_USER_TOKEN_REMEDY}")

_CODE_HINTS: dict[str, tuple[str, str]] = {
    "not.a.user": (f"this request needs a user context: {_PARTICIPANT_RULE}", _USER_TOKEN_REMEDY),
    "conversation.error.not.conversation.participant": (
        f"the token's identity is not a participant of this conversation: {_PARTICIPANT_RULE}", _USER_TOKEN_REMEDY),
    "conversation.error.forbidden.not.active.participant": (
        f"the token's identity is not an active participant of this call: {_PARTICIPANT_RULE}", _USER_TOKEN_REMEDY),
    "missing.permissions": (
        ("the OAuth client's role lacks a permission this request needs (the message names it), or, on the mute, "
         f"the participant rule: {_PARTICIPANT_RULE}"),
        ("add the permission to the OAuth client's role; if the role has it and the mute is still refused, "
         f"{_USER_TOKEN_REMEDY}")),
    "not.found": ("the call or participant no longer exists; most likely the call ended before the change",
                  "nothing to do; the next event finds the agent's new call"),
    CALL_DISCONNECTED: ("the call was disconnected before the change", "nothing to do"),
}

_CLASS_HINTS: tuple[tuple[type[GenesysError], tuple[str, str]], ...] = (
    (GenesysThrottledError, (
        "this process spaces its Genesys requests to stay under the OAuth client's rate limit ([genesys] "
        "requests_per_minute, or the allowance Genesys' inin-ratelimit headers reported), and a burst took every "
        "slot until after the event's deadline",
        "if the call is still live, replay the event; if such bursts are normal, ask Genesys support to raise the "
        "OAuth client's limit and then raise requests_per_minute")),
    (GenesysBudgetError, (
        "the retry budget or the event's deadline ran out before Genesys accepted the request",
        "if the call is still live, replay the event; if it keeps happening, raise [processing] retry_budget_seconds")),
    (GenesysAuthError, (
        "the Genesys login failed or a fresh token was refused",
        "check GENESYS_CLIENT_ID, GENESYS_CLIENT_SECRET and GENESYS_REGION (an OAuth client belongs to one org)")),
    (GenesysRateLimitedError, (
        "Genesys is rate limiting this OAuth client (about 300 requests a minute)",
        "the service waits for Retry-After within its budget; if it persists, lower the event rate")),
    (GenesysUnavailableError, (
        "Genesys is failing or could not be reached",
        "the service retried with backoff; replay the event once Genesys answers again if the call is still live")),
    (GenesysPermissionError, (
        "the OAuth client's role lacks a permission this request needs",
        "add the permission the message names to the OAuth client's role")),
    (GenesysNotFoundError, (
        "Genesys has no such user, call or participant",
        "check the agent's id or e-mail (or the [agents] map); a call may simply have ended")),
    (GenesysBadRequestError, (
        "Genesys refused the request as invalid",
        "read the message; give Genesys support the correlation id if it is unclear")),
)


def explain(error: GenesysError) -> str:
    """Return one line a person can act on: what Genesys answered, what it means and what to do."""
    meaning, remedy = _CODE_HINTS.get(error.code or "") or next(
        (hint for cls, hint in _CLASS_HINTS if isinstance(error, cls)),
        ("Genesys answered with an unexpected error", "give Genesys support the correlation id"))
    answered = str(error).replace("\n", " ")
    return f"Genesys: {answered}. Meaning: {meaning}. To do: {remedy}."
