"""Each process that claims events proves it is alive: a heartbeat row written every few seconds. A claim whose process
stopped beating (killed, crashed, its machine gone) is taken over within seconds; a live process's claim never is,
however long its retry budget."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from webhook.errors import StoreError
from webhook.store import Store

logger = logging.getLogger(__name__)

BEAT_SECONDS = 2.0  # how often a process writes its heartbeat
DEAD_AFTER_SECONDS = 10.0  # a process whose last heartbeat is older than this is dead: its claims are taken over
FORGET_AFTER_SECONDS = 3600.0  # dead processes' rows are deleted after this


class Liveness:
    """This process's heartbeat: its id (what its claims record), and a thread that beats while it runs."""

    def __init__(self, store: Store, clock: Callable[[], datetime], *, interval: float = BEAT_SECONDS,
                 dead_after: float = DEAD_AFTER_SECONDS) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        self.dead_after = dead_after
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = clock()
        self.after_beat: Callable[[], object] | None = None  # the sweeper's take-over of dead processes' claims
        self._registered = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def alive_after(self, now: datetime) -> datetime:
        """Return the time a process must have beaten since to count as alive at `now`."""
        return now - timedelta(seconds=self.dead_after)

    def beat(self) -> None:
        """Write the heartbeat now (StoreError when the database cannot take it)."""
        self.store.beat(self.owner, host=self.host, pid=self.pid, started_at=self.started_at, now=self.clock())
        self._registered = True

    def ensure(self) -> None:
        """Beat once before this process's first claim, so that no other process takes its claims for dead ones."""
        if not self._registered:
            self.beat()

    def ready(self, store: Store) -> datetime | None:
        """Beat as /readyz's write probe; return the oldest unfinished event's receipt time."""
        oldest = store.readiness(self.owner, host=self.host, pid=self.pid, started_at=self.started_at,
                                 now=self.clock())
        self._registered = True
        return oldest

    def start(self) -> None:
        """Beat every `interval` seconds in a thread, until stop()."""
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._loop, name="webhook-heartbeat", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove this process's row (its claims were handed back or finished)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 1)
        try:
            self.store.forget_process(self.owner)
        except StoreError:
            logger.warning("heartbeat: could not remove this process's row; it expires by itself")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
                if self.after_beat is not None:
                    self.after_beat()
            except StoreError:
                logger.warning("heartbeat: store unavailable; trying again shortly")
            self._stop.wait(self.interval)
