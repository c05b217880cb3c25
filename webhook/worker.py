"""The in-process background worker (a bounded queue and threads) and the sweeper that resumes left-over events."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from webhook.errors import StoreError
from webhook.liveness import FORGET_AFTER_SECONDS, Liveness
from webhook.processing import Processor, safety_event
from webhook.store import Store

logger = logging.getLogger(__name__)


class Worker:
    """Processes event ids on a few threads; a full queue drops the id, and the sweeper picks the event up later."""

    def __init__(self, processor: Processor, *, threads: int, queue_size: int) -> None:
        self.processor = processor
        self.depth_gauge = processor.metrics.queue_depth
        self.threads = threads
        self.queue: queue.Queue[int | None] = queue.Queue(maxsize=queue_size)
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(self, ids: Iterable[int]) -> None:
        """Hand event ids over without ever blocking; with no threads configured, process them right here."""
        for event_pk in ids:
            if self.threads == 0:
                self._process(event_pk)
                continue
            self.start()
            try:
                self.queue.put_nowait(event_pk)
                self.depth_gauge.inc()
            except queue.Full:
                logger.warning("worker queue full; the sweeper will pick the event up", extra={"event": event_pk})

    def depth(self) -> int:
        """Return how many ids wait in the queue."""
        return self.queue.qsize()

    def start(self) -> None:
        """Start the threads once (in the process that serves requests, never before a fork)."""
        with self._lock:
            if self._workers or self.threads == 0 or self._stopping.is_set():
                return
            for n in range(self.threads):
                thread = threading.Thread(target=self._loop, name=f"webhook-worker-{n}", daemon=True)
                thread.start()
                self._workers.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Let in-flight events finish; ids still queued stay received in the store for the sweeper."""
        self._stopping.set()
        for _ in self._workers:
            try:
                self.queue.put_nowait(None)
            except queue.Full:
                break
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(deadline - time.monotonic(), 0.0))

    def _loop(self) -> None:
        while not self._stopping.is_set():
            event_pk = self.queue.get()
            if event_pk is None or self._stopping.is_set():
                return
            self.depth_gauge.dec()
            self._process(event_pk)

    def _process(self, event_pk: int) -> None:
        try:
            self.processor.process(event_pk)
        except StoreError:
            logger.warning("store unavailable while processing; the sweeper will retry", extra={"event": event_pk})
        except Exception:  # a bug must not kill the thread; the event stays for the sweeper
            logger.exception("processing failed; the sweeper will retry", extra={"event": event_pk})


class Sweeper:
    """Every few seconds, resubmits events left in received or stuck in processing after a crash or restart; and at
    every heartbeat, the claims of processes that stopped proving they are alive."""

    def __init__(self, store: Store, worker: Worker, *, interval: float, stale_after: float,
                 clock: Callable[[], datetime], liveness: Liveness | None = None) -> None:
        self.store = store
        self.worker = worker
        self.interval = interval
        self.stale_after = stale_after
        self.clock = clock
        self.liveness = liveness
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sweep(self) -> list[int]:
        """Find left-over events once and hand them to the worker; return their ids."""
        now = self.clock()
        owner, alive_after = self._alive_rule(now)
        ids = self.store.pending(received_before=now - timedelta(seconds=self.interval),
                                 stale_before=now - timedelta(seconds=self.stale_after), owner=owner,
                                 alive_after=alive_after)
        # Card capture's safety limits: a mute or a pause nothing undid in time becomes a stored event of its own.
        spawned = [saved.id for undo in self.store.due_undos(now=now)
                   if (saved := self.store.spawn_undo(undo, *safety_event(undo, now))) is not None
                   and saved.id is not None]
        ids += spawned
        if ids:
            logger.info("sweeper resubmits %d event(s)", len(ids))
            self.worker.submit(ids)
        self.store.forget_dead_processes(before=now - timedelta(seconds=FORGET_AFTER_SECONDS))
        return ids

    def take_over(self) -> list[int]:
        """Resubmit the events claimed by processes that stopped beating (called after each heartbeat)."""
        now = self.clock()
        owner, alive_after = self._alive_rule(now)
        if alive_after is None:
            return []
        ids = self.store.pending(received_before=None, stale_before=None, owner=owner, alive_after=alive_after)
        if ids:
            logger.info("taking over %d event(s) claimed by a process that stopped", len(ids))
            self.worker.submit(ids)
        return ids

    def _alive_rule(self, now: datetime) -> tuple[str | None, datetime | None]:
        if self.liveness is None:
            return None, None
        return self.liveness.owner, self.liveness.alive_after(now)

    def start(self) -> None:
        """Start the sweeper thread once."""
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, name="webhook-sweeper", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop sweeping."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except StoreError:
                logger.warning("sweeper: store unavailable; trying again later")
            self._stop.wait(self.interval)
