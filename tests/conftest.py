"""Fixtures only: a fixed clock, settings from the shipped config, the app on SQLite or PostgreSQL, signed posts, the
fake Genesys, databases. What tests and benches import lives in tests/support."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from responses.registries import OrderedRegistry

from tests.support.app import SignedPost, make_settings
from tests.support.clocks import Clock
from tests.support.databases import (
    PG_ENV,
    PrivatePostgres,
    fresh_database,
    postgres_bindir,
    postgres_url,
    scratch_postgres,
)
from tests.support.fake_genesys import FakeGenesys
from webhook import create_app, signatures
from webhook.config import Settings
from webhook.store import Store


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


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A started PostgreSQL cluster of the test's own, which it may restart; stopped and deleted afterwards."""
    if not os.environ.get(PG_ENV):
        pytest.skip(f"this test runs the service on PostgreSQL; set {PG_ENV} "
                    "(e.g. postgresql://postgres@127.0.0.1:5432/test)")
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("restarting a database needs a private cluster: no initdb/pg_ctl under /usr/lib/postgresql/*/bin")
    cluster = PrivatePostgres(bindir)
    try:
        yield cluster.init()
    finally:
        cluster.destroy()


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeGenesys]:
    """A fake Genesys on loopback; a module or test passes it options with @pytest.mark.fake_genesys(strict=True)."""
    marker = request.node.get_closest_marker("fake_genesys")
    options: dict[str, Any] = dict(marker.kwargs) if marker else {}
    with FakeGenesys(**options) as server:
        yield server


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    """`responses` for the Genesys client's unit tests: every registered answer must be used, in order."""
    with responses.RequestsMock(assert_all_requests_are_fired=True, registry=OrderedRegistry) as mock:
        yield mock
