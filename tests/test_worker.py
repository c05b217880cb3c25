"""The background worker and the sweeper: never blocking intake, resuming left-over events, stopping cleanly."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from tests.conftest import T0, Clock
from webhook.metrics import Metrics
from webhook.store import NewDelivery, NewEvent, Store
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
