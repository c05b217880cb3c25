"""The Genesys Cloud API calls of this service: find an agent's call leg and mute it, acting as each configured
identity in turn (the agent's own connection, the service user, the client-credentials client)."""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import requests
from cachetools import TTLCache

from webhook.clock import utcnow
from webhook.errors import (
    GenesysAuthError,
    GenesysBudgetError,
    GenesysConnectionError,
    GenesysError,
    GenesysNoIdentityError,
    GenesysNotFoundError,
    GenesysPermissionError,
    GenesysRateLimitedError,
    GenesysUnavailableError,
)
from webhook.events import EMAIL_RE, UUID_RE, parse_time
from webhook.genesys.auth import ClientCredentials, TokenSource, UserConnections
from webhook.genesys.explain import CALL_DISCONNECTED, PARTICIPANT_RULE_CODES, PARTICIPANT_RULE_NOTE, explain
from webhook.genesys.model import CLIENT_CREDENTIALS, IDENTITY_KINDS, Identity, IdentityKind, Recorder
from webhook.genesys.ratelimit import DEFAULT_REQUESTS_PER_MINUTE, RateLimiter, ratelimit_headers
from webhook.genesys.retry import retry_delay
from webhook.genesys.transport import (
    CORRELATION_HEADER,
    DEFAULT_TIMEOUT,
    Json,
    bounded_timeout,
    error_from,
    exchange,
    json_body,
    retry_after,
    segment,
)
from webhook.regions import region_hosts
from webhook.rules import Recording

logger = logging.getLogger(__name__)

V = TypeVar("V")

USERS_SEARCH_PATH = "/api/v2/users/search"
ANALYTICS_PATH = "/api/v2/analytics/conversations/details/query"
ORGANIZATION_PATH = "/api/v2/organizations/me"
MY_CALLS_PATH = "/api/v2/conversations/calls"  # the token user's own active calls
AGENT_PURPOSES = frozenset({"agent", "user"})
MONITORING_FIELDS = ("monitoredParticipantId", "coachedParticipantId")
RECORDING_STATES: dict[str, str] = {"pause": "paused", "resume": "active"}  # a rule's word -> recordingState
CONFIRM_SECONDS = 3.0  # how long [genesys] confirm reads the call back for (within the event's budget)
CONFIRM_INTERVAL = 0.25
MAX_CALLS_READ = 5  # calls read per analytics lookup: an agent has one, rarely two or three
PROBE_EMAIL = "genesys-check@example.invalid"
PROBE_USER_ID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class Target:
    """Where to apply a mute: the agent's own active participant leg on a live call."""

    user_id: str
    conversation_id: str
    participant_id: str
    muted: bool | None
    note: str = ""  # why this leg, when more than one qualified


@dataclass(frozen=True)
class Applied:
    """A change Genesys accepted (or a leg found): on which leg, and as whom."""

    target: Target
    identity: Identity
    actor: Actor | None = field(default=None, repr=False, compare=False)  # to read the call back as the same identity


@dataclass(frozen=True)
class CheckResult:
    """One line of `genesys check`."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Actor:
    """An identity ready to act: its token source, and whether its calls are the agent's own (a user token)."""

    identity: Identity
    tokens: TokenSource
    own_calls: bool = False


