"""The store on SQLite and PostgreSQL: dedupe, reads, claims, agent ordering, the sweeper's query, purge, errors."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select

from tests.support.clocks import T0
from webhook.config import database_url
from webhook.errors import StoreError
from webhook.genesys.model import Attempt, Connection
from webhook.store import BUSY, OLDER, OURS, NewDelivery, NewEvent, Saved, Store, attempts, deliveries

AGENT = "jane.agent@example.com"
STALE = timedelta(seconds=60)


def new(
    event_id: str,
    *,
    source: str = "helpdesk",
    state: str = "received",
    received_at: datetime = T0,
    **fields: Any,
) -> NewEvent:
    """A row as intake would store it; a parsed event unless the state says invalid."""
    parsed: dict[str, Any] = {}
    if state != "invalid":
        parsed |= {"ticket_id": "48213", "status": "payment_in_progress", "previous_status": "open", "agent": AGENT,
                   "occurred_at": received_at - timedelta(seconds=1)}
    detail = "required field ticket_id is missing" if state == "invalid" else ""
    return NewEvent(source=source, event_id=event_id, state=state, detail=detail, received_at=received_at,
                    **(parsed | fields))


def delivery(body: bytes = b'{"ticket": {"id": "48213"}}', *, source: str = "helpdesk", received_at: datetime = T0,
             **fields: Any) -> NewDelivery:
    """The request a row came in, as intake would store it."""
    return NewDelivery(source=source, received_at=received_at, raw_body=body,
                       **({"headers": {"content-type": "application/json"}} | fields))


DELIVERY = delivery()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A store of its own on a fresh database of each kind."""
    store = Store.from_url(db_url)
    yield store
    store.close()


def save_one(store: Store, row: NewEvent, body: bytes = DELIVERY.raw_body, **fields: Any) -> int:
    [saved] = store.save(delivery(body, source=row.source, received_at=row.received_at, **fields), [row])
    assert not saved.duplicate and saved.id is not None
    return saved.id


# ---------------------------------------------------------------- save and dedupe

def test_new_rows_are_saved_as_new(store: Store) -> None:
    first, second = store.save(DELIVERY, [new("evt_1"), new("evt_2", state="invalid")])
    assert first == Saved(first.id, "helpdesk", "evt_1", False, "received")
    assert second == Saved(second.id, "helpdesk", "evt_2", False, "invalid")
    assert second.id > first.id
    assert store.counts() == {"received": 1, "invalid": 1}


def test_same_source_and_event_id_is_a_duplicate_with_the_first_rows_id_and_state(store: Store) -> None:
    first = save_one(store, new("evt_1"), b"first")
    store.finish(first, state="dry_run", detail="would mute", action="mute", now=T0)
    before = store.get(first)

    [again] = store.save(delivery(b"second"), [new("evt_1", state="invalid", received_at=T0 + timedelta(seconds=9))])

    assert again == Saved(first, "helpdesk", "evt_1", True, "dry_run")
    assert store.get(first) == before
    assert store.list(limit=None) == [before]


def test_a_redelivery_of_a_purged_event_stays_a_duplicate(store: Store) -> None:
    """Issue 11, finding 3: purge used to delete the dedupe key with the event, so a captured delivery of a scheme
    without a signed timestamp could be replayed as new. The key outlives the event (event_keys)."""
    save_one(store, new("evt_1", received_at=T0 - timedelta(days=40)))
    assert store.purge(before=T0 - timedelta(days=30)) == 1
    assert store.list(limit=None) == []
    [again] = store.save(DELIVERY, [new("evt_1")])
    assert again == Saved(None, "helpdesk", "evt_1", True, "purged")
    assert store.list(limit=None) == []
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(deliveries)).scalar() == 0  # nothing new kept
    assert store.purge_keys(before=T0) == 1  # forgotten only by the keys' own retention
    [fresh] = store.save(DELIVERY, [new("evt_1")])
    assert not fresh.duplicate and fresh.id is not None


def test_same_event_id_under_another_source_is_another_event(store: Store) -> None:
    helpdesk, zendesk = store.save(DELIVERY, [new("evt_1"), new("evt_1", source="zendesk")])
    assert not helpdesk.duplicate and not zendesk.duplicate
    assert helpdesk.id != zendesk.id
    assert store.find("zendesk", "evt_1").id == zendesk.id  # type: ignore[union-attr]


