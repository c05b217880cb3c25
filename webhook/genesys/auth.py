"""Token sources: the client-credentials client, and the users who connected the service (authorization-code grant
with PKCE; refresh tokens encrypted at rest, refreshed by one process at a time, marked broken when refused)."""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol
from urllib.parse import urlencode

import requests
from cachetools import TTLCache

from webhook.crypto import TokenCipher, TokenCipherError
from webhook.errors import (
    GenesysAuthError,
    GenesysBudgetError,
    GenesysConnectionError,
    GenesysError,
    StoreError,
)
from webhook.genesys.model import Connection, ConnectionKind, Identity, Recorder
from webhook.genesys.transport import (
    CORRELATION_HEADER,
    DEFAULT_TIMEOUT,
    bounded_timeout,
    error_fields,
    error_from,
    exchange,
    json_body,
    json_or_none,
)

logger = logging.getLogger(__name__)

TOKEN_PATH = "/oauth/token"
AUTHORIZE_PATH = "/oauth/authorize"
USERS_ME_PATH = "/api/v2/users/me"
TOKENS_ME_PATH = "/api/v2/tokens/me"
DEFAULT_EXPIRES_IN = 300.0  # Genesys' shortest token lifetime, assumed when the login omits expires_in
TOKEN_MARGIN = 60.0  # a token is refreshed this long before it expires (the Go SDK's margin)
REFRESH_LEASE_SECONDS = 30.0  # longer than one refresh request can take (its timeout is cut to 13 s)
LEASE_WAIT_SECONDS = 0.05  # how often a process waiting for another's refresh looks again
LEASE_WAIT_MAX = 5.0  # past this, the event stops waiting for another process's refresh and tries the next identity
STORE_TRIES = 3  # a refreshed (maybe rotated) token is worth a few tries of a failing database
STORE_PAUSE = 0.2
INVALID_GRANT = "invalid_grant"  # RFC 6749 5.2: the grant (here the refresh token) is invalid, expired or revoked
_TOKEN_KEY = "token"


class TokenSource(Protocol):
    """Gives bearer tokens of one identity: the client-credentials client, or one connected user."""

    def token(self, *, deadline: float, record: Recorder | None = None) -> str:
        """Return a bearer token, fetching one if needed before deadline."""
        ...

    def invalidate(self, token: str) -> None:
        """Drop token (Genesys answered it 401) if it is still the cached one."""
        ...


