"""End to end: gunicorn with two workers acts as the agent, the service user or client credentials against the fake
Genesys with the strict participant rule on (client credentials may not PATCH; a user only their own leg unless their
role holds conversation:communication:disconnect; an ended call answers 400 conversation.error.call.disconnected)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.support.fake_genesys import FakeGenesys
from tests.support.servers import (
    Service,
    connect_service_user,
    connect_user,
    free_port,
    run_cli,
    service_env,
    user_client_env,
    wait_final,
    write_config,
)
from webhook.store import EventRecord, Store

pytestmark = [pytest.mark.e2e, pytest.mark.fake_genesys(strict=True)]  # the participant rule enforced

SERVICE_PERMISSIONS = ("conversation:communication:disconnect", "analytics:conversationDetail:view",
                       "directory:user:view")
MUTE = ("payment_in_progress", "open")
WAIT = 20.0


def generic(agent: str, change: tuple[str, str] = MUTE) -> bytes:
    """A generic-mapping body (the helpdesk source) naming the agent by e-mail."""
    return json.dumps({"event_id": f"evt-{uuid.uuid4()}", "occurred_at": datetime.now(UTC).isoformat(),
                       "ticket": {"id": "48213", "status": change[0], "previous_status": change[1]},
                       "agent": {"email": agent}}).encode()


class Bridge:
    """The service under gunicorn (two workers), with the user client configured, and helpers to connect users."""

    def __init__(self, fake: FakeGenesys, tmp_path: Path) -> None:
        port = free_port()
        config = write_config(tmp_path / "webhook.toml", requests_per_minute=0)
        self.env = service_env(fake, f"sqlite:///{tmp_path / 'webhook.db'}", config, **user_client_env(fake, port))
        self.fake = fake
        self.service = Service(self.env, tmp_path, workers=2, port=port)
        self.store = Store.from_url(self.env["DATABASE_URL"])

    def connect(self, user_id: str) -> requests.Response:
        """Connect a user as an agent through the browser flow."""
        return connect_user(self.fake, self.service.url, user_id)

    def connect_service_user(self, user_id: str) -> None:
        """Connect the service user through a one-time link from the CLI."""
        connect_service_user(self.fake, self.env, self.service.url, user_id)

    def mute(self, agent: str, change: tuple[str, str] = MUTE) -> EventRecord:
        """Send one signed event for the agent and wait for its final state."""
        response = self.service.post("helpdesk", generic(agent, change))
        assert response.status_code == 202, response.text
        return wait_final(self.store, response.json()["accepted"][0]["id"], WAIT)

    def identities(self, record: EventRecord) -> set[str | None]:
        """Who acted in the event's recorded attempts."""
        return {a.identity for a in self.store.attempts(record.id)}


@pytest.fixture
def bridge(fake: FakeGenesys, tmp_path: Path) -> Iterator[Bridge]:
    running = Bridge(fake, tmp_path)
    running.service.start()
    try:
        yield running
    finally:
        running.service.close()
        running.store.close()


def api(fake: FakeGenesys, since: int) -> list[tuple[str, str, str | None]]:
    """The API requests (not the token requests) the fake received since an index: (method, path, user)."""
    return [(r.method, r.path, r.user_id) for r in fake.log[since:] if r.path.startswith("/api/")]


def test_a_connected_agent_is_muted_with_their_own_token_in_two_requests_cold_and_one_warm(
        bridge: Bridge, fake: FakeGenesys) -> None:
    jane = fake.add_user("jane@example.com", "Jane Agent")
    page = bridge.connect(jane)
    assert page.status_code == 200 and "Jane Agent" in page.text and "as an agent" in page.text
    cid, pid = fake.start_call(jane)
    since = len(fake.log)
    record = bridge.mute("jane@example.com")
    assert record.state == "applied", record.detail
    assert f"as agent:{jane}" in record.detail and fake.muted(cid, pid)
    assert api(fake, since) == [("GET", "/api/v2/conversations/calls", jane),
                                ("PATCH", f"/api/v2/conversations/calls/{cid}/participants/{pid}", jane)]
    assert bridge.identities(record) == {f"agent:{jane}"}
    # Warm: the same worker (one keep-alive connection) remembers the call: the PATCH alone.
    since = len(fake.log)
    unmuted = bridge.mute("jane@example.com", ("open", "payment_in_progress"))
    assert unmuted.state == "applied" and not fake.muted(cid, pid)
    assert [m for m, _, _ in api(fake, since)] in (["PATCH"], ["GET", "PATCH"])  # ["GET", ...]: the other worker
    shown = json.loads(run_cli(bridge.env, "events", "show", str(record.id), "--json").stdout)
    assert {a["identity"] for a in shown["attempts"]} == {f"agent:{jane}"}


