"""Shared fixtures: a fixed clock, settings from the shipped config, the app on SQLite or PostgreSQL, signed posts."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from webhook import create_app, signatures
from webhook.config import Settings, database_url
from webhook.store import Store, metadata

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "config" / "webhook.toml")
PG_ENV = "TEST_DATABASE_URL"
T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)

SECRETS = {
    "ZENDESK_WEBHOOK_SECRET": "zendesk-signing-secret-for-tests",
    "HELPDESK_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "INHOUSE_WEBHOOK_SECRET": "inhouse-secret-for-tests",
    "HUBSPOT_WEBHOOK_SECRET": "hubspot-client-secret-for-tests",
}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def postgres_url() -> str | None:
    """Return the test PostgreSQL URL (starting the local server when it is down), or None when none is given."""
    url = os.environ.get(PG_ENV)
    if not url:
        return None
    engine = create_engine(database_url(url))
    try:
        try:
            engine.connect().close()
        except Exception:
            versions = os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []
            if versions:
                subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"],
                               check=False, capture_output=True, timeout=60)
            engine.connect().close()
    finally:
        engine.dispose()
    return database_url(url)


def fresh_database(url: str) -> str:
    """Empty the test database (drop and create every table) and return its URL."""
    store = Store.from_url(url)
    try:
        with store.engine.begin() as conn:
            metadata.drop_all(conn)
        store.create_schema()
    finally:
        store.close()
    return url


@contextmanager
def scratch_postgres(url: str) -> Iterator[str]:
    """Yield the URL of a new, empty PostgreSQL database beside `url`'s, dropped afterwards (no shared tables)."""
    admin = create_engine(database_url(url), isolation_level="AUTOCOMMIT")
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(database_url(url)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def scratch_pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database of its own for one test (real processes share it); skipped without one."""
    url = postgres_url()
    if url is None:
        pytest.skip(f"this test runs the service on PostgreSQL, as on a PaaS; set {PG_ENV} "
                    "(e.g. postgresql://postgres@127.0.0.1:5432/test)")
    with scratch_postgres(url) as scratch:
        yield scratch


@pytest.fixture(scope="session")
def session_pg_url() -> Iterator[str | None]:
    """This test run's own PostgreSQL database beside TEST_DATABASE_URL's (so that runs at once never collide)."""
    url = postgres_url()
    if url is None:
        yield None
        return
    with scratch_postgres(url) as scratch:
        yield scratch


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each kind; PostgreSQL is skipped when TEST_DATABASE_URL is not set."""
    if request.param == "sqlite":
        return fresh_database(f"sqlite:///{tmp_path / 'webhook.db'}")
    url = request.getfixturevalue("session_pg_url")
    if url is None:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return fresh_database(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database."""
    return fresh_database(f"sqlite:///{tmp_path / 'webhook.db'}")


def make_settings(db: str, **overrides: Any) -> Settings:
    """Settings from the shipped config file with the test secrets, dry-run Genesys and inline processing."""
    env = SECRETS | {"GENESYS_DRY_RUN": "true", "DATABASE_URL": db}
    settings = Settings.from_env(env, config_path=CONFIG)
    return replace(settings, worker_threads=0, **overrides)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return make_settings(sqlite_url)


@pytest.fixture
def app(settings: Settings, clock: Clock) -> Iterator[Flask]:
    app = create_app(settings, clock=clock, background=False)
    yield app
    app.extensions["webhook"].store.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


@pytest.fixture
def store(app: Flask) -> Store:
    store: Store = app.extensions["webhook"].store
    return store


SignedPost = Callable[..., Any]


@pytest.fixture
def signed_post(client: FlaskClient, settings: Settings, clock: Clock) -> SignedPost:
    """POST raw bytes signed by the production signer with the source's own scheme and first secret."""

    def post(source: str, body: bytes | str, *, at: datetime | None = None, path: str | None = None,
             secret: str | None = None, headers: dict[str, str] | None = None) -> Any:
        raw = body.encode() if isinstance(body, str) else body
        src = settings.sources[source]
        url_path = path or f"/webhooks/{source}"
        signed = signatures.sign(src.scheme, body=raw, secret=secret or src.secrets[0], now=at or clock(),
                                 url=f"http://localhost{url_path}", header=src.header)
        return client.post(url_path, data=raw, headers=signed | (headers or {}),
                           content_type="application/json")

    return post
