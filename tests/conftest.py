"""Shared fixtures: a fixed clock, settings from the shipped config, the app on SQLite or PostgreSQL, signed posts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
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


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivatePostgres:
    """A PostgreSQL cluster of one test's own (initdb in a temporary folder) that the test may stop and start at will;
    never the machine's shared server, which other test runs use."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="private-pg-"))
        self.data = self.root / "data"
        self.port = free_port()

    @property
    def url(self) -> str:
        """Return the SQLAlchemy URL of the cluster's postgres database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)

    def init(self) -> PrivatePostgres:
        """Create the cluster (trust authentication, superuser postgres) and start it."""
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        done = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")
        assert done.returncode == 0, done.stdout + done.stderr
        return self.start()

    def start(self) -> PrivatePostgres:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        done = self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w",
                         "start")
        assert done.returncode == 0, done.stdout + done.stderr + self.log_tail()
        return self

    def stop(self) -> None:
        """Stop the server at once (fast shutdown: sessions are cut, committed data is kept)."""
        done = self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        assert done.returncode == 0, done.stdout + done.stderr

    def log_tail(self) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def destroy(self) -> None:
        """Stop the server if it runs and delete the cluster."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def postgres_bindir() -> Path | None:
    """Return the newest installed PostgreSQL server's bin folder (initdb, pg_ctl), or None."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl") if (p.parent / "initdb").exists()]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, default=None)


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
