"""process(): rules, the age and ordering guards, the Genesys outcome mapped to a state, and replay semantics."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.app import make_settings
from tests.support.clocks import T0, Clock, FakeClock
from webhook.errors import GenesysBadRequestError, GenesysBudgetError, GenesysError, GenesysNotFoundError
from webhook.events import PRESETS
from webhook.genesys.client import Applied, Target, call_gone
from webhook.genesys.model import CLIENT_CREDENTIALS, Attempt
from webhook.processing import Processor, age_verdict, budget_deadline
from webhook.store import OURS, NewDelivery, NewEvent, Store

JANE = "jane.agent@example.com"


class StubGenesys:
    """Answers like GenesysClient from a script: a target (or None) and an error for set_muted, if any."""

    def __init__(self, target: Target | None = None, errors: list[Exception] | None = None) -> None:
        self.target = target
        self.errors = list(errors or [])
        self.calls: list[tuple[str, Any]] = []

    def find_target(self, agent: str, *, conversation_id: str | None = None, deadline: float,
                    record: Any = None) -> Target | None:
        self.calls.append(("find", (agent, conversation_id, deadline)))
        if record:
            record(Attempt("POST", "/api/v2/analytics/conversations/details/query", 200, None, "corr-1", 12.0, None))
        return self.target

    def set_muted(self, target: Target, muted: bool, *, deadline: float, record: Any = None) -> None:
        self.calls.append(("patch", (target.participant_id, muted)))
        if self.errors:
            raise self.errors.pop(0)

    def act(self, agent: str, muted: bool, *, conversation_id: str | None = None, deadline: float,
            record: Any = None) -> Applied | None:
        """Like GenesysClient.act with one identity: find, PATCH, once more after an answer saying the call is gone."""
        for fresh in (False, True):
            target = self.find_target(agent, conversation_id=conversation_id, deadline=deadline, record=record)
            if target is None:
                return None
            try:
                self.set_muted(target, muted, deadline=deadline, record=record)
            except GenesysError as exc:
                if fresh or not call_gone(exc):
                    raise
                continue
            return Applied(target, CLIENT_CREDENTIALS)
        raise AssertionError("unreachable")

    def close(self) -> None:
        pass


TARGET = Target("50fcd33c-1111-4222-8333-944444444444", "conv-1", "part-9", False)


@pytest.fixture
def store(sqlite_url: str) -> Store:
    return Store.from_url(sqlite_url)


def processor(store: Store, clock: Clock, genesys: Any = None, **overrides: Any) -> Processor:
    settings = make_settings(store.engine.url.render_as_string(hide_password=False), **overrides)
    if genesys is not None:
        settings = replace(settings, genesys=replace(settings.genesys, dry_run=False))
    return Processor(store, settings, genesys, clock=clock, monotonic=lambda: 1000.0)


def save(store: Store, *, status: str = "payment_in_progress", occurred: datetime = T0, event_id: str = "e1",
         agent: str = JANE, previous: str | None = "open", conversation: str | None = None) -> int:
    body = json.dumps({"event_id": event_id}).encode()
    [saved] = store.save(NewDelivery(source="helpdesk", received_at=occurred, raw_body=body),
                         [NewEvent(source="helpdesk", event_id=event_id, state="received", detail="",
                                   received_at=occurred, ticket_id="48213", status=status,
                                   previous_status=previous, agent=agent, conversation_id=conversation,
                                   occurred_at=occurred)])
    return saved.id


def test_dry_run_records_the_planned_action_and_target(store: Store) -> None:
    outcome = processor(store, Clock(T0)).process(save(store))
    assert (outcome.old_state, outcome.new_state, outcome.action) == ("received", "dry_run", "mute")
    assert outcome.detail == (f"would mute {JANE} by rule 1 (card details are being taken); "
                              "dry run (GENESYS_DRY_RUN=true): no request made")
    record = store.get(outcome.event)
    assert record is not None and (record.state, record.action, record.claimed_at) == ("dry_run", "mute", None)


def test_no_rule_or_a_none_rule_is_skipped_without_a_call(store: Store) -> None:
    genesys = StubGenesys(TARGET)
    outcome = processor(store, Clock(T0), genesys).process(save(store, status="pending", previous=None))
    assert (outcome.new_state, outcome.action) == ("skipped", "none")
    assert outcome.detail.startswith("rule 5 (everything else leaves the microphone alone) says none")
    assert genesys.calls == []


def test_an_applied_mute_patches_the_participant_and_keeps_each_attempt(store: Store) -> None:
    genesys = StubGenesys(TARGET)
    outcome = processor(store, Clock(T0 + timedelta(seconds=3)), genesys).process(save(store))
    assert outcome.new_state == "applied"
    assert outcome.detail.startswith(
        f"muted {TARGET.user_id} on call conv-1 (participant part-9) as client_credentials")
    assert genesys.calls[1] == ("patch", ("part-9", True))
    [attempt] = store.attempts(outcome.event)
    assert (attempt.method, attempt.status, attempt.correlation_id) == ("POST", 200, "corr-1")


def test_the_deadline_is_the_budget_but_never_past_the_age_limit(store: Store) -> None:
    genesys = StubGenesys(TARGET)
    processor(store, Clock(T0 + timedelta(seconds=100)), genesys).process(save(store))
    assert genesys.calls[0][1][2] == 1000.0 + 20  # 120 s limit - 100 s age < 30 s budget


def test_no_live_call_is_no_call(store: Store) -> None:
    outcome = processor(store, Clock(T0), StubGenesys(None)).process(save(store))
    assert (outcome.new_state, outcome.detail) == (
        "no_call", f"{JANE} is not on a live voice call (no connected leg of theirs that is not held or monitoring); "
                   "nothing to mute")


def test_a_genesys_refusal_is_failed_with_its_explanation(store: Store) -> None:
    refusal = GenesysBadRequestError("This request requires a user context.", status=400, code="not.a.user",
                                     correlation_id="c-7")
    outcome = processor(store, Clock(T0), StubGenesys(TARGET, [refusal])).process(save(store))
    assert outcome.new_state == "failed"
    assert "not.a.user" in outcome.detail and "c-7" in outcome.detail


def test_a_spent_budget_is_failed(store: Store) -> None:
    spent = GenesysBudgetError("retry budget spent after 429 too.many.requests", status=429,
                               code="too.many.requests")
    outcome = processor(store, Clock(T0), StubGenesys(TARGET, [spent])).process(save(store))
    assert outcome.new_state == "failed" and "too.many.requests" in outcome.detail


def test_a_call_that_ended_before_the_patch_is_looked_up_once_more(store: Store) -> None:
    genesys = StubGenesys(TARGET, [GenesysNotFoundError("gone", status=404, code="not.found")])
    outcome = processor(store, Clock(T0), genesys).process(save(store))
    assert outcome.new_state == "applied"
    assert [c[0] for c in genesys.calls] == ["find", "patch", "find", "patch"]
    twice = StubGenesys(TARGET, [GenesysNotFoundError("gone", status=404, code="not.found")] * 2)
    assert processor(store, Clock(T0), twice).process(save(store, event_id="e2")).new_state == "failed"


def test_an_old_event_expires_without_a_call_unless_forced(store: Store) -> None:
    genesys = StubGenesys(TARGET)
    late = Clock(T0 + timedelta(seconds=121))
    outcome = processor(store, late, genesys).process(save(store))
    assert outcome.new_state == "expired"
    assert outcome.detail.startswith("event is 121 s old (limit 120 s)")
    assert genesys.calls == []
    forced = processor(store, late, genesys).process(outcome.event, states=("expired",), force=True)
    assert forced.new_state == "applied" and "forced past the age and ordering guards" in forced.detail


def test_an_older_event_after_a_newer_one_is_skipped(store: Store) -> None:
    genesys = StubGenesys(TARGET)
    proc = processor(store, Clock(T0 + timedelta(seconds=5)), genesys)
    newer = proc.process(save(store, event_id="new", status="payment_in_progress", occurred=T0 + timedelta(seconds=2)))
    older = proc.process(save(store, event_id="old", status="open", previous="payment_in_progress", occurred=T0))
    assert (newer.new_state, older.new_state) == ("applied", "skipped")
    assert "a newer event for jane.agent@example.com was already acted on" in older.detail
    assert [c for c in genesys.calls if c[0] == "patch"] == [("patch", ("part-9", True))]


def test_an_event_is_processed_once_even_if_submitted_twice(store: Store) -> None:
    genesys = StubGenesys(TARGET)
    proc = processor(store, Clock(T0), genesys)
    event = save(store)
    assert proc.process(event).new_state == "applied"
    second = proc.process(event)
    assert (second.old_state, second.new_state) == ("applied", "applied")
    assert second.detail.startswith("not processed")
    assert len([c for c in genesys.calls if c[0] == "patch"]) == 1


def test_an_invalid_event_is_parsed_again_on_replay_with_the_current_mapping(store: Store) -> None:
    body = json.dumps({"id": "z-1", "ticket": {"id": "5", "state": "card_capture"},
                       "agent": {"email": JANE}, "occurred_at": T0.isoformat()}).encode()
    [saved] = store.save(NewDelivery(source="helpdesk", received_at=T0, raw_body=body),
                         [NewEvent(source="helpdesk", event_id="z-1", state="invalid",
                                   detail="required field status is missing", received_at=T0)])
    proc = processor(store, Clock(T0))
    again = proc.process(saved.id, states=("invalid",))
    assert (again.new_state, again.detail) == ("invalid", "required field status is missing (looked at ticket.status)")
    fixed = replace(PRESETS["generic"], status=("ticket.state",), event_id=("id",))
    source = replace(proc.settings.sources["helpdesk"], mapping=fixed)
    proc.settings = replace(proc.settings, sources={**proc.settings.sources, "helpdesk": source})
    outcome = proc.process(saved.id, states=("invalid",))
    assert (outcome.old_state, outcome.new_state, outcome.action) == ("invalid", "dry_run", "mute")
    record = store.get(saved.id)
    assert record is not None and (record.status, record.agent, record.occurred_at) == ("card_capture", JANE, T0)


def test_preview_changes_nothing(store: Store) -> None:
    genesys = StubGenesys(TARGET)
    event = save(store)
    outcome = processor(store, Clock(T0), genesys).preview(event)
    assert (outcome.action, outcome.new_state) == ("mute", "would act")
    assert genesys.calls == [] and store.get(event).state == "received"  # type: ignore[union-attr]
    assert store.agent_slot(JANE) is None


@pytest.mark.parametrize(
    ("age", "limit", "verdict"),
    [(0, 120, None), (120, 120, None), (120.5, 120, "event is 120 s old"), (-30, 120, None), (3600, 120, "3600 s")],
)
def test_age_verdict(age: float, limit: float, verdict: str | None) -> None:
    result = age_verdict(T0 - timedelta(seconds=age), T0, limit)
    assert (result is None) if verdict is None else (result is not None and verdict in result)


@pytest.mark.parametrize(
    ("age", "budget", "force", "deadline"),
    [(0, 30, False, 130), (100, 30, False, 120), (119, 30, False, 101), (200, 30, False, 100), (200, 30, True, 130),
     (0, 0, False, 100)],
)
def test_budget_deadline(age: float, budget: float, force: bool, deadline: float) -> None:
    assert budget_deadline(100.0, budget=budget, occurred_at=T0 - timedelta(seconds=age), now=T0, max_age=120,
                           force=force) == deadline


def test_ordering_is_per_agent_whatever_the_case_of_the_e_mail(store: Store) -> None:
    proc = processor(store, Clock(T0 + timedelta(seconds=5)), StubGenesys(TARGET))
    proc.process(save(store, event_id="new", occurred=T0 + timedelta(seconds=2)))
    older = proc.process(save(store, event_id="old", agent=JANE.upper(), status="open",
                              previous="payment_in_progress", occurred=T0))
    assert older.new_state == "skipped"


def test_a_run_whose_claim_was_taken_over_does_not_overwrite_the_winner(store: Store) -> None:
    event = save(store)
    clock = Clock(T0)

    class TakenOver(StubGenesys):
        def set_muted(self, target: Target, muted: bool, *, deadline: float, record: Any = None) -> None:
            super().set_muted(target, muted, deadline=deadline, record=record)
            # Meanwhile another worker took the stale claim over and finished the event.
            assert store.claim(event, now=T0 + timedelta(seconds=90), stale_before=T0 + timedelta(seconds=30))
            store.finish(event, state="applied", detail="the other worker", now=T0 + timedelta(seconds=91))

    outcome = processor(store, clock, TakenOver(TARGET)).process(event)
    assert outcome.new_state == "processing" and outcome.detail.startswith("claim lost")
    record = store.get(event)
    assert record is not None and (record.state, record.detail) == ("applied", "the other worker")


# ---------------------------------------------------------------- one event at a time per agent (live)

def live(store: Store, clock: Clock, genesys: Any, ticking: FakeClock) -> Processor:
    proc = processor(store, clock, genesys)
    return Processor(store, proc.settings, genesys, clock=clock, monotonic=ticking, sleep=ticking.sleep)


def test_a_newer_event_waits_while_an_older_one_is_acting_on_the_same_agent(store: Store) -> None:
    older, newer = save(store, event_id="old"), save(store, event_id="new", status="open",
                                                     previous="payment_in_progress", occurred=T0 + timedelta(seconds=1))
    clock, ticking, genesys = Clock(T0 + timedelta(seconds=2)), FakeClock(), StubGenesys(TARGET)
    # The older event holds the agent: it is in the middle of its PATCH in another worker.
    store.claim(older, now=T0, stale_before=T0)
    store.advance_agent(JANE, occurred_at=T0, event_pk=older, now=T0, hold_until=T0 + timedelta(seconds=35))

    def older_finishes(seconds: float) -> None:
        FakeClock.sleep(ticking, seconds)
        if len(ticking.sleeps) == 3:
            store.finish(older, state="applied", detail="muted", now=clock(), claimed_at=T0, release_hold=True)

    ticking.sleep = older_finishes  # type: ignore[method-assign]
    outcome = live(store, clock, genesys, ticking).process(newer)
    assert outcome.new_state == "applied" and genesys.calls[-1] == ("patch", ("part-9", False))
    assert ticking.sleeps == [0.05] * 3  # it looked again until the older event had finished, then acted


def test_a_newer_event_kept_waiting_past_its_budget_fails_and_says_why(store: Store) -> None:
    older, newer = save(store, event_id="old"), save(store, event_id="new", occurred=T0 + timedelta(seconds=1))
    store.advance_agent(JANE, occurred_at=T0, event_pk=older, now=T0, hold_until=T0 + timedelta(hours=1))
    clock, ticking, genesys = Clock(T0 + timedelta(seconds=2)), FakeClock(), StubGenesys(TARGET)
    outcome = live(store, clock, genesys, ticking).process(newer)
    assert outcome.new_state == "failed" and genesys.calls == []
    assert outcome.detail == (f"another event for {JANE} was still changing the microphone when this event's retry "
                              "budget ran out; replay it if it must still be applied")
    assert 29.9 <= sum(ticking.sleeps) <= 30.0 + 1e-9  # the 30 s retry budget, never more


@pytest.mark.parametrize("errors", [[], [GenesysBadRequestError("no", status=400, code="not.a.user")]],
                         ids=["applied", "failed"])
def test_an_event_frees_the_agent_when_it_finishes(store: Store, errors: list[Exception]) -> None:
    clock, ticking = Clock(T0 + timedelta(seconds=2)), FakeClock()
    live(store, clock, StubGenesys(TARGET, errors), ticking).process(save(store, event_id="first"))
    assert store.advance_agent(JANE, occurred_at=T0 + timedelta(seconds=1), event_pk=99, now=clock()) == OURS


def test_two_workers_never_patch_one_agent_out_of_order(store: Store) -> None:
    older, newer = save(store, event_id="old"), save(store, event_id="new", status="open",
                                                     previous="payment_in_progress", occurred=T0 + timedelta(seconds=1))
    clock = Clock(T0 + timedelta(seconds=2))
    patches: list[bool] = []
    older_patching, newer_waited = threading.Event(), threading.Event()

    class Recording(StubGenesys):
        def set_muted(self, target: Target, muted: bool, *, deadline: float, record: Any = None) -> None:
            if muted:  # the older event's mute: hold it mid-PATCH until the newer one has had to wait
                older_patching.set()
                assert newer_waited.wait(10)
            patches.append(muted)

    slow = Processor(store, live(store, clock, StubGenesys(), FakeClock()).settings, Recording(TARGET), clock=clock)
    first = threading.Thread(target=slow.process, args=(older,))

    def waiting(seconds: float) -> None:  # the newer event found the agent held: let the older one finish
        newer_waited.set()
        first.join(10)

    fast = Processor(store, slow.settings, Recording(TARGET), clock=clock, sleep=waiting)
    first.start()
    assert older_patching.wait(10)
    outcome = fast.process(newer)  # waits (sleep) until the older event has finished its PATCH
    assert patches == [True, False]  # the newer unmute lands last, so the agent ends unmuted
    assert outcome.new_state == "applied"


@pytest.mark.parametrize(("ahead", "state"), [(300, "dry_run"), (301, "skipped"), (86400 * 365 * 7000, "skipped")])
def test_an_event_dated_in_the_future_past_the_clock_skew_is_not_acted_on(store: Store, ahead: int,
                                                                          state: str) -> None:
    # Found by the fuzz run: an event dated 9999-12-31 took the agent's slot, and every real event was then "older".
    occurred = datetime(9999, 12, 31, tzinfo=UTC) if ahead > 86400 else T0 + timedelta(seconds=ahead)
    outcome = processor(store, Clock(T0)).process(save(store, occurred=occurred))
    assert outcome.new_state == state
    if state == "skipped":
        assert "in the future (more than the 300 s of clock skew its source allows)" in outcome.detail
        assert store.agent_slot(JANE) is None  # the agent's next real event is not blocked
        assert processor(store, Clock(T0)).process(save(store, event_id="real")).new_state == "dry_run"


def test_an_internal_error_frees_the_hold_even_for_an_event_parsed_from_its_body(store: Store) -> None:
    # An imported row (replay --file) has no parsed fields: the hold is found by the event, not by an agent name.
    body = json.dumps({"event_id": "imported", "occurred_at": T0.isoformat(), "agent": {"email": JANE},
                       "ticket": {"id": "48213", "status": "payment_in_progress", "previous_status": "open"}}).encode()
    [saved] = store.save(NewDelivery(source="helpdesk", received_at=T0, raw_body=body),
                         [NewEvent(source="helpdesk", event_id="imported", state="received", detail="",
                                   received_at=T0)])

    class Broken(StubGenesys):
        def set_muted(self, target: Target, muted: bool, *, deadline: float, record: Any = None) -> None:
            raise RuntimeError("a bug")

    outcome = processor(store, Clock(T0 + timedelta(seconds=1)), Broken(TARGET)).process(saved.id)
    assert (outcome.new_state, outcome.detail) == ("failed", "internal error while processing; see the service log")
    assert store.advance_agent(JANE, occurred_at=T0 + timedelta(seconds=1), event_pk=saved.id + 1,
                               now=T0 + timedelta(seconds=2)) == OURS
