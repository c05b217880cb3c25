"""The fake Genesys behaves like the reference says, and the client works against it over loopback."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.support.clocks import FakeClock
from tests.support.fake_genesys import USER_CONTEXT, FakeGenesys
from webhook.errors import GenesysBadRequestError, GenesysNotFoundError
from webhook.genesys.client import GenesysClient, Target, analytics_body, user_search_body
from webhook.genesys.explain import explain
from webhook.genesys.model import Attempt

EMAIL = "jane.agent@example.com"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeGenesys]:
    with FakeGenesys(clock=clock) as server:
        yield server


@pytest.fixture
def client(fake: FakeGenesys, clock: FakeClock) -> Iterator[GenesysClient]:
    genesys = make_client(fake, clock)
    yield genesys
    genesys.close()


def make_client(fake: FakeGenesys, clock: FakeClock, **kwargs: Any) -> GenesysClient:
    return GenesysClient.from_credentials(region="", client_id=fake.client_id, client_secret=fake.client_secret,
                                          api_url=fake.url, login_url=fake.url, clock=clock, sleep=clock.sleep,
                                          rng=lambda: 0.5, **kwargs)


@pytest.fixture
def http(fake: FakeGenesys) -> Iterator[requests.Session]:
    """A session already logged in to the fake."""
    with requests.Session() as session:
        answer = session.post(f"{fake.url}/oauth/token", auth=(fake.client_id, fake.client_secret),
                              data={"grant_type": "client_credentials"}, timeout=5)
        session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        yield session


# --- the fake ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("auth", "grant", "status", "error"), [
    (("fake-client-id", "wrong"), "client_credentials", 401, "invalid_client"),
    (None, "client_credentials", 401, "invalid_client"),
    (("fake-client-id", "fake-client-secret"), "password", 400, "unsupported_grant_type"),
])
def test_the_fake_login_checks_basic_auth(fake: FakeGenesys, auth: tuple[str, str] | None, grant: str,
                                          status: int, error: str) -> None:
    answer = requests.post(f"{fake.url}/oauth/token", auth=auth, data={"grant_type": grant}, timeout=5)
    assert (answer.status_code, answer.json()["error"]) == (status, error)
    assert fake.token_requests == 1


def test_the_fake_login_issues_bearer_tokens(fake: FakeGenesys) -> None:
    answer = requests.post(f"{fake.url}/oauth/token", auth=(fake.client_id, fake.client_secret),
                           data={"grant_type": "client_credentials"}, timeout=5)
    assert answer.status_code == 200 and answer.headers["ININ-Correlation-Id"]
    assert answer.json()["token_type"] == "bearer" and answer.json()["expires_in"] == 86400


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic abc"])
def test_the_fake_api_wants_a_valid_bearer(fake: FakeGenesys, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = requests.get(f"{fake.url}/api/v2/organizations/me", headers=headers, timeout=5)
    body = answer.json()
    assert answer.status_code == 401 and body["code"] == "bad.credentials"
    assert set(body) >= {"message", "code", "status", "contextId", "details", "errors"}
    assert body["contextId"] == answer.headers["ININ-Correlation-Id"]


def test_the_fake_finds_users_by_email(fake: FakeGenesys, http: requests.Session) -> None:
    user_id = fake.add_user(EMAIL, "Jane Agent")
    found = http.post(f"{fake.url}/api/v2/users/search", json=user_search_body("JANE.agent@example.com"), timeout=5)
    missing = http.post(f"{fake.url}/api/v2/users/search", json=user_search_body("nobody@example.com"), timeout=5)
    assert found.json()["results"] == [{"id": user_id, "email": EMAIL, "name": "Jane Agent", "state": "active",
                                        "selfUri": f"/api/v2/users/{user_id}", "version": 1}]
    assert missing.json()["total"] == 0 and "results" not in missing.json()


def test_the_fake_lists_live_calls_newest_first(fake: FakeGenesys, http: requests.Session) -> None:
    jane, john = fake.add_user(EMAIL), fake.add_user("john@example.com")
    old, _ = fake.start_call(jane)
    new, _ = fake.start_call(jane)
    ended, _ = fake.start_call(jane)
    fake.end_call(ended)
    fake.start_call(john)
    query = f"{fake.url}/api/v2/analytics/conversations/details/query"
    answer = http.post(query, json=analytics_body(jane, datetime.now(UTC)), timeout=5).json()
    assert [c["conversationId"] for c in answer["conversations"]] == [new, old] and answer["totalHits"] == 2
    assert {p["purpose"] for p in answer["conversations"][0]["participants"]} == {"customer", "acd", "agent"}
    nobody = http.post(query, json=analytics_body(fake.add_user("x@example.com"), datetime.now(UTC)),
                       timeout=5).json()
    assert nobody == {"totalHits": 0}


def test_the_fake_call_has_customer_acd_and_agent(fake: FakeGenesys, http: requests.Session) -> None:
    jane = fake.add_user(EMAIL)
    cid, pid = fake.start_call(jane, transferred=True)
    call = http.get(f"{fake.url}/api/v2/conversations/calls/{cid}", timeout=5).json()
    assert call["id"] == cid and call["selfUri"] == f"/api/v2/conversations/calls/{cid}"
    assert [(p["purpose"], p["state"], p.get("user", {}).get("id")) for p in call["participants"]] == [
        ("customer", "connected", None), ("acd", "disconnected", None), ("agent", "disconnected", jane),
        ("agent", "connected", jane)]
    assert call["participants"][-1]["id"] == pid


def test_the_fake_patch_answers_202_empty_and_mutes(fake: FakeGenesys, http: requests.Session) -> None:
    cid, pid = fake.start_call(fake.add_user(EMAIL))
    url = f"{fake.url}/api/v2/conversations/calls/{cid}/participants/{pid}"
    answer = http.patch(url, json={"muted": True}, timeout=5)
    assert (answer.status_code, answer.content) == (202, b"") and fake.muted(cid, pid)
    assert http.patch(url, json={"muted": "yes"}, timeout=5).status_code == 400
    assert [(p.body, p.status) for p in fake.patches] == [({"muted": True}, 202), ({"muted": "yes"}, 400)]


def test_the_fake_injects_faults(fake: FakeGenesys, http: requests.Session, clock: FakeClock) -> None:
    url = f"{fake.url}/api/v2/organizations/me"
    fake.fail(502, count=1)
    fake.rate_limit(retry_after=5, count=1)
    assert http.get(url, timeout=5).status_code == 502
    limited = http.get(url, timeout=5)
    assert (limited.status_code, limited.headers["Retry-After"], limited.json()["code"]) == (429, "5",
                                                                                           "too.many.requests")
    fake.rate_limit(retry_after=1, seconds=10)
    assert http.get(url, timeout=5).status_code == 429
    clock.advance(10)
    assert http.get(url, timeout=5).status_code == 200
    fake.revoke_tokens()
    assert http.get(url, timeout=5).status_code == 401


def test_the_fake_refuses_mutes_for_one_user(fake: FakeGenesys, http: requests.Session) -> None:
    jane, john = fake.add_user(EMAIL), fake.add_user("john@example.com")
    (cid, jane_pid), (cid2, john_pid) = fake.start_call(jane), fake.start_call(john)
    fake.refuse_mutes("conversation.error.forbidden.not.active.participant", user_id=jane)
    refused = http.patch(f"{fake.url}/api/v2/conversations/calls/{cid}/participants/{jane_pid}",
                         json={"muted": True}, timeout=5)
    allowed = http.patch(f"{fake.url}/api/v2/conversations/calls/{cid2}/participants/{john_pid}",
                         json={"muted": True}, timeout=5)
    assert (refused.status_code, refused.json()["code"]) == (403, "conversation.error.forbidden.not.active.participant")
    assert allowed.status_code == 202 and not fake.muted(cid, jane_pid) and fake.muted(cid2, john_pid)


# --- the client against the fake, over loopback -----------------------------------------------------------------


def test_an_email_agent_is_muted_and_nobody_else(fake: FakeGenesys, client: GenesysClient, clock: FakeClock) -> None:
    jane, john = fake.add_user(EMAIL), fake.add_user("john@example.com")
    cid, pid = fake.start_call(jane, transferred=True)
    john_pid = fake.join_call(cid, john)
    other_cid, other_pid = fake.start_call(john)
    attempts: list[Attempt] = []
    target = client.find_target(EMAIL, deadline=clock() + 30, record=attempts.append)
    assert target == Target(jane, cid, pid, False)
    client.set_muted(target, True, deadline=clock() + 30, record=attempts.append)
    assert [(p.path, p.body, p.status) for p in fake.patches] == [
        (f"/api/v2/conversations/calls/{cid}/participants/{pid}", {"muted": True}, 202)]
    assert fake.muted(cid, pid) and not fake.muted(cid, john_pid) and not fake.muted(other_cid, other_pid)
    assert [a.path.split("/")[3] if a.path.startswith("/api") else a.path for a in attempts] == [
        "/oauth/token", "users", "analytics", "conversations", "conversations"]
    assert all(a.correlation_id for a in attempts)


def test_a_rate_limit_window_is_waited_out(fake: FakeGenesys, client: GenesysClient, clock: FakeClock) -> None:
    cid, pid = fake.start_call(fake.add_user(EMAIL))
    fake.rate_limit(retry_after=2, seconds=3)
    client.set_muted(Target("u", cid, pid, False), True, deadline=clock() + 30)
    assert clock.sleeps == [2.0, 2.0] and fake.muted(cid, pid)
    assert [p.status for p in fake.patches] == [429, 429, 202]


def test_a_revoked_token_is_fetched_once_more(fake: FakeGenesys, client: GenesysClient, clock: FakeClock) -> None:
    cid, pid = fake.start_call(fake.add_user(EMAIL))
    target = Target("u", cid, pid, False)
    client.set_muted(target, True, deadline=clock() + 30)
    fake.revoke_tokens()
    client.set_muted(target, False, deadline=clock() + 30)
    assert fake.token_requests == 2 and not fake.muted(cid, pid)
    assert [p.status for p in fake.patches] == [202, 401, 202] and clock.sleeps == []


def test_a_participant_rule_refusal_is_explained(fake: FakeGenesys, client: GenesysClient,
                                                 clock: FakeClock) -> None:
    cid, pid = fake.start_call(fake.add_user(EMAIL))
    fake.refuse_mutes("not.a.user")
    target = client.find_target(EMAIL, deadline=clock() + 30)
    assert target is not None
    with pytest.raises(GenesysBadRequestError) as caught:
        client.set_muted(target, True, deadline=clock() + 30)
    assert caught.value.code == "not.a.user" and caught.value.correlation_id
    assert "let the service act as a user" in explain(caught.value)
    assert len(fake.patches) == 1 and not fake.muted(cid, pid)


def test_a_call_that_ends_before_the_patch(fake: FakeGenesys, client: GenesysClient, clock: FakeClock) -> None:
    jane = fake.add_user(EMAIL)
    cid, _ = fake.start_call(jane)
    target = client.find_target(jane, deadline=clock() + 30)
    assert target is not None
    fake.end_call(cid)
    with pytest.raises(GenesysNotFoundError, match="not found"):
        client.set_muted(target, True, deadline=clock() + 30)
    assert client.find_target(jane, deadline=clock() + 30) is None  # the cached target was dropped


def test_an_ended_call_still_in_analytics_is_no_call(fake: FakeGenesys, client: GenesysClient,
                                                     clock: FakeClock) -> None:
    jane = fake.add_user(EMAIL)
    cid, _ = fake.start_call(jane)
    fake.end_call(cid, still_in_analytics=True)
    assert client.find_target(jane, deadline=clock() + 30) is None


def test_a_hanging_answer_times_out_and_is_retried(fake: FakeGenesys, clock: FakeClock) -> None:
    cid, pid = fake.start_call(fake.add_user(EMAIL))
    fake.slow(2.0, count=1, path_prefix="/api/v2/conversations")
    client = make_client(fake, clock, timeout=(0.5, 0.2))
    attempts: list[Attempt] = []
    client.set_muted(Target("u", cid, pid, False), True, deadline=clock() + 30, record=attempts.append)
    client.close()
    assert [a.status for a in attempts] == [200, None, 202] and attempts[1].error == "no answer: ReadTimeout"
    assert fake.muted(cid, pid)


def test_a_5xx_burst_is_retried(fake: FakeGenesys, client: GenesysClient, clock: FakeClock) -> None:
    cid, pid = fake.start_call(fake.add_user(EMAIL))
    fake.fail(503, count=2)
    client.set_muted(Target("u", cid, pid, False), True, deadline=clock() + 30)
    assert clock.sleeps == [0.375, 0.75] and fake.muted(cid, pid)


def test_check_against_the_fake(fake: FakeGenesys, client: GenesysClient, clock: FakeClock) -> None:
    results = client.check(deadline=clock() + 30)
    assert [(r.name, r.ok) for r in results] == [
        ("client_credentials token", True), ("client_credentials organization", True),
        ("client_credentials user search", True), ("client_credentials analytics", True),
        ("participant rule", True)]


def test_wrong_credentials_against_the_fake(fake: FakeGenesys, clock: FakeClock) -> None:
    client = GenesysClient.from_credentials(region="", client_id="fake-client-id", client_secret="nope",
                                            api_url=fake.url, login_url=fake.url, clock=clock, sleep=clock.sleep)
    results = client.check(deadline=clock() + 30)
    client.close()
    assert not results[0].ok and "invalid_client" in results[0].detail and "nope" not in results[0].detail


# --- the fake's rate limit --------------------------------------------------------------------------------------


def login(fake: FakeGenesys) -> requests.Session:
    session = requests.Session()
    answer = session.post(f"{fake.url}/oauth/token", auth=(fake.client_id, fake.client_secret),
                          data={"grant_type": "client_credentials"}, timeout=5)
    session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
    return session


def limits(answer: requests.Response) -> tuple[str, ...]:
    return tuple(answer.headers.get(f"inin-ratelimit-{name}", "") for name in ("allowed", "count", "reset"))


def test_the_fake_rate_limits_each_token_per_window(fake: FakeGenesys, http: requests.Session,
                                                    clock: FakeClock) -> None:
    url = f"{fake.url}/api/v2/organizations/me"
    assert "inin-ratelimit-allowed" not in http.get(url, timeout=5).headers  # off by default
    fake.limit_rate(3, window=10)
    answers = [http.get(url, timeout=5) for _ in range(3)]
    assert [(a.status_code, limits(a)) for a in answers] == [(200, ("3", str(n), "10")) for n in (1, 2, 3)]
    clock.advance(3.5)
    refused = http.get(url, timeout=5)
    assert (refused.status_code, refused.json()["code"], refused.headers["Retry-After"]) == (
        429, "too.many.requests", "7")
    assert limits(refused) == ("3", "3", "7")
    with login(fake) as other:  # another token has a window of its own
        assert other.get(url, timeout=5).status_code == 200
    clock.advance(6.5)
    again = http.get(url, timeout=5)
    assert (again.status_code, limits(again)) == (200, ("3", "1", "10"))
    assert fake.too_many_requests == 1
    fake.limit_rate(None)
    assert all(http.get(url, timeout=5).status_code == 200 for _ in range(5))


def test_the_fake_rate_limit_spares_the_login(fake: FakeGenesys, clock: FakeClock) -> None:
    fake.limit_rate(1, window=60)
    sessions = [login(fake) for _ in range(3)]
    for session in sessions:
        session.close()
    assert fake.token_requests == 3 and fake.too_many_requests == 0


def test_the_fake_logs_the_correlation_id_it_answered(fake: FakeGenesys, http: requests.Session) -> None:
    answer = http.get(f"{fake.url}/api/v2/organizations/me", timeout=5)
    assert fake.log[-1].correlation_id == answer.headers["ININ-Correlation-Id"] != ""


@pytest.mark.parametrize(("per_minute", "sleeps", "refused"), [
    (300, [60.0], 0),  # the headers said the window was spent: the client waited for the reset
    (0, [60.0], 1),  # no spacing: Genesys had to answer 429 first
])
def test_the_client_spaces_requests_by_the_fakes_headers(fake: FakeGenesys, clock: FakeClock, per_minute: float,
                                                         sleeps: list[float], refused: int) -> None:
    cid, pid = fake.start_call(fake.add_user(EMAIL))
    fake.limit_rate(3, window=60)
    client = make_client(fake, clock, requests_per_minute=per_minute)
    for muted in (True, False, True, False):
        client.set_muted(Target("u", cid, pid, False), muted, deadline=clock() + 90)
    client.close()
    assert clock.sleeps == sleeps and fake.too_many_requests == refused and not fake.muted(cid, pid)


def test_clear_faults_drops_every_pending_fault(fake: FakeGenesys, http: requests.Session) -> None:
    fake.fail(503, count=5)
    fake.rate_limit(retry_after=5, count=5)
    fake.clear_faults()
    assert http.get(f"{fake.url}/api/v2/organizations/me", timeout=5).status_code == 200


def test_after_get_ends_the_call_once_its_get_is_answered(fake: FakeGenesys, http: requests.Session) -> None:
    cid, pid = fake.start_call(fake.add_user(EMAIL))
    fake.after_get(cid, lambda: fake.end_call(cid))
    served = http.get(f"{fake.url}/api/v2/conversations/calls/{cid}", timeout=5)
    assert served.status_code == 200  # the lookup still saw the live call ...
    assert [p["state"] for p in served.json()["participants"] if p["id"] == pid] == ["connected"]
    patched = http.patch(f"{fake.url}/api/v2/conversations/calls/{cid}/participants/{pid}", json={"muted": True},
                         timeout=5)
    assert patched.status_code == 404 and patched.json()["code"] == "not.found"  # ... the PATCH finds it ended
    assert all(r.client_port for r in fake.log)  # every request names the caller's port


# --- users, the authorization-code grant and the participant rule --------------------------------------------------

REDIRECT = "https://bridge.example/genesys/callback?tenant=a"
DISCONNECT_MESSAGE = "You are missing the following permission(s): conversation:communication:disconnect"


def pkce() -> tuple[str, str]:
    """Return a code_verifier and its S256 code_challenge."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(fake: FakeGenesys, challenge: str | None = None, **params: str | None) -> requests.Response:
    """Send the browser's authorize request (no redirect followed)."""
    query: dict[str, str | None] = {"response_type": "code", "client_id": fake.user_client_id,
                                    "redirect_uri": REDIRECT, "state": "s 1/&=x"}
    if challenge is not None:
        query |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    query |= params
    return requests.get(f"{fake.url}/oauth/authorize", params={k: v for k, v in query.items() if v is not None},
                        allow_redirects=False, timeout=5)


