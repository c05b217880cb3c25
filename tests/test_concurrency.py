"""Races: one delivery from many threads, save/claim/advance_agent from many threads, and (PostgreSQL) two processes."""

from __future__ import annotations

import json
import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest

from tests.support.app import make_settings
from tests.support.clocks import T0, Clock
from tests.support.databases import PG_ENV, fresh_database
from webhook import create_app, signatures
from webhook.store import OURS, NewDelivery, NewEvent, Store

T = TypeVar("T")
THREADS = 8
TIMEOUT = 30  # seconds a barrier or a child process may take before the test fails instead of hanging
AGENT = "jane.agent@example.com"
STALE = timedelta(seconds=60)


def race(workers: int, act: Callable[[int], T]) -> list[T]:
    """Run act(0..workers-1) on as many threads, released together by a barrier; return the results in order."""
    barrier = threading.Barrier(workers)

    def run(n: int) -> T:
        barrier.wait(TIMEOUT)
        return act(n)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, range(workers)))


def row(event_id: str = "evt_race", received_at: datetime = T0) -> NewEvent:
    return NewEvent(source="helpdesk", event_id=event_id, state="received", detail="", received_at=received_at,
                    ticket_id="48213", status="payment_in_progress", agent=AGENT, occurred_at=received_at)


DELIVERY = NewDelivery(source="helpdesk", received_at=T0, raw_body=b"{}")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    store = Store.from_url(db_url)
    yield store
    store.close()


# ---------------------------------------------------------------- one delivery, many threads, one app

def test_the_same_delivery_from_many_threads_is_stored_and_processed_once(db_url: str) -> None:
    clock = Clock()
    app = create_app(make_settings(db_url), clock=clock, background=False)
    body = json.dumps({
        "event_id": "evt_01JRACE", "occurred_at": T0.isoformat(),
        "ticket": {"id": "48213", "status": "payment_in_progress", "previous_status": "open"},
        "agent": {"email": AGENT},
    }).encode()
    source = app.extensions["webhook"].settings.sources["helpdesk"]
    headers = signatures.sign(source.scheme, body=body, secret=source.secrets[0], now=clock(),
                              url="http://localhost/webhooks/helpdesk", header=source.header)
    clients = [app.test_client() for _ in range(THREADS)]
    try:
        responses = race(THREADS, lambda n: clients[n].post("/webhooks/helpdesk", data=body, headers=headers,
                                                            content_type="application/json"))
        store: Store = app.extensions["webhook"].store
        records = store.list(limit=None)
        slot = store.agent_slot(AGENT)
    finally:
        app.extensions["webhook"].store.close()

    assert sorted(r.status_code for r in responses) == [200] * (THREADS - 1) + [202]
    [accepted] = [r.get_json() for r in responses if r.status_code == 202]
    [record] = records
    assert accepted == {"accepted": [{"id": record.id, "source": "helpdesk", "event_id": "evt_01JRACE"}],
                        "duplicates": []}
    for answer in (r.get_json() for r in responses if r.status_code == 200):
        assert answer == {"accepted": [], "duplicates": accepted["accepted"]}
    assert (record.state, record.action) == ("dry_run", "mute")
    assert slot is None  # a dry run acts on nothing, so it takes no agent's ordering slot


# ---------------------------------------------------------------- store calls, many threads

def test_save_of_one_row_from_many_threads_has_one_winner(store: Store) -> None:
    results = race(THREADS, lambda n: store.save(DELIVERY, [row()])[0])
    assert sum(not s.duplicate for s in results) == 1
    assert {s.id for s in results} == {store.find("helpdesk", "evt_race").id}  # type: ignore[union-attr]
    assert len(store.list(limit=None)) == 1


def test_save_of_one_batch_from_many_threads_stores_each_event_once(store: Store) -> None:
    # A sender retrying a batch (HubSpot) resends it as it was; its events race one after the other.
    names = [f"evt_{n}" for n in range(10)]
    results = race(THREADS, lambda n: store.save(DELIVERY, [row(name) for name in names]))
    won = [s.event_id for saved in results for s in saved if not s.duplicate]
    assert sorted(won) == names
    ids = {name: store.find("helpdesk", name).id for name in names}  # type: ignore[union-attr]
    assert all(s.id == ids[s.event_id] for saved in results for s in saved)
    assert len(store.list(limit=None)) == len(names)


def test_overlapping_batches_in_different_orders_are_all_stored(store: Store) -> None:
    # On PostgreSQL two batches locking the same keys in other orders can deadlock; the loser is redone.
    names = [f"evt_{n}" for n in range(20)]
    results = race(THREADS, lambda n: store.save(DELIVERY, [row(name) for name in names[n * 3:] + names[: n * 3]]))
    won = sorted(s.event_id for saved in results for s in saved if not s.duplicate)
    assert won == sorted(names)
    assert len(store.list(limit=None)) == len(names)


def test_claim_from_many_threads_has_exactly_one_winner(store: Store) -> None:
    [saved] = store.save(DELIVERY, [row()])
    results = race(THREADS, lambda n: store.claim(saved.id, now=T0, stale_before=T0 - STALE) is not None)
    assert results.count(True) == 1
    assert store.get(saved.id).state == "processing"  # type: ignore[union-attr]