def test_one_save_mixes_new_and_duplicate_rows_in_order(store: Store) -> None:
    old = save_one(store, new("evt_old"))
    saved = store.save(DELIVERY, [new("evt_old"), new("evt_new"), new("evt_new"), new("evt_other")])
    assert [(s.event_id, s.duplicate) for s in saved] == [
        ("evt_old", True), ("evt_new", False), ("evt_new", True), ("evt_other", False)]
    assert saved[0].id == old
    assert saved[2].id == saved[1].id
    assert len(store.list(limit=None)) == 3


# ---------------------------------------------------------------- reading back

@pytest.fixture
def five(store: Store) -> Store:
    """Five events from two sources in several states, received 100 s apart (row ids in this order)."""
    store.save(DELIVERY, [
        new("a", received_at=T0 - timedelta(seconds=300)),
        new("b", source="zendesk", state="dry_run", received_at=T0 - timedelta(seconds=200)),
        new("c", state="invalid", received_at=T0 - timedelta(seconds=100)),
        new("d", received_at=T0),
        new("e", source="zendesk", received_at=T0 + timedelta(seconds=100)),
    ])
    return store


@pytest.mark.parametrize("filters, expected", [
    ({}, "edcba"),
    ({"state": "received"}, "eda"),
    ({"source": "zendesk"}, "eb"),
    ({"since": T0}, "ed"),
    ({"since": T0 - timedelta(seconds=299)}, "edcb"),
    ({"ids": "ac?"}, "ca"),
    ({"ids": ""}, ""),
    ({"limit": 2}, "ed"),
    ({"limit": None}, "edcba"),
    ({"state": "received", "source": "helpdesk", "since": T0 - timedelta(seconds=300)}, "da"),
    ({"state": "applied"}, ""),
], ids=["all", "state", "source", "since-inclusive", "since", "ids", "no-ids", "limit", "limit-none", "combined",
        "no-match"])
def test_list_filters_newest_first(five: Store, filters: dict[str, Any], expected: str) -> None:
    if "ids" in filters:  # the table names events; "?" is a row id that does not exist
        by_name = {r.event_id: r.id for r in five.list(limit=None)}
        filters = filters | {"ids": [by_name.get(name, 999_999) for name in filters["ids"]]}
    assert "".join(r.event_id for r in five.list(**filters)) == expected


def test_list_limit_none_returns_more_than_the_default_page(store: Store) -> None:
    store.save(DELIVERY, [new(f"evt_{n:03}") for n in range(60)])
    assert len(store.list()) == 50
    assert [r.event_id for r in store.list(limit=None)] == [f"evt_{n:03}" for n in reversed(range(60))]


def test_get_and_find_return_the_event_or_none(five: Store) -> None:
    record = five.find("zendesk", "b")
    assert record is not None and five.get(record.id) == record
    assert (record.source, record.event_id, record.state) == ("zendesk", "b", "dry_run")
    assert five.find("helpdesk", "b") is None
    assert five.get(999_999) is None


def test_iter_deliveries_yields_each_delivery_once_with_its_events_across_batches(five: Store) -> None:
    for n in range(3):
        five.save(delivery(b"%d" % n), [new(f"x{n}")])
    got = [(d.raw_body, [r.event_id for r in records]) for d, records in five.iter_deliveries(batch=2)]
    assert got == [(DELIVERY.raw_body, list("abcde")), (b"0", ["x0"]), (b"1", ["x1"]), (b"2", ["x2"])]


def test_iter_deliveries_on_an_empty_store_yields_nothing(store: Store) -> None:
    assert list(store.iter_deliveries()) == []


@pytest.mark.parametrize("body", [
    b"",
    b"\xff\xfe\x00\x80 not UTF-8 \xc3\x28",
    bytes(range(256)),
    '{"status": "paiement_en_cours", "agent": "zoë@example.com"}'.encode(),
], ids=["empty", "not-utf8", "every-byte", "utf8"])
def test_raw_body_round_trips_byte_for_byte(store: Store, body: bytes) -> None:
    kept = store.delivery_of(save_one(store, new("evt_1"), body))
    assert kept is not None
    assert type(kept.raw_body) is bytes and kept.raw_body == body


