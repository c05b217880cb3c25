"""Unit tests of acting as a user, against `responses` (no network, no sleeping): the authorization-code client
(PKCE, exchange, refresh, me, revoke), the connected users' tokens on a real SQLite store (refresh once, rotate,
encrypt, break, lease), and GenesysClient.act trying its identities in turn."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import responses
from cryptography.fernet import Fernet
from responses import matchers
from sqlalchemy import select

from tests.support import genesys_models as gm
from tests.support.clocks import T0, Clock, FakeClock
from webhook.crypto import TokenCipher
from webhook.errors import (
    GenesysAuthError,
    GenesysBudgetError,
    GenesysConnectionError,
    GenesysNoIdentityError,
    GenesysUnavailableError,
    StoreError,
)
from webhook.genesys.auth import (
    LEASE_WAIT_SECONDS,
    ClientCredentials,
    CodeGrant,
    Me,
    TokenSet,
    UserConnections,
    pkce_challenge,
    pkce_pair,
)
from webhook.genesys.client import Applied, GenesysClient, analytics_body, choose_leg, user_search_body
from webhook.genesys.model import CLIENT_CREDENTIALS, Attempt, Connection, ConnectionKind, Identity
from webhook.store import Store, genesys_connections

API = "https://api.mypurecloud.ie"
LOGIN = "https://login.mypurecloud.ie"
TOKEN_URL = f"{LOGIN}/oauth/token"
CALLS = f"{API}/api/v2/conversations/calls"
USER_CLIENT_ID = "user-client-id-4c1e"
USER_SECRET = "user-client-secret-d00d-77aa"
CLIENT_ID = "client-id-7f3a"
SECRET = "very-secret-client-secret-9b21"
CC_TOKEN = "cc-token-CCCC-0000"
REDIRECT = "https://bridge.example.com/genesys/callback"
CONNECT = "https://bridge.example.com/genesys/connect"
CODE = "auth-code-Zq81-unique"
VERIFIER = "verifier-" + "v" * 60
ACCESS, ACCESS2 = "user-access-AAAA-1111", "user-access-BBBB-2222"
REFRESH, REFRESH2 = "user-refresh-RRRR-1111", "user-refresh-SSSS-2222"
SERVICE_ACCESS = "service-access-SVSV-3333"
JANE, SAM = gm.JANE, gm.SAM

# RFC 7636, appendix B.
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


# --- helpers ----------------------------------------------------------------------------------------------------


@pytest.fixture
def timer() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall() -> Clock:
    return Clock()


@pytest.fixture
def cipher() -> TokenCipher:
    return TokenCipher((Fernet.generate_key().decode(),))


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    store = Store.from_url(sqlite_url)
    store.create_schema()
    yield store
    store.close()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    session = requests.Session()
    yield session
    session.close()


@pytest.fixture
def grant(session: requests.Session, timer: FakeClock) -> CodeGrant:
    return CodeGrant(LOGIN, API, USER_CLIENT_ID, USER_SECRET, REDIRECT, session=session, timer=timer)


@pytest.fixture
def users(store: Store, grant: CodeGrant, cipher: TokenCipher, wall: Clock, timer: FakeClock) -> UserConnections:
    return UserConnections(store, grant, cipher, connect_url=CONNECT, wallclock=wall, timer=timer, sleep=timer.sleep)


@pytest.fixture
def attempts() -> list[Attempt]:
    return []


def basic(client_id: str = USER_CLIENT_ID, secret: str = USER_SECRET) -> Any:
    value = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return matchers.header_matcher({"Authorization": value})


def bearer(token: str) -> Any:
    return matchers.header_matcher({"Authorization": f"Bearer {token}"})


def token_answer(access: str = ACCESS2, refresh: str | None = REFRESH2, expires_in: int = 86400) -> dict[str, Any]:
    body: dict[str, Any] = {"access_token": access, "token_type": "bearer", "expires_in": expires_in}
    if refresh is not None:
        body["refresh_token"] = refresh
    return body


def add_refresh(rsps: responses.RequestsMock, presented: str = REFRESH, *, me: gm.Person | None = JANE,
                **answer: Any) -> None:
    """The refresh grant, then (unless me is None) the GET /users/me with the new token that keeps the stored
    e-mail current."""
    rsps.post(TOKEN_URL, json=token_answer(**answer),
              match=[matchers.urlencoded_params_matcher({"grant_type": "refresh_token", "refresh_token": presented}),
                     basic()])
    if me is not None:
        rsps.get(f"{API}/api/v2/users/me", json=me.me(), match=[bearer(answer.get("access", ACCESS2))])


def add_cc_token(rsps: responses.RequestsMock) -> None:
    rsps.post(TOKEN_URL, json={"access_token": CC_TOKEN, "token_type": "bearer", "expires_in": 86400},
              match=[matchers.urlencoded_params_matcher({"grant_type": "client_credentials"}),
                     basic(CLIENT_ID, SECRET)])


def genesys_error(status: int, code: str, message: str, correlation: str = "corr-1") -> dict[str, Any]:
    return {"json": {"message": message, "code": code, "status": status, "messageWithParams": message,
                     "messageParams": {}, "contextId": correlation, "details": [], "errors": []},
            "status": status, "headers": {"ININ-Correlation-Id": correlation}}


def oauth_refusal(code: str = "invalid_grant", description: str = "the grant is invalid") -> dict[str, Any]:
    return {"json": {"error": code, "description": description, "error_description": description}, "status": 400}


def connect(store: Store, cipher: TokenCipher, wall: Clock, person: gm.Person = JANE, *,
            kind: ConnectionKind = "agent", access: str | None = ACCESS, refresh: str = REFRESH,
            expires_in: float = 3600, **fields: Any) -> Connection:
    """Store a connection as the callback would (tokens encrypted), its access token valid for expires_in."""
    connection = Connection(
        user_id=person.id, kind=kind, email=person.email, name=person.name, refresh_token=cipher.encrypt(refresh),
        access_token=cipher.encrypt(access) if access is not None else None,
        access_expires_at=wall() + timedelta(seconds=expires_in), refreshed_at=wall(), created_at=wall(), **fields)
    store.save_connection(connection)
    return connection


def raw_row(store: Store, user_id: str) -> dict[str, Any]:
    """Return the connection's row as the database holds it, lease columns included."""
    with store.engine.connect() as conn:
        row = conn.execute(select(genesys_connections).where(genesys_connections.c.user_id == user_id)).mappings()
        return dict(row.one())


