"""The objects one app shares between requests and threads, kept in app.extensions["webhook"]."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import requests
from flask import current_app

from webhook.config import Settings
from webhook.crypto import TokenCipher
from webhook.genesys.auth import CodeGrant, UserConnections
from webhook.genesys.client import GenesysClient
from webhook.liveness import Liveness
from webhook.metrics import Metrics
from webhook.processing import Processor
from webhook.store import Store
from webhook.worker import Sweeper, Worker

logger = logging.getLogger(__name__)


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
    liveness: Liveness
    users: UserConnections | None = None
    background: bool = True
    _started: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start_background(self) -> None:
        """Start the worker threads and the sweeper once, in the process that serves requests."""
        if not self.background or self._started:
            return
        with self._lock:
            if not self._started:
                self.report_start()
                self.worker.start()
                self.sweeper.start()
                self.liveness.start()
                self._started = True

    def report_start(self) -> None:
        """Say in the log, once at start, what the configuration risks, and when the database has no current schema
        (with the command that fixes it)."""
        for warning in self.settings.warnings:
            logger.warning(warning)
        problem = self.store.schema_problem()
        if problem:
            logger.error("%s; until then every webhook is answered 503 and /readyz says so", problem)

    def shutdown(self) -> None:
        """Stop sweeping, let in-flight events finish, close the Genesys session and the database pool."""
        self.sweeper.stop()
        self.worker.stop()
        if self._started:
            self.liveness.stop()
        if self.genesys is not None:
            self.genesys.close()
        if self.users is not None:
            self.users.grant.close()
        self.store.close()


def get_state() -> AppState:
    """Return the current app's shared objects."""
    state: AppState = current_app.extensions["webhook"]
    return state


def genesys_client(settings: Settings, users: UserConnections | None = None) -> GenesysClient:
    """Build the Genesys client of the configured org: client credentials and user connections, as configured."""
    cfg = settings.genesys
    api_url, login_url = cfg.hosts()
    return GenesysClient.from_credentials(
        region=cfg.region or "", client_id=cfg.client_id, client_secret=cfg.client_secret, api_url=api_url,
        login_url=login_url, requests_per_minute=cfg.requests_per_minute, users=users, act_as=cfg.identities())


def user_connections(settings: Settings, store: Store, clock: Callable[[], datetime]) -> UserConnections | None:
    """Build the connected users' token source, when the authorization-code client is configured."""
    cfg = settings.genesys
    if not cfg.users_configured or not cfg.token_keys:
        return None
    api_url, login_url = cfg.hosts()
    grant = CodeGrant(login_url, api_url, cfg.user_client_id or "", cfg.user_client_secret or "", cfg.redirect_uri,
                      session=requests.Session())
    return UserConnections(store, grant, TokenCipher(cfg.token_keys), connect_url=cfg.connect_url, wallclock=clock)