def test_every_field_round_trips(store: Store) -> None:
    row = new("evt_1", conversation_id="3b0c8a52")
    sent = delivery(headers={"content-type": "application/json", "user-agent": "Zendesk Webhook/ü", "x-empty": ""},
                    signed_at=T0 - timedelta(seconds=2), message_id="msg_2Kx")
    [saved] = store.save(sent, [row])
    record = store.get(saved.id)  # type: ignore[arg-type]
    assert record is not None
    stored = {name: getattr(record, name) for name in (
        "source", "event_id", "state", "detail", "ticket_id", "status", "previous_status", "agent",
        "conversation_id", "occurred_at", "received_at")}
    assert stored == {name: getattr(row, name) for name in stored}
    kept = store.delivery(record.delivery)
    assert kept is not None
    assert {name: getattr(kept, name) for name in ("source", "received_at", "signed_at", "message_id", "raw_body")} \
        == {name: getattr(sent, name) for name in ("source", "received_at", "signed_at", "message_id", "raw_body")}
    assert kept.headers == sent.headers
    assert (record.action, record.claimed_at, record.updated_at) == (None, None, row.received_at)


def test_a_json_array_keeps_its_body_once_for_all_its_events(store: Store) -> None:
    """Issue 11, finding 1: each event of an array stored the whole body. Measured here: a signed 256 KiB array of
    1,000 events keeps at most 1.1 x 256 KiB of body bytes."""
    element = b'{"eventId": 0000, "objectId": 1, "propertyValue": "open", "ownerEmail": "a@example.com", "p": "'
    body = b"[" + b",".join(element.replace(b"0000", b"%04d" % n) + b"x" * (262_144 // 1000 - len(element) - 5)
                            + b'"}' for n in range(1000)) + b"]"
    assert 250_000 < len(body) <= 262_144
    saved = store.save(delivery(body, source="hubspot"), [new(f"e{n}", source="hubspot") for n in range(1000)])
    assert len({s.id for s in saved}) == 1000 and not any(s.duplicate for s in saved)
    with store.engine.connect() as conn:
        stored = conn.execute(select(func.sum(func.length(deliveries.c.raw_body)))).scalar()
        rows = conn.execute(select(func.count()).select_from(deliveries)).scalar()
    assert (rows, stored) == (1, len(body))
    assert stored <= 1.1 * 262_144
    assert {store.get(s.id).delivery for s in saved} == {store.get(saved[0].id).delivery}  # type: ignore[union-attr,arg-type]


def test_datetimes_come_back_aware_utc_to_the_microsecond(store: Store) -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    received = datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)
    occurred = datetime(2026, 11, 23, 15, 29, 59, 999999, tzinfo=india)
    record = store.get(save_one(store, new("evt_1", received_at=received, occurred_at=occurred)))
    assert record is not None
    assert record.received_at == received and record.occurred_at == occurred
    assert record.occurred_at.microsecond == 999999
    assert all(value.tzinfo is UTC for value in (record.received_at, record.updated_at, record.occurred_at))
    assert record.summary()["occurred_at"] == "2026-11-23T09:59:59.999999Z"


@pytest.mark.parametrize("call", [
    lambda store: store.save(DELIVERY, [new("evt_naive", received_at=datetime(2026, 11, 23, 10, 0))]),
    lambda store: store.save(DELIVERY, [new("evt_naive", occurred_at=datetime(2026, 11, 23, 10, 0))]),
    lambda store: store.list(since=datetime(2026, 11, 23, 10, 0)),
    lambda store: store.advance_agent(AGENT, occurred_at=datetime(2026, 11, 23, 10, 0), event_pk=1, now=T0),
], ids=["received_at", "occurred_at", "since", "advance_agent"])
def test_a_naive_datetime_is_refused_as_a_bug_not_an_outage(store: Store, call: Any) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        call(store)
    assert store.counts() == {} and store.agent_slot(AGENT) is None


# ---------------------------------------------------------------- claim, finish, release

def test_claim_moves_received_to_processing_once(store: Store) -> None:
    pk = save_one(store, new("evt_1"))
    won = store.claim(pk, now=T0, stale_before=T0 - STALE)
    assert won is not None and (won.id, won.event_id, won.state, won.claimed_at) == (pk, "evt_1", "received", T0)
    assert store.claim(pk, now=T0, stale_before=T0 - STALE) is None
    record = store.get(pk)
    assert record is not None and (record.state, record.claimed_at, record.updated_at) == ("processing", T0, T0)
    assert record.detail == "claimed from received"  # what `events show` says while it is processed