def token_ttl(expires_in: float, margin: float) -> float:
    """Return how long to keep a token: its lifetime minus the margin, never under a tenth of the lifetime."""
    return max(expires_in - margin, expires_in / 10)


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
        margin: float = TOKEN_MARGIN,
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
        timeout = bounded_timeout(self._timeout, deadline - self._timer())
        self.fetches += 1
        response = exchange(self._session, "POST", self._url, TOKEN_PATH, clock=self._timer, timeout=timeout,
                            record=record, identity="client_credentials", auth=self._auth,
                            data={"grant_type": "client_credentials"}, headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise login_error(response)
        token, expires_in, _ = token_fields(response)
        cache: TTLCache[str, str] = TTLCache(maxsize=1, ttl=token_ttl(expires_in, self._margin), timer=self._timer)
        cache[_TOKEN_KEY] = token
        self._cache = cache
        logger.info("genesys token fetched, expires_in=%s", expires_in)
        return token


def token_fields(response: requests.Response) -> tuple[str, float, str | None]:
    """Return the access token, its lifetime and the refresh token (if any) of a token answer."""
    body = json_or_none(response)
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(token, str) or not token:
        raise GenesysAuthError("the Genesys login answered 200 without an access_token", status=response.status_code,
                               correlation_id=response.headers.get(CORRELATION_HEADER))
    try:
        expires_in = float(body["expires_in"])
    except (KeyError, TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    refresh = body.get("refresh_token")
    return (token, expires_in if expires_in > 0 else DEFAULT_EXPIRES_IN,
            refresh if isinstance(refresh, str) and refresh else None)


def login_error(response: requests.Response, what: str = "the client credentials") -> GenesysError:
    """Return the error of a failed login: a refusal is GenesysAuthError, 429 and 5xx stay retryable."""
    if response.status_code == 429 or response.status_code >= 500:
        return error_from(response)
    code, message = error_fields(response)
    return GenesysAuthError(f"the Genesys login refused {what}: {message}", status=response.status_code, code=code,
                            correlation_id=response.headers.get(CORRELATION_HEADER))


# --- users: the authorization-code client ------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSet:
    """A token answer of the code or refresh grant."""

    access_token: str = field(repr=False)
    expires_in: float
    refresh_token: str | None = field(repr=False)


@dataclass(frozen=True)
class Me:
    """Who a user token belongs to (GET /api/v2/users/me)."""

    user_id: str
    name: str
    email: str


def pkce_pair() -> tuple[str, str]:
    """Return a PKCE (code_verifier, S256 code_challenge) pair (RFC 7636)."""
    verifier = secrets.token_urlsafe(64)
    return verifier, pkce_challenge(verifier)


def pkce_challenge(verifier: str) -> str:
    """Return the S256 code_challenge of a code_verifier: base64url of its SHA-256, without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


class CodeGrant:
    """The confidential OAuth client of grant type Code Authorization: authorize, exchange, refresh, me, revoke."""

    def __init__(self, login_url: str, api_url: str, client_id: str, client_secret: str, redirect_uri: str, *,
                 session: requests.Session, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.login_url = login_url.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self._auth = (client_id, client_secret)
        self._session = session
        self._timeout = timeout
        self._timer = timer

    def __repr__(self) -> str:
        return f"CodeGrant({self.login_url!r}, redirect_uri={self.redirect_uri!r})"

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def authorize_url(self, state: str, code_challenge: str) -> str:
        """Return the login page URL a browser is sent to (PKCE S256)."""
        query = urlencode({"response_type": "code", "client_id": self.client_id, "redirect_uri": self.redirect_uri,
                           "state": state, "code_challenge": code_challenge, "code_challenge_method": "S256"})
        return f"{self.login_url}{AUTHORIZE_PATH}?{query}"

    def exchange(self, code: str, verifier: str, *, deadline: float) -> TokenSet:
        """Exchange an authorization code for tokens; GenesysAuthError when Genesys refuses it."""
        return self._grant({"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                            "code_verifier": verifier}, "the authorization code", deadline, None, None)

    def refresh(self, refresh_token: str, *, deadline: float, record: Recorder | None = None,
                identity: str | None = None) -> TokenSet:
        """Trade a refresh token for new tokens; GenesysConnectionError when Genesys refuses the token itself
        (invalid_grant: revoked, expired, rotated away). A refused client (invalid_client: a wrong
        GENESYS_USER_CLIENT_SECRET) stays GenesysAuthError: it says nothing about the user's connection."""
        try:
            return self._grant({"grant_type": "refresh_token", "refresh_token": refresh_token},
                               "the refresh token", deadline, record, identity)
        except GenesysAuthError as exc:
            if exc.code != INVALID_GRANT:
                raise
            raise GenesysConnectionError(exc.message, status=exc.status, code=exc.code,
                                         correlation_id=exc.correlation_id) from exc

    def me(self, access_token: str, *, deadline: float) -> Me:
        """Return the user a token belongs to."""
        response = self._api("GET", USERS_ME_PATH, access_token, deadline)
        if response.status_code != 200:
            raise error_from(response)
        body = json_body(response)
        if not isinstance(body.get("id"), str) or not body["id"]:
            raise GenesysError("GET /api/v2/users/me answered without a user id", status=response.status_code)
        return Me(str(body["id"]).lower(), str(body.get("name") or ""), str(body.get("email") or ""))

    def revoke(self, access_token: str, *, deadline: float) -> None:
        """Delete the token at Genesys (DELETE /api/v2/tokens/me); a token already gone (401) counts as done."""
        response = self._api("DELETE", TOKENS_ME_PATH, access_token, deadline)
        if response.status_code >= 400 and response.status_code != 401:
            raise error_from(response)

    def _grant(self, form: dict[str, str], what: str, deadline: float, record: Recorder | None,
               identity: str | None) -> TokenSet:
        timeout = bounded_timeout(self._timeout, deadline - self._timer())
        response = exchange(self._session, "POST", self.login_url + TOKEN_PATH, TOKEN_PATH, clock=self._timer,
                            timeout=timeout, record=record, identity=identity, auth=self._auth, data=form,
                            headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise login_error(response, what)
        access, expires_in, refresh = token_fields(response)
        return TokenSet(access, expires_in, refresh)

    def _api(self, method: str, path: str, token: str, deadline: float) -> requests.Response:
        timeout = bounded_timeout(self._timeout, deadline - self._timer())
        return exchange(self._session, method, self.api_url + path, path, clock=self._timer, timeout=timeout,
                        record=None, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})


# --- users: their connections ------------------------------------------------------------------------------------


class ConnectionRepo(Protocol):
    """Where connections are kept (the store); every change of a token is a compare-and-set."""

    def connection(self, user_id: str) -> Connection | None:
        """Return the connection of a Genesys user id."""
        ...

    def find_connection(self, agent: str) -> Connection | None:
        """Return the agent connection of a Genesys user id or e-mail (case-insensitive)."""
        ...

    def service_user(self) -> Connection | None:
        """Return the service user's connection."""
        ...

    def save_connection(self, connection: Connection) -> None:
        """Insert or replace a connection; a new service user replaces the old one."""
        ...

    def lease_refresh(self, user_id: str, *, version: int, lease: str, until: datetime, now: datetime) -> bool:
        """Take the right to refresh a connection still at version (no other live lease); True when taken."""
        ...

    def store_refresh(self, user_id: str, *, lease: str, access_token: str, access_expires_at: datetime,
                      refresh_token: str, now: datetime, email: str | None = None, name: str | None = None) -> bool:
        """Store refreshed tokens (and the user's current e-mail and name, when known) under the lease, bumping the
        version and ending the lease; True when written."""
        ...

    def end_lease(self, user_id: str, *, lease: str) -> None:
        """Give a lease up without a new token (the refresh failed for a reason that may pass)."""
        ...

    def mark_broken(self, user_id: str, *, lease: str, reason: str, now: datetime) -> None:
        """Mark a connection broken (its refresh token was refused) under the lease; its tokens are dropped."""
        ...

    def touch_connection(self, user_id: str, *, now: datetime) -> None:
        """Record that a connection was just used to act."""
        ...

    def connections(self) -> list[Connection]:
        """Return every connection, the service user first."""
        ...


class UserConnections:
    """The connected users' tokens: decrypted on use, cached per process, refreshed by one process at a time.

    Genesys may rotate the refresh token on every refresh, so two processes refreshing at once would lose one of
    them: a refresh first takes a lease on the connection's row (compare-and-set on its version), and the others
    wait for the new access token to appear there. An access token Genesys answered 401 is never used again by
    this process; the next token comes from a refresh.
    """

    def __init__(self, repo: ConnectionRepo, grant: CodeGrant, cipher: TokenCipher, *,
                 connect_url: str, wallclock: Callable[[], datetime], timer: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, margin: float = TOKEN_MARGIN) -> None:
        self.repo = repo
        self.connect_url = connect_url  # where an agent connects: <PUBLIC_URL>/genesys/connect
        self.grant = grant
        self.cipher = cipher
        self._wallclock = wallclock
        self._timer = timer
        self._sleep = sleep
        self._margin = margin
        self._lock = threading.Lock()
        self._user_locks: dict[str, threading.Lock] = {}
        self._cache: dict[str, tuple[str, float]] = {}  # user id -> (access token, monotonic time it stops serving)
        self._rejected: dict[str, str] = {}  # user id -> the access token Genesys last answered 401
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"UserConnections({self.grant!r}, refreshes={self.refreshes})"

    def agent(self, agent: str) -> Connection | None:
        """Return the agent connection of an agent named by Genesys user id or e-mail (no request to Genesys)."""
        return self.repo.find_connection(agent.strip())

    def service_user(self) -> Connection | None:
        """Return the service user's connection, if one was made."""
        return self.repo.service_user()

    def connections(self) -> list[Connection]:
        """Return every connection, the service user first."""
        return self.repo.connections()

    def tokens(self, identity: Identity) -> TokenSource:
        """Return the token source of a connected user's identity."""
        assert identity.user_id is not None
        return _UserTokens(self, identity)

    def connect(self, code: str, verifier: str, *, kind: ConnectionKind, deadline: float) -> Connection:
        """Finish an authorization: exchange the code, ask who the user is, store the connection (tokens encrypted)."""
        tokens = self.grant.exchange(code, verifier, deadline=deadline)
        if tokens.refresh_token is None:
            raise GenesysAuthError("Genesys gave no refresh token: the OAuth client must be of grant type Code "
                                   "Authorization (a confidential client), not Implicit or PKCE-only")
        me = self.grant.me(tokens.access_token, deadline=deadline)
        now = self._wallclock()
        connection = Connection(
            user_id=me.user_id, kind=kind, email=me.email, name=me.name,
            refresh_token=self.cipher.encrypt(tokens.refresh_token),
            access_token=self.cipher.encrypt(tokens.access_token),
            access_expires_at=now + timedelta(seconds=tokens.expires_in), refreshed_at=now, created_at=now)
        self.repo.save_connection(connection)
        self._forget(me.user_id)
        stored = self.repo.connection(me.user_id) or connection  # the service user stays one on the agents' page
        logger.info("genesys connection stored (%s)", stored.kind)
        return stored

    def identify(self, code: str, verifier: str, *, deadline: float) -> Me:
        """Say who authorized (a console login): exchange the code, ask who the user is, then delete the token at
        Genesys; nothing is stored, so a login never becomes an agent connection."""
        tokens = self.grant.exchange(code, verifier, deadline=deadline)
        me = self.grant.me(tokens.access_token, deadline=deadline)
        try:
            self.grant.revoke(tokens.access_token, deadline=deadline)
        except GenesysError:  # the token is dropped here either way, and expires by itself at Genesys
            logger.warning("genesys login token could not be deleted at Genesys; it expires by itself")
        return me

    def revoke(self, connection: Connection, *, deadline: float) -> None:
        """Delete the connection's token at Genesys (refreshing first when needed); GenesysError when it cannot."""
        token = self.token(connection.user_id, Identity(connection.kind, connection.user_id), deadline=deadline)
        self.grant.revoke(token, deadline=deadline)
        self._forget(connection.user_id)

    def touch(self, user_id: str) -> None:
        """Record that a connection was just used to act."""
        self.repo.touch_connection(user_id, now=self._wallclock())

    def invalidate(self, user_id: str, token: str) -> None:
        """Never use this access token again in this process (Genesys answered it 401)."""
        with self._lock:
            self._rejected[user_id] = token
            if self._cache.get(user_id, ("", 0.0))[0] == token:
                del self._cache[user_id]

    def token(self, user_id: str, identity: Identity, *, deadline: float, record: Recorder | None = None) -> str:
        """Return a usable access token of a connected user: cached, stored by another process, or refreshed."""
        cached = self._cached(user_id)
        if cached is not None:
            return cached
        lock = self._user_lock(user_id)
        if not lock.acquire(timeout=max(0.0, deadline - self._timer())):
            raise GenesysBudgetError("the deadline passed while another thread was refreshing a user's token")
        try:
            return self._cached(user_id) or self._stored_or_refreshed(user_id, identity, deadline, record)
        finally:
            lock.release()

    def _stored_or_refreshed(self, user_id: str, identity: Identity, deadline: float,
                             record: Recorder | None) -> str:
        waited = 0.0
        while True:
            connection = self.repo.connection(user_id)
            if connection is None:
                raise GenesysConnectionError(f"{identity} is not connected any more")
            if connection.state == "broken":
                raise GenesysConnectionError(f"the connection of {connection.email or user_id} is broken since "
                                             f"{_when(connection.broken_at)}: {connection.reason}")
            now = self._wallclock()
            usable = self._usable_access(connection, now)
            if usable is not None:
                return usable
            lease = uuid.uuid4().hex
            if self.repo.lease_refresh(user_id, version=connection.version, lease=lease,
                                       until=now + timedelta(seconds=REFRESH_LEASE_SECONDS), now=now):
                return self._refresh(connection, identity, lease, deadline, record)
            # Another process is refreshing this connection: its new token will be in the row.
            if self._timer() + LEASE_WAIT_SECONDS >= deadline:
                raise GenesysBudgetError(f"the deadline passed while another process was refreshing the token of "
                                         f"{connection.email or user_id}")
            if waited >= LEASE_WAIT_MAX:
                raise GenesysConnectionError(f"another process has been refreshing the token of "
                                             f"{connection.email or user_id} for over {LEASE_WAIT_MAX:g} s")
            self._sleep(LEASE_WAIT_SECONDS)
            waited += LEASE_WAIT_SECONDS

    def _usable_access(self, connection: Connection, now: datetime) -> str | None:
        """Return the stored access token when it has more than the margin left and was not refused here."""
        if connection.access_token is None or connection.access_expires_at is None:
            return None
        left = (connection.access_expires_at - now).total_seconds() - self._margin
        if left <= 0:
            return None
        token = self._decrypt(connection, connection.access_token)
        with self._lock:
            if self._rejected.get(connection.user_id) == token:
                return None
            self._cache[connection.user_id] = (token, self._timer() + left)
        return token

    def _refresh(self, connection: Connection, identity: Identity, lease: str, deadline: float,
                 record: Recorder | None) -> str:
        """Refresh under the lease; a refusal marks the connection broken, any other failure gives the lease up."""
        try:
            fresh = self.grant.refresh(self._decrypt(connection, connection.refresh_token), deadline=deadline,
                                       record=record, identity=str(identity))
        except GenesysConnectionError as exc:
            reason = f"Genesys refused the refresh token ({exc.status} {exc.code or ''}): {exc.message}".strip()
            self.repo.mark_broken(connection.user_id, lease=lease, reason=reason[:500], now=self._wallclock())
            self._forget(connection.user_id)
            logger.warning("genesys connection broken: refresh refused", extra={"state": "broken"})
            raise GenesysConnectionError(f"the connection of {connection.email or connection.user_id} is broken: "
                                         f"{reason}", status=exc.status, code=exc.code,
                                         correlation_id=exc.correlation_id) from exc
        except BaseException:
            self.repo.end_lease(connection.user_id, lease=lease)
            raise
        self.refreshes += 1
        with self._lock:  # usable by this process at once, whatever happens to the store below
            ttl = token_ttl(fresh.expires_in, self._margin)
            self._cache[connection.user_id] = (fresh.access_token, self._timer() + ttl)
        self._store_refresh(connection, lease, fresh, deadline)
        return fresh.access_token

    def _store_refresh(self, connection: Connection, lease: str, fresh: TokenSet, deadline: float) -> None:
        """Keep the refreshed tokens (Genesys may have rotated the refresh token: losing it breaks the connection),
        with the user's current e-mail and name; a failing database is tried a few times within the deadline."""
        try:
            me: Me | None = self.grant.me(fresh.access_token, deadline=deadline)
        except GenesysError:
            me = None  # the e-mail stays as it was; the next refresh tries again
        now = self._wallclock()
        refresh = self.cipher.encrypt(fresh.refresh_token) if fresh.refresh_token else connection.refresh_token
        access = self.cipher.encrypt(fresh.access_token)
        expires_at = now + timedelta(seconds=fresh.expires_in)
        for attempt in range(STORE_TRIES):
            try:
                if not self.repo.store_refresh(connection.user_id, lease=lease, access_token=access,
                                               access_expires_at=expires_at, refresh_token=refresh, now=now,
                                               email=me.email if me else None, name=me.name if me else None):
                    logger.warning("genesys refresh stored too late: the lease had run out")
                return
            except StoreError:
                if attempt + 1 == STORE_TRIES or self._timer() + STORE_PAUSE >= deadline:
                    logger.error("genesys refresh could not be stored: if Genesys rotated the refresh token, the "
                                 "connection breaks at its next refresh and the user must connect again")
                    raise
                self._sleep(STORE_PAUSE)

    def _decrypt(self, connection: Connection, ciphertext: str) -> str:
        """Decrypt a stored token; a key removed too early makes the connection unusable, not the event crash."""
        try:
            return self.cipher.decrypt(ciphertext)
        except TokenCipherError as exc:
            raise GenesysConnectionError(f"the token of {connection.email or connection.user_id} cannot be "
                                         f"decrypted: {exc}") from exc

    def _cached(self, user_id: str) -> str | None:
        with self._lock:
            token, until = self._cache.get(user_id, ("", 0.0))
            if token and self._timer() < until:
                return token
            self._cache.pop(user_id, None)
            return None

    def _forget(self, user_id: str) -> None:
        with self._lock:
            self._cache.pop(user_id, None)
            self._rejected.pop(user_id, None)

    def _user_lock(self, user_id: str) -> threading.Lock:
        with self._lock:
            return self._user_locks.setdefault(user_id, threading.Lock())


class _UserTokens:
    """The TokenSource of one connected user."""

    def __init__(self, connections: UserConnections, identity: Identity) -> None:
        self._connections = connections
        self._identity = identity
        self._user_id = identity.user_id or ""

    def token(self, *, deadline: float, record: Recorder | None = None) -> str:
        """Return the user's access token."""
        return self._connections.token(self._user_id, self._identity, deadline=deadline, record=record)

    def invalidate(self, token: str) -> None:
        """Never use this token again; the next one comes from a refresh."""
        self._connections.invalidate(self._user_id, token)


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z") if moment else "an unknown time"
