"""Versioned migrations: a new database is created and stamped, a second run changes nothing, on both databases."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from tests.conftest import ROOT
from webhook.migrations import MIGRATIONS, current_version, upgrade
from webhook.store import Store, metadata


@pytest.fixture
def empty_store(db_url: str) -> Store:
    store = Store.from_url(db_url)
    with store.engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS schema_versions"))
    yield store  # type: ignore[misc]
    store.close()


def test_a_new_database_is_created_and_stamped_then_left_alone(empty_store: Store) -> None:
    with empty_store.engine.begin() as conn:
        first = upgrade(conn)
    with empty_store.engine.begin() as conn:
        second = upgrade(conn)
        assert current_version(conn) == MIGRATIONS[-1].version
        assert {"events", "attempts", "agent_state", "schema_versions"} <= set(inspect(conn).get_table_names())
    assert [m.version for m in first] == [m.version for m in MIGRATIONS]
    assert second == []


def test_a_database_made_before_versioning_is_brought_under_it(empty_store: Store) -> None:
    with empty_store.engine.begin() as conn:
        metadata.create_all(conn)
    with empty_store.engine.begin() as conn:
        applied = upgrade(conn)
        assert current_version(conn) == MIGRATIONS[-1].version
    assert applied[0].version == 1


def test_db_upgrade_command_is_idempotent(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENESYS", "DATABASE_URL"))}
    env |= {"PYTHONPATH": str(ROOT), "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "database at version 1; applied: 1 (events, attempts and per-agent ordering state)" in first.stdout
    assert second.returncode == 0 and "database already at version 1; nothing to do" in second.stdout


def test_db_upgrade_reports_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENESYS", "DATABASE_URL"))}
    env |= {"PYTHONPATH": str(ROOT), "DATABASE_URL": "postgres://u:hunter2@127.0.0.1:1/x"}
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot migrate the database: OperationalError; check DATABASE_URL" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