@pytest.mark.parametrize("rival_finishes", [False, True], ids=["rival-processing", "rival-finished"])
def test_a_claim_loses_when_another_worker_claims_between_its_read_and_its_update(
        store: Store, db_url: str, rival_finishes: bool) -> None:
    """The claim reads the event, then sets processing only if the state is still what it read (compare and set):
    neither a rival's claim nor a rival's finished run in between can be claimed over."""
    pk = save_one(store, new("evt_1"))
    rival = Store.from_url(db_url)
    later = T0 + timedelta(seconds=1)
    rival_won: list[object] = []

    def rival_in_between(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and not rival_won:
            rival_won.append(rival.claim(pk, now=later, stale_before=T0 - STALE))
            if rival_finishes:
                rival.finish(pk, state="dry_run", detail="would mute", now=later, claimed_at=later)

    sa_event.listen(store.engine, "after_cursor_execute", rival_in_between)
    try:
        assert store.claim(pk, now=T0, stale_before=T0 - STALE, states=("received", "dry_run")) is None
    finally:
        sa_event.remove(store.engine, "after_cursor_execute", rival_in_between)
        rival.close()
    assert rival_won and rival_won[0] is not None
    after = store.get(pk)
    assert after is not None and after.updated_at == later
    assert after.state == ("dry_run" if rival_finishes else "processing")


def test_claim_of_a_missing_event_is_none(store: Store) -> None:
    assert store.claim(999_999, now=T0, stale_before=T0 - STALE) is None


def test_a_stale_claim_is_taken_over_and_a_fresh_one_is_not(store: Store) -> None:
    pk = save_one(store, new("evt_1"))
    assert store.claim(pk, now=T0, stale_before=T0 - STALE)
    later = T0 + STALE
    assert store.claim(pk, now=later, stale_before=later - STALE) is None  # claimed exactly at the limit: fresh
    much_later = T0 + STALE + timedelta(microseconds=1)
    taken = store.claim(pk, now=much_later, stale_before=much_later - STALE)
    assert taken is not None and taken.state == "processing"  # taken over from a worker that stopped
    assert store.get(pk).claimed_at == much_later  # type: ignore[union-attr]


def test_claim_for_replay_takes_only_the_states_asked_for(store: Store) -> None:
    failed, dry = store.save(DELIVERY, [new("evt_failed"), new("evt_dry")])
    for saved, state in ((failed, "failed"), (dry, "dry_run")):
        assert store.claim(saved.id, now=T0, stale_before=T0 - STALE)
        store.finish(saved.id, state=state, detail="x", now=T0)
    assert store.claim(failed.id, now=T0, stale_before=T0 - STALE) is None
    assert store.claim(dry.id, now=T0, stale_before=T0 - STALE, states=("failed",)) is None
    replayed = store.claim(failed.id, now=T0, stale_before=T0 - STALE, states=("failed",))
    assert replayed is not None and replayed.state == "failed"
    assert store.get(failed.id).state == "processing"  # type: ignore[union-attr]


def test_finish_records_state_detail_action_and_clears_the_claim(store: Store) -> None:
    pk = save_one(store, new("evt_1"))
    store.claim(pk, now=T0, stale_before=T0 - STALE)
    done = T0 + timedelta(seconds=2)
    store.finish(pk, state="failed", detail="HTTP 400 not.a.user: " + "x" * 3000, action="mute", now=done,
                 fields={"ticket_id": "99"})
    record = store.get(pk)
    assert record is not None
    assert (record.state, record.action, record.claimed_at, record.updated_at, record.ticket_id) == (
        "failed", "mute", None, done, "99")
    assert record.detail.startswith("HTTP 400 not.a.user: ") and len(record.detail) == 2000


def test_release_hands_a_claimed_event_back_and_leaves_others_alone(store: Store) -> None:
    claimed, final = store.save(DELIVERY, [new("evt_claimed"), new("evt_final")])
    for pk in (claimed.id, final.id):
        store.claim(pk, now=T0, stale_before=T0 - STALE)
    store.finish(final.id, state="applied", detail="muted", now=T0)
    for pk in (claimed.id, final.id):
        store.release(pk, now=T0 + timedelta(seconds=1))
    assert [(r.event_id, r.state, r.claimed_at) for r in store.list()] == [
        ("evt_final", "applied", None), ("evt_claimed", "received", None)]
    assert store.claim(claimed.id, now=T0, stale_before=T0 - STALE) is not None


# ---------------------------------------------------------------- agent ordering

@pytest.mark.parametrize("occurred, event_pk, wins", [
    (T0 + timedelta(seconds=5), 11, True),
    (T0 + timedelta(microseconds=1), 3, True),
    (T0 - timedelta(seconds=5), 11, False),
    (T0 - timedelta(microseconds=1), 99, False),
    (T0, 11, True),
    (T0, 9, False),
    (T0, 10, True),
    (T0.astimezone(timezone(timedelta(hours=2))), 11, True),
    (T0.astimezone(timezone(timedelta(hours=-7))), 9, False),
], ids=["newer", "newer-by-1us-lower-id", "older", "older-by-1us-higher-id", "tie-higher-id", "tie-lower-id",
        "same-event-replayed", "tie-in-another-zone-higher-id", "tie-in-another-zone-lower-id"])
def test_advance_agent_against_a_held_slot(store: Store, occurred: datetime, event_pk: int, wins: bool) -> None:
    assert store.advance_agent(AGENT, occurred_at=T0, event_pk=10, now=T0) == OURS
    assert store.advance_agent(AGENT, occurred_at=occurred, event_pk=event_pk, now=T0) == (OURS if wins else OLDER)
    assert store.agent_slot(AGENT) == ((occurred, event_pk) if wins else (T0, 10))


def test_first_event_for_an_agent_wins_and_agents_are_independent(store: Store) -> None:
    assert store.agent_slot(AGENT) is None
    assert store.advance_agent(AGENT, occurred_at=T0, event_pk=10, now=T0) == OURS
    omar = "omar.agent@example.com"
    assert store.advance_agent(omar, occurred_at=T0 - timedelta(hours=1), event_pk=2, now=T0) == OURS
    assert store.agent_slot(AGENT) == (T0, 10)
    assert store.agent_slot("omar.agent@example.com") == (T0 - timedelta(hours=1), 2)
    slot = store.agent_slot(AGENT)
    assert slot is not None and slot[0].tzinfo is UTC


def test_a_held_slot_keeps_newer_events_waiting_until_it_is_freed_or_expires(store: Store) -> None:
    until = T0 + timedelta(seconds=35)
    [held] = store.save(DELIVERY, [new("held")])
    assert store.advance_agent(AGENT, occurred_at=T0, event_pk=held.id, now=T0, hold_until=until) == OURS
    newer = {"occurred_at": T0 + timedelta(seconds=1), "event_pk": held.id + 1}
    # While the older event acts, a newer one waits (BUSY), an older one is still refused (OLDER), and the holder
    # itself (taken over by the sweeper after a crash) may go on.
    assert store.advance_agent(AGENT, **newer, now=T0 + timedelta(seconds=2), hold_until=until) == BUSY
    assert store.advance_agent(AGENT, occurred_at=T0 - timedelta(seconds=1), event_pk=1, now=T0) == OLDER
    assert store.advance_agent(AGENT, occurred_at=T0, event_pk=held.id, now=T0, hold_until=until) == OURS
    assert store.agent_slot(AGENT) == (T0, held.id)
    # finish(release_hold=True) frees the slot with the event's final state, in one transaction.
    store.claim(held.id, now=T0, stale_before=T0)
    assert store.finish(held.id, state="applied", detail="ok", now=T0, claimed_at=T0, release_hold=True)
    assert store.advance_agent(AGENT, **newer, now=T0 + timedelta(seconds=3), hold_until=until) == OURS
    # A holder that never finishes (its process died) frees the agent when its hold runs out.
    later = {"occurred_at": T0 + timedelta(seconds=9), "event_pk": held.id + 2}
    assert store.advance_agent(AGENT, **later, now=until, hold_until=until + timedelta(seconds=35)) == BUSY
    assert store.advance_agent(AGENT, **later, now=until + timedelta(microseconds=1)) == OURS
    assert store.agent_slot(AGENT) == (later["occurred_at"], later["event_pk"])


def test_only_the_holder_frees_a_hold_and_only_while_its_claim_holds(store: Store) -> None:
    [one, two] = store.save(DELIVERY, [new("one"), new("two")])
    hour = T0 + timedelta(hours=1)
    store.claim(two.id, now=T0, stale_before=T0)
    store.finish(two.id, state="failed", detail="x", now=T0, claimed_at=T0, release_hold=True)  # holds nothing
    # Worker 1 claims event one and holds the agent; it stalls, the sweeper hands the event to worker 2, which takes
    # the hold again (same event); when worker 1 finally finishes, its claim is gone and so is its right to release.
    store.claim(one.id, now=T0, stale_before=T0)
    assert store.advance_agent(AGENT, occurred_at=T0, event_pk=one.id, now=T0, hold_until=hour) == OURS
    later = T0 + timedelta(minutes=2)
    assert store.claim(one.id, now=later, stale_before=later - STALE) is not None
    assert store.advance_agent(AGENT, occurred_at=T0, event_pk=one.id, now=later, hold_until=hour) == OURS
    assert not store.finish(one.id, state="applied", detail="late", now=later, claimed_at=T0, release_hold=True)
    newer = {"occurred_at": T0 + timedelta(seconds=1), "event_pk": two.id, "now": later}
    assert store.advance_agent(AGENT, **newer) == BUSY  # worker 2 still holds it
    assert store.finish(one.id, state="applied", detail="ok", now=later, claimed_at=later, release_hold=True)
    assert store.advance_agent(AGENT, **newer) == OURS


# ---------------------------------------------------------------- the sweeper's query

def test_pending_finds_old_received_and_stale_processing_only(store: Store) -> None:
    rows = {
        "old-received": (new("old-received", received_at=T0 - timedelta(seconds=20)), None, None),
        "fresh-received": (new("fresh-received", received_at=T0 - timedelta(seconds=5)), None, None),
        "stale-processing": (new("stale-processing", received_at=T0 - timedelta(seconds=200)),
                             T0 - timedelta(seconds=120), None),
        "fresh-processing": (new("fresh-processing", received_at=T0 - timedelta(seconds=200)),
                             T0 - timedelta(seconds=30), None),
        "old-dry-run": (new("old-dry-run", received_at=T0 - timedelta(seconds=300)), T0 - timedelta(seconds=299),
                        "dry_run"),
        "old-failed": (new("old-failed", received_at=T0 - timedelta(seconds=300)), T0 - timedelta(seconds=299),
                       "failed"),
        "old-invalid": (new("old-invalid", state="invalid", received_at=T0 - timedelta(seconds=300)), None, None),
    }
    ids = {}
    for name, (row, claimed_at, final) in rows.items():
        ids[name] = save_one(store, row)
        if claimed_at is not None:
            assert store.claim(ids[name], now=claimed_at, stale_before=claimed_at - STALE)
        if final is not None:
            store.finish(ids[name], state=final, detail="done", now=claimed_at)  # type: ignore[arg-type]

    found = store.pending(received_before=T0 - timedelta(seconds=10), stale_before=T0 - STALE)

    assert found == [ids["old-received"], ids["stale-processing"]]
    assert store.pending(received_before=T0 - timedelta(seconds=10), stale_before=T0 - STALE, limit=1) == [
        ids["old-received"]]


# ---------------------------------------------------------------- attempts, counts, oldest, purge

def test_attempts_round_trip_oldest_first_per_event(store: Store) -> None:
    pk, other = (s.id for s in store.save(DELIVERY, [new("evt_1"), new("evt_2")]))
    first_in = Attempt("POST", "/api/v2/users/search", 429, "too.many.requests", "c-1", 12.5, None,
                       "service_user:50fcd33c-1111-4222-8333-944444444444", T0)
    store.add_attempt(pk, first_in)
    store.add_attempt(pk, Attempt("PATCH", "/p/" + "x" * 600, None, None, None, 3000.0, "ReadTimeout",
                                  at=T0 + timedelta(seconds=1)))
    first, second = store.attempts(pk)
    assert first == first_in  # the one Attempt type goes in and comes out whole, identity included
    assert (second.at, second.status, second.error, len(second.path)) == (
        T0 + timedelta(seconds=1), None, "ReadTimeout", 512)
    assert second.at.tzinfo is UTC
    assert store.attempts(other) == []


def test_counts_per_state(five: Store) -> None:
    assert five.counts() == {"received": 3, "dry_run": 1, "invalid": 1}


def test_oldest_unfinished_is_the_oldest_received_or_processing(store: Store) -> None:
    assert store.oldest_unfinished() is None
    done, processing, _ = store.save(DELIVERY, [
        new("done", received_at=T0 - timedelta(seconds=300)),
        new("processing", received_at=T0 - timedelta(seconds=200, microseconds=5)),
        new("waiting", received_at=T0 - timedelta(seconds=100)),
    ])
    store.finish(done.id, state="applied", detail="muted", now=T0)
    store.claim(processing.id, now=T0, stale_before=T0 - STALE)
    oldest = store.oldest_unfinished()
    assert oldest == T0 - timedelta(seconds=200, microseconds=5)
    assert oldest is not None and oldest.tzinfo is UTC


def test_purge_deletes_old_events_and_their_attempts_in_batches(store: Store) -> None:
    old = [save_one(store, new(f"old_{n}", received_at=T0 - timedelta(days=40, seconds=n))) for n in range(5)]
    kept = [save_one(store, new(f"new_{n}", received_at=T0 - timedelta(days=1) + timedelta(seconds=n)))
            for n in range(2)]
    for pk in old + kept:
        store.add_attempt(pk, Attempt("PATCH", "/p", 202, None, "c", 1.0, None, at=T0))
    deletes: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM EVENTS"):
            deletes.append(statement)

    sa_event.listen(store.engine, "before_cursor_execute", count)
    try:
        assert store.purge(before=T0 - timedelta(days=30), batch=2) == 5
    finally:
        sa_event.remove(store.engine, "before_cursor_execute", count)

    assert len(deletes) == 3
    assert sorted(r.id for r in store.list(limit=None)) == kept
    with store.engine.connect() as conn:
        assert sorted(conn.execute(select(attempts.c.event)).scalars()) == kept
    assert store.purge(before=T0 - timedelta(days=30), batch=2) == 0


def test_row_ids_are_never_handed_out_again_after_a_purge(store: Store) -> None:
    last = save_one(store, new("evt_1"))
    assert store.purge(before=T0 + timedelta(seconds=1)) == 1
    assert save_one(store, new("evt_2")) > last


def test_create_schema_is_idempotent(store: Store) -> None:
    pk = save_one(store, new("evt_1"))
    store.create_schema()
    store.ping()
    assert store.get(pk) is not None
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(attempts)).scalar() == 0