def patch_url(conversation_id: str, participant_id: str) -> str:
    return f"{CALLS}/{conversation_id}/participants/{participant_id}"


def muted_body(muted: bool) -> Any:
    return matchers.json_params_matcher({"muted": muted}, strict_match=True)


# --- PKCE and the authorization-code client ---------------------------------------------------------------------


def test_pkce_challenge_matches_rfc_7636_appendix_b() -> None:
    assert pkce_challenge(RFC_VERIFIER) == RFC_CHALLENGE


def test_pkce_pair_is_a_fresh_valid_verifier_and_its_challenge() -> None:
    verifier, challenge = pkce_pair()
    other, _ = pkce_pair()
    assert verifier != other
    assert 43 <= len(verifier) <= 128
    assert set(verifier) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    assert challenge == pkce_challenge(verifier) and "=" not in challenge and len(challenge) == 43


def test_authorize_url_asks_for_a_code_with_pkce_s256(grant: CodeGrant) -> None:
    url = grant.authorize_url("state-xyz", RFC_CHALLENGE)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{LOGIN}/oauth/authorize"
    assert parse_qsl(parts.query, strict_parsing=True) == [
        ("response_type", "code"), ("client_id", USER_CLIENT_ID), ("redirect_uri", REDIRECT),
        ("state", "state-xyz"), ("code_challenge", RFC_CHALLENGE), ("code_challenge_method", "S256")]
    assert USER_SECRET not in url


def test_exchange_sends_the_code_verifier_and_redirect_uri_with_basic_auth(rsps: responses.RequestsMock,
                                                                           grant: CodeGrant, timer: FakeClock) -> None:
    rsps.post(TOKEN_URL, json=token_answer(ACCESS, REFRESH, 1800),
              match=[matchers.urlencoded_params_matcher({"grant_type": "authorization_code", "code": CODE,
                                                         "redirect_uri": REDIRECT, "code_verifier": VERIFIER}),
                     basic()])
    tokens = grant.exchange(CODE, VERIFIER, deadline=timer() + 30)
    assert tokens == TokenSet(ACCESS, 1800.0, REFRESH)
    assert ACCESS not in repr(tokens) and REFRESH not in repr(tokens)


def test_a_refused_exchange_is_an_auth_error_without_any_secret(rsps: responses.RequestsMock, grant: CodeGrant,
                                                                timer: FakeClock) -> None:
    rsps.post(TOKEN_URL, **oauth_refusal("invalid_grant", "the authorization code is invalid, expired or used"))
    with pytest.raises(GenesysAuthError) as caught:
        grant.exchange(CODE, VERIFIER, deadline=timer() + 30)
    assert not isinstance(caught.value, GenesysConnectionError)
    assert caught.value.status == 400 and caught.value.code == "invalid_grant"
    text = f"{caught.value} {caught.value!r} {caught.value.message}"
    assert "the authorization code is invalid" in text
    for secret in (USER_SECRET, CODE, VERIFIER):
        assert secret not in text


def test_refresh_trades_the_refresh_token_with_basic_auth(rsps: responses.RequestsMock, grant: CodeGrant,
                                                          timer: FakeClock, attempts: list[Attempt]) -> None:
    add_refresh(rsps, me=None)
    tokens = grant.refresh(REFRESH, deadline=timer() + 30, record=attempts.append, identity=f"agent:{JANE.id}")
    assert tokens == TokenSet(ACCESS2, 86400.0, REFRESH2)
    assert [(a.method, a.path, a.status, a.identity) for a in attempts] == [
        ("POST", "/oauth/token", 200, f"agent:{JANE.id}")]


def test_a_refused_refresh_is_a_connection_error(rsps: responses.RequestsMock, grant: CodeGrant,
                                                 timer: FakeClock) -> None:
    rsps.post(TOKEN_URL, **oauth_refusal("invalid_grant", "the refresh token is invalid, expired or revoked"))
    with pytest.raises(GenesysConnectionError) as caught:
        grant.refresh(REFRESH, deadline=timer() + 30)
    assert caught.value.status == 400 and caught.value.code == "invalid_grant"
    assert REFRESH not in str(caught.value) and USER_SECRET not in str(caught.value)


def test_me_names_the_tokens_user(rsps: responses.RequestsMock, grant: CodeGrant, timer: FakeClock) -> None:
    rsps.get(f"{API}/api/v2/users/me", json=gm.user_me(id=JANE.id.upper(), name=JANE.name, email=JANE.email),
             match=[bearer(ACCESS)])
    assert grant.me(ACCESS, deadline=timer() + 30) == Me(JANE.id, JANE.name, JANE.email)


