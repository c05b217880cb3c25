"""Card capture done safely, end to end in process against the fake Genesys: a rule mutes and pauses the recording,
the leaving rule unmutes and resumes, confirm reads the call back, and the safety limits undo what a lost event left
on (as stored events of source "safety", surviving a restart). Time is injected: the app's wall clock, and one
monotonic FakeClock shared by the Genesys client and the fake, so confirm's waits and the fake's late mute take no
real time."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.support.clocks import Clock, FakeClock
from tests.support.fake_genesys import FakeGenesys
from tests.support.servers import service_env, settings_of, signed_request, write_config
from webhook import create_app
from webhook.app_state import AppState
from webhook.config import Settings
from webhook.genesys.client import GenesysClient
from webhook.store import EventRecord

JANE = "jane.agent@example.com"
CARD_RULES = """
[[rules]]
name = "card capture"
status = "card_capture"
action = "mute"
recording = "pause"

[[rules]]
name = "card captured"
status = "card_done"
from = "card_capture"
action = "unmute"
recording = "resume"

"""


def card_config(tmp_path: Path, *, confirm: bool = False, **processing: float) -> Path:
    """The shipped config with the two card rules first, [genesys] confirm, and the given [processing] knobs."""
    path = write_config(tmp_path / "webhook.toml", **({"worker_threads": 0} | processing))
    text = path.read_text(encoding="utf-8").replace("[[rules]]", CARD_RULES.strip() + "\n\n[[rules]]", 1)
    text = text.replace("[genesys]\n", f"[genesys]\nconfirm = {'true' if confirm else 'false'}\n", 1)
    path.write_text(text, encoding="utf-8")
    return path


class Bridge:
    """The service in process (processing inline), its clocks injected; restart() builds a new app on the same
    database, as a new process after a crash would."""

    def __init__(self, fake: FakeGenesys, tmp_path: Path, ticks: FakeClock, **knobs: Any) -> None:
        env = service_env(fake, f"sqlite:///{tmp_path / 'webhook.db'}", card_config(tmp_path, **knobs))
        self.settings: Settings = settings_of(env)
        self.fake, self.ticks = fake, ticks
        self.clock = Clock(datetime.now(UTC).replace(microsecond=0))
        self.app = self._build()

    def _build(self) -> Flask:
        genesys = GenesysClient.from_credentials(
            region="", client_id=self.fake.client_id, client_secret=self.fake.client_secret, api_url=self.fake.url,
            login_url=self.fake.url, requests_per_minute=0, clock=self.ticks, sleep=self.ticks.sleep)
        app = create_app(self.settings, clock=self.clock, genesys=genesys, background=False)
        app.extensions["webhook"].store.create_schema()
        return app

    @property
    def state(self) -> AppState:
        state: AppState = self.app.extensions["webhook"]
        return state

    def send(self, status: str, previous: str | None = None) -> EventRecord:
        """Post a signed event for Jane now; processed inline, so it is final on return."""
        body = json.dumps({"event_id": f"evt-{uuid.uuid4()}", "occurred_at": self.clock().isoformat(),
                           "ticket": {"id": "48213", "status": status, "previous_status": previous},
                           "agent": {"email": JANE}}).encode()
        headers = signed_request(self.settings, "helpdesk", body, "http://localhost/webhooks/helpdesk",
                                 now=self.clock())
        answer = self.app.test_client().post("/webhooks/helpdesk", data=body, headers=headers)
        assert answer.status_code == 202, answer.get_data(as_text=True)
        record = self.state.store.get(answer.get_json()["accepted"][0]["id"])
        assert record is not None
        return record

    def later(self, seconds: float) -> list[EventRecord]:
        """Move the wall clock on, run the sweeper once, and return the events it made (safety undos)."""
        self.clock.advance(seconds)
        self.state.sweeper.sweep()
        return self.state.store.list(source="safety", limit=None)

    def restart(self) -> None:
        self.state.shutdown()
        self.app = self._build()

    def close(self) -> None:
        self.state.shutdown()


@pytest.fixture
def ticks() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(ticks: FakeClock) -> Iterator[FakeGenesys]:
    with FakeGenesys(clock=ticks) as server:
        yield server


@pytest.fixture
def on_a_call(fake: FakeGenesys) -> tuple[str, str]:
    return fake.start_call(fake.add_user(JANE), recording="active")


def bridge(fake: FakeGenesys, tmp_path: Path, ticks: FakeClock, **knobs: Any) -> Bridge:
    return Bridge(fake, tmp_path, ticks, **knobs)


def test_a_card_capture_mutes_and_pauses_and_leaving_it_unmutes_and_resumes(
        fake: FakeGenesys, tmp_path: Path, ticks: FakeClock, on_a_call: tuple[str, str]) -> None:
    cid, pid = on_a_call
    service = bridge(fake, tmp_path, ticks)
    try:
        capture = service.send("card_capture", "open")
        assert capture.state == "applied", capture.detail
        assert fake.muted(cid, pid) and fake.recording(cid) == "paused"
        assert f"; paused the recording of call {cid} as client_credentials" in capture.detail
        assert [(a.method, a.status) for a in service.state.store.attempts(capture.id)][-2:] == [
            ("PATCH", 202), ("PUT", 202)]
        done = service.send("card_done", "card_capture")
        assert done.state == "applied", done.detail
        assert not fake.muted(cid, pid) and fake.recording(cid) == "active"
        assert "resumed the recording" in done.detail
    finally:
        service.close()


def test_a_mute_that_lands_and_a_pause_that_is_refused_fails_saying_which_landed(
        fake: FakeGenesys, tmp_path: Path, ticks: FakeClock, on_a_call: tuple[str, str]) -> None:
    cid, pid = on_a_call
    fake.refuse_recording("missing.permissions")
    service = bridge(fake, tmp_path, ticks)
    try:
        capture = service.send("card_capture", "open")
        assert capture.state == "failed"
        assert capture.detail.startswith("muted ") and "; but the recording was NOT paused: " in capture.detail
        assert "missing.permissions" in capture.detail
        assert fake.muted(cid, pid) and fake.recording(cid) == "active"  # nothing rolled back
    finally:
        service.close()


def test_a_lost_leave_event_is_undone_by_the_safety_limits(fake: FakeGenesys, tmp_path: Path, ticks: FakeClock,
                                                           on_a_call: tuple[str, str]) -> None:
    cid, pid = on_a_call
    service = bridge(fake, tmp_path, ticks, max_mute_seconds=60, max_pause_seconds=90)
    try:
        capture = service.send("card_capture", "open")
        assert capture.state == "applied" and fake.muted(cid, pid)
        assert service.later(59) == []  # not yet
        [unmute] = service.later(1)
        assert (unmute.event_id, unmute.state, unmute.action) == (f"undo-mute-{capture.id}", "applied", "unmute")
        assert "the safety limit ([processing] max_mute_seconds)" in unmute.detail
        assert not fake.muted(cid, pid) and fake.recording(cid) == "paused"  # each limit on its own
        [line] = service.state.store.audit_lines(event=unmute.id)
        assert (line.operator, line.action, line.target) == ("safety limit", "undo mute", f"{JANE} on call {cid}")
        undos = service.later(30)
        assert [(u.event_id, u.state) for u in undos] == [(f"undo-pause-{capture.id}", "applied"),
                                                         (f"undo-mute-{capture.id}", "applied")]
        assert fake.recording(cid) == "active"
        assert service.later(1000) == undos  # each undo happens once
    finally:
        service.close()


def test_a_newer_real_event_within_the_limit_cancels_the_undo(fake: FakeGenesys, tmp_path: Path, ticks: FakeClock,
                                                              on_a_call: tuple[str, str]) -> None:
    cid, pid = on_a_call
    service = bridge(fake, tmp_path, ticks, max_mute_seconds=60, max_pause_seconds=60)
    try:
        service.send("card_capture", "open")
        service.clock.advance(30)
        assert service.send("card_done", "card_capture").state == "applied"
        assert service.state.store.pending_undos() == []
        assert service.later(120) == []
        assert not fake.muted(cid, pid) and fake.recording(cid) == "active"
    finally:
        service.close()


def test_an_undo_is_skipped_when_the_agent_left_that_call(fake: FakeGenesys, tmp_path: Path, ticks: FakeClock,
                                                          on_a_call: tuple[str, str]) -> None:
    cid, _ = on_a_call
    service = bridge(fake, tmp_path, ticks, max_mute_seconds=60)
    try:
        service.send("card_capture", "open")
        fake.end_call(cid)
        new_call, new_leg = fake.start_call(fake.add_user("other@example.com"))  # someone else's call meanwhile
        [undo] = service.later(61)
        assert undo.state == "skipped", undo.detail
        assert undo.detail == f"nothing to undo: {JANE} is no longer on call {cid}"
        assert not fake.muted(new_call, new_leg) and [p for p in fake.patches if new_leg in p.path] == []
    finally:
        service.close()


def test_an_undo_pending_at_a_restart_still_happens(fake: FakeGenesys, tmp_path: Path, ticks: FakeClock,
                                                    on_a_call: tuple[str, str]) -> None:
    cid, pid = on_a_call
    service = bridge(fake, tmp_path, ticks, max_mute_seconds=60)
    try:
        capture = service.send("card_capture", "open")
        service.restart()  # the pending undo is in the database, not a timer in memory
        [undo] = service.later(61)
        assert (undo.event_id, undo.state) == (f"undo-mute-{capture.id}", "applied") and not fake.muted(cid, pid)
    finally:
        service.close()


def test_confirm_reads_the_call_back_until_the_leg_shows_muted(fake: FakeGenesys, tmp_path: Path, ticks: FakeClock,
                                                               on_a_call: tuple[str, str]) -> None:
    cid, pid = on_a_call
    fake.mute_delay = 0.6  # Genesys answers 202 before the leg shows the change
    service = bridge(fake, tmp_path, ticks, confirm=True)
    try:
        capture = service.send("card_capture", "open")
        assert capture.state == "applied", capture.detail
        assert capture.detail.endswith("; confirmed by reading the call back") and fake.muted(cid, pid)
        attempts = service.state.store.attempts(capture.id)
        after = [a.method for a in attempts][[a.method for a in attempts].index("PUT") + 1:]
        assert after == ["GET"] * 4 and ticks.sleeps[-3:] == [0.25, 0.25, 0.25]  # 0, .25, .5: not yet; .75: muted
    finally:
        service.close()


def test_with_confirm_a_mute_that_never_shows_fails_with_what_was_seen(
        fake: FakeGenesys, tmp_path: Path, ticks: FakeClock, on_a_call: tuple[str, str]) -> None:
    cid, _ = on_a_call
    fake.mute_delay = float("inf")
    service = bridge(fake, tmp_path, ticks, confirm=True)
    try:
        capture = service.send("card_capture", "open")
        assert capture.state == "failed"
        assert ("Genesys accepted the change but the call, read back for up to 3 s, shows otherwise: the leg shows "
                "muted=False (asked True)") in capture.detail
        assert fake.recording(cid) == "paused"  # what landed is said, not rolled back
        assert "Done: muted " in capture.detail
    finally:
        service.close()