def redirected(answer: requests.Response) -> tuple[str, dict[str, list[str]]]:
    """Return where a 302 of the authorize step points (without its query) and its query."""
    assert answer.status_code == 302, answer.text
    parts = urlsplit(answer.headers["Location"])
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query, keep_blank_values=True)


def token(fake: FakeGenesys, auth: tuple[str, str] | None = None, **form: str) -> requests.Response:
    """POST /oauth/token with the user client's Basic auth (or auth) and this form."""
    return requests.post(f"{fake.url}/oauth/token", auth=auth or (fake.user_client_id, fake.user_client_secret),
                         data=form, timeout=5)


def exchange(fake: FakeGenesys, code: str, verifier: str | None, redirect_uri: str = REDIRECT) -> requests.Response:
    """Exchange an authorization code."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    return token(fake, **form, **({"code_verifier": verifier} if verifier is not None else {}))


def refresh(fake: FakeGenesys, refresh_token: str) -> requests.Response:
    """Use a refresh token."""
    return token(fake, grant_type="refresh_token", refresh_token=refresh_token)


def connect(fake: FakeGenesys, user_id: str) -> dict[str, Any]:
    """Let the user authorize the user client (PKCE) and return the token answer."""
    fake.consent_as(user_id)
    verifier, challenge = pkce()
    _, query = redirected(authorize(fake, challenge))
    answer = exchange(fake, query["code"][0], verifier)
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


def get(fake: FakeGenesys, path: str, access_token: str) -> requests.Response:
    """GET an API path with a bearer token."""
    return requests.get(f"{fake.url}{path}", headers={"Authorization": f"Bearer {access_token}"}, timeout=5)


def patch(fake: FakeGenesys, cid: str, pid: str, access_token: str) -> requests.Response:
    """Mute a participant with a bearer token."""
    return requests.patch(f"{fake.url}/api/v2/conversations/calls/{cid}/participants/{pid}", json={"muted": True},
                          headers={"Authorization": f"Bearer {access_token}"}, timeout=5)


def genesys_error(answer: requests.Response, status: int, code: str, message: str) -> dict[str, Any]:
    """Return the ErrorBody the fake must have answered (its contextId is the answer's correlation id)."""
    return {"message": message, "code": code, "status": status, "messageWithParams": message, "messageParams": {},
            "contextId": answer.headers["ININ-Correlation-Id"], "details": [], "errors": []}


def invalid_grant(description: str) -> dict[str, str]:
    return {"error": "invalid_grant", "description": description, "error_description": description}


def cc_token(fake: FakeGenesys) -> str:
    answer = requests.post(f"{fake.url}/oauth/token", auth=(fake.client_id, fake.client_secret),
                           data={"grant_type": "client_credentials"}, timeout=5)
    access: str = answer.json()["access_token"]
    return access


def test_authorize_exchange_and_users_me(fake: FakeGenesys) -> None:
    jane = fake.add_user(EMAIL, "Jane Agent")
    fake.consent_as(jane)
    verifier, challenge = pkce()
    where, query = redirected(authorize(fake, challenge))
    assert where == "https://bridge.example/genesys/callback"
    assert set(query) == {"tenant", "code", "state"} and query["tenant"] == ["a"] and query["state"] == ["s 1/&=x"]
    answer = exchange(fake, query["code"][0], verifier)
    body = answer.json()
    assert answer.status_code == 200 and set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert (body["token_type"], body["expires_in"]) == ("bearer", 86400)
    me = get(fake, "/api/v2/users/me", body["access_token"])
    assert (me.status_code, me.json()) == (200, {"id": jane, "name": "Jane Agent", "email": EMAIL, "state": "active",
                                                 "selfUri": f"/api/v2/users/{jane}", "version": 1})
    assert (fake.code_exchanges, fake.refreshes, fake.refresh_tokens_of(jane)) == (1, 0, 1)
    assert [(r.path, r.status, r.grant, r.user_id) for r in fake.log] == [
        ("/oauth/authorize", 302, None, None), ("/oauth/token", 200, "authorization_code", None),
        ("/api/v2/users/me", 200, None, jane)]


def test_a_code_without_pkce_needs_no_verifier(fake: FakeGenesys) -> None:
    fake.consent_as(fake.add_user(EMAIL))
    _, query = redirected(authorize(fake))
    assert exchange(fake, query["code"][0], None).status_code == 200


@pytest.mark.parametrize(("verifier", "redirect_uri", "description"), [
    ("wrong-verifier", REDIRECT, "code_verifier does not match the code_challenge"),
    (None, REDIRECT, "code_verifier does not match the code_challenge"),
    ("right", "https://bridge.example/genesys/callback", "redirect_uri does not match the authorization request"),
])
def test_a_code_exchange_must_match_the_authorize_step(fake: FakeGenesys, verifier: str | None, redirect_uri: str,
                                                      description: str) -> None:
    fake.consent_as(fake.add_user(EMAIL))
    right, challenge = pkce()
    _, query = redirected(authorize(fake, challenge))
    answer = exchange(fake, query["code"][0], right if verifier == "right" else verifier, redirect_uri)
    assert (answer.status_code, answer.json()) == (400, invalid_grant(description))
    assert fake.code_exchanges == 0 and fake.log[-1].grant == "authorization_code"


def test_a_code_is_single_use_and_short_lived(fake: FakeGenesys, clock: FakeClock) -> None:
    fake.consent_as(fake.add_user(EMAIL))
    verifier, challenge = pkce()
    _, first = redirected(authorize(fake, challenge))
    _, second = redirected(authorize(fake, challenge))
    assert exchange(fake, first["code"][0], verifier).status_code == 200
    reused = exchange(fake, first["code"][0], verifier)
    assert (reused.status_code, reused.json()) == (400, invalid_grant("the authorization code is invalid, expired "
                                                                      "or used"))
    clock.advance(60)
    late = exchange(fake, second["code"][0], verifier)
    assert (late.status_code, late.json()["error"]) == (400, "invalid_grant") and fake.code_exchanges == 1


def test_a_denied_authorize_redirects_back_with_the_error_once(fake: FakeGenesys) -> None:
    fake.consent_as(fake.add_user(EMAIL))
    fake.deny_next()
    where, query = redirected(authorize(fake, state="xyz"))
    assert (where, query) == ("https://bridge.example/genesys/callback",
                              {"tenant": ["a"], "error": ["access_denied"], "state": ["xyz"]})
    assert set(redirected(authorize(fake))[1]) == {"tenant", "code", "state"}


@pytest.mark.parametrize(("params", "consent"), [
    ({"client_id": "fake-client-id"}, True),  # the client-credentials client has no code grant
    ({"response_type": "token"}, True),
    ({"redirect_uri": None}, True),
    ({"code_challenge": "abc", "code_challenge_method": "plain"}, True),
    ({}, False),  # nobody is logged in to consent
])
def test_a_bad_authorize_request_is_an_error_page(fake: FakeGenesys, params: dict[str, str | None],
                                                  consent: bool) -> None:
    if consent:
        fake.consent_as(fake.add_user(EMAIL))
    answer = authorize(fake, **params)
    assert answer.status_code == 400 and "Location" not in answer.headers
    assert answer.headers["Content-Type"].startswith("text/html") and "<h1>Something went wrong</h1>" in answer.text


def test_each_client_has_its_own_grants(fake: FakeGenesys) -> None:
    refused = {"error": "unauthorized_client", "description": "the client is not allowed to use this grant type",
               "error_description": "the client is not allowed to use this grant type"}
    user_cc = token(fake, grant_type="client_credentials")
    cc_code = token(fake, (fake.client_id, fake.client_secret), grant_type="authorization_code", code="x",
                    redirect_uri=REDIRECT)
    cc_refresh = token(fake, (fake.client_id, fake.client_secret), grant_type="refresh_token", refresh_token="x")
    assert [(a.status_code, a.json()) for a in (user_cc, cc_code, cc_refresh)] == [(400, refused)] * 3
    wrong = token(fake, (fake.user_client_id, "wrong"), grant_type="refresh_token", refresh_token="x")
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")
    unsupported = token(fake, grant_type="password")
    assert (unsupported.status_code, unsupported.json()["error"]) == (400, "unsupported_grant_type")
    assert [r.grant for r in fake.log] == ["client_credentials", "authorization_code", "refresh_token",
                                           "refresh_token", "password"]


def test_a_refresh_rotates_the_refresh_token(fake: FakeGenesys) -> None:
    jane = fake.add_user(EMAIL)
    first = connect(fake, jane)
    answer = refresh(fake, first["refresh_token"])
    second = answer.json()
    assert answer.status_code == 200 and set(second) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    old = refresh(fake, first["refresh_token"])
    assert (old.status_code, old.json()) == (400, invalid_grant("the refresh token is invalid, expired or revoked"))
    assert refresh(fake, second["refresh_token"]).status_code == 200
    assert get(fake, "/api/v2/users/me", first["access_token"]).status_code == 200  # still within its own lifetime
    assert (fake.refreshes, fake.refresh_tokens_of(jane)) == (2, 1)
    assert [r.grant for r in fake.requests("POST", "/oauth/token")][-3:] == ["refresh_token"] * 3


def test_a_refresh_without_rotation_keeps_the_refresh_token(fake: FakeGenesys) -> None:
    fake.rotate_refresh = False
    first = connect(fake, fake.add_user(EMAIL))
    answers = [refresh(fake, first["refresh_token"]) for _ in range(2)]
    assert [(a.status_code, set(a.json())) for a in answers] == [
        (200, {"access_token", "token_type", "expires_in"})] * 2


def test_concurrent_refreshes_with_one_rotated_token_succeed_once(fake: FakeGenesys) -> None:
    jane = fake.add_user(EMAIL)
    refresh_token = connect(fake, jane)["refresh_token"]
    barrier = threading.Barrier(8)

    def race(_: int) -> int:
        barrier.wait(timeout=5)
        return refresh(fake, refresh_token).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = sorted(pool.map(race, range(8)))
    assert statuses == [200] + [400] * 7
    assert (fake.refreshes, fake.refresh_tokens_of(jane)) == (1, 1)


def test_revoke_refresh_ends_every_refresh_token_of_the_user(fake: FakeGenesys) -> None:
    jane, john = fake.add_user(EMAIL), fake.add_user("john@example.com")
    janes = [connect(fake, jane) for _ in range(2)]
    johns = connect(fake, john)
    assert fake.refresh_tokens_of(jane) == 2
    fake.revoke_refresh(jane)
    assert [refresh(fake, t["refresh_token"]).status_code for t in janes] == [400, 400]
    assert fake.refresh_tokens_of(jane) == 0 and refresh(fake, johns["refresh_token"]).status_code == 200
    assert get(fake, "/api/v2/users/me", janes[0]["access_token"]).status_code == 200


def test_expire_user_tokens_is_an_idle_timeout(fake: FakeGenesys) -> None:
    jane, john = fake.add_user(EMAIL), fake.add_user("john@example.com")
    janes, johns = connect(fake, jane), connect(fake, john)
    fake.expire_user_tokens(jane)
    expired = get(fake, "/api/v2/users/me", janes["access_token"])
    assert (expired.status_code, expired.json()) == (401, genesys_error(expired, 401, "bad.credentials",
                                                                        "Invalid login credentials."))
    assert fake.log[-1].user_id == jane
    assert get(fake, "/api/v2/users/me", johns["access_token"]).status_code == 200
    renewed = refresh(fake, janes["refresh_token"]).json()
    assert get(fake, "/api/v2/users/me", renewed["access_token"]).json()["id"] == jane


def test_tokens_expire_on_the_fakes_clock(fake: FakeGenesys, clock: FakeClock) -> None:
    fake.user_expires_in, fake.refresh_expires_in = 300, 1000
    jane = fake.add_user(EMAIL)
    tokens = connect(fake, jane)
    assert tokens["expires_in"] == 300
    clock.advance(299)
    assert get(fake, "/api/v2/users/me", tokens["access_token"]).status_code == 200
    clock.advance(1)
    assert get(fake, "/api/v2/users/me", tokens["access_token"]).status_code == 401
    clock.advance(699)
    renewed = refresh(fake, tokens["refresh_token"]).json()  # at 999 s: the rotated token lives 1000 s from now
    clock.advance(1000)
    assert fake.refresh_tokens_of(jane) == 0
    late = refresh(fake, renewed["refresh_token"])
    assert (late.status_code, late.json()) == (400, invalid_grant("the refresh token is invalid, expired or revoked"))


def test_client_credentials_tokens_expire_too(fake: FakeGenesys, clock: FakeClock) -> None:
    access = cc_token(fake)
    clock.advance(86399)
    assert get(fake, "/api/v2/organizations/me", access).status_code == 200
    clock.advance(1)
    assert get(fake, "/api/v2/organizations/me", access).status_code == 401


def test_the_users_own_calls_are_listed_newest_first(fake: FakeGenesys) -> None:
    jane, john = fake.add_user(EMAIL), fake.add_user("john@example.com")
    old, _ = fake.start_call(jane)
    ended, _ = fake.start_call(jane)
    fake.end_call(ended)
    left, _ = fake.start_call(john)
    fake.disconnect(left, fake.join_call(left, jane))  # she was consulted and left; the call goes on
    fake.start_call(john)
    new, _ = fake.start_call(jane, transferred=True)
    access = connect(fake, jane)["access_token"]
    listing = get(fake, "/api/v2/conversations/calls", access)
    body = listing.json()
    first = "/api/v2/conversations/calls?pageSize=25&pageNumber=1"
    assert listing.status_code == 200 and {k: v for k, v in body.items() if k != "entities"} == {
        "pageSize": 25, "pageNumber": 1, "total": 2, "pageCount": 1, "selfUri": first, "firstUri": first,
        "lastUri": first}
    assert body["entities"] == [get(fake, f"/api/v2/conversations/calls/{cid}", access).json() for cid in (new, old)]
    nobody = get(fake, "/api/v2/conversations/calls", connect(fake, fake.add_user("x@example.com"))["access_token"])
    assert nobody.json() == {"entities": [], "pageSize": 25, "pageNumber": 1, "total": 0, "pageCount": 0,
                             "selfUri": first, "firstUri": first, "lastUri": first}


@pytest.mark.parametrize("path", ["/api/v2/users/me", "/api/v2/conversations/calls"])
def test_user_only_resources_refuse_client_credentials(fake: FakeGenesys, path: str) -> None:
    answer = get(fake, path, cc_token(fake))
    assert (answer.status_code, answer.json()) == (400, genesys_error(answer, 400, "not.a.user", USER_CONTEXT))
    assert fake.log[-1].user_id is None


@pytest.mark.parametrize("user", [True, False])
def test_delete_tokens_me_deletes_the_token_used(fake: FakeGenesys, user: bool) -> None:
    jane = fake.add_user(EMAIL)
    access = connect(fake, jane)["access_token"] if user else cc_token(fake)
    other = cc_token(fake)
    deleted = requests.delete(f"{fake.url}/api/v2/tokens/me", headers={"Authorization": f"Bearer {access}"},
                              timeout=5)
    assert (deleted.status_code, deleted.content, fake.revoked_tokens) == (204, b"", 1)
    assert fake.log[-1].user_id == (jane if user else None)
    assert get(fake, "/api/v2/organizations/me", access).status_code == 401
    assert get(fake, "/api/v2/organizations/me", other).status_code == 200


def test_the_strict_participant_rule(fake: FakeGenesys) -> None:
    fake.strict = True
    jane, john = fake.add_user(EMAIL), fake.add_user("john@example.com")
    boss = fake.add_user("boss@example.com", permissions=["conversation:communication:disconnect"])
    cid, jane_pid = fake.start_call(jane)
    john_pid = fake.join_call(cid, john)
    janes, bosses = connect(fake, jane)["access_token"], connect(fake, boss)["access_token"]

    by_client = patch(fake, cid, jane_pid, cc_token(fake))
    assert (by_client.status_code, by_client.json()) == (400, genesys_error(by_client, 400, "not.a.user",
                                                                            USER_CONTEXT))
    own = patch(fake, cid, jane_pid, janes)
    assert (own.status_code, own.content) == (202, b"") and fake.muted(cid, jane_pid)
    others = patch(fake, cid, john_pid, janes)
    assert (others.status_code, others.json()) == (403, genesys_error(others, 403, "missing.permissions",
                                                                      DISCONNECT_MESSAGE))
    assert not fake.muted(cid, john_pid)
    assert patch(fake, cid, john_pid, bosses).status_code == 202 and fake.muted(cid, john_pid)
    fake.grant(jane, "conversation:communication:*")
    assert patch(fake, cid, john_pid, janes).status_code == 202
    unknown = patch(fake, cid, "no-such-participant", janes)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not.found")
    fake.end_call(cid)
    ended = patch(fake, cid, jane_pid, janes)
    assert (ended.status_code, ended.json()) == (400, genesys_error(ended, 400, "conversation.error.call.disconnected",
                                                                    "The call is disconnected."))
    assert [(p.user_id, p.status) for p in fake.patches] == [(None, 400), (jane, 202), (jane, 403), (boss, 202),
                                                             (jane, 202), (jane, 404), (jane, 400)]


def test_a_disconnected_leg_is_disconnected_when_strict(fake: FakeGenesys) -> None:
    jane = fake.add_user(EMAIL)
    cid, pid = fake.start_call(jane)
    old_pid = fake.join_call(cid, jane)
    fake.disconnect(cid, old_pid)
    access = connect(fake, jane)["access_token"]
    assert patch(fake, cid, old_pid, access).status_code == 404  # not strict: as before
    fake.strict = True
    assert patch(fake, cid, old_pid, access).json()["code"] == "conversation.error.call.disconnected"
    assert patch(fake, cid, pid, access).status_code == 202


def test_refuse_mutes_applies_on_top_of_the_strict_rule(fake: FakeGenesys) -> None:
    fake.strict = True
    jane = fake.add_user(EMAIL)
    cid, pid = fake.start_call(jane)
    fake.refuse_mutes("conversation.error.forbidden.not.active.participant", user_id=jane)
    refused = patch(fake, cid, pid, connect(fake, jane)["access_token"])
    assert (refused.status_code, refused.json()) == (403, genesys_error(
        refused, 403, "conversation.error.forbidden.not.active.participant", "The user is not an active participant."))


def test_user_tokens_may_patch_any_leg_when_not_strict(fake: FakeGenesys) -> None:
    jane, john = fake.add_user(EMAIL), fake.add_user("john@example.com")
    cid, john_pid = fake.start_call(john)
    assert patch(fake, cid, john_pid, connect(fake, jane)["access_token"]).status_code == 202
    assert patch(fake, cid, john_pid, cc_token(fake)).status_code == 202


@pytest.mark.parametrize(("path", "body", "permission"), [
    ("/api/v2/users/search", user_search_body(EMAIL), "directory:user:view"),
    ("/api/v2/analytics/conversations/details/query", None, "analytics:conversationDetail:view"),
])
def test_strict_lookups_need_the_users_permission(fake: FakeGenesys, path: str, body: dict[str, Any] | None,
                                                  permission: str) -> None:
    jane = fake.add_user(EMAIL)
    body = body if body is not None else analytics_body(jane, datetime.now(UTC))
    access, client = connect(fake, jane)["access_token"], cc_token(fake)

    def post(bearer: str) -> requests.Response:
        return requests.post(f"{fake.url}{path}", json=body, headers={"Authorization": f"Bearer {bearer}"},
                             timeout=5)

    assert post(access).status_code == 200  # not strict: no check
    fake.strict = True
    refused = post(access)
    assert (refused.status_code, refused.json()) == (403, genesys_error(
        refused, 403, "missing.permissions", f"You are missing the following permission(s): {permission}"))
    assert post(client).status_code == 200
    fake.grant(jane, permission)
    assert post(access).status_code == 200


def test_hold_monitor_and_coach_shapes(fake: FakeGenesys, http: requests.Session) -> None:
    jane, boss = fake.add_user(EMAIL), fake.add_user("boss@example.com")
    cid, pid = fake.start_call(jane, held=True)
    watcher = fake.monitor(cid, boss, pid)
    coach = fake.monitor(cid, boss, pid, coach=True)
    url = f"{fake.url}/api/v2/conversations/calls/{cid}"
    customer, acd, agent, monitoring, coaching = http.get(url, timeout=5).json()["participants"]
    assert customer["connectedTime"] == customer["startTime"] and "connectedTime" not in acd
    assert agent["held"] is True and agent["startHoldTime"] > agent["startTime"] == agent["connectedTime"]
    assert monitoring == {"id": watcher, "name": "Agent", "purpose": "agent", "state": "connected", "muted": False,
                          "held": False, "startTime": monitoring["startTime"],
                          "connectedTime": monitoring["startTime"], "direction": "inbound", "confined": False,
                          "recording": False, "user": {"id": boss, "selfUri": f"/api/v2/users/{boss}"},
                          "monitoredParticipantId": pid}
    assert coaching["id"] == coach and coaching["coachedParticipantId"] == pid
    assert "monitoredParticipantId" not in coaching
    assert agent["startTime"] < monitoring["startTime"] < coaching["startTime"]
    fake.hold(cid, pid, held=False)
    agent = http.get(url, timeout=5).json()["participants"][2]
    assert agent["held"] is False and "startHoldTime" not in agent


def test_a_transferred_leg_keeps_its_connected_time(fake: FakeGenesys, http: requests.Session) -> None:
    cid, _ = fake.start_call(fake.add_user(EMAIL), transferred=True)
    legs = http.get(f"{fake.url}/api/v2/conversations/calls/{cid}", timeout=5).json()["participants"]
    assert [(p["state"], p.get("connectedTime") == p["startTime"]) for p in legs] == [
        ("connected", True), ("disconnected", False), ("disconnected", True), ("connected", True)]


# --- recording state and the asynchronous mute (card capture) ----------------------------------------------------


def put_recording(fake: FakeGenesys, cid: str, state: str, access_token: str) -> requests.Response:
    return requests.put(f"{fake.url}/api/v2/conversations/calls/{cid}/recordingstate",
                        json={"recordingState": state}, headers={"Authorization": f"Bearer {access_token}"},
                        timeout=5)


def test_the_recording_state_is_paused_and_resumed_and_shown_on_the_call(fake: FakeGenesys,
                                                                         http: requests.Session) -> None:
    cid, _ = fake.start_call(fake.add_user(EMAIL), recording="active")
    token = http.headers["Authorization"].removeprefix("Bearer ")
    answer = put_recording(fake, cid, "paused", token)
    assert (answer.status_code, answer.content) == (202, b"") and fake.recording(cid) == "paused"
    call = http.get(f"{fake.url}/api/v2/conversations/calls/{cid}", timeout=5).json()
    assert (call["recordingState"], call["securePause"]) == ("paused", True)
    assert put_recording(fake, cid, "active", token).status_code == 202 and fake.recording(cid) == "active"
    assert put_recording(fake, cid, "stopped", token).status_code == 400
    fake.refuse_recording("missing.permissions")
    refused = put_recording(fake, cid, "paused", token)
    assert (refused.status_code, refused.json()["code"]) == (403, "missing.permissions")
    assert fake.recording(cid) == "active"
    fake.refuse_recording(None)
    fake.end_call(cid)
    assert put_recording(fake, cid, "paused", token).json()["code"] == "conversation.error.call.disconnected"


def test_strict_recording_pause_needs_the_permission_not_a_participant(fake: FakeGenesys) -> None:
    fake.strict = True
    jane = fake.add_user(EMAIL)
    supervisor = fake.add_user("sam@example.com")
    cid, _ = fake.start_call(jane, recording="active")
    tokens = connect(fake, supervisor)
    refused = put_recording(fake, cid, "paused", tokens["access_token"])
    assert (refused.status_code, refused.json()["code"]) == (403, "missing.permissions")
    fake.grant(supervisor, "conversation:recording:pauseOthers")
    assert put_recording(fake, cid, "paused", tokens["access_token"]).status_code == 202  # not on the call at all


def test_a_mute_shows_only_after_the_delay(fake: FakeGenesys, http: requests.Session, clock: FakeClock) -> None:
    cid, pid = fake.start_call(fake.add_user(EMAIL))
    fake.mute_delay = 0.5
    url = f"{fake.url}/api/v2/conversations/calls/{cid}/participants/{pid}"
    assert http.patch(url, json={"muted": True}, timeout=5).status_code == 202
    leg = next(p for p in http.get(f"{fake.url}/api/v2/conversations/calls/{cid}", timeout=5).json()["participants"]
               if p["id"] == pid)
    assert leg["muted"] is False and not fake.muted(cid, pid)
    clock.advance(0.5)
    assert fake.muted(cid, pid)