@pytest.mark.parametrize("status", [204, 200, 401])
def test_revoke_deletes_the_token_and_a_gone_token_counts_as_done(rsps: responses.RequestsMock, grant: CodeGrant,
                                                                  timer: FakeClock, status: int) -> None:
    answer: dict[str, Any] = {"status": status}
    if status == 401:
        answer = genesys_error(401, "bad.credentials", "Invalid login credentials.")
    rsps.delete(f"{API}/api/v2/tokens/me", match=[bearer(ACCESS)], **answer)
    assert grant.revoke(ACCESS, deadline=timer() + 30) is None


def test_revoke_reports_a_failure(rsps: responses.RequestsMock, grant: CodeGrant, timer: FakeClock) -> None:
    rsps.delete(f"{API}/api/v2/tokens/me", **genesys_error(503, "service.unavailable", "unavailable"))
    with pytest.raises(GenesysUnavailableError):
        grant.revoke(ACCESS, deadline=timer() + 30)


# --- the connected users' tokens ----------------------------------------------------------------------------------


def test_a_stored_unexpired_access_token_is_used_without_a_request(rsps: responses.RequestsMock, store: Store,
                                                                   users: UserConnections, cipher: TokenCipher,
                                                                   wall: Clock, timer: FakeClock) -> None:
    connect(store, cipher, wall)
    assert users.token(JANE.id, Identity("agent", JANE.id), deadline=timer() + 30) == ACCESS
    assert users.tokens(Identity("agent", JANE.id)).token(deadline=timer() + 30) == ACCESS
    assert len(rsps.calls) == 0 and users.refreshes == 0


def test_an_expired_token_is_refreshed_once_and_the_rotated_refresh_token_stored_encrypted(
        rsps: responses.RequestsMock, store: Store, users: UserConnections, cipher: TokenCipher, wall: Clock,
        timer: FakeClock, attempts: list[Attempt]) -> None:
    connect(store, cipher, wall, expires_in=30)  # inside the 60 s margin: due for a refresh
    add_refresh(rsps)
    identity = Identity("agent", JANE.id)
    assert users.token(JANE.id, identity, deadline=timer() + 30, record=attempts.append) == ACCESS2
    assert users.token(JANE.id, identity, deadline=timer() + 30) == ACCESS2  # cached: no second refresh
    assert users.refreshes == 1 and len(rsps.calls) == 2  # the refresh, and who the user is now
    assert [a.identity for a in attempts] == [f"agent:{JANE.id}"]
    row = raw_row(store, JANE.id)
    for value in row.values():
        for plaintext in (ACCESS, ACCESS2, REFRESH, REFRESH2):
            assert plaintext not in str(value)
    assert cipher.decrypt(row["refresh_token"]) == REFRESH2
    assert cipher.decrypt(row["access_token"]) == ACCESS2
    assert row["version"] == 1 and row["lease"] is None and row["lease_until"] is None
    assert row["refreshed_at"] == wall() and row["access_expires_at"] == wall() + timedelta(seconds=86400)


def test_a_refresh_without_a_new_refresh_token_keeps_the_old_one(rsps: responses.RequestsMock, store: Store,
                                                                 users: UserConnections, cipher: TokenCipher,
                                                                 wall: Clock, timer: FakeClock) -> None:
    connect(store, cipher, wall, expires_in=0)
    add_refresh(rsps, refresh=None)
    assert users.token(JANE.id, Identity("agent", JANE.id), deadline=timer() + 30) == ACCESS2
    assert cipher.decrypt(raw_row(store, JANE.id)["refresh_token"]) == REFRESH


def test_a_refused_refresh_breaks_the_connection_and_the_next_call_fails_at_once(
        rsps: responses.RequestsMock, store: Store, users: UserConnections, cipher: TokenCipher, wall: Clock,
        timer: FakeClock) -> None:
    connect(store, cipher, wall, expires_in=0)
    rsps.post(TOKEN_URL, **oauth_refusal("invalid_grant", "the refresh token is invalid, expired or revoked"))
    identity = Identity("agent", JANE.id)
    with pytest.raises(GenesysConnectionError) as caught:
        users.token(JANE.id, identity, deadline=timer() + 30)
    assert caught.value.code == "invalid_grant" and REFRESH not in str(caught.value)
    connection = store.connection(JANE.id)
    assert connection is not None and connection.state == "broken"
    assert "invalid_grant" in connection.reason and connection.broken_at == wall()
    row = raw_row(store, JANE.id)
    assert row["access_token"] is None and row["lease"] is None
    wall.advance(5)
    with pytest.raises(GenesysConnectionError, match="broken"):
        users.token(JANE.id, identity, deadline=timer() + 30)
    assert len(rsps.calls) == 1  # the broken connection sent nothing more


def test_after_a_401_the_next_token_is_refreshed_exactly_once(rsps: responses.RequestsMock, store: Store,
                                                              users: UserConnections, cipher: TokenCipher,
                                                              wall: Clock, timer: FakeClock) -> None:
    connect(store, cipher, wall)
    tokens = users.tokens(Identity("agent", JANE.id))
    assert tokens.token(deadline=timer() + 30) == ACCESS
    tokens.invalidate(ACCESS)  # Genesys answered it 401
    add_refresh(rsps)
    assert tokens.token(deadline=timer() + 30) == ACCESS2
    assert tokens.token(deadline=timer() + 30) == ACCESS2
    assert users.refreshes == 1 and len(rsps.calls) == 2  # the refresh, and who the user is now


