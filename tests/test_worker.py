"""The background worker and the sweeper: never blocking intake, resuming left-over events, stopping cleanly."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from tests.support.clocks import T0, Clock
from webhook.liveness import DEAD_AFTER_SECONDS, Liveness
from webhook.metrics import Metrics
from webhook.store import NewDelivery, NewEvent, Store, processes
from webhook.worker import Sweeper, Worker


class RecordingProcessor:
    """Stands in for Processor: records ids; can hold a thread until released."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.metrics = Metrics()
        self.seen: list[int] = []
        self.gate = gate
        self.started = threading.Event()
        self.done = threading.Event()

    def process(self, event_pk: int, **_: Any) -> None:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.seen.append(event_pk)
        self.done.set()


def test_no_threads_means_processing_in_the_caller() -> None:
    processor = RecordingProcessor()
    Worker(processor, threads=0, queue_size=1).submit([3, 4])  # type: ignore[arg-type]
    assert processor.seen == [3, 4]


def test_a_full_queue_never_blocks_and_leaves_the_event_to_the_sweeper() -> None:
    gate = threading.Event()
    processor = RecordingProcessor(gate)
    worker = Worker(processor, threads=1, queue_size=1)  # type: ignore[arg-type]
    worker.submit([1])
    assert processor.started.wait(10)  # the only thread now holds event 1
    worker.submit([2, 3])  # 2 fills the queue, 3 is dropped at once instead of blocking
    assert worker.depth() == 1
    gate.set()
    worker.stop(timeout=10)
    assert processor.seen[0] == 1 and 3 not in processor.seen


def test_stop_lets_the_event_in_flight_finish() -> None:
    gate = threading.Event()
    processor = RecordingProcessor(gate)
    worker = Worker(processor, threads=2, queue_size=10)  # type: ignore[arg-type]
    worker.submit([7])
    assert processor.started.wait(10)
    threading.Timer(0, gate.set).start()
    worker.stop(timeout=10)
    assert processor.seen == [7]


def test_a_thread_outlives_an_unexpected_error() -> None:
    class Broken(RecordingProcessor):
        def process(self, event_pk: int, **_: Any) -> None:
            if event_pk == 1:
                raise ZeroDivisionError
            super().process(event_pk)

    processor = Broken()
    worker = Worker(processor, threads=1, queue_size=10)  # type: ignore[arg-type]
    worker.submit([1, 2])
    assert processor.done.wait(10) and processor.seen == [2]
    worker.stop(timeout=10)


def save(store: Store, event_id: str, received: Any) -> int:
    [saved] = store.save(NewDelivery(source="inhouse", received_at=received, raw_body=b"{}"),
                         [NewEvent(source="inhouse", event_id=event_id, state="received", detail="",
                                   received_at=received)])
    return saved.id


def test_the_sweeper_resubmits_left_over_and_stale_events_only(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    clock = Clock(T0 + timedelta(minutes=5))
    old = save(store, "old", T0)
    fresh = save(store, "fresh", clock() - timedelta(seconds=2))
    stuck = save(store, "stuck", T0)
    store.claim(stuck, now=T0, stale_before=T0)
    busy = save(store, "busy", T0)
    store.claim(busy, now=clock() - timedelta(seconds=5), stale_before=T0)
    processor = RecordingProcessor()
    sweeper = Sweeper(store, Worker(processor, threads=0, queue_size=10), interval=10,  # type: ignore[arg-type]
                      stale_after=60, clock=clock)
    assert sweeper.sweep() == [old, stuck]
    assert processor.seen == [old, stuck]
    assert fresh not in processor.seen and busy not in processor.seen
    store.close()


def test_a_claim_of_a_process_that_stopped_beating_is_taken_over_within_seconds(sqlite_url: str) -> None:
    """Issue 11, finding 5: a killed process's claim waited for stale_claim_seconds (60 s). Now it is taken over as
    soon as its process has missed its heartbeats for DEAD_AFTER_SECONDS (10 s), at the next beat of a live one."""
    store = Store.from_url(sqlite_url)
    clock = Clock()
    try:
        dead, live, survivor = (Liveness(store, clock) for _ in range(3))
        held = {}
        for name, process in (("dead", dead), ("live", live)):
            pk = save(store, name, clock())
            process.beat()
            assert store.claim(pk, now=clock(), stale_before=clock() - timedelta(seconds=60), owner=process.owner,
                               alive_after=process.alive_after(clock())) is not None
            held[name] = pk
        submitted: list[int] = []
        sweeper = Sweeper(store, FakeWorker(submitted), interval=10, stale_after=60, clock=clock,  # type: ignore[arg-type]
                          liveness=survivor)
        clock.advance(DEAD_AFTER_SECONDS - 1)
        live.beat()
        assert sweeper.take_over() == []  # both beat within the last 10 s
        clock.advance(2)  # the dead one's last beat is now 11 s old; the live one beat 2 s ago
        assert sweeper.take_over() == [held["dead"]] == submitted
        clock.advance(600)  # however long the live one's event takes, while it beats it keeps its claim
        live.beat()
        survivor.beat()
        assert held["live"] not in sweeper.take_over()
        assert store.claim(held["live"], now=clock(), stale_before=clock() - timedelta(days=1),
                           owner=survivor.owner, alive_after=survivor.alive_after(clock())) is None
        taken = store.claim(held["dead"], now=clock(), stale_before=clock() - timedelta(days=1),
                            owner=survivor.owner, alive_after=survivor.alive_after(clock()))
        assert taken is not None and taken.state == "processing"
        assert store.get(held["dead"]).claimed_by == survivor.owner  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_process_never_takes_over_its_own_claims_and_a_stopped_one_leaves_no_row(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    clock = Clock()
    try:
        me = Liveness(store, clock)
        pk = save(store, "mine", clock())
        me.beat()
        store.claim(pk, now=clock(), stale_before=clock(), owner=me.owner, alive_after=me.alive_after(clock()))
        clock.advance(30)  # my own beats are late (the database was slow): my claims are still mine
        assert store.pending(received_before=None, stale_before=None, owner=me.owner,
                             alive_after=me.alive_after(clock())) == []
        me.stop()
        with store.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(processes)).scalar() == 0
    finally:
        store.close()


class FakeWorker:
    def __init__(self, submitted: list[int]) -> None:
        self.submitted = submitted

    def submit(self, ids: list[int]) -> None:
        self.submitted.extend(ids)