def test_an_agent_who_did_not_connect_is_muted_through_the_service_user(bridge: Bridge, fake: FakeGenesys) -> None:
    service = fake.add_user("mute-bridge@example.com", "Mute Bridge", permissions=SERVICE_PERMISSIONS)
    bob = fake.add_user("bob@example.com")
    bridge.connect_service_user(service)
    cid, pid = fake.start_call(bob)
    record = bridge.mute("bob@example.com")
    assert record.state == "applied", record.detail
    assert f"as service_user:{service}" in record.detail and fake.muted(cid, pid)
    assert {u for m, _, u in api(fake, 0) if m == "PATCH"} == {service}
    connections = json.loads(run_cli(bridge.env, "genesys", "connections", "--json").stdout)
    assert [(c["kind"], c["user_id"], c["state"]) for c in connections] == [("service_user", service, "ok")]


def test_with_no_connection_the_event_fails_with_the_connect_link(bridge: Bridge, fake: FakeGenesys) -> None:
    bob = fake.add_user("bob@example.com")
    cid, pid = fake.start_call(bob)
    record = bridge.mute("bob@example.com")
    assert record.state == "failed"
    assert f"{bridge.env['PUBLIC_URL']}/genesys/connect" in record.detail
    assert "agent: bob@example.com has not connected" in record.detail
    assert "service_user: the service user has not connected" in record.detail
    assert "client_credentials: refused by the participant rule" in record.detail and "not.a.user" in record.detail
    assert not fake.muted(cid, pid)


def test_a_revoked_refresh_token_breaks_the_connection_and_the_next_event_uses_the_service_user(
        bridge: Bridge, fake: FakeGenesys) -> None:
    service = fake.add_user("mute-bridge@example.com", permissions=SERVICE_PERMISSIONS)
    jane = fake.add_user("jane@example.com")
    bridge.connect_service_user(service)
    assert bridge.connect(jane).status_code == 200
    cid, pid = fake.start_call(jane)
    fake.revoke_refresh(jane)
    fake.expire_user_tokens(jane)  # the idle timeout ended her access token: the service must refresh, and cannot
    record = bridge.mute("jane@example.com")
    assert record.state == "applied", record.detail
    assert f"as service_user:{service}" in record.detail and fake.muted(cid, pid)
    connection = bridge.store.connection(jane)
    assert connection is not None and connection.state == "broken" and connection.broken_at is not None
    assert "invalid_grant" in connection.reason
    # The next event goes straight to the service user: the broken connection is not tried again.
    since = len(fake.log)
    again = bridge.mute("jane@example.com", ("open", "payment_in_progress"))
    assert again.state == "applied" and f"as service_user:{service}" in again.detail
    assert all(r.grant != "refresh_token" for r in fake.log[since:])