def test_a_lease_held_by_another_process_is_waited_for_and_its_token_used(rsps: responses.RequestsMock,
                                                                          store: Store, cipher: TokenCipher,
                                                                          grant: CodeGrant, wall: Clock,
                                                                          timer: FakeClock) -> None:
    connect(store, cipher, wall, expires_in=0)
    assert store.lease_refresh(JANE.id, version=0, lease="other-process", until=wall() + timedelta(seconds=30),
                               now=wall())
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        timer.advance(seconds)
        if len(waits) == 1:  # the other process finishes its refresh meanwhile
            assert store.store_refresh(JANE.id, lease="other-process", access_token=cipher.encrypt("other-access"),
                                       access_expires_at=wall() + timedelta(hours=1),
                                       refresh_token=cipher.encrypt("other-refresh"), now=wall())

    users = UserConnections(store, grant, cipher, connect_url=CONNECT, wallclock=wall, timer=timer, sleep=sleep)
    assert users.token(JANE.id, Identity("agent", JANE.id), deadline=timer() + 30) == "other-access"
    assert waits == [LEASE_WAIT_SECONDS]
    assert users.refreshes == 0 and len(rsps.calls) == 0
    assert cipher.decrypt(raw_row(store, JANE.id)["refresh_token"]) == "other-refresh"


def test_a_stale_lease_of_a_crashed_process_is_taken_over(rsps: responses.RequestsMock, store: Store,
                                                           users: UserConnections, cipher: TokenCipher, wall: Clock,
                                                           timer: FakeClock) -> None:
    connect(store, cipher, wall, expires_in=0)
    assert store.lease_refresh(JANE.id, version=0, lease="crashed", until=wall() - timedelta(seconds=1),
                               now=wall() - timedelta(seconds=31))
    add_refresh(rsps)
    assert users.token(JANE.id, Identity("agent", JANE.id), deadline=timer() + 30) == ACCESS2
    assert timer.sleeps == [] and users.refreshes == 1
    assert raw_row(store, JANE.id)["lease"] is None


def test_waiting_for_another_process_stops_at_the_deadline(rsps: responses.RequestsMock, store: Store,
                                                           users: UserConnections, cipher: TokenCipher, wall: Clock,
                                                           timer: FakeClock) -> None:
    connect(store, cipher, wall, expires_in=0)
    assert store.lease_refresh(JANE.id, version=0, lease="slow-process", until=wall() + timedelta(seconds=30),
                               now=wall())
    with pytest.raises(GenesysBudgetError, match="another process"):
        users.token(JANE.id, Identity("agent", JANE.id), deadline=timer() + 1)
    assert 0 < len(timer.sleeps) <= round(1 / LEASE_WAIT_SECONDS)
    assert len(rsps.calls) == 0 and raw_row(store, JANE.id)["lease"] == "slow-process"


@pytest.mark.parametrize(("status", "code"), [(401, "invalid_client"), (400, "invalid_client"),
                                              (400, "unauthorized_client")])
def test_a_refused_client_does_not_break_the_users_connection(rsps: responses.RequestsMock, store: Store,
                                                              users: UserConnections, cipher: TokenCipher,
                                                              wall: Clock, timer: FakeClock, status: int,
                                                              code: str) -> None:
    """A wrong GENESYS_USER_CLIENT_SECRET (or grant type) says nothing about the user's refresh token."""
    connect(store, cipher, wall, expires_in=0)
    rsps.post(TOKEN_URL, status=status, json={"error": code, "description": "authentication failed",
                                              "error_description": "authentication failed"})
    with pytest.raises(GenesysAuthError) as caught:
        users.token(JANE.id, Identity("agent", JANE.id), deadline=timer() + 30)
    assert not isinstance(caught.value, GenesysConnectionError)
    row = raw_row(store, JANE.id)
    assert (row["state"], row["broken_at"], row["lease"]) == ("ok", None, None)
    assert cipher.decrypt(row["refresh_token"]) == REFRESH


class ReconnectDuringLease:
    """The store, except that the user connects again (a new row) just before this process takes its lease."""

    def __init__(self, store: Store, fresh: Connection) -> None:
        self.store = store
        self.fresh = fresh

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def lease_refresh(self, user_id: str, **kwargs: Any) -> bool:
        self.store.save_connection(self.fresh)
        return self.store.lease_refresh(user_id, **kwargs)


# Found in review: a replace reset the version to 0, so the stale process's lease won on the new row.
def test_a_reconnect_during_a_refresh_is_not_broken_by_the_stale_refresh_token(
        rsps: responses.RequestsMock, store: Store, grant: CodeGrant, cipher: TokenCipher, wall: Clock,
        timer: FakeClock) -> None:
    connect(store, cipher, wall, expires_in=0)
    fresh = Connection(user_id=JANE.id, kind="agent", email=JANE.email, name=JANE.name,
                       refresh_token=cipher.encrypt("reconnected-refresh"),
                       access_token=cipher.encrypt("reconnected-access"),
                       access_expires_at=wall() + timedelta(hours=1), refreshed_at=wall(), created_at=wall())
    users = UserConnections(ReconnectDuringLease(store, fresh), grant, cipher, connect_url=CONNECT, wallclock=wall,
                            timer=timer, sleep=timer.sleep)
    # No request at all (rsps has none registered): the lease fails on the new row's version, and the new row's
    # access token is used; the old refresh token is never sent.
    token = users.token(JANE.id, Identity("agent", JANE.id), deadline=timer() + 30)
    row = raw_row(store, JANE.id)
    assert row["state"] == "ok", row["reason"]
    assert cipher.decrypt(row["refresh_token"]) == "reconnected-refresh"
    assert token == "reconnected-access"


