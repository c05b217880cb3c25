"""Test databases: the PostgreSQL of TEST_DATABASE_URL (and scratch databases beside it), empty SQLite and
PostgreSQL schemas, and a private PostgreSQL cluster that a test may stop and start."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.support.servers import free_port
from webhook.config import database_url
from webhook.store import Store, metadata

PG_ENV = "TEST_DATABASE_URL"


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
