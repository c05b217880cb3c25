"""The browser flow that connects a Genesys user (/genesys/connect, the fake's /oauth/authorize, /genesys/callback)
through the Flask test client, and the `genesys` commands around it: every refusal answers 400 and stores nothing,
and no token, code, verifier, state, cookie or key reaches a log line or a page."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from tests.support.clocks import Clock
from tests.support.fake_genesys import FakeGenesys, pkce_challenge
from webhook import create_app
from webhook.config import Settings
from webhook.crypto import TokenCipher
from webhook.oauth_flow import COOKIE, secret_key
from webhook.store import Store, genesys_connections, oauth_states

PUBLIC = "https://bridge.example.com"
CONNECT = f"{PUBLIC}/genesys/connect"
REDIRECT = f"{PUBLIC}/genesys/callback"
SUMMARY_KEYS = ["user_id", "email", "name", "kind", "state", "reason", "broken_at", "refreshed_at", "used_at"]


# --- the service, the fake and a browser --------------------------------------------------------------------------


@pytest.fixture
def key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def bridge_settings(settings: Settings, fake: FakeGenesys, key: str) -> Settings:
    """The conftest settings (dry run: no mute is sent) with the authorization-code client pointed at the fake."""
    return replace(settings, genesys=replace(
        settings.genesys, user_client_id=fake.user_client_id, user_client_secret=fake.user_client_secret,
        public_url=PUBLIC, token_keys=(key,), api_url=fake.url, login_url=fake.url, region=None))


@pytest.fixture
def app(bridge_settings: Settings, clock: Clock) -> Iterator[Flask]:
    """Overrides conftest's app: the service with users configured (client, runner and store follow it)."""
    app = create_app(bridge_settings, clock=clock, background=False)
    yield app
    app.extensions["webhook"].store.close()


@pytest.fixture
def cipher(key: str) -> TokenCipher:
    return TokenCipher((key,))


@pytest.fixture
def jane(fake: FakeGenesys) -> str:
    user_id = fake.add_user("jane.agent@example.com", "Jane Agent")
    fake.consent_as(user_id)
    return user_id


@contextmanager
def urllib3_quiet() -> Iterator[None]:
    """Keep the test's own browser requests (whose URLs carry the state and the code) out of caplog."""
    logger = logging.getLogger("urllib3")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass
class Flow:
    """One browser's trip: the service's redirect, its cookie, and the fake login's redirect back."""

    start: TestResponse
    authorize_url: str
    cookie: str
    back: requests.Response
    params: dict[str, str]  # the query the fake sent back: code and state, or error and state

    @property
    def authorize_params(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.authorize_url).query))


def login(url: str) -> requests.Response:
    """What the browser does at the Genesys login: the fake approves (consent_as) and redirects back."""
    with urllib3_quiet():
        return requests.get(url, allow_redirects=False, timeout=10)


def begin(client: FlaskClient, path: str = "/genesys/connect", *, tamper: dict[str, str] | None = None) -> Flow:
    """Open the connect page and follow its redirect to the fake's login (optionally changing its query)."""
    start = client.get(path)
    assert start.status_code == 302, start.get_data(as_text=True)
    cookie = client.get_cookie(COOKIE, path="/genesys")
    assert cookie is not None
    url = start.headers["Location"]
    if tamper:
        parts = urlsplit(url)
        url = urlunsplit(parts._replace(query=urlencode(dict(parse_qsl(parts.query)) | tamper)))
    back = login(url)
    assert back.status_code == 302, back.text
    location = back.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return Flow(start, url, cookie.value, back, dict(parse_qsl(urlsplit(location).query)))


def callback(client: FlaskClient, params: dict[str, str]) -> TestResponse:
    return client.get("/genesys/callback", query_string=params)


def cookie_header(response: TestResponse) -> str:
    [header] = [h for h in response.headers.getlist("Set-Cookie") if h.startswith(f"{COOKIE}=")]
    return header


