"""End to end: signed deliveries in, a fake Genesys Cloud over loopback out.

Each test asserts what the fake received and the events' final states in the store. In-process apps (live Genesys
client, inline processing) where a real process adds nothing; real gunicorn processes and `flask` subprocesses for the
crash, replay-CLI and two-process tests. The service uses the real clock, so events are freshened to now.
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from tests.support.app import ROOT
from tests.support.fake_genesys import REFUSALS, FakeGenesys, LoggedRequest
from tests.support.servers import (
    Service,
    run_cli,
    running_service,
    service_env,
    settings_of,
    signed_request,
    wait_final,
    wait_until,
    write_config,
)
from webhook import create_app
from webhook.cli import freshen
from webhook.config import Settings
from webhook.events import PRESETS
from webhook.store import EventRecord, Store

pytestmark = pytest.mark.e2e

JANE = "jane.agent@example.com"  # the Zendesk sample's assignee 381920 is her, through [agents]
JOHN = "john.agent@example.com"
SAMPLE = ROOT / "samples" / "zendesk-status-changed.json"
MUTE = ("payment_in_progress", "open")  # (status, previous status) -> rule 1: mute
UNMUTE = ("open", "payment_in_progress")  # -> rule 2: unmute
WAIT = 20.0  # seconds any single outcome may take before a test gives up


# ---------------------------------------------------------------- helpers


def now() -> datetime:
    return datetime.now(UTC)


def zendesk_sample(at: datetime | None = None) -> bytes:
    """The shipped Zendesk sample with a new event id and its time set to at (default now)."""
    return freshen(SAMPLE.read_bytes(), PRESETS["zendesk-event"], at or now())


def generic(agent: str, change: tuple[str, str] = MUTE, *, at: datetime | None = None,
            event_id: str | None = None, conversation_id: str | None = None) -> bytes:
    """A generic-mapping body (the helpdesk source) for an agent given by e-mail or Genesys user id."""
    body: dict[str, Any] = {
        "event_id": event_id or f"evt-{uuid.uuid4()}",
        "occurred_at": (at or now()).isoformat().replace("+00:00", "Z"),
        "ticket": {"id": "48213", "status": change[0], "previous_status": change[1]},
        "agent": {"email": agent} if "@" in agent else {"genesys_user_id": agent},
    }
    if conversation_id:
        body["conversation_id"] = conversation_id
    return json.dumps(body).encode()


def participant_of(fake: FakeGenesys, conversation_id: str, purpose: str) -> str:
    """Return the id of the first participant of a fake call with this purpose."""
    return next(p.id for p in fake.calls[conversation_id].participants if p.purpose == purpose)


def patch_path(conversation_id: str, participant_id: str) -> str:
    return f"/api/v2/conversations/calls/{conversation_id}/participants/{participant_id}"


def api_calls(log: list[LoggedRequest]) -> list[tuple[str, str, int | None]]:
    """The requests the fake received as (method, short path, status): 'token', 'users', 'analytics', ..."""
    def short(path: str) -> str:
        if path == "/oauth/token":
            return "token"
        parts = path.split("/")
        return "patch" if "participants" in parts else ("call" if parts[3] == "conversations" else parts[3])
    return [(r.method, short(r.path), r.status) for r in log]


def final(store: Store, event_pk: int, timeout: float = WAIT) -> EventRecord:
    """Wait until the event reaches a final state and return it."""
    return wait_final(store, event_pk, timeout)


class Live:
    """An in-process app wired like the real service (live Genesys client to the fake), processing inline."""

    def __init__(self, fake: FakeGenesys, tmp_path: Path, **processing: float) -> None:
        config = write_config(tmp_path / "webhook.toml", **({"worker_threads": 0} | processing))
        self.env = service_env(fake, f"sqlite:///{tmp_path / 'webhook.db'}", config)
        self.settings: Settings = settings_of(self.env)
        self.app: Flask = create_app(self.settings, background=False)
        self.store: Store = self.app.extensions["webhook"].store
        self.store.create_schema()
        self.client: FlaskClient = self.app.test_client()

    def post(self, source: str, body: bytes, *, client: FlaskClient | None = None) -> Any:
        """POST body signed now, as the sender would; with worker_threads=0 the event is final on return."""
        path = f"/webhooks/{source}"
        headers = signed_request(self.settings, source, body, f"http://localhost{path}")
        return (client or self.client).post(path, data=body, headers=headers)

    def accepted(self, response: Any) -> EventRecord:
        """Return the stored event of a 202."""
        assert response.status_code == 202, response.get_data(as_text=True)
        record = self.store.get(response.get_json()["accepted"][0]["id"])
        assert record is not None
        return record

    def close(self) -> None:
        self.app.extensions["webhook"].shutdown()


@pytest.fixture
def live(fake: FakeGenesys, tmp_path: Path) -> Iterator[Live]:
    app = Live(fake, tmp_path)
    yield app
    app.close()


@pytest.fixture
def jane_on_a_call(fake: FakeGenesys) -> tuple[str, str, str]:
    """Jane on a call with a customer, John on another call: (jane's user id, call id, participant id)."""
    jane = fake.add_user(JANE, "Jane Agent")
    conversation, participant = fake.start_call(jane)
    fake.start_call(fake.add_user(JOHN, "John Agent"))
    return jane, conversation, participant


# ---------------------------------------------------------------- the path of one event


def test_a_zendesk_event_mutes_that_agent_and_nobody_else(live: Live, fake: FakeGenesys,
                                                          jane_on_a_call: tuple[str, str, str]) -> None:
    jane, cid, pid = jane_on_a_call
    customer = participant_of(fake, cid, "customer")
    john_cid = next(c for c in fake.calls if c != cid)
    john_pid, john_customer = participant_of(fake, john_cid, "agent"), participant_of(fake, john_cid, "customer")

    record = live.accepted(live.post("zendesk", zendesk_sample()))

    assert (record.state, record.action, record.agent) == ("applied", "mute", JANE)
    assert record.detail.startswith(f"muted {jane} on call {cid} (participant {pid})")
    assert [(p.path, p.body, p.status, p.authorization) for p in fake.patches] == [
        (patch_path(cid, pid), {"muted": True}, 202, "bearer")]
    assert api_calls(fake.log) == [("POST", "token", 200), ("POST", "users", 200), ("POST", "analytics", 200),
                                   ("GET", "call", 200), ("PATCH", "patch", 202)]
    assert fake.requests("POST", "/api/v2/users/search")[0].body["query"][0]["value"] == JANE
    assert fake.muted(cid, pid)
    assert not fake.muted(cid, customer) and not fake.muted(john_cid, john_pid)
    assert not fake.muted(john_cid, john_customer)
    attempts = live.store.attempts(record.id)
    assert [a.status for a in attempts] == [200, 200, 200, 200, 202] and all(a.correlation_id for a in attempts)


def test_a_duplicate_delivery_makes_no_second_patch(live: Live, fake: FakeGenesys,
                                                    jane_on_a_call: tuple[str, str, str]) -> None:
    _, cid, pid = jane_on_a_call
    body = zendesk_sample()
    first = live.accepted(live.post("zendesk", body))
    again = live.post("zendesk", body)  # the sender's retry: same bytes, signed afresh

    assert again.status_code == 200
    assert again.get_json() == {"accepted": [], "duplicates": [
        {"id": first.id, "source": "zendesk", "event_id": first.event_id}]}
    assert first.state == "applied" and live.store.get(first.id).state == "applied"  # type: ignore[union-attr]
    assert [p.path for p in fake.patches] == [patch_path(cid, pid)] and fake.muted(cid, pid)
    assert live.store.counts() == {"applied": 1}


def test_an_older_unmute_after_a_newer_mute_is_skipped(live: Live, fake: FakeGenesys,
                                                       jane_on_a_call: tuple[str, str, str]) -> None:
    _, cid, pid = jane_on_a_call
    t = now()
    mute = live.accepted(live.post("helpdesk", generic(JANE, MUTE, at=t)))
    late = live.accepted(live.post("helpdesk", generic(JANE, UNMUTE, at=t - timedelta(seconds=5))))

    assert (mute.state, late.state, late.action) == ("applied", "skipped", "unmute")
    assert late.detail == (f"a newer event for {JANE} was already acted on; this older one would undo it")
    assert [p.body for p in fake.patches] == [{"muted": True}] and fake.muted(cid, pid)
    assert live.store.attempts(late.id) == []


def test_an_event_past_the_age_limit_makes_no_genesys_call(live: Live, fake: FakeGenesys,
                                                           jane_on_a_call: tuple[str, str, str]) -> None:
    _, cid, pid = jane_on_a_call
    record = live.accepted(live.post("zendesk", zendesk_sample(now() - timedelta(minutes=10))))

    assert record.state == "expired"
    assert re.fullmatch(r"event is 60\d s old \(limit 120 s\): too late to change the microphone; "
                        r"replay it with --force if it must still be applied", record.detail), record.detail
    assert fake.log == [] and not fake.muted(cid, pid)


def test_a_429_storm_is_waited_out_within_the_budget(live: Live, fake: FakeGenesys,
                                                     jane_on_a_call: tuple[str, str, str]) -> None:
    _, cid, pid = jane_on_a_call
    window, retry_after = 1.5, 1
    fake.rate_limit(retry_after=retry_after, seconds=window)  # every /api/ request for 1.5 s answers 429
    started = time.monotonic()
    record = live.accepted(live.post("helpdesk", generic(JANE)))
    took = time.monotonic() - started

    assert record.state == "applied" and fake.muted(cid, pid)
    assert took < live.settings.retry_budget_seconds
    api = [r for r in fake.log if r.path.startswith("/api/")]
    # Waiting Retry-After (1 s) between tries, a 1.5 s window admits exactly ceil(1.5 / 1) = 2 refused requests.
    assert [r.status for r in api] == [429, 429, 200, 200, 200, 202]
    assert {r.path for r in api[:3]} == {"/api/v2/users/search"}
    gaps = [later.time - earlier.time for earlier, later in itertools.pairwise(api[:3])]
    assert all(gap >= retry_after for gap in gaps), gaps
    assert fake.token_requests == 1
    assert [(a.status, a.code) for a in live.store.attempts(record.id)][1:3] == [(429, "too.many.requests")] * 2


@pytest.mark.parametrize("code", ["not.a.user", "conversation.error.forbidden.not.active.participant",
                                  "conversation.error.not.conversation.participant"])
def test_a_participant_rule_refusal_fails_with_the_code_and_the_remedy(
        live: Live, fake: FakeGenesys, jane_on_a_call: tuple[str, str, str], code: str) -> None:
    _, cid, pid = jane_on_a_call
    fake.refuse_mutes(code)
    record = live.accepted(live.post("zendesk", zendesk_sample()))

    assert record.state == "failed"
    assert code in record.detail and "ININ-Correlation-Id" in record.detail
    assert f"no identity could act for {JANE}: client_credentials: refused by the participant rule" in record.detail
    assert "set up the authorization-code client (GENESYS_USER_CLIENT_ID" in record.detail
    # Final: not retried, and a 404 with a participant code is not taken for "the call ended, look again".
    assert [p.status for p in fake.patches] == [REFUSALS[code][0]] and not fake.muted(cid, pid)


def test_no_call_is_reported_without_a_patch(live: Live, fake: FakeGenesys) -> None:
    fake.add_user(JANE)
    record = live.accepted(live.post("zendesk", zendesk_sample()))
    assert (record.state, record.detail) == ("no_call", f"{JANE} is not on a live voice call (no connected leg of "
                                                        "theirs that is not held or monitoring); nothing to mute")
    assert fake.patches == []


def test_100_events_cost_one_token(live: Live, fake: FakeGenesys) -> None:
    agents = [f"agent{n}@example.com" for n in range(10)]
    calls = {a: fake.start_call(fake.add_user(a)) for a in agents}
    # First the ten agents at once (ten request threads ask for a token together), then 90 more one by one.
    with ThreadPoolExecutor(len(agents)) as pool:
        first = list(pool.map(lambda a: live.post("helpdesk", generic(a), client=live.app.test_client()), agents))
    rest = [live.post("helpdesk", generic(a, UNMUTE if n % 2 == 0 else MUTE)) for n in range(9) for a in agents]

    records = [live.accepted(r) for r in first + rest]
    assert len(records) == 100 and {r.state for r in records} == {"applied"}
    assert fake.token_requests == 1
    assert len(fake.patches) == 100 and {p.status for p in fake.patches} == {202}
    assert len(fake.requests("POST", "/api/v2/users/search")) == 10  # one search per agent, then cached
    assert all(fake.muted(*calls[a]) is False for a in agents)  # the last of nine alternations is an unmute


# ---------------------------------------------------------------- agent and genesys commands


def test_agent_mute_and_unmute_print_the_target(live: Live, fake: FakeGenesys,
                                                jane_on_a_call: tuple[str, str, str]) -> None:
    jane, cid, pid = jane_on_a_call
    runner = live.app.test_cli_runner()
    muted = runner.invoke(args=["agent", "mute", JANE])
    assert muted.exit_code == 0, muted.output
    assert muted.output.strip() == f"muted {JANE}: user {jane}, call {cid}, participant {pid}, as client_credentials"
    assert fake.muted(cid, pid)
    unmuted = runner.invoke(args=["agent", "unmute", jane, "--conversation", cid])
    assert unmuted.exit_code == 0, unmuted.output
    assert unmuted.output.strip() == (f"unmuted {jane}: user {jane}, call {cid}, participant {pid}, "
                                      "as client_credentials")
    assert [p.body for p in fake.patches] == [{"muted": True}, {"muted": False}] and not fake.muted(cid, pid)
    assert live.store.counts() == {}  # a command by hand stores no event


def test_agent_mute_without_a_call_exits_1(live: Live, fake: FakeGenesys) -> None:
    fake.add_user(JANE)
    result = live.app.test_cli_runner().invoke(args=["agent", "mute", JANE])
    assert result.exit_code == 1
    assert f"{JANE} is not on a live voice call; nothing to mute" in result.output
    assert fake.patches == []


def test_agent_mute_refused_by_the_participant_rule_exits_1_with_the_explanation(
        live: Live, fake: FakeGenesys, jane_on_a_call: tuple[str, str, str]) -> None:
    _, cid, pid = jane_on_a_call
    fake.refuse_mutes("not.a.user")
    result = live.app.test_cli_runner().invoke(args=["agent", "mute", JANE])
    assert result.exit_code == 1
    assert (f"Error: Genesys: no identity could act for {JANE}: client_credentials: refused by the participant rule "
            "(HTTP 400 not.a.user: This request requires a user context") in result.output
    assert ("To do: set up the authorization-code client (GENESYS_USER_CLIENT_ID, GENESYS_USER_CLIENT_SECRET, "
            "PUBLIC_URL) so that agents or a service user can connect") in result.output
    assert len(fake.patches) == 1 and not fake.muted(cid, pid)


def check_lines(output: str) -> dict[str, str]:
    """Map each `genesys check` result name to its whole line."""
    lines = [line for line in output.splitlines() if line.startswith(("ok ", "FAIL "))]
    return {re.split(r"\s+", line, maxsplit=1)[1].split(":")[0]: line for line in lines}


def test_genesys_check_against_the_fake(live: Live, fake: FakeGenesys) -> None:
    result = live.app.test_cli_runner().invoke(args=["genesys", "check"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"Genesys API {fake.url}; identities tried in order: client_credentials"
    lines = check_lines(result.output)
    assert list(lines) == ["client_credentials token", "client_credentials organization",
                           "client_credentials user search", "client_credentials analytics", "participant rule"]
    assert all(line.startswith("ok ") for line in lines.values())
    assert "allowed (directory:user:view)" in lines["client_credentials user search"]
    assert "allowed (analytics:conversationDetail:view)" in lines["client_credentials analytics"]
    assert "not.a.user" in lines["participant rule"]
    assert "the service tries its identities in the order of [genesys] act_as" in lines["participant rule"]
    assert fake.token_requests == 1 and fake.patches == []


@pytest.mark.parametrize(("path", "name", "permission"), [
    ("/api/v2/users/search", "client_credentials user search", "directory:user:view"),
    ("/api/v2/analytics/", "client_credentials analytics", "analytics:conversationDetail:view"),
])
def test_genesys_check_names_a_missing_permission(live: Live, fake: FakeGenesys, path: str, name: str,
                                                  permission: str) -> None:
    # The fake has no "deny one path" switch; fail(403) answers 403 there (with a 5xx-style code in the body).
    fake.fail(403, count=1, path_prefix=path)
    result = live.app.test_cli_runner().invoke(args=["genesys", "check"])
    assert result.exit_code == 1
    lines = check_lines(result.output)
    assert lines[name].startswith(f"FAIL {name}: missing permission {permission}: add it to the role. "
                                  "Genesys: HTTP 403")
    assert [n for n, line in lines.items() if line.startswith("FAIL")] == [name]


# ---------------------------------------------------------------- real processes


def test_a_service_killed_mid_patch_finishes_the_event_after_a_restart(fake: FakeGenesys, tmp_path: Path) -> None:
    jane = fake.add_user(JANE)
    cid, pid = fake.start_call(jane)
    config = write_config(tmp_path / "webhook.toml", sweep_interval_seconds=0.2, retry_budget_seconds=3,
                          stale_claim_seconds=8.5)
    env = service_env(fake, f"sqlite:///{tmp_path / 'webhook.db'}", config)
    store = Store.from_url(env["DATABASE_URL"])
    fake.slow(30, count=1, path_prefix=patch_path(cid, pid))  # the first PATCH hangs: the kill lands mid-request
    service = Service(env, tmp_path, workers=1)
    try:
        service.start()
        response = service.post("zendesk", zendesk_sample())
        assert response.status_code == 202, response.text
        event_pk = response.json()["accepted"][0]["id"]
        wait_until(lambda: fake.patches, WAIT, message="the PATCH reaches the fake")
        claimed = store.get(event_pk)
        assert claimed is not None and claimed.state == "processing" and claimed.claimed_at is not None
        service.kill(signal.SIGKILL)
        assert store.get(event_pk).state == "processing"  # type: ignore[union-attr]  # the dead claim stays

        service.restart()
        record = final(store, event_pk)
        paths = [a.path for a in store.attempts(event_pk)]
    finally:
        service.close()
        store.close()

    assert record.state == "applied", record.detail
    assert record.updated_at - claimed.claimed_at >= timedelta(seconds=8.5)  # taken over only once stale
    # One PATCH died with the process (never answered); the sweeper's PATCH is the one effective mute.
    assert [(p.path, p.body, p.status) for p in fake.patches] == [
        (patch_path(cid, pid), {"muted": True}, None), (patch_path(cid, pid), {"muted": True}, 202)]
    assert fake.muted(cid, pid) and fake.token_requests == 2  # one per process
    assert paths.count("/oauth/token") == 2 and paths[-1] == patch_path(cid, pid)


def replay_rows(stdout: str) -> list[list[str]]:
    """Parse the replay table: one [event, action, old state, new state, detail] per row."""
    lines = stdout.strip().splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("event  action"))
    assert re.split(r"\s{2,}", lines[header]) == ["event", "action", "old state", "new state", "detail"], stdout
    return [re.split(r"\s{2,}", line, maxsplit=4) for line in lines[header + 1:-1]]


def drain_faults(fake: FakeGenesys, path: str, limit: int = 100) -> None:
    """Use up the fake's remaining injected 503s on path (the fake has no call to clear its faults)."""
    for _ in range(limit):
        if requests.patch(fake.url + path, json={"muted": True}, timeout=5).status_code != 503:
            return  # 401 now: this request carries no token, so it changes nothing
    raise AssertionError(f"the fake still answers 503 on {path}")


def effective_patches(fake: FakeGenesys) -> list[LoggedRequest]:
    return [p for p in fake.patches if p.authorization == "bearer"]


def replayed_state(live: Live, event_pk: int) -> str:
    """Read an event's state from the database the CLI wrote."""
    store = Store.from_url(live.env["DATABASE_URL"])
    try:
        record = store.get(event_pk)
        assert record is not None
        return record.state
    finally:
        store.close()


def test_replay_applies_an_event_failed_by_503s_once_genesys_recovers(fake: FakeGenesys, tmp_path: Path) -> None:
    jane = fake.add_user(JANE)
    cid, pid = fake.start_call(jane)
    live = Live(fake, tmp_path, retry_budget_seconds=1)
    try:
        fake.fail(503, count=20, path_prefix=patch_path(cid, pid))
        failed = live.accepted(live.post("zendesk", zendesk_sample()))
    finally:
        live.close()
    assert failed.state == "failed" and "HTTP 503" in failed.detail and "retry budget" in failed.detail
    tries = len(fake.patches)
    assert 2 <= tries < 20 and not fake.muted(cid, pid)

    drain_faults(fake, patch_path(cid, pid))
    result = run_cli(live.env, "replay", str(failed.id))

    assert result.returncode == 0, result.stdout + result.stderr
    [row] = replay_rows(result.stdout)
    assert row[:4] == [str(failed.id), "mute", "failed", "applied"] and row[4].startswith(f"muted {jane} on call")
    assert result.stdout.strip().splitlines()[-1] == "1 replayed, 0 failed, 0 unreadable line(s)"
    assert [p.status for p in effective_patches(fake)] == [503] * tries + [202] and fake.muted(cid, pid)
    assert replayed_state(live, failed.id) == "applied"


def test_replay_exits_1_while_refused_and_0_once_the_mute_is_allowed(fake: FakeGenesys, tmp_path: Path) -> None:
    jane = fake.add_user(JANE)
    cid, pid = fake.start_call(jane)
    fake.refuse_mutes("not.a.user")
    live = Live(fake, tmp_path)
    try:
        failed = live.accepted(live.post("zendesk", zendesk_sample()))
    finally:
        live.close()
    assert failed.state == "failed" and "not.a.user" in failed.detail

    refused = run_cli(live.env, "replay", str(failed.id))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    [row] = replay_rows(refused.stdout)
    assert row[:4] == [str(failed.id), "mute", "failed", "failed"] and "not.a.user" in row[4]
    assert refused.stdout.strip().splitlines()[-1] == "1 replayed, 1 failed, 0 unreadable line(s)"

    fake.allow_mutes()
    allowed = run_cli(live.env, "replay", str(failed.id))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert replay_rows(allowed.stdout)[0][:4] == [str(failed.id), "mute", "failed", "applied"]
    assert [p.status for p in fake.patches] == [400, 400, 202] and fake.muted(cid, pid)
    assert replayed_state(live, failed.id) == "applied"


def test_replay_force_acts_on_an_expired_event(fake: FakeGenesys, tmp_path: Path) -> None:
    jane = fake.add_user(JANE)
    cid, pid = fake.start_call(jane)
    live = Live(fake, tmp_path)
    try:
        expired = live.accepted(live.post("zendesk", zendesk_sample(now() - timedelta(minutes=10))))
    finally:
        live.close()
    assert expired.state == "expired" and fake.log == []

    plain = run_cli(live.env, "replay", str(expired.id))
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert replay_rows(plain.stdout)[0][:4] == [str(expired.id), "mute", "expired", "expired"]
    assert fake.log == []  # the age guard still holds without --force

    forced = run_cli(live.env, "replay", "--force", str(expired.id))
    assert forced.returncode == 0, forced.stdout + forced.stderr
    [row] = replay_rows(forced.stdout)
    assert row[:4] == [str(expired.id), "mute", "expired", "applied"] and "forced past the age" in row[4]
    assert [(p.path, p.body, p.status) for p in fake.patches] == [(patch_path(cid, pid), {"muted": True}, 202)]
    assert replayed_state(live, expired.id) == "applied"


def test_two_processes_on_one_postgresql_store_and_patch_each_event_once(fake: FakeGenesys, tmp_path: Path,
                                                                        scratch_pg_url: str) -> None:
    agents = [f"agent{n}@example.com" for n in range(21)]
    calls = {a: fake.start_call(fake.add_user(a)) for a in agents}
    env = service_env(fake, scratch_pg_url, write_config(tmp_path / "webhook.toml"))
    store = Store.from_url(scratch_pg_url)
    with running_service(env, tmp_path, name="a") as one, running_service(env, tmp_path, name="b") as two:
        services = (one, two)
        # The same delivery to both at once (a sender retrying against two instances).
        body = generic(agents[0], event_id="evt-same")
        gate = threading.Barrier(2)

        def deliver(service: Service) -> requests.Response:
            gate.wait(timeout=5)
            return service.post("helpdesk", body)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(deliver, services))
        assert sorted(a.status_code for a in answers) == [200, 202], [a.text for a in answers]
        [same] = [r for r in store.list(limit=None) if r.event_id == "evt-same"]
        assert final(store, same.id).state == "applied"

        # Twenty distinct events, spread over both.
        posted = [services[n % 2].post("helpdesk", generic(a)) for n, a in enumerate(agents[1:])]
        ids = [p.json()["accepted"][0]["id"] for p in posted]
        records = [final(store, pk) for pk in ids]
    store.close()

    assert {r.state for r in records} == {"applied"} and len(set(ids)) == 20
    assert len(fake.patches) == 21 and {p.status for p in fake.patches} == {202}
    assert sorted(p.path for p in fake.patches) == sorted(patch_path(*calls[a]) for a in agents)
    assert all(fake.muted(*calls[a]) for a in agents)
    assert fake.token_requests == 2  # one per process
