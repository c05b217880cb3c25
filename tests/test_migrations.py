"""Versioned migrations: a new database is created and stamped, a second run changes nothing, on both databases."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from tests.support.app import ROOT
from tests.support.servers import dry_run_env
from webhook import migrations
from webhook.migrations import MIGRATIONS, current_version, schema_versions, upgrade, versions_metadata
from webhook.store import OURS, NewEvent, Store, metadata


@pytest.fixture
def empty_store(db_url: str) -> Store:
    store = Store.from_url(db_url)
    with store.engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS schema_versions"))
    yield store  # type: ignore[misc]
    store.close()


def test_a_new_database_is_created_and_stamped_then_left_alone(empty_store: Store) -> None:
    with empty_store.transaction() as conn:
        first = upgrade(conn)
    with empty_store.transaction() as conn:
        second = upgrade(conn)
        assert current_version(conn) == MIGRATIONS[-1].version
        assert {"events", "attempts", "agent_state", "schema_versions"} <= set(inspect(conn).get_table_names())
    assert [m.version for m in first] == [m.version for m in MIGRATIONS]
    assert second == []


def test_a_database_made_before_versioning_is_brought_under_it(empty_store: Store) -> None:
    with empty_store.engine.begin() as conn:
        metadata.create_all(conn)
    with empty_store.transaction() as conn:
        applied = upgrade(conn)
        assert current_version(conn) == MIGRATIONS[-1].version
    assert applied[0].version == 1


def test_db_upgrade_command_is_idempotent(tmp_path: Path) -> None:
    env = dry_run_env(f"sqlite:///{tmp_path / 'x.db'}", PYTHONPATH=str(ROOT))  # a valid configuration
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    latest = MIGRATIONS[-1].version
    steps = ", ".join(f"{m.version} ({m.description})" for m in MIGRATIONS)
    assert first.stdout.strip() == f"database at version {latest}; applied: {steps}"
    assert MIGRATIONS[0].description == "events, attempts and per-agent ordering state"
    assert second.returncode == 0 and f"database already at version {latest}; nothing to do" in second.stdout


def test_a_version_1_database_gets_the_agent_hold_and_keeps_its_rows(empty_store: Store) -> None:
    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    with empty_store.engine.begin() as conn:  # agent_state as version 1 made it: no holder, no held_until
        conn.execute(text("CREATE TABLE agent_state (agent VARCHAR(512) PRIMARY KEY, "
                          "occurred_at TIMESTAMP WITH TIME ZONE NOT NULL, event BIGINT NOT NULL, "
                          "updated_at TIMESTAMP WITH TIME ZONE NOT NULL)"))
        conn.execute(text("INSERT INTO agent_state VALUES ('jane@example.com', :t, 7, :t)"), {"t": t0})
        metadata.create_all(conn)  # events and attempts
        versions_metadata.create_all(conn)
        conn.execute(schema_versions.insert().values(version=1, description="baseline", applied_at=t0))
    with empty_store.transaction() as conn:
        applied = upgrade(conn)
        assert [m.version for m in applied] == [m.version for m in MIGRATIONS if m.version >= 2]
        assert {"holder", "held_until"} <= {c["name"] for c in inspect(conn).get_columns("agent_state")}
    assert empty_store.agent_slot("jane@example.com") == (t0, 7)
    assert empty_store.advance_agent("jane@example.com", occurred_at=t0, event_pk=8, now=t0,
                                     hold_until=t0 + timedelta(seconds=35)) == OURS


def test_a_version_2_database_gets_the_attempt_identity_and_the_connection_tables(empty_store: Store) -> None:
    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    new_tables = {"genesys_connections", "oauth_states"}
    with empty_store.engine.begin() as conn:  # attempts as versions 1 and 2 made it: no identity
        conn.execute(text("CREATE TABLE attempts (id INTEGER PRIMARY KEY, event BIGINT NOT NULL, "
                          "at TIMESTAMP WITH TIME ZONE NOT NULL, method VARCHAR(10) NOT NULL, "
                          "path VARCHAR(512) NOT NULL, status INTEGER, code VARCHAR(200), "
                          "correlation_id VARCHAR(200), duration_ms FLOAT NOT NULL, error TEXT)"))
        conn.execute(text("INSERT INTO attempts (id, event, at, method, path, status, code, correlation_id, "
                          "duration_ms, error) VALUES (1, 7, :t, 'PATCH', '/api/v2/x', 202, NULL, 'corr-1', 12.5, "
                          "NULL)"), {"t": t0})
        metadata.create_all(conn, tables=[t for t in metadata.sorted_tables
                                          if t.name not in new_tables | {"attempts"}])
        versions_metadata.create_all(conn)
        for version in (1, 2):
            conn.execute(schema_versions.insert().values(version=version, description="old", applied_at=t0))
    with empty_store.transaction() as conn:
        assert not new_tables & set(inspect(conn).get_table_names())
        applied = upgrade(conn)
        assert [m.version for m in applied] == [m.version for m in MIGRATIONS if m.version >= 3]
        assert "identity" in {c["name"] for c in inspect(conn).get_columns("attempts")}
        assert new_tables <= set(inspect(conn).get_table_names())
    [kept] = empty_store.attempts(7)
    assert (kept.method, kept.path, kept.status, kept.correlation_id, kept.duration_ms, kept.identity, kept.at) == (
        "PATCH", "/api/v2/x", 202, "corr-1", 12.5, None, t0)


def test_a_failing_step_leaves_the_database_as_it_was(empty_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    with empty_store.transaction() as conn:  # a version 1 database, as in the test above
        metadata.create_all(conn)
        versions_metadata.create_all(conn)
        conn.execute(schema_versions.insert().values(version=1, description="baseline", applied_at=t0))
    before = {c["name"] for c in inspect(empty_store.engine).get_columns("events")}

    def half_done(conn: Any) -> None:
        conn.execute(text("ALTER TABLE events ADD COLUMN half_done INTEGER"))
        raise RuntimeError("step failed half way")

    monkeypatch.setattr(migrations, "MIGRATIONS", (MIGRATIONS[0], replace(MIGRATIONS[1], apply=half_done)))
    with pytest.raises(RuntimeError, match="half way"), empty_store.transaction() as conn:
        upgrade(conn)
    with empty_store.transaction() as conn:
        assert current_version(conn) == 1
    assert {c["name"] for c in inspect(empty_store.engine).get_columns("events")} == before


def test_db_upgrade_reports_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    env = dry_run_env("postgres://u:hunter2@127.0.0.1:1/x", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot migrate the database: OperationalError; check DATABASE_URL" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def test_a_step_numbered_below_the_newest_applied_one_is_still_applied(db_url: str) -> None:
    # Steps written on parallel branches may reach a database out of their numbers' order.
    store = Store.from_url(db_url)
    try:
        with store.transaction() as conn:
            upgrade(conn)
            conn.execute(schema_versions.delete().where(schema_versions.c.version == 3))
        with store.transaction() as conn:
            assert [m.version for m in upgrade(conn)] == [3]
            assert [m.version for m in upgrade(conn)] == []
    finally:
        store.close()


CONSOLE_INDEXES = {"ix_events_state_id", "ix_events_source_id", "ix_events_agent_id", "ix_events_ticket_id"}


def test_a_version_4_database_gets_the_console_audit_started_at_and_indexes(empty_store: Store) -> None:
    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    with empty_store.engine.begin() as conn:  # the schema as version 4 left it
        metadata.create_all(conn)
        conn.execute(text("DROP TABLE audit"))
        for index in CONSOLE_INDEXES:
            conn.execute(text(f"DROP INDEX {index}"))
        conn.execute(text("ALTER TABLE events DROP COLUMN started_at"))
        conn.execute(text("INSERT INTO events (id, source, event_id, state, detail, received_at, updated_at) "
                          "VALUES (7, 'helpdesk', 'evt_7', 'applied', 'muted', :t, :t)"), {"t": t0})
        versions_metadata.create_all(conn)
        for version in (1, 2, 3, 4):
            conn.execute(schema_versions.insert().values(version=version, description="old", applied_at=t0))
    with empty_store.transaction() as conn:
        applied = upgrade(conn)
        assert [m.version for m in applied] == [m.version for m in MIGRATIONS if m.version >= 5]
        assert "started_at" in {c["name"] for c in inspect(conn).get_columns("events")}
        assert {i["name"] for i in inspect(conn).get_indexes("events")} >= CONSOLE_INDEXES
        assert "audit" in inspect(conn).get_table_names()
    kept = empty_store.get(7)
    assert kept is not None and (kept.event_id, kept.state, kept.started_at) == ("evt_7", "applied", None)


def test_a_version_3_database_moves_each_body_into_one_delivery_without_loss(empty_store: Store) -> None:
    """Version 4 (issue 11, finding 1): events of one request share one delivery holding the body and headers once;
    every row, body byte and time survives; dedupe keys are kept apart; the old columns go."""
    from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, String, Table, Text, UniqueConstraint

    t0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    old = MetaData()
    Table("events", old, Column("id", Integer, primary_key=True), Column("source", String(64), nullable=False),
          Column("event_id", String(600), nullable=False), Column("state", String(16), nullable=False),
          Column("detail", Text, nullable=False), Column("action", String(8)), Column("ticket_id", String(512)),
          Column("status", String(512)), Column("previous_status", String(512)), Column("agent", String(512)),
          Column("conversation_id", String(512)), Column("occurred_at", DateTime(timezone=True)),
          Column("received_at", DateTime(timezone=True), nullable=False),
          Column("updated_at", DateTime(timezone=True), nullable=False), Column("claimed_at", DateTime(timezone=True)),
          Column("signed_at", DateTime(timezone=True)), Column("message_id", String(512)),
          Column("raw_body", LargeBinary, nullable=False), Column("headers", Text, nullable=False),
          UniqueConstraint("source", "event_id"))
    array, single = b'[{"eventId": 1}, {"eventId": 2}, {"eventId": 3}]', b"\xff\x00 not JSON"
    rows = [(1, "hubspot", "1", array, t0, '{"x-a": "1"}', None), (2, "hubspot", "2", array, t0, '{"x-a": "1"}', None),
            (3, "hubspot", "3", array, t0, '{"x-a": "1"}', None),
            (4, "inhouse", "sha256:ab", single, t0 + timedelta(seconds=1), "{}", t0),
            (5, "hubspot", "9", array, t0 + timedelta(seconds=2), '{"x-a": "2"}', None)]  # a new delivery, same bytes
    with empty_store.engine.begin() as conn:
        old.create_all(conn)
        for pk, source, event_id, body, received, headers, signed in rows:
            conn.execute(old.tables["events"].insert().values(
                id=pk, source=source, event_id=event_id, state="dry_run", detail="d", received_at=received,
                updated_at=received, signed_at=signed, message_id="m" if signed else None, raw_body=body,
                headers=headers, occurred_at=received))
        metadata.create_all(conn, tables=[t for t in metadata.sorted_tables
                                          if t.name not in ("events", "deliveries", "event_keys", "processes")])
        for version in (1, 2, 3):
            conn.execute(schema_versions.insert().values(version=version, description="old", applied_at=t0))
    with empty_store.transaction() as conn:
        assert [m.version for m in upgrade(conn)] == [m.version for m in MIGRATIONS if m.version >= 4]
        columns = {c["name"] for c in inspect(conn).get_columns("events")}
    assert {"delivery", "claimed_by"} <= columns and not {"raw_body", "headers", "signed_at", "message_id"} & columns
    records = {r.id: r for r in empty_store.list(limit=None)}
    assert sorted(records) == [1, 2, 3, 4, 5] and {r.state for r in records.values()} == {"dry_run"}
    assert records[1].delivery == records[2].delivery == records[3].delivery
    assert len({records[1].delivery, records[4].delivery, records[5].delivery}) == 3
    first, lone, again = (empty_store.delivery(records[pk].delivery) for pk in (1, 4, 5))
    assert first is not None and lone is not None and again is not None
    assert (first.raw_body, first.headers, first.received_at, first.source) == (array, {"x-a": "1"}, t0, "hubspot")
    assert (lone.raw_body, lone.signed_at, lone.message_id) == (single, t0, "m")
    assert (again.raw_body, again.headers) == (array, {"x-a": "2"})
    with empty_store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM deliveries")).scalar() == 3
    [dup] = empty_store.save(empty_store.delivery(records[4].delivery).id, [  # type: ignore[union-attr]
        NewEvent(source="inhouse", event_id="sha256:ab", state="received", detail="", received_at=t0)])
    assert (dup.duplicate, dup.id) == (True, 4)  # the moved keys still dedupe
    with empty_store.transaction() as conn:
        assert upgrade(conn) == []