def test_a_transient_refresh_failure_gives_the_lease_up(rsps: responses.RequestsMock, store: Store,
                                                        users: UserConnections, cipher: TokenCipher, wall: Clock,
                                                        timer: FakeClock) -> None:
    connect(store, cipher, wall, expires_in=0)
    rsps.post(TOKEN_URL, **genesys_error(503, "service.unavailable", "The service is currently unavailable."))
    identity = Identity("agent", JANE.id)
    with pytest.raises(GenesysUnavailableError):
        users.token(JANE.id, identity, deadline=timer() + 30)
    row = raw_row(store, JANE.id)
    assert row["lease"] is None and row["lease_until"] is None
    assert row["state"] == "ok" and row["version"] == 0 and cipher.decrypt(row["refresh_token"]) == REFRESH
    add_refresh(rsps)  # the next try takes the lease at once
    assert users.token(JANE.id, identity, deadline=timer() + 30) == ACCESS2


# --- acting as each identity ---------------------------------------------------------------------------------------


@pytest.fixture
def make_client(session: requests.Session, users: UserConnections,
                timer: FakeClock) -> Iterator[Callable[..., GenesysClient]]:
    made: list[GenesysClient] = []

    def make(*, act_as: tuple[Any, ...] | None = None, client_credentials: bool = True) -> GenesysClient:
        tokens = ClientCredentials(LOGIN, CLIENT_ID, SECRET, session=session, timer=timer) \
            if client_credentials else None
        client = GenesysClient(API, tokens, users=users, act_as=act_as, session=session, clock=timer,
                               sleep=timer.sleep, wallclock=lambda: T0, rng=lambda: 0.5)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_the_agent_acts_on_their_own_calls_in_two_requests_then_one(
        rsps: responses.RequestsMock, store: Store, cipher: TokenCipher, wall: Clock, timer: FakeClock,
        make_client: Callable[..., GenesysClient], attempts: list[Attempt]) -> None:
    scenario = gm.held_and_active()
    connect(store, cipher, wall)
    client = make_client()
    leg, call_id = scenario.expected_participant_id, scenario.expected_conversation_id
    assert leg is not None and call_id is not None
    rsps.get(CALLS, json=scenario.listing, match=[bearer(ACCESS)])
    rsps.patch(patch_url(call_id, leg), status=202, match=[bearer(ACCESS), muted_body(True)])
    applied = client.act(JANE.email, True, deadline=timer() + 30, record=attempts.append)
    assert applied is not None and applied.identity == Identity("agent", JANE.id)
    assert (applied.target.conversation_id, applied.target.participant_id) == (call_id, leg)
    assert [(a.method, a.path, a.identity) for a in attempts] == [
        ("GET", "/api/v2/conversations/calls", f"agent:{JANE.id}"),
        ("PATCH", f"/api/v2/conversations/calls/{call_id}/participants/{leg}", f"agent:{JANE.id}")]
    connection = store.connection(JANE.id)
    assert connection is not None and connection.used_at == wall()

    attempts.clear()  # warm: the call is remembered, the PATCH alone
    rsps.patch(patch_url(call_id, leg), status=202, match=[bearer(ACCESS), muted_body(False)])
    applied = client.act(JANE.email, False, deadline=timer() + 30, record=attempts.append)
    assert applied is not None and applied.identity == Identity("agent", JANE.id)
    assert [(a.method, a.identity) for a in attempts] == [("PATCH", f"agent:{JANE.id}")]
    assert len(rsps.calls) == 3


def test_a_401_on_the_agents_token_refreshes_once_and_sends_again(
        rsps: responses.RequestsMock, store: Store, cipher: TokenCipher, wall: Clock, timer: FakeClock,
        make_client: Callable[..., GenesysClient], attempts: list[Attempt]) -> None:
    scenario = gm.plain_call()
    leg, call_id = scenario.expected_participant_id, scenario.expected_conversation_id
    assert leg is not None and call_id is not None
    connect(store, cipher, wall)
    client = make_client()
    rsps.get(CALLS, match=[bearer(ACCESS)], **genesys_error(401, "bad.credentials", "Invalid login credentials."))
    add_refresh(rsps)
    rsps.get(CALLS, json=scenario.listing, match=[bearer(ACCESS2)])
    rsps.patch(patch_url(call_id, leg), status=202, match=[bearer(ACCESS2), muted_body(True)])
    applied = client.act(JANE.email, True, deadline=timer() + 30, record=attempts.append)
    assert applied is not None and applied.identity == Identity("agent", JANE.id)
    assert [(a.method, a.path, a.status) for a in attempts] == [
        ("GET", "/api/v2/conversations/calls", 401), ("POST", "/oauth/token", 200),
        ("GET", "/api/v2/conversations/calls", 200),
        ("PATCH", f"/api/v2/conversations/calls/{call_id}/participants/{leg}", 202)]
    assert {a.identity for a in attempts} == {f"agent:{JANE.id}"}
    row = raw_row(store, JANE.id)
    assert cipher.decrypt(row["access_token"]) == ACCESS2 and cipher.decrypt(row["refresh_token"]) == REFRESH2