def assert_refused(response: TestResponse, title: str, store: Store, *, connections: int = 0) -> str:
    """A refusal: 400, a private page saying what happened, and nothing (more) stored."""
    body = response.get_data(as_text=True)
    assert response.status_code == 400, body
    assert f"<h1>{title}</h1>" in body
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert len(store.connections()) == connections
    return body


def state_row(store: Store, state: str) -> dict[str, Any]:
    with store.engine.connect() as conn:
        return dict(conn.execute(select(oauth_states).where(oauth_states.c.key == secret_key(state)))
                    .mappings().one())


# --- the agent's flow ------------------------------------------------------------------------------------------


def test_an_agent_connects_and_the_page_names_them(client: FlaskClient, store: Store, fake: FakeGenesys, jane: str,
                                                   cipher: TokenCipher, clock: Clock) -> None:
    flow = begin(client)
    start_cookie = cookie_header(flow.start)
    assert "HttpOnly" in start_cookie and "SameSite=Lax" in start_cookie and "Path=/genesys" in start_cookie
    assert "Secure" in start_cookie  # PUBLIC_URL is https
    assert "Max-Age=600" in start_cookie
    assert flow.start.headers["Cache-Control"] == "no-store"
    assert flow.start.headers["Referrer-Policy"] == "no-referrer"

    page = callback(client, flow.params)
    body = page.get_data(as_text=True)
    assert page.status_code == 200, body
    assert "Jane Agent" in body and "jane.agent@example.com" in body and jane in body
    assert "connected as an agent" in body
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "Expires=Thu, 01 Jan 1970" in cookie_header(page)  # the flow's cookie is dropped
    assert client.get_cookie(COOKIE, path="/genesys") is None

    [connection] = store.connections()
    assert (connection.user_id, connection.kind, connection.email, connection.name, connection.state) == (
        jane, "agent", "jane.agent@example.com", "Jane Agent", "ok")
    assert connection.refreshed_at == clock() and connection.access_expires_at is not None
    assert cipher.decrypt(connection.refresh_token) and connection.access_token is not None
    assert fake.code_exchanges == 1 and fake.refresh_tokens_of(jane) == 1
    assert state_row(store, flow.params["state"])["used_at"] == clock()


def test_the_authorize_url_asks_for_a_code_with_pkce(client: FlaskClient, fake: FakeGenesys, jane: str,
                                                     store: Store, cipher: TokenCipher) -> None:
    flow = begin(client)
    params = flow.authorize_params
    assert flow.authorize_url.startswith(f"{fake.url}/oauth/authorize?")
    assert set(params) == {"response_type", "client_id", "redirect_uri", "state", "code_challenge",
                           "code_challenge_method"}
    assert params["response_type"] == "code"
    assert params["client_id"] == fake.user_client_id
    assert params["redirect_uri"] == REDIRECT
    assert params["code_challenge_method"] == "S256"
    assert len(params["state"]) >= 32 and params["state"] == flow.params["state"]
    # The database holds the state's hash and the verifier encrypted, and the verifier matches the challenge.
    row = state_row(store, params["state"])
    assert row["purpose"] == "agent" and row["browser"] == secret_key(flow.cookie) and row["used_at"] is None
    verifier = cipher.decrypt(row["verifier"])
    assert pkce_challenge(verifier) == params["code_challenge"]
    assert params["state"] not in json.dumps(row, default=str) and verifier not in row["verifier"]


def test_a_wrong_state_is_refused(client: FlaskClient, store: Store, fake: FakeGenesys, jane: str) -> None:
    flow = begin(client)
    body = assert_refused(callback(client, flow.params | {"state": "not-the-state-we-issued"}), "Unknown sign-in",
                          store)
    assert "Start again" in body
    assert fake.code_exchanges == 0


def test_a_missing_state_is_refused(client: FlaskClient, store: Store, fake: FakeGenesys, jane: str) -> None:
    flow = begin(client)
    assert_refused(callback(client, {"code": flow.params["code"]}), "The callback carries no state", store)
    assert fake.code_exchanges == 0


