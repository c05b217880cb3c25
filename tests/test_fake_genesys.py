"""The fake Genesys behaves like the reference says, and the client works against it over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from tests.fake_genesys import FakeClock, FakeGenesys
from webhook.errors import GenesysBadRequestError, GenesysNotFoundError
from webhook.genesys import (
    Attempt,
    GenesysClient,
    Target,
    analytics_body,
    explain,
    user_search_body,
)

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
    assert "user-context token" in explain(caught.value) and len(fake.patches) == 1 and not fake.muted(cid, pid)


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
    assert [(r.name, r.ok) for r in results] == [("token", True), ("organization", True), ("user search", True),
                                                 ("analytics", True), ("participant rule", True)]


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