def test_client_credentials_refused_as_not_a_user_falls_through_to_the_agent(
        rsps: responses.RequestsMock, store: Store, cipher: TokenCipher, wall: Clock, timer: FakeClock,
        make_client: Callable[..., GenesysClient], attempts: list[Attempt]) -> None:
    scenario = gm.plain_call()
    leg, call_id = scenario.expected_participant_id, scenario.expected_conversation_id
    assert leg is not None and call_id is not None
    connect(store, cipher, wall)
    client = make_client(act_as=("client_credentials", "agent"))
    add_cc_token(rsps)
    rsps.post(f"{API}/api/v2/analytics/conversations/details/query",
              json={"totalHits": 1, "conversations": [{"conversationId": call_id}]},
              match=[bearer(CC_TOKEN), matchers.json_params_matcher(analytics_body(JANE.id, T0))])
    rsps.get(f"{CALLS}/{call_id}", json=scenario.call(call_id), match=[bearer(CC_TOKEN)])
    rsps.patch(patch_url(call_id, leg), match=[bearer(CC_TOKEN)], **genesys_error(
        400, "not.a.user", "This request requires a user context. Client credentials cannot be used for requests "
                           "to this resource."))
    rsps.patch(patch_url(call_id, leg), status=202, match=[bearer(ACCESS), muted_body(True)])
    applied = client.act(JANE.id, True, deadline=timer() + 30, record=attempts.append)
    assert applied is not None and applied.identity == Identity("agent", JANE.id)
    assert applied.target.participant_id == leg
    assert [(a.method, a.status, a.identity) for a in attempts] == [
        ("POST", 200, "client_credentials"), ("POST", 200, "client_credentials"),
        ("GET", 200, "client_credentials"), ("PATCH", 400, "client_credentials"), ("PATCH", 202, f"agent:{JANE.id}")]


def test_a_403_as_the_service_user_moves_on_to_client_credentials(
        rsps: responses.RequestsMock, store: Store, cipher: TokenCipher, wall: Clock, timer: FakeClock,
        make_client: Callable[..., GenesysClient], attempts: list[Attempt]) -> None:
    scenario = gm.plain_call()
    leg, call_id = scenario.expected_participant_id, scenario.expected_conversation_id
    assert leg is not None and call_id is not None
    connect(store, cipher, wall, SAM, kind="service_user", access=SERVICE_ACCESS)
    client = make_client()  # agent (Jane has not connected), service user, client credentials
    rsps.post(f"{API}/api/v2/users/search", match=[bearer(SERVICE_ACCESS),
                                                  matchers.json_params_matcher(user_search_body(JANE.email))],
              json={"total": 1, "pageCount": 1, "pageSize": 1, "pageNumber": 1,
                    "results": [{"id": JANE.id, "email": JANE.email, "name": JANE.name}]})
    rsps.post(f"{API}/api/v2/analytics/conversations/details/query", match=[bearer(SERVICE_ACCESS)],
              json={"totalHits": 1, "conversations": [{"conversationId": call_id}]})
    rsps.get(f"{CALLS}/{call_id}", json=scenario.call(call_id), match=[bearer(SERVICE_ACCESS)])
    rsps.patch(patch_url(call_id, leg), match=[bearer(SERVICE_ACCESS)], **genesys_error(
        403, "missing.permissions", "You are missing the following permission(s): "
                                    "conversation:communication:disconnect"))
    add_cc_token(rsps)
    rsps.patch(patch_url(call_id, leg), status=202, match=[bearer(CC_TOKEN), muted_body(True)])
    applied = client.act(JANE.email, True, deadline=timer() + 30, record=attempts.append)
    assert applied is not None and applied.identity == CLIENT_CREDENTIALS
    service = f"service_user:{SAM.id}"
    assert [(a.method, a.status, a.identity) for a in attempts] == [
        ("POST", 200, service), ("POST", 200, service), ("GET", 200, service), ("PATCH", 403, service),
        ("POST", 200, "client_credentials"), ("PATCH", 202, "client_credentials")]


def test_no_identity_left_lists_why_each_could_not_act(
        rsps: responses.RequestsMock, store: Store, cipher: TokenCipher, wall: Clock, timer: FakeClock,
        make_client: Callable[..., GenesysClient]) -> None:
    scenario = gm.plain_call()
    leg, call_id = scenario.expected_participant_id, scenario.expected_conversation_id
    assert leg is not None and call_id is not None
    connect(store, cipher, wall, SAM, kind="service_user", access=None, state="broken",
            reason="Genesys refused the refresh token (400 invalid_grant)", broken_at=wall())
    client = make_client()
    add_cc_token(rsps)
    rsps.post(f"{API}/api/v2/analytics/conversations/details/query", match=[bearer(CC_TOKEN)],
              json={"totalHits": 1, "conversations": [{"conversationId": call_id}]})
    rsps.get(f"{CALLS}/{call_id}", json=scenario.call(call_id), match=[bearer(CC_TOKEN)])
    rsps.patch(patch_url(call_id, leg), match=[bearer(CC_TOKEN)],
               **genesys_error(400, "not.a.user", "This request requires a user context."))
    with pytest.raises(GenesysNoIdentityError) as caught:
        client.act(JANE.id, True, deadline=timer() + 30)
    reasons = caught.value.reasons
    assert len(reasons) == 3
    assert reasons[0] == f"agent: {JANE.id} has not connected"
    assert reasons[1] == (f"service_user:{SAM.id}: the connection is broken (Genesys refused the refresh token "
                          "(400 invalid_grant))")
    assert reasons[2].startswith("client_credentials: refused by the participant rule") and "not.a.user" in reasons[2]
    for reason in reasons:
        assert reason in str(caught.value)