def test_a_reused_state_is_refused(client: FlaskClient, store: Store, fake: FakeGenesys, jane: str) -> None:
    flow = begin(client)
    assert callback(client, flow.params).status_code == 200
    [before] = store.connections()
    client.set_cookie(COOKIE, flow.cookie, path="/genesys")  # even with the cookie back
    assert_refused(callback(client, flow.params), "This sign-in was already used", store, connections=1)
    assert store.connections() == [before]
    assert fake.code_exchanges == 1


def test_an_expired_state_is_refused(client: FlaskClient, store: Store, fake: FakeGenesys, jane: str,
                                     clock: Clock) -> None:
    flow = begin(client)
    clock.advance(601)
    body = assert_refused(callback(client, flow.params), "This sign-in expired", store)
    assert "10 minutes" in body
    assert fake.code_exchanges == 0


def test_a_missing_cookie_is_refused(client: FlaskClient, store: Store, fake: FakeGenesys, jane: str) -> None:
    flow = begin(client)
    client.delete_cookie(COOKIE, path="/genesys")
    body = assert_refused(callback(client, flow.params), "This browser did not start the connection", store)
    assert "cookie" in body
    assert fake.code_exchanges == 0


def test_another_browsers_cookie_is_refused_and_leaves_the_real_flow_usable(
        app: Flask, client: FlaskClient, store: Store, fake: FakeGenesys, jane: str) -> None:
    victim = begin(client)
    attacker = app.test_client()
    begin(attacker)  # the attacker's browser holds a cookie of its own flow
    assert_refused(callback(attacker, victim.params), "This browser did not start the connection", store)
    assert fake.code_exchanges == 0
    assert callback(client, victim.params).status_code == 200  # the refusal did not spend the victim's sign-in
    assert [c.user_id for c in store.connections()] == [jane]


def test_a_denied_consent_is_refused(client: FlaskClient, store: Store, fake: FakeGenesys, jane: str) -> None:
    fake.deny_next()
    flow = begin(client)
    assert "code" not in flow.params and flow.params["error"] == "access_denied"
    body = assert_refused(callback(client, flow.params), "Genesys did not authorize the service", store)
    assert "access_denied" in body and "Nothing was stored" in body
    assert fake.code_exchanges == 0


def test_a_reflected_error_is_escaped(client: FlaskClient, store: Store, fake: FakeGenesys, jane: str) -> None:
    flow = begin(client)
    body = assert_refused(callback(client, {"state": flow.params["state"], "error": "<script>alert(1)</script>",
                                            "error_description": "<img src=x onerror=alert(2)>"}),
                          "Genesys did not authorize the service", store)
    assert "<script>" not in body and "<img" not in body
    assert "&lt;script&gt;" in body


def test_a_code_genesys_refuses_is_refused(client: FlaskClient, store: Store, fake: FakeGenesys, jane: str) -> None:
    flow = begin(client)
    body = assert_refused(callback(client, flow.params | {"code": flow.params["code"] + "x"}),
                          "Genesys refused the sign-in", store)
    assert "invalid_grant" in body and "Nothing was stored" in body
    assert fake.code_exchanges == 0
    assert [(r.grant, r.status) for r in fake.requests("POST", "/oauth/token")] == [("authorization_code", 400)]


@pytest.mark.parametrize("where", ["authorize request", "stored verifier"])
def test_a_pkce_mismatch_is_refused(client: FlaskClient, store: Store, fake: FakeGenesys, jane: str,
                                    cipher: TokenCipher, where: str) -> None:
    other = pkce_challenge("a-verifier-nobody-here-knows-" + "q" * 40)
    flow = begin(client, tamper={"code_challenge": other} if where == "authorize request" else None)
    if where == "stored verifier":
        with store.engine.begin() as conn:
            conn.execute(update(oauth_states).where(oauth_states.c.key == secret_key(flow.params["state"]))
                         .values(verifier=cipher.encrypt("a-different-verifier-" + "z" * 40)))
    body = assert_refused(callback(client, flow.params), "Genesys refused the sign-in", store)
    assert "code_verifier does not match" in body
    assert fake.code_exchanges == 0


