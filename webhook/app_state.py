"""The objects one app shares between requests and threads, kept in app.extensions["webhook"]."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from flask import current_app

from webhook.config import Settings
from webhook.genesys import GenesysClient
from webhook.metrics import Metrics
from webhook.processing import Processor
from webhook.store import Store
from webhook.worker import Sweeper, Worker


@dataclass
class AppState:
    """Settings, store, Genesys client, processor, worker and sweeper of one app."""

    settings: Settings
    store: Store
    genesys: GenesysClient | None
    processor: Processor
    worker: Worker
    sweeper: Sweeper
    clock: Callable[[], datetime]
    metrics: Metrics
    background: bool = True
    _started: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start_background(self) -> None:
        """Start the worker threads and the sweeper once, in the process that serves requests."""
        if not self.background or self._started:
            return
        with self._lock:
            if not self._started:
                self.worker.start()
                self.sweeper.start()
                self._started = True

    def shutdown(self) -> None:
        """Stop sweeping, let in-flight events finish, close the Genesys session and the database pool."""
        self.sweeper.stop()
        self.worker.stop()
        if self.genesys is not None:
            self.genesys.close()
        self.store.close()


def get_state() -> AppState:
    """Return the current app's shared objects."""
    state: AppState = current_app.extensions["webhook"]
    return state