# ---------------------------------------------------------------- SQLite's write lock

def other_writer(url: str) -> sqlite3.Connection:
    """A second connection to the same SQLite file that gives up at once when the write lock is taken."""
    path = url.split("///", 1)[1]
    return sqlite3.connect(path, timeout=0, isolation_level=None)


def test_sqlite_a_one_statement_write_holds_the_write_lock_only_while_sqlite_runs_it(sqlite_url: str) -> None:
    """Another process can write as soon as the statement has run, before the store's unit of work even ends (an
    open transaction would keep the lock while Python code ran: a convoy behind the GIL under load)."""
    store = Store.from_url(sqlite_url)
    store.create_schema()
    pk = save_one(store, new("evt_1"))
    writer = other_writer(sqlite_url)
    refused: list[str] = []

    def write_right_after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO agent_state"):
            try:
                writer.execute("UPDATE events SET detail = 'written by another process' WHERE id = ?", (pk,))
            except sqlite3.OperationalError as exc:
                refused.append(str(exc))

    sa_event.listen(store.engine, "after_cursor_execute", write_right_after)
    try:
        assert store.advance_agent(AGENT, occurred_at=T0, event_pk=pk, now=T0) == OURS
    finally:
        sa_event.remove(store.engine, "after_cursor_execute", write_right_after)
        writer.close()
    assert refused == []
    assert store.get(pk).detail == "written by another process"  # type: ignore[union-attr]
    store.close()