def test_flows_expired_over_an_hour_ago_are_purged_when_a_new_one_starts(client: FlaskClient, store: Store,
                                                                          fake: FakeGenesys, jane: str,
                                                                          clock: Clock) -> None:
    old = begin(client)
    clock.advance(600 + 3600 - 1)  # expired, but kept an hour: a late callback is told so
    other_browser = client.application.test_client()
    recent = begin(other_browser)
    assert_refused(callback(client, old.params), "This sign-in expired", store)
    clock.advance(2)
    begin(other_browser)  # purges the old flow
    assert_refused(callback(client, old.params), "Unknown sign-in", store)
    with store.engine.connect() as conn:
        keys = set(conn.execute(select(oauth_states.c.key)).scalars())
    assert secret_key(old.params["state"]) not in keys and secret_key(recent.params["state"]) in keys
    assert fake.code_exchanges == 0


def test_a_link_is_not_a_state_and_a_state_is_not_a_link(client: FlaskClient, runner: FlaskCliRunner, store: Store,
                                                         fake: FakeGenesys, jane: str) -> None:
    link = service_link(runner).rsplit("=", 1)[1]
    flow = begin(client)
    assert_refused(callback(client, flow.params | {"state": link}), "Unknown sign-in", store)
    assert_refused(client.get("/genesys/connect", query_string={"link": flow.params["state"]}),
                   "This service-user link cannot be used", store)
    assert fake.code_exchanges == 0
    client.set_cookie(COOKIE, flow.cookie, path="/genesys")  # every callback answer drops the flow's cookie
    assert callback(client, flow.params).status_code == 200  # neither attempt spent the real flow


def test_the_cookie_is_not_secure_only_for_a_plain_http_loopback_public_url(bridge_settings: Settings,
                                                                            clock: Clock) -> None:
    local = replace(bridge_settings, genesys=replace(bridge_settings.genesys, public_url="http://127.0.0.1:5000"))
    app = create_app(local, clock=clock, background=False)
    try:
        start = app.test_client().get("/genesys/connect")
        assert start.status_code == 302
        header = cookie_header(start)
        assert "HttpOnly" in header and "SameSite=Lax" in header and "Secure" not in header
        assert dict(parse_qsl(urlsplit(start.headers["Location"]).query))["redirect_uri"] == (
            "http://127.0.0.1:5000/genesys/callback")
    finally:
        app.extensions["webhook"].store.close()


def test_connect_without_a_user_client_is_a_404_page(settings: Settings, clock: Clock) -> None:
    app = create_app(settings, clock=clock, background=False)
    try:
        page = app.test_client().get("/genesys/connect")
        assert page.status_code == 404
        assert "GENESYS_USER_CLIENT_ID" in page.get_data(as_text=True)
        assert page.headers["Cache-Control"] == "no-store"
    finally:
        app.extensions["webhook"].store.close()


# --- the service user ---------------------------------------------------------------------------------------------


def service_link(runner: FlaskCliRunner) -> str:
    """Run `genesys connect --service-user` and return the link, alone on the last line."""
    result = runner.invoke(args=["genesys", "connect", "--service-user"])
    assert result.exit_code == 0, result.output
    link = result.output.rstrip("\n").splitlines()[-1]
    assert link.startswith(f"{CONNECT}?link=") and " " not in link
    return link


def test_the_service_user_connects_once_through_a_one_time_link(client: FlaskClient, runner: FlaskCliRunner,
                                                                store: Store, fake: FakeGenesys) -> None:
    link = service_link(runner)
    path = link.removeprefix(PUBLIC)
    sam = fake.add_user("mute-bridge@example.com", "Mute Bridge")
    fake.consent_as(sam)
    page = callback(client, begin(client, path).params)
    assert page.status_code == 200 and "connected as the service user" in page.get_data(as_text=True)
    service = store.service_user()
    assert service is not None and (service.user_id, service.kind) == (sam, "service_user")
    assert store.find_connection(sam) is None  # not an agent connection

    assert_refused(client.get(path), "This service-user link cannot be used", store, connections=1)
    assert fake.code_exchanges == 1