def test_a_disconnected_cached_call_is_dropped_and_the_new_call_muted(
        rsps: responses.RequestsMock, store: Store, cipher: TokenCipher, wall: Clock, timer: FakeClock,
        make_client: Callable[..., GenesysClient], attempts: list[Attempt]) -> None:
    old = gm.plain_call()
    old_leg, old_call = old.expected_participant_id, old.expected_conversation_id
    assert old_leg is not None and old_call is not None
    new_leg, new_call = gm.uid("next_call/jane"), gm.uid("next_call/call")
    new = gm.call(gm.participant(purpose="customer", start=T0 + timedelta(minutes=5), id=gm.uid("next_call/cust")),
                  gm.participant(user_id=JANE.id, start=T0 + timedelta(minutes=5, seconds=20), id=new_leg),
                  id=new_call)
    connect(store, cipher, wall)
    client = make_client()
    rsps.get(CALLS, json=old.listing, match=[bearer(ACCESS)])
    rsps.patch(patch_url(old_call, old_leg), status=202, match=[muted_body(True)])
    assert client.act(JANE.email, True, deadline=timer() + 30) is not None  # the old call is now cached

    rsps.patch(patch_url(old_call, old_leg), match=[muted_body(False)],
               **genesys_error(400, "conversation.error.call.disconnected", "The call is disconnected."))
    rsps.get(CALLS, json=gm.listing(new), match=[bearer(ACCESS)])
    rsps.patch(patch_url(new_call, new_leg), status=202, match=[bearer(ACCESS), muted_body(False)])
    applied = client.act(JANE.email, False, deadline=timer() + 30, record=attempts.append)
    assert applied is not None
    assert (applied.target.conversation_id, applied.target.participant_id) == (new_call, new_leg)
    assert [(a.method, a.path, a.status) for a in attempts] == [
        ("PATCH", f"/api/v2/conversations/calls/{old_call}/participants/{old_leg}", 400),
        ("GET", "/api/v2/conversations/calls", 200),
        ("PATCH", f"/api/v2/conversations/calls/{new_call}/participants/{new_leg}", 202)]


@pytest.mark.parametrize("make", gm.SCENARIOS, ids=[make.__name__ for make in gm.SCENARIOS])
def test_choose_leg_picks_the_expected_leg_of_each_scenario(make: Callable[[], gm.Scenario]) -> None:
    scenario = make()
    target = choose_leg(scenario.calls, scenario.agent_user_id)
    if scenario.expected_participant_id is None:
        assert target is None
        return
    assert target is not None
    assert target.participant_id == scenario.expected_participant_id
    assert target.conversation_id == scenario.expected_conversation_id
    assert target.participant_id not in scenario.must_not_mute


# --- the recording state and reading the call back (card capture) -------------------------------------------------


def test_the_recording_is_paused_by_the_first_identity_genesys_accepts(
        rsps: responses.RequestsMock, store: Store, cipher: TokenCipher, wall: Clock, timer: FakeClock,
        make_client: Callable[..., GenesysClient], attempts: list[Attempt]) -> None:
    scenario = gm.plain_call()
    leg, call_id = scenario.expected_participant_id, scenario.expected_conversation_id
    assert leg is not None and call_id is not None
    connect(store, cipher, wall)  # Jane's own token: she may mute herself, but not pause a recording
    client = make_client()
    put = f"{CALLS}/{call_id}/recordingstate"
    rsps.put(put, match=[bearer(ACCESS), matchers.json_params_matcher({"recordingState": "paused"})],
             **genesys_error(403, "missing.permissions", "You are missing the following permission(s): "
                                                         "conversation:recording:pauseOthers"))
    add_cc_token(rsps)
    rsps.put(put, status=202, match=[bearer(CC_TOKEN), matchers.json_params_matcher({"recordingState": "paused"})])
    target = choose_leg(scenario.calls, JANE.id)
    assert target is not None
    assert client.set_recording(target, "pause", deadline=timer() + 30, record=attempts.append) == CLIENT_CREDENTIALS
    assert [(a.method, a.status, a.identity) for a in attempts] == [
        ("PUT", 403, f"agent:{JANE.id}"), ("POST", 200, "client_credentials"), ("PUT", 202, "client_credentials")]


def test_confirm_reads_the_call_back_until_it_shows_what_was_asked(
        rsps: responses.RequestsMock, timer: FakeClock, make_client: Callable[..., GenesysClient]) -> None:
    client = make_client(act_as=("client_credentials",))
    before = gm.call(gm.participant(user_id=JANE.id, muted=False, id=gm.uid("leg")), id=gm.uid("call"),
                     recording_state="paused")
    after = gm.call(gm.participant(user_id=JANE.id, muted=True, id=gm.uid("leg")), id=gm.uid("call"),
                    recording_state="paused")
    add_cc_token(rsps)
    rsps.get(f"{CALLS}/{gm.uid('call')}", json=before)
    rsps.get(f"{CALLS}/{gm.uid('call')}", json=after)
    applied = Applied(choose_leg([after], JANE.id) or pytest.fail("no leg"), CLIENT_CREDENTIALS)
    assert client.confirm(applied, muted=True, recording="pause", deadline=timer() + 30) is None
    assert timer.sleeps == [0.25]