class GenesysClient:
    """The Genesys Cloud Platform API calls of this service, each retried within the caller's deadline."""

    def __init__(
        self,
        api_url: str,
        tokens: TokenSource | None,
        *,
        users: UserConnections | None = None,
        act_as: Iterable[IdentityKind] | None = None,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wallclock: Callable[[], datetime] = utcnow,
        rng: Callable[[], float] = random.random,
        user_ttl: float = 3600,
        call_ttl: float = 30,
        requests_per_minute: float = DEFAULT_REQUESTS_PER_MINUTE,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.tokens = tokens
        self.users = users
        configured = {"agent": users is not None, "service_user": users is not None,
                      "client_credentials": tokens is not None}
        self.act_as: tuple[IdentityKind, ...] = tuple(
            k for k in (act_as if act_as is not None else IDENTITY_KINDS) if configured[k])
        self._session = session if session is not None else requests.Session()
        self._timeout = timeout
        self._clock = clock
        self._sleep = sleep
        self._wallclock = wallclock
        self._rng = rng
        self._lock = threading.Lock()  # TTLCache is not thread-safe
        self._users: TTLCache[str, str] = TTLCache(maxsize=4096, ttl=user_ttl, timer=clock)
        self._targets: TTLCache[str, Target] = TTLCache(maxsize=4096, ttl=call_ttl, timer=clock)
        # One bucket per identity, i.e. per OAuth token, shared by this process's threads; 0 turns spacing off.
        self._per_minute = requests_per_minute
        self._limiters: dict[str, RateLimiter] = {}

    @classmethod
    def from_credentials(cls, *, region: str, client_id: str | None, client_secret: str | None,
                         api_url: str | None = None, login_url: str | None = None, **kwargs: Any) -> GenesysClient:
        """Build a client for a region, with a client-credentials token when an id and secret are given (explicit
        URLs win over the region's); other keyword arguments (users, act_as, knobs) go to the constructor."""
        if api_url is None or login_url is None:
            region_api, region_login = region_hosts(region)
            api_url, login_url = api_url or region_api, login_url or region_login
        session = kwargs.pop("session", None) or requests.Session()
        tokens = None
        if client_id and client_secret:
            tokens = ClientCredentials(login_url, client_id, client_secret, session=session,
                                       timeout=kwargs.get("timeout", DEFAULT_TIMEOUT),
                                       timer=kwargs.get("clock", time.monotonic))
        return cls(api_url, tokens, session=session, **kwargs)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    @property
    def limiter(self) -> RateLimiter | None:
        """The request spacing of the client-credentials token (None when spacing is off)."""
        return self._limiter(CLIENT_CREDENTIALS)

    # -- acting --

    def act(self, agent: str, muted: bool, *, conversation_id: str | None = None, deadline: float,
            record: Recorder | None = None) -> Applied | None:
        """Mute or unmute the agent's active leg as the first identity that can; None when they are on no call.

        An identity that is not available (no connection, a broken one), refused by the participant rule or lacking
        a permission hands over to the next one, all within the one deadline; GenesysNoIdentityError when none is
        left, saying why each could not act.
        """
        actor, target = self._first_identity(
            agent, lambda actor: self._act_as(actor, agent, muted, conversation_id, deadline, record))
        if target is None:
            return None
        if self.users is not None and actor.identity.user_id is not None:
            self.users.touch(actor.identity.user_id)
        return Applied(target, actor.identity, actor)

    def locate(self, agent: str, *, conversation_id: str | None = None, deadline: float,
               record: Recorder | None = None, fresh: bool = False) -> Applied | None:
        """Find the agent's active leg as the first identity that can (no change made); None when on no call. With
        fresh, the call is read from Genesys even when it is cached (to see its state now)."""
        def find(actor: Actor) -> Target | None:
            user_id = self._agent_user(actor, agent, deadline, record)
            return self._find(actor, user_id, conversation_id, deadline, record, fresh=fresh)
        actor, target = self._first_identity(agent, find)
        return None if target is None else Applied(target, actor.identity, actor)

    def set_recording(self, target: Target, recording: Recording, *, deadline: float,
                      record: Recorder | None = None) -> Identity:
        """Pause or resume the call's recording (secure pause) as the first identity in act_as order that Genesys
        accepts; the participant rule does not apply to it, a permission does (conversation:recording:pauseOthers)."""
        path = f"/api/v2/conversations/calls/{segment(target.conversation_id)}/recordingstate"
        body = {"recordingState": RECORDING_STATES[recording]}
        actor, _ = self._first_identity(target.user_id, lambda actor: self._call(
            "PUT", path, actor=actor, deadline=deadline, record=record, body=body))
        return actor.identity

    def confirm(self, applied: Applied, *, muted: bool | None, recording: Recording | None, deadline: float,
                record: Recorder | None = None, seconds: float = CONFIRM_SECONDS) -> str | None:
        """Read the call back until the leg shows the microphone (and the call the recording) as asked, for up to
        `seconds` within the deadline (0: one read); None when it does, else what was seen last."""
        target, actor = applied.target, applied.actor or self._default_actor()
        until = min(deadline, self._clock() + seconds)
        path = f"/api/v2/conversations/calls/{segment(target.conversation_id)}"
        while True:
            call = json_body(self._call("GET", path, actor=actor, deadline=deadline, record=record))
            seen = _shown(call, target.participant_id, muted, recording)
            if seen is None:
                return None
            if self._clock() + CONFIRM_INTERVAL >= until:
                return seen
            self._sleep(CONFIRM_INTERVAL)

    def _first_identity(self, agent: str, work: Callable[[Actor], V]) -> tuple[Actor, V]:
        """Run work as each identity of act_as in turn until one is not refused; GenesysNoIdentityError when none
        is left. An identity that is not available (no connection, a broken one), refused by the participant rule,
        refused a login or lacking a permission hands over to the next one."""
        reasons: list[str] = []
        for kind in self.act_as:
            actor, why_not = self._actor(kind, agent)
            if actor is None:
                reasons.append(why_not)
                continue
            try:
                return actor, work(actor)
            except GenesysError as exc:
                if exc.code in PARTICIPANT_RULE_CODES:
                    reasons.append(f"{actor.identity}: refused by the participant rule ({exc})")
                elif isinstance(exc, (GenesysAuthError, GenesysPermissionError)):  # broken, refused login, a role
                    reasons.append(f"{actor.identity}: {explain(exc)}")
                else:
                    raise
        raise GenesysNoIdentityError(agent, reasons)

    def _actor(self, kind: IdentityKind, agent: str) -> tuple[Actor | None, str]:
        """Return the identity of this kind that can act for the agent, or None and why not."""
        if kind == "client_credentials":
            if self.tokens is None:
                return None, "client_credentials: not configured (GENESYS_CLIENT_ID)"
            return Actor(CLIENT_CREDENTIALS, self.tokens), ""
        if self.users is None:
            return None, f"{kind}: not configured (GENESYS_USER_CLIENT_ID)"
        connection = self.users.agent(agent) if kind == "agent" else self.users.service_user()
        who = agent if kind == "agent" else "the service user"
        if connection is None:
            return None, f"{kind}: {who} has not connected"
        identity = Identity(kind, connection.user_id)
        if connection.state == "broken":
            return None, f"{identity}: the connection is broken ({connection.reason})"
        return Actor(identity, self.users.tokens(identity), own_calls=kind == "agent"), ""

    def _act_as(self, actor: Actor, agent: str, muted: bool, conversation_id: str | None, deadline: float,
                record: Recorder | None) -> Target | None:
        """Find the agent's leg and PATCH it; a call or leg found gone drops the cached call and looks once more."""
        user_id = self._agent_user(actor, agent, deadline, record)
        for fresh in (False, True):
            target = self._find(actor, user_id, conversation_id, deadline, record, fresh=fresh)
            if target is None:
                return None
            try:
                self.set_muted(target, muted, actor=actor, deadline=deadline, record=record)
            except GenesysError as exc:
                if fresh or not call_gone(exc):
                    raise
                logger.info("genesys call %s gone for user %s; looking again", target.conversation_id, user_id)
                continue
            return target
        raise AssertionError("unreachable")

    # -- users, calls, mute --

    def _agent_user(self, actor: Actor, agent: str, deadline: float, record: Recorder | None) -> str:
        """Return the agent's Genesys user id: the connection's own, or found as this identity."""
        if actor.own_calls and actor.identity.user_id:
            return actor.identity.user_id
        return self.resolve_user(agent, actor=actor, deadline=deadline, record=record)

    def resolve_user(self, agent: str, *, actor: Actor | None = None, deadline: float,
                     record: Recorder | None = None) -> str:
        """Return the Genesys user id of an agent given as a user id (used as is) or an e-mail (searched, cached)."""
        name = agent.strip()
        if UUID_RE.match(name):
            return name.lower()
        if not EMAIL_RE.match(name):
            raise GenesysNotFoundError(f"agent {agent!r} is neither a Genesys user id (UUID) nor an e-mail; "
                                       "send one of them, or map the CRM id in [agents] of the config")
        user_id = self._cached(self._users, name.lower())
        if user_id is None:
            user_id = self._search_user(name, actor or self._default_actor(), deadline, record)
            self._remember(self._users, name.lower(), user_id)
        return user_id

    def find_target(self, agent: str, *, conversation_id: str | None = None, deadline: float,
                    record: Recorder | None = None, actor: Actor | None = None) -> Target | None:
        """Return the agent's active leg on a live voice call (cached for a while), or None when there is none."""
        actor = actor or self._default_actor()
        user_id = self.resolve_user(agent, actor=actor, deadline=deadline, record=record)
        return self._find(actor, user_id, conversation_id, deadline, record, fresh=False)

    def set_muted(self, target: Target, muted: bool, *, deadline: float, record: Recorder | None = None,
                  actor: Actor | None = None) -> None:
        """Mute or unmute the target leg (202, empty body); an answer saying the call is gone drops the cached call."""
        path = (f"/api/v2/conversations/calls/{segment(target.conversation_id)}"
                f"/participants/{segment(target.participant_id)}")
        try:
            self._call("PATCH", path, actor=actor or self._default_actor(), deadline=deadline, record=record,
                       body={"muted": muted})
        except GenesysError as exc:
            if call_gone(exc):
                self.forget(target.user_id)
            raise
        # Genesys just accepted it, so the target is live: keep it, with the flag it now has.
        self._remember(self._targets, target.user_id, replace(target, muted=muted))

    def forget(self, user_id: str) -> None:
        """Drop the cached call of a user."""
        with self._lock:
            self._targets.pop(user_id, None)

    def _find(self, actor: Actor, user_id: str, conversation_id: str | None, deadline: float,
              record: Recorder | None, *, fresh: bool) -> Target | None:
        if not fresh:
            cached = self._cached(self._targets, user_id)
            if cached is not None and conversation_id in (None, cached.conversation_id):
                return cached
        if actor.own_calls:
            calls = self._own_calls(actor, deadline, record)
            if conversation_id:
                calls = [c for c in calls if str(c.get("id")).lower() == conversation_id.lower()]
        else:
            ids = [conversation_id] if conversation_id else self._live_conversations(actor, user_id, deadline,
                                                                                   record)
            calls = [c for cid in ids[:MAX_CALLS_READ] if (c := self._read_call(actor, cid, deadline, record))]
        target = choose_leg(calls, user_id)
        if target is None:
            self.forget(user_id)
        else:
            self._remember(self._targets, user_id, target)
        return target

    def _own_calls(self, actor: Actor, deadline: float, record: Recorder | None) -> list[Json]:
        """Return the token user's active calls (one request: no analytics query, no permission needed)."""
        response = self._call("GET", MY_CALLS_PATH, actor=actor, deadline=deadline, record=record)
        entities = json_body(response).get("entities") or []
        return [c for c in entities if isinstance(c, dict)]

    def _search_user(self, email: str, actor: Actor, deadline: float, record: Recorder | None) -> str:
        """Return the id of the user with this e-mail; GenesysNotFoundError when there is none."""
        response = self._call("POST", USERS_SEARCH_PATH, actor=actor, deadline=deadline, record=record,
                              body=user_search_body(email))
        results = json_body(response).get("results") or []
        if not results or not isinstance(results[0], dict) or not results[0].get("id"):
            raise GenesysNotFoundError(f"no Genesys user has the e-mail {email}; fix the agent's e-mail in the CRM "
                                       "or map the agent in [agents] of the config",
                                       correlation_id=response.headers.get(CORRELATION_HEADER))
        return str(results[0]["id"]).lower()

    def _live_conversations(self, actor: Actor, user_id: str, deadline: float, record: Recorder | None) -> list[str]:
        """Return the ids of the user's live voice conversations, newest first, from the analytics query."""
        response = self._call("POST", ANALYTICS_PATH, actor=actor, deadline=deadline, record=record,
                              body=analytics_body(user_id, self._wallclock()))
        conversations = json_body(response).get("conversations") or []
        return [str(c["conversationId"]) for c in conversations if isinstance(c, dict) and c.get("conversationId")]

    def _read_call(self, actor: Actor, conversation_id: str, deadline: float, record: Recorder | None) -> Json | None:
        """Return one call, or None when Genesys no longer has it."""
        try:
            response = self._call("GET", f"/api/v2/conversations/calls/{segment(conversation_id)}", actor=actor,
                                  deadline=deadline, record=record)
        except GenesysNotFoundError:
            logger.info("genesys call %s not found", conversation_id)
            return None
        return json_body(response)

    def _default_actor(self) -> Actor:
        """The client-credentials identity (the lookups and commands that name no identity use it)."""
        if self.tokens is None:
            raise GenesysConnectionError("no client-credentials client is configured (GENESYS_CLIENT_ID)")
        return Actor(CLIENT_CREDENTIALS, self.tokens)

    # -- genesys check --

    def check(self, *, deadline: float) -> list[CheckResult]:
        """Check every configured identity: its token, and the requests it would make; explain the participant rule."""
        results: list[CheckResult] = []
        if self.tokens is not None:
            results += self._check_identity(Actor(CLIENT_CREDENTIALS, self.tokens), deadline,
                                            "the OAuth client credentials were accepted")
        if self.users is not None:
            results += self._check_users(self.users, deadline)
        return [*results, CheckResult("participant rule", True, PARTICIPANT_RULE_NOTE)]

    def _check_identity(self, actor: Actor, deadline: float, token_ok: str) -> list[CheckResult]:
        name = str(actor.identity)
        try:
            actor.tokens.token(deadline=deadline)
        except GenesysError as error:
            return [CheckResult(f"{name} token", False, explain(error))]
        return [
            CheckResult(f"{name} token", True, token_ok),
            self._probe(f"{name} organization", None, lambda: self._call(
                "GET", ORGANIZATION_PATH, actor=actor, deadline=deadline)),
            self._probe(f"{name} user search", "directory:user:view", lambda: self._call(
                "POST", USERS_SEARCH_PATH, actor=actor, deadline=deadline, body=user_search_body(PROBE_EMAIL))),
            self._probe(f"{name} analytics", "analytics:conversationDetail:view", lambda: self._call(
                "POST", ANALYTICS_PATH, actor=actor, deadline=deadline,
                body=analytics_body(PROBE_USER_ID, self._wallclock()))),
        ]

    def _check_users(self, users: UserConnections, deadline: float) -> list[CheckResult]:
        service = users.service_user()
        if service is None:
            results = [CheckResult("service_user", False, "no service user connected: run `flask --app wsgi "
                                                          "genesys connect --service-user` and open the link")]
        else:
            identity = Identity("service_user", service.user_id)
            results = self._check_identity(Actor(identity, users.tokens(identity)), deadline,
                                           f"{service.email or service.user_id}'s token works")
        agents = [c for c in users.connections() if c.kind == "agent"]
        for connection in agents:
            actor = Actor(Identity("agent", connection.user_id), users.tokens(Identity("agent", connection.user_id)),
                          own_calls=True)
            results.append(self._probe(f"{actor.identity} ({connection.email})", None, functools.partial(
                self._call, "GET", MY_CALLS_PATH, actor=actor, deadline=deadline)))
        if not agents:
            results.append(CheckResult("agent", True, "no agent has connected yet; each agent opens "
                                                      f"{users.connect_url} once"))
        return results

    def _probe(self, name: str, permission: str | None, run: Callable[[], object]) -> CheckResult:
        """Run one check request; a 403 names the permission the identity's role lacks."""
        try:
            run()
        except GenesysPermissionError as error:
            return CheckResult(name, False, f"missing permission {permission or '(see the message)'}: add it to "
                                            f"the role. {explain(error)}")
        except GenesysError as error:
            return CheckResult(name, False, explain(error))
        return CheckResult(name, True, f"allowed ({permission})" if permission else f"reachable at {self.api_url}")

    # -- the one request path --

    def _call(self, method: str, path: str, *, actor: Actor, deadline: float, record: Recorder | None = None,
              body: Json | None = None) -> requests.Response:
        """Send one API request as actor: bearer token, one new token on a 401, retries per retry_delay."""
        attempt, relogged = 0, False
        while True:
            try:
                token = actor.tokens.token(deadline=deadline, record=record)
                response = self._send(method, path, token, actor.identity, deadline, record, body)
            except (GenesysUnavailableError, GenesysRateLimitedError) as error:
                failure: GenesysError = error
            else:
                if response.status_code < 400:
                    return response
                if response.status_code == 401 and not relogged:
                    actor.tokens.invalidate(token)
                    relogged = True
                    continue
                failure = error_from(response)
            self._pause_or_raise(failure, attempt, deadline)
            attempt += 1

    def _limiter(self, identity: Identity) -> RateLimiter | None:
        if not self._per_minute:
            return None
        with self._lock:
            limiter = self._limiters.get(str(identity))
            if limiter is None:
                limiter = self._limiters[str(identity)] = RateLimiter(self._per_minute, clock=self._clock)
            return limiter

    def _send(self, method: str, path: str, token: str, identity: Identity, deadline: float,
              record: Recorder | None, body: Json | None) -> requests.Response:
        """Wait for a rate-limiter slot of the identity, then send one request."""
        limiter = self._limiter(identity)
        if limiter is None:
            return self._exchange(method, path, token, identity, deadline, record, body)
        wait = limiter.reserve(deadline)
        response: requests.Response | None = None
        try:  # the slot is settled whatever happens from here on, or its request would count as in flight for good
            if wait > 0:
                logger.debug("genesys %s %s waits %.3fs for a rate-limit slot", method, path, wait)
                self._sleep(wait)
            response = self._exchange(method, path, token, identity, deadline, record, body)
        finally:
            if response is None:
                limiter.settle()
            else:
                limiter.settle(ratelimit_headers(response.headers),
                               retry_after(response) if response.status_code == 429 else None)
        return response

    def _exchange(self, method: str, path: str, token: str, identity: Identity, deadline: float,
                  record: Recorder | None, body: Json | None) -> requests.Response:
        """Send one request with the bearer token and a timeout cut to the time left."""
        timeout = bounded_timeout(self._timeout, deadline - self._clock())
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        return exchange(self._session, method, self.api_url + path, path, clock=self._clock, timeout=timeout,
                        record=record, identity=str(identity), json=body, headers=headers)

    def _pause_or_raise(self, failure: GenesysError, attempt: int, deadline: float) -> None:
        """Sleep before the next try, or raise the failure (GenesysBudgetError when only time stopped the retry)."""
        wait_after = failure.retry_after if isinstance(failure, GenesysRateLimitedError) else None
        now = self._clock()
        wait = retry_delay(status=failure.status, attempt=attempt, retry_after=wait_after, now=now,
                           deadline=deadline, rng=self._rng)
        if wait is not None:
            logger.info("genesys retry in %.2fs after %s %s", wait, failure.status, failure.code or "")
            self._sleep(wait)
            return
        if retry_delay(status=failure.status, attempt=attempt, retry_after=wait_after, now=now,
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


def _shown(call: Json, participant_id: str, muted: bool | None, recording: Recording | None) -> str | None:
    """Return what differs from what was asked in a call as read back (None: everything shows as asked)."""
    leg = next((p for p in call.get("participants") or [] if isinstance(p, dict) and p.get("id") == participant_id),
               None)
    wrong = []
    if muted is not None and (leg is None or leg.get("muted") is not muted):
        wrong.append(f"the leg shows muted={None if leg is None else leg.get('muted')} (asked {muted})")
    if recording is not None and call.get("recordingState") != RECORDING_STATES[recording]:
        wrong.append(f"the call shows recordingState={call.get('recordingState')} "
                     f"(asked {RECORDING_STATES[recording]})")
    return "; ".join(wrong) or None


def call_gone(error: GenesysError) -> bool:
    """Tell whether an answer says the call or the leg is gone: the call is disconnected, or a 404 that is not a
    participant-rule refusal (conversation.error.not.conversation.participant is a refusal, not an ended call)."""
    return error.code == CALL_DISCONNECTED or (error.status == 404 and error.code not in PARTICIPANT_RULE_CODES)


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


def choose_leg(calls: Iterable[Json], user_id: str) -> Target | None:
    """Return the user's leg to mute among their calls: their own connected participant that is not held and not
    monitoring or coaching; of several, the one connected most recently (the Target's note says so)."""
    legs = [(call, p) for call in calls if isinstance(call, dict) and call.get("id")
            for p in call.get("participants") or [] if active_leg(p, user_id)]
    if not legs:
        return None
    legs.sort(key=lambda leg: _connected_at(leg[1]), reverse=True)
    call, participant = legs[0]
    note = ""
    if len(legs) > 1:
        stamp = participant.get("connectedTime") or participant.get("startTime") or "time unknown"
        note = f"{len(legs)} active legs of this user qualified; took the one connected most recently ({stamp})"
    muted = participant.get("muted")
    return Target(user_id, str(call["id"]), str(participant["id"]), muted if isinstance(muted, bool) else None, note)


def agent_participant(call: Json, user_id: str) -> Json | None:
    """Return the user's leg to mute in one call (see choose_leg), or None."""
    target = choose_leg([call], user_id)
    if target is None:
        return None
    return next(p for p in call.get("participants") or []
                if isinstance(p, dict) and p.get("id") == target.participant_id)


def active_leg(participant: Any, user_id: str) -> bool:
    """Tell whether a participant is this user's own speaking leg: connected, not held, not monitoring or coaching."""
    if not isinstance(participant, dict) or not participant.get("id"):
        return False
    user = participant.get("user")
    return (isinstance(user, dict) and str(user.get("id", "")).lower() == user_id.lower()
            and str(participant.get("state", "")).lower() == "connected"
            and participant.get("held") is not True
            and not any(participant.get(name) for name in MONITORING_FIELDS)
            and str(participant.get("purpose", "")).lower() in AGENT_PURPOSES)


def _connected_at(participant: Json) -> datetime:
    """Return when a leg connected (connectedTime, else startTime) as a time; the earliest when unreadable."""
    try:
        return parse_time(participant.get("connectedTime") or participant.get("startTime"))
    except (ValueError, TypeError):
        return datetime.min.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    """Return a UTC time as Genesys writes it: 2026-11-23T10:00:00.000Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