def test_takeover_of_a_stale_claim_from_many_threads_has_exactly_one_winner(store: Store) -> None:
    [saved] = store.save(DELIVERY, [row()])
    assert store.claim(saved.id, now=T0, stale_before=T0 - STALE)
    later = T0 + timedelta(minutes=5)
    results = race(THREADS, lambda n: store.claim(saved.id, now=later + timedelta(microseconds=n),
                                                   stale_before=later - STALE) is not None)
    assert results.count(True) == 1
    assert store.get(saved.id).claimed_at == later + timedelta(microseconds=results.index(True))  # type: ignore


def test_advance_agent_from_many_threads_never_goes_back_and_ends_on_the_newest(store: Store) -> None:
    # The slot already holds an event at T0; half the racers are older than it, half newer, and one ties the
    # newest's time with a lower row id (so it may win for a while, but never last).
    assert store.advance_agent(AGENT, occurred_at=T0, event_pk=100, now=T0) == OURS
    offsets = [-4, 3, -1, 1, -3, 4, -2, 2]
    racers = [(T0 + timedelta(seconds=s), 100 + s) for s in offsets] + [(T0 + timedelta(seconds=4), 50)]
    newest = max(racers)
    seen: list[tuple[datetime, int] | None] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(store.agent_slot(AGENT))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        won = race(len(racers), lambda n: store.advance_agent(
            AGENT, occurred_at=racers[n][0], event_pk=racers[n][1], now=T0) == OURS)
    finally:
        done.set()
        watcher.join(TIMEOUT)
    seen.append(store.agent_slot(AGENT))

    assert store.agent_slot(AGENT) == newest
    assert won[racers.index(newest)] is True
    # At most the events newer than the slot held when the race began can win; an older one never does.
    assert not any(w for w, (at, _) in zip(won, racers, strict=True) if at < T0)
    assert all(slot is not None for slot in seen)
    assert seen == sorted(seen)  # type: ignore[type-var]  # every read is at least as new as the one before
    assert set(seen) <= {(at, pk) for w, (at, pk) in zip(won, racers, strict=True) if w} | {(T0, 100)}


# ---------------------------------------------------------------- two processes (PostgreSQL only)

@pytest.fixture
def pg_url(session_pg_url: str | None) -> str:
    """A fresh PostgreSQL database; two processes sharing one SQLite file is not a supported deployment."""
    url = session_pg_url
    if url is None:
        pytest.skip(f"two-process races need PostgreSQL: set {PG_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return fresh_database(url)


def _save_in_child(url: str, barrier: Any, results: Any, names: list[str]) -> None:
    """Child process: wait for the other one, then save each event once; report which ones this process stored."""
    store = Store.from_url(url)
    try:
        store.ping()  # connect before the barrier, so both processes start writing together
        barrier.wait(TIMEOUT)
        saved = [store.save(DELIVERY, [row(name)])[0] for name in names]
        results.put([(s.event_id, s.id, s.duplicate) for s in saved])
    finally:
        store.close()


def _claim_in_child(url: str, barrier: Any, results: Any, ids: list[int]) -> None:
    """Child process: wait for the other one, then try to claim every event; report the ones this process won."""
    store = Store.from_url(url)
    try:
        store.ping()
        barrier.wait(TIMEOUT)
        results.put([pk for pk in ids if store.claim(pk, now=T0, stale_before=T0 - STALE)])
    finally:
        store.close()


def in_two_processes(target: Callable[..., None], url: str, work: list[Any]) -> list[Any]:
    """Run target(url, barrier, results, work) in two spawned processes released together; return both reports."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    children = [context.Process(target=target, args=(url, barrier, results, work)) for _ in range(2)]
    for child in children:
        child.start()
    try:
        reports = [results.get(timeout=TIMEOUT) for _ in children]
    except queue.Empty:
        pytest.fail(f"a child process did not report; exit codes {[c.exitcode for c in children]}")
    finally:
        for child in children:
            child.join(TIMEOUT)
    assert [c.exitcode for c in children] == [0, 0]
    return reports


def test_two_processes_saving_the_same_events_store_each_once(pg_url: str) -> None:
    names = [f"evt_{n}" for n in range(50)]
    first, second = in_two_processes(_save_in_child, pg_url, names)

    store = Store.from_url(pg_url)
    try:
        stored = {r.event_id: r.id for r in store.list(limit=None)}
    finally:
        store.close()
    assert sorted(stored) == sorted(names)
    for (name, id_a, dup_a), (name_b, id_b, dup_b) in zip(first, second, strict=True):
        assert name == name_b and id_a == id_b == stored[name]
        assert [dup_a, dup_b].count(False) == 1, name


def test_two_processes_claiming_the_same_events_claim_each_once(pg_url: str) -> None:
    store = Store.from_url(pg_url)
    try:
        ids = [s.id for s in store.save(DELIVERY, [row(f"evt_{n}") for n in range(50)])]
        first, second = in_two_processes(_claim_in_child, pg_url, ids)
        states = {r.state for r in store.list(limit=None)}
    finally:
        store.close()
    assert sorted(first + second) == ids
    assert not set(first) & set(second)
    assert states == {"processing"}