def test_sqlite_atomic_units_take_the_write_lock_first_so_a_write_in_between_cannot_break_them(
        sqlite_url: str) -> None:
    """purge reads ids and then deletes: another process writing between the two waits instead of making the
    delete fail (a deferred transaction could not upgrade its read to a write after that commit)."""
    store = Store.from_url(sqlite_url)
    store.create_schema()
    old = save_one(store, new("old", received_at=T0 - timedelta(days=40)))
    writer = other_writer(sqlite_url)
    refused: list[str] = []

    def write_in_between(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM ATTEMPTS"):
            try:
                writer.execute("UPDATE events SET detail = 'in between' WHERE id = ?", (old,))
            except sqlite3.OperationalError as exc:
                refused.append(str(exc))

    sa_event.listen(store.engine, "before_cursor_execute", write_in_between)
    try:
        assert store.purge(before=T0 - timedelta(days=30)) == 1
    finally:
        sa_event.remove(store.engine, "before_cursor_execute", write_in_between)
        writer.close()
        store.close()
    assert refused == ["database is locked"]


def test_sqlite_a_failed_atomic_unit_leaves_nothing_behind(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    try:
        store.create_schema()
        with pytest.raises(ValueError, match="naive datetime"):
            # the second is refused
            store.save(DELIVERY, [new("evt_1"), new("evt_2", received_at=datetime(2026, 1, 1))])
        assert store.counts() == {}
        writer = other_writer(sqlite_url)  # and the write lock was given back
        writer.execute("UPDATE events SET detail = 'x'")
        writer.close()
    finally:
        store.close()


# ---------------------------------------------------------------- an unreachable database

def unreachable_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        blocker = tmp_path / "a-file-not-a-folder"
        blocker.write_text("x")
        return f"sqlite:///{blocker}/webhook.db"
    return "postgresql+psycopg://u:hunter2@127.0.0.1:1/x"  # nothing listens on port 1


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("call", [
    lambda store: store.ping(),
    lambda store: store.create_schema(),
    lambda store: store.save(DELIVERY, [new("evt_1")]),
    lambda store: store.list(),
    lambda store: store.claim(1, now=T0, stale_before=T0 - STALE),
], ids=["ping", "create_schema", "save", "list", "claim"])
def test_unreachable_database_raises_store_error_without_the_password(
    kind: str, call: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store.from_url(unreachable_url(kind, tmp_path))
    try:
        with pytest.raises(StoreError, match="the database cannot be used: OperationalError") as info:
            call(store)
    finally:
        store.close()
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in caplog.text


# ---------------------------------------------------------------- DATABASE_URL forms

@pytest.mark.parametrize("given, used", [
    ("postgres://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
    ("postgresql://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
    ("postgresql+psycopg://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
    ("sqlite:///instance/webhook.db", "sqlite:///instance/webhook.db"),
], ids=["heroku", "plain", "already-psycopg", "sqlite"])
def test_database_url_uses_the_psycopg_driver(given: str, used: str) -> None:
    assert database_url(given) == used



def test_service_users_saved_at_once_leave_exactly_one(store: Store) -> None:
    # Found in review: on PostgreSQL two concurrent saves both deleted "the" service user, then both inserted.
    def save(n: int) -> None:
        store.save_connection(Connection(user_id=f"00000000-0000-4000-8000-{n:012d}", kind="service_user",
                                         email=f"service{n}@example.com", name=f"Service {n}", refresh_token="r",
                                         refreshed_at=T0, created_at=T0))

    for _ in range(5):
        threads = [threading.Thread(target=save, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert [c.kind for c in store.connections()] == ["service_user"]


def test_sqlite_waits_for_another_process_s_write_lock_outside_sqlite_then_gives_up(
        sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's own busy wait sleeps inside C, which stops every greenlet of a gevent worker: the store waits in
    Python between tries instead (time.sleep, cooperative under gevent), up to SQLITE_BUSY_SECONDS, then 503."""
    import webhook.store as store_module

    store = Store.from_url(sqlite_url)
    store.create_schema()
    writer = other_writer(sqlite_url)
    pauses: list[float] = []

    def release_after_one(seconds: float) -> None:
        pauses.append(seconds)
        writer.execute("COMMIT")

    try:
        writer.execute("BEGIN IMMEDIATE")
        monkeypatch.setattr(store_module, "_pause", release_after_one)
        assert not store.save(DELIVERY, [new("evt_1")])[0].duplicate
        assert len(pauses) == 1
        writer.execute("BEGIN IMMEDIATE")
        monkeypatch.setattr(store_module, "_pause", pauses.append)
        monkeypatch.setattr(store_module, "SQLITE_BUSY_SECONDS", 0.05)
        with pytest.raises(StoreError, match="OperationalError"):
            store.save(DELIVERY, [new("evt_2")])
        assert len(pauses) > 2
    finally:
        writer.close()
        store.close()