def test_confirm_gives_up_after_three_seconds_and_says_what_it_saw(
        rsps: responses.RequestsMock, timer: FakeClock, make_client: Callable[..., GenesysClient]) -> None:
    client = make_client(act_as=("client_credentials",))
    never = gm.call(gm.participant(user_id=JANE.id, muted=False, id=gm.uid("leg")), id=gm.uid("call"),
                    recording_state="active")
    add_cc_token(rsps)
    for _ in range(12):
        rsps.get(f"{CALLS}/{gm.uid('call')}", json=never)
    applied = Applied(choose_leg([never], JANE.id) or pytest.fail("no leg"), CLIENT_CREDENTIALS)
    seen = client.confirm(applied, muted=True, recording="pause", deadline=timer() + 30)
    assert seen == "the leg shows muted=False (asked True); the call shows recordingState=active (asked paused)"
    assert sum(timer.sleeps) == pytest.approx(2.75) and len(timer.sleeps) == 11  # 12 reads over 3 s


# --- found by the attack on this change ------------------------------------------------------------------------


def test_a_new_connection_with_an_email_takes_it_from_an_older_one(store: Store, cipher: TokenCipher,
                                                                   wall: Clock) -> None:
    # Alice's e-mail was given to Bea at Genesys; Bea connects: an event for that e-mail must find Bea, not Alice.
    alice = gm.Person("Alice Firstline", "seat-12@example.com")
    bea = gm.Person("Bea Newhire", "seat-12@example.com")
    connect(store, cipher, wall, alice)
    connect(store, cipher, wall, bea)
    found = store.find_connection("Seat-12@example.com")
    assert found is not None and found.user_id == bea.id
    assert [c.user_id for c in store.connections()] == [bea.id]


def test_a_refresh_keeps_the_stored_email_as_genesys_has_it_now(
        rsps: responses.RequestsMock, store: Store, users: UserConnections, cipher: TokenCipher, wall: Clock,
        timer: FakeClock) -> None:
    connect(store, cipher, wall, expires_in=0)
    renamed = gm.Person(JANE.name, "jane.married@example.com")
    add_refresh(rsps, me=gm.Person(renamed.name, renamed.email))
    # The refresh answers for Jane's id; /users/me says her e-mail is now another one.
    rsps.replace(responses.GET, f"{API}/api/v2/users/me", json={"id": JANE.id, "name": JANE.name,
                                                                "email": renamed.email})
    users.token(JANE.id, Identity("agent", JANE.id), deadline=timer() + 30)
    assert store.find_connection(JANE.email) is None
    found = store.find_connection(renamed.email)
    assert found is not None and found.user_id == JANE.id


class FlakyStore:
    """The store, except that the first store_refresh fails as a database blip would."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failures = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def store_refresh(self, user_id: str, **kwargs: Any) -> bool:
        if self.failures:
            self.failures -= 1
            raise StoreError("the database cannot be used: OperationalError")
        return self.store.store_refresh(user_id, **kwargs)


def test_a_rotated_refresh_token_survives_a_database_blip_while_it_is_stored(
        rsps: responses.RequestsMock, store: Store, grant: CodeGrant, cipher: TokenCipher, wall: Clock,
        timer: FakeClock) -> None:
    connect(store, cipher, wall, expires_in=0)
    users = UserConnections(FlakyStore(store), grant, cipher, connect_url=CONNECT, wallclock=wall, timer=timer,
                            sleep=timer.sleep)
    add_refresh(rsps)
    assert users.token(JANE.id, Identity("agent", JANE.id), deadline=timer() + 30) == ACCESS2
    row = raw_row(store, JANE.id)
    assert cipher.decrypt(row["refresh_token"]) == REFRESH2 and row["lease"] is None
    assert timer.sleeps == [0.2]


def test_rotating_keys_never_puts_back_a_refresh_token_a_refresh_replaced(store: Store, wall: Clock) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    cipher = TokenCipher((old_key,))
    connect(store, cipher, wall)
    rotated = TokenCipher((new_key, old_key))
    refreshed = []

    def rewrite(ciphertext: str) -> str:  # a refresh commits between the read and the write, once
        if not refreshed:
            refreshed.append(True)
            assert store.lease_refresh(JANE.id, version=0, lease="other", until=wall() + timedelta(seconds=30),
                                       now=wall())
            assert store.store_refresh(JANE.id, lease="other", access_token=cipher.encrypt(ACCESS2),
                                       access_expires_at=wall() + timedelta(hours=1),
                                       refresh_token=cipher.encrypt(REFRESH2), now=wall())
        return rotated.rotate(ciphertext)

    assert store.rewrite_tokens(rewrite) == 1
    row = raw_row(store, JANE.id)
    assert TokenCipher((new_key,)).decrypt(row["refresh_token"]) == REFRESH2  # the new token, under the new key


def test_a_token_no_key_can_decrypt_falls_through_to_the_next_identity(
        rsps: responses.RequestsMock, store: Store, timer: FakeClock, wall: Clock,
        make_client: Callable[..., GenesysClient]) -> None:
    scenario = gm.plain_call()
    leg, call_id = scenario.expected_participant_id, scenario.expected_conversation_id
    assert leg is not None and call_id is not None
    connect(store, TokenCipher((Fernet.generate_key().decode(),)), wall)  # encrypted with a key since removed
    client = make_client(act_as=("agent", "client_credentials"))
    add_cc_token(rsps)
    rsps.post(f"{API}/api/v2/users/search", json={"total": 1, "results": [{"id": JANE.id}]})
    rsps.post(f"{API}/api/v2/analytics/conversations/details/query",
              json={"totalHits": 1, "conversations": [{"conversationId": call_id}]})
    rsps.get(f"{CALLS}/{call_id}", json=scenario.call(call_id))
    rsps.patch(patch_url(call_id, leg), status=202, match=[bearer(CC_TOKEN)])
    applied = client.act(JANE.email, True, deadline=timer() + 30)
    assert applied is not None and applied.identity == CLIENT_CREDENTIALS