def test_two_workers_refreshing_the_service_user_at_once_keep_the_rotated_token(
        bridge: Bridge, fake: FakeGenesys) -> None:
    service = fake.add_user("mute-bridge@example.com", permissions=SERVICE_PERMISSIONS)
    bridge.connect_service_user(service)
    agents = [fake.add_user(f"agent{n}@example.com") for n in range(16)]
    legs = [fake.start_call(agent) for agent in agents]
    fake.expire_user_tokens(service)  # every worker's next request gets 401 and must refresh, with rotation on
    refreshes = fake.refreshes

    def post(n: int) -> int:  # a connection of its own each: the two workers share the burst
        body = generic(f"agent{n}@example.com")
        url = bridge.service.webhook_url("helpdesk")
        answer = requests.post(url, data=body, headers=bridge.service.sign("helpdesk", body), timeout=WAIT)
        assert answer.status_code == 202, answer.text
        return int(answer.json()["accepted"][0]["id"])

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = list(pool.map(post, range(16)))
    records = [wait_final(bridge.store, pk, WAIT) for pk in ids]
    assert [r.state for r in records] == ["applied"] * 16, [r.detail for r in records]
    workers = {r.client_port for r in fake.log if r.method == "PATCH"}
    assert len(workers) >= 2  # both processes acted (each keeps its own connections to Genesys)
    assert fake.refreshes - refreshes <= 2  # one refresh per process at most; never one per event
    assert all(fake.muted(cid, pid) for cid, pid in legs)
    connection = bridge.store.connection(service)
    assert connection is not None and connection.state == "ok"
    assert fake.refresh_tokens_of(service) == 1  # the stored one is the one valid refresh token
    # The connection still works: force one more refresh and act.
    fake.expire_user_tokens(service)
    refreshes = fake.refreshes
    record = bridge.mute("agent0@example.com", ("open", "payment_in_progress"))
    assert record.state == "applied" and fake.refreshes == refreshes + 1


def test_a_mute_after_the_agent_moved_to_a_new_call_lands_on_the_new_call(bridge: Bridge, fake: FakeGenesys) -> None:
    jane = fake.add_user("jane@example.com")
    assert bridge.connect(jane).status_code == 200
    first_call, first_leg = fake.start_call(jane)
    assert bridge.mute("jane@example.com").state == "applied" and fake.muted(first_call, first_leg)
    fake.end_call(first_call)
    second_call, second_leg = fake.start_call(jane)
    since = len(fake.log)
    record = bridge.mute("jane@example.com")
    assert record.state == "applied", record.detail
    assert second_call in record.detail and fake.muted(second_call, second_leg)
    patches = [(r.path, r.status) for r in fake.log[since:] if r.method == "PATCH"]
    assert patches[-1] == (f"/api/v2/conversations/calls/{second_call}/participants/{second_leg}", 202)
    assert all(status == 400 for _, status in patches[:-1])  # the cached call, if this worker had it: disconnected


@pytest.mark.parametrize("through", ["agent", "service_user"])
def test_the_active_leg_is_muted_and_the_held_one_untouched(bridge: Bridge, fake: FakeGenesys, through: str) -> None:
    jane = fake.add_user("jane@example.com")
    if through == "agent":
        assert bridge.connect(jane).status_code == 200
    else:
        bridge.connect_service_user(fake.add_user("mute-bridge@example.com", permissions=SERVICE_PERMISSIONS))
    active_call, active_leg = fake.start_call(jane)  # older start: retrieved after a transfer, say
    held_call, held_leg = fake.start_call(jane, held=True)  # newer start, on hold
    record = bridge.mute("jane@example.com")
    assert record.state == "applied", record.detail
    assert fake.muted(active_call, active_leg) and not fake.muted(held_call, held_leg)
    assert all(held_call not in r.path for r in fake.log if r.method == "PATCH")


def test_no_token_code_verifier_or_key_in_the_service_log(bridge: Bridge, fake: FakeGenesys) -> None:
    jane = fake.add_user("jane@example.com")
    start = requests.get(bridge.service.url + "/genesys/connect", allow_redirects=False, timeout=10)
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    assert bridge.connect(jane).status_code == 200
    fake.start_call(jane)
    assert bridge.mute("jane@example.com").state == "applied"
    log = bridge.service.log_path.read_text(encoding="utf-8", errors="replace")
    secrets_seen: list[Any] = [bridge.env["TOKEN_ENCRYPTION_KEY"], fake.user_client_secret, state,
                               *fake.issued_secrets()]
    leaked = [s for s in secrets_seen if s and s in log]
    assert leaked == [], "secrets in the service log"
    assert re.search(r"code=[A-Za-z0-9_-]{8,}", log) is None