def test_a_service_user_link_expires_after_ten_minutes(client: FlaskClient, runner: FlaskCliRunner, store: Store,
                                                       fake: FakeGenesys, clock: Clock) -> None:
    path = service_link(runner).removeprefix(PUBLIC)
    clock.advance(601)
    assert_refused(client.get(path), "This service-user link cannot be used", store)


def test_an_unknown_service_user_link_is_refused(client: FlaskClient, store: Store) -> None:
    assert_refused(client.get("/genesys/connect?link=made-up"), "This service-user link cannot be used", store)


def test_a_link_opened_twice_connects_only_once(client: FlaskClient, runner: FlaskCliRunner, store: Store,
                                                fake: FakeGenesys) -> None:
    path = service_link(runner).removeprefix(PUBLIC)
    sam = fake.add_user("mute-bridge@example.com", "Mute Bridge")
    fake.consent_as(sam)
    first = begin(client, path)
    # The link is spent when the first browser opens it (found in review: spent only at the callback, two browsers
    # could both finish, and the last one became the service user).
    second_browser = client.application.test_client()
    assert_refused(second_browser.get(path), "This service-user link cannot be used", store)
    assert callback(client, first.params).status_code == 200
    assert fake.code_exchanges == 1


def test_a_new_service_user_replaces_the_old(client: FlaskClient, runner: FlaskCliRunner, store: Store,
                                             fake: FakeGenesys, jane: str) -> None:
    assert callback(client, begin(client).params).status_code == 200  # an agent, who stays
    old = fake.add_user("old-bridge@example.com", "Old Bridge")
    fake.consent_as(old)
    assert callback(client, begin(client, service_link(runner).removeprefix(PUBLIC)).params).status_code == 200
    new = fake.add_user("new-bridge@example.com", "New Bridge")
    fake.consent_as(new)
    assert callback(client, begin(client, service_link(runner).removeprefix(PUBLIC)).params).status_code == 200
    assert [(c.kind, c.user_id) for c in store.connections()] == [("service_user", new), ("agent", jane)]
    assert store.connection(old) is None


# --- the commands ---------------------------------------------------------------------------------------------------


def test_connections_json_prints_exactly_the_documented_keys(client: FlaskClient, runner: FlaskCliRunner,
                                                             store: Store, fake: FakeGenesys, jane: str,
                                                             clock: Clock) -> None:
    assert callback(client, begin(client).params).status_code == 200
    sam = fake.add_user("mute-bridge@example.com", "Mute Bridge")
    fake.consent_as(sam)
    assert callback(client, begin(client, service_link(runner).removeprefix(PUBLIC)).params).status_code == 200
    result = runner.invoke(args=["genesys", "connections", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [list(row) for row in rows] == [SUMMARY_KEYS, SUMMARY_KEYS]
    when = clock().isoformat().replace("+00:00", "Z")
    assert rows == [
        {"user_id": sam, "email": "mute-bridge@example.com", "name": "Mute Bridge", "kind": "service_user",
         "state": "ok", "reason": None, "broken_at": None, "refreshed_at": when, "used_at": None},
        {"user_id": jane, "email": "jane.agent@example.com", "name": "Jane Agent", "kind": "agent",
         "state": "ok", "reason": None, "broken_at": None, "refreshed_at": when, "used_at": None}]


def test_disconnect_revokes_the_token_at_genesys_and_deletes_the_row(client: FlaskClient, runner: FlaskCliRunner,
                                                                     store: Store, fake: FakeGenesys,
                                                                     jane: str) -> None:
    assert callback(client, begin(client).params).status_code == 200
    result = runner.invoke(args=["genesys", "disconnect", "Jane.Agent@example.com"])
    assert result.exit_code == 0, result.output
    assert "disconnected agent jane.agent@example.com" in result.output and "revoked at Genesys" in result.output
    assert fake.revoked_tokens == 1
    [delete] = fake.requests("DELETE", "/api/v2/tokens/me")
    assert (delete.authorization, delete.user_id, delete.status) == ("bearer", jane, 204)
    assert store.connection(jane) is None and store.connections() == []


def test_disconnect_refreshes_an_expired_token_before_revoking_it(client: FlaskClient, runner: FlaskCliRunner,
                                                                   store: Store, fake: FakeGenesys, jane: str,
                                                                   clock: Clock) -> None:
    assert callback(client, begin(client).params).status_code == 200
    clock.advance(86400)  # the stored access token has expired
    result = runner.invoke(args=["genesys", "disconnect", jane])
    assert result.exit_code == 0, result.output
    assert fake.refreshes == 1 and fake.revoked_tokens == 1
    assert [r.grant for r in fake.requests("POST", "/oauth/token")] == ["authorization_code", "refresh_token"]
    assert store.connection(jane) is None


def test_disconnect_of_a_broken_connection_deletes_it_without_revoking(client: FlaskClient, runner: FlaskCliRunner,
                                                                       store: Store, fake: FakeGenesys, jane: str,
                                                                       clock: Clock) -> None:
    assert callback(client, begin(client).params).status_code == 200
    assert store.lease_refresh(jane, version=0, lease="test", until=clock() + timedelta(seconds=30), now=clock())
    store.mark_broken(jane, lease="test", reason="Genesys refused the refresh token (400 invalid_grant)", now=clock())
    result = runner.invoke(args=["genesys", "disconnect", "jane.agent@example.com"])
    assert result.exit_code == 0, result.output
    assert "could not be revoked" in result.output and "broken" in result.output
    assert fake.revoked_tokens == 0 and fake.token_requests == 1
    assert store.connections() == []


def test_disconnect_of_an_unknown_user_fails(runner: FlaskCliRunner, fake: FakeGenesys) -> None:
    result = runner.invoke(args=["genesys", "disconnect", "nobody@example.com"])
    assert result.exit_code != 0 and "no connection for 'nobody@example.com'" in result.output
    assert fake.requests_count == 0


def test_rotate_keys_encrypts_every_token_with_the_new_first_key(client: FlaskClient, store: Store,
                                                                  fake: FakeGenesys, jane: str, key: str,
                                                                  bridge_settings: Settings, clock: Clock) -> None:
    assert callback(client, begin(client).params).status_code == 200
    before = TokenCipher((key,))
    [connection] = store.connections()
    refresh = before.decrypt(connection.refresh_token)
    new_key = Fernet.generate_key().decode()
    both = replace(bridge_settings, genesys=replace(bridge_settings.genesys, token_keys=(new_key, key)))
    rotated_app = create_app(both, clock=clock, background=False)
    try:
        result = rotated_app.test_cli_runner().invoke(args=["genesys", "rotate-keys"])
    finally:
        rotated_app.extensions["webhook"].store.close()
    assert result.exit_code == 0, result.output
    assert "1 connection(s)" in result.output
    [connection] = store.connections()
    only_new = TokenCipher((new_key,))
    assert only_new.decrypt(connection.refresh_token) == refresh
    assert connection.access_token is not None and only_new.decrypt(connection.access_token)


# --- nothing secret in the logs or the pages ----------------------------------------------------------------------


def record_text(record: logging.LogRecord) -> str:
    return " ".join([record.getMessage(), *(str(v) for v in vars(record).values())])


def test_no_secret_reaches_a_log_line_or_a_page(client: FlaskClient, runner: FlaskCliRunner, store: Store,
                                                fake: FakeGenesys, jane: str, cipher: TokenCipher, key: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pages: list[str] = []
    secrets: list[str] = [key, fake.user_client_secret]

    refused = begin(client)  # a refusal first: a code Genesys does not know
    secrets += [refused.params["code"], refused.params["state"], refused.cookie,
                cipher.decrypt(state_row(store, refused.params["state"])["verifier"])]
    answer = callback(client, refused.params | {"code": refused.params["code"] + "x"})
    assert answer.status_code == 400
    pages.append(answer.get_data(as_text=True))

    flow = begin(client)
    verifier = cipher.decrypt(state_row(store, flow.params["state"])["verifier"])
    secrets += [flow.params["code"], flow.params["state"], flow.cookie, verifier]
    for response in (refused.start, flow.start):  # the redirect carries the state (and challenge) by design
        assert all(s not in response.get_data(as_text=True) for s in (key, fake.user_client_secret, verifier))
    answer = callback(client, flow.params)
    assert answer.status_code == 200
    pages.append(answer.get_data(as_text=True))
    with store.engine.connect() as conn:
        row = conn.execute(select(genesys_connections)).mappings().one()
    secrets += [cipher.decrypt(row["access_token"]), cipher.decrypt(row["refresh_token"])]

    link = service_link(runner)
    secrets.append(link.rsplit("=", 1)[1])
    pages.append(runner.invoke(args=["genesys", "connections", "--json"]).output)
    pages.append(runner.invoke(args=["genesys", "disconnect", jane]).output)
    assert fake.revoked_tokens == 1

    assert caplog.records, "the flow logged nothing at all"
    assert all(len(s) >= 16 for s in secrets)
    for record in caplog.records:
        text = record_text(record)
        for secret in secrets:
            assert secret not in text, f"a secret in the log line {record.name}: {record.getMessage()!r}"
    for page in pages:
        for secret in secrets:
            assert secret not in page


def test_the_callback_logs_which_refusal_without_the_query(client: FlaskClient, store: Store, fake: FakeGenesys,
                                                           jane: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="webhook")
    flow = begin(client)
    client.delete_cookie(COOKIE, path="/genesys")
    assert callback(client, flow.params).status_code == 400
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals == ["genesys connection refused: This browser did not start the connection"]


def test_genesys_check_reports_the_service_user_and_every_agent_connection(
        client: FlaskClient, runner: FlaskCliRunner, store: Store, fake: FakeGenesys, jane: str) -> None:
    assert callback(client, begin(client).params).status_code == 200
    bob = fake.add_user("bob.agent@example.com", "Bob Agent")
    fake.consent_as(bob)
    assert callback(client, begin(client).params).status_code == 200
    sam = fake.add_user("mute-bridge@example.com", "Mute Bridge")
    fake.consent_as(sam)
    assert callback(client, begin(client, service_link(runner).removeprefix(PUBLIC)).params).status_code == 200
    fake.revoke_refresh(bob)
    fake.expire_user_tokens(bob)  # his next token needs a refresh, which Genesys refuses

    result = runner.invoke(args=["genesys", "check"])
    lines = result.output.splitlines()
    assert result.exit_code == 1, result.output
    assert lines[0] == f"Genesys API {fake.url}; identities tried in order: agent, service_user"
    names = [line.split(": ", 1)[0] for line in lines[1:]]
    assert names == [f"ok   service_user:{sam} token", f"ok   service_user:{sam} organization",
                     f"ok   service_user:{sam} user search", f"ok   service_user:{sam} analytics",
                     f"FAIL agent:{bob} (bob.agent@example.com)", f"ok   agent:{jane} (jane.agent@example.com)",
                     "ok   participant rule"]
    assert "the connection of bob.agent@example.com is broken" in result.output
    connection = store.connection(bob)
    assert connection is not None and connection.state == "broken"


def test_sign_ins_in_progress_are_bounded(client: FlaskClient, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found in review: anyone may open /genesys/connect, and each visit stored a row for 70 minutes.
    monkeypatch.setattr("webhook.oauth_flow.MAX_FLOWS", 3)
    for _ in range(3):
        assert client.get("/genesys/connect").status_code == 302
    assert_refused(client.get("/genesys/connect"), "Too many sign-ins are in progress", store)


def test_the_service_user_signing_in_on_the_agents_page_is_told_they_stay_the_service_user(
        client: FlaskClient, runner: FlaskCliRunner, store: Store, fake: FakeGenesys) -> None:
    sam = fake.add_user("mute-bridge@example.com", "Mute Bridge")
    fake.consent_as(sam)
    assert callback(client, begin(client, service_link(runner).removeprefix(PUBLIC)).params).status_code == 200
    page = callback(client, begin(client).params)
    assert "connected as the service user" in page.get_data(as_text=True)
    service = store.service_user()
    assert service is not None and service.user_id == sam
