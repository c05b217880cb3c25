"""Versioned schema changes, applied in order by `flask --app wsgi db upgrade` (the Procfile's release step).

Why not Alembic: the schema is a few tables of SQLAlchemy Core, and each change must run on SQLite and PostgreSQL;
numbered Python steps written with Core DDL do that in a page, reviewed like any other code, with no second
configuration to keep in step. An empty database is created from the current table definitions and stamped with
the latest version (as `alembic stamp head` would); an existing one gets the steps it lacks, each in the same
transaction as its version row, under a lock so that two release processes cannot both apply a step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import Connection

from webhook.clock import utcnow
from webhook.store import agent_state, attempts, audit, events, genesys_connections, oauth_states, safety_undos
from webhook.store import metadata as store_metadata

versions_metadata = MetaData()
schema_versions = Table(
    "schema_versions",
    versions_metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)
LOCK_ID = 0x6D757465  # pg_advisory_xact_lock key of this service's migrations ("mute")


@dataclass(frozen=True)
class Migration:
    """One numbered schema change."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _baseline(conn: Connection) -> None:
    """Version 1: events, attempts and agent_state as the store first defined them."""
    store_metadata.create_all(conn)


def _agent_hold(conn: Connection) -> None:
    """Version 2: agent_state.holder (indexed) and held_until, so that two events never act on one agent at once."""
    present = {c["name"] for c in inspect(conn).get_columns("agent_state")}
    for name in ("holder", "held_until"):
        if name not in present:  # a database made before versioning got today's columns from step 1
            column = agent_state.c[name]
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f"ALTER TABLE agent_state ADD COLUMN {name} {kind}"))
    for index in agent_state.indexes:
        index.create(conn, checkfirst=True)


def _user_identities(conn: Connection) -> None:
    """Version 3: attempts.identity, and the tables of user connections and authorization flows in progress."""
    if "identity" not in {c["name"] for c in inspect(conn).get_columns("attempts")}:
        kind = attempts.c.identity.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE attempts ADD COLUMN identity {kind}"))
    for table in (genesys_connections, oauth_states):
        table.create(conn, checkfirst=True)


def _console(conn: Connection) -> None:
    """Version 5: events.started_at (the claim of the run that finished an event), the console's audit table, and
    the indexes of its event filters (each newest first)."""
    if "started_at" not in {c["name"] for c in inspect(conn).get_columns("events")}:
        kind = events.c.started_at.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE events ADD COLUMN started_at {kind}"))
    audit.create(conn, checkfirst=True)
    for index in events.indexes:
        if index.name in CONSOLE_INDEXES:
            index.create(conn, checkfirst=True)


CONSOLE_INDEXES = ("ix_events_state_id", "ix_events_source_id", "ix_events_agent_id", "ix_events_ticket_id")


def _safety_undos(conn: Connection) -> None:
    """Version 6: safety_undos, the mutes and recording pauses to undo when no newer event has (card capture)."""
    safety_undos.create(conn, checkfirst=True)


# Append new steps here (never edit an applied one); change webhook/store.py's tables in the same commit.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "events, attempts and per-agent ordering state", _baseline),
    Migration(2, "agent_state: the event acting on an agent now, and until when", _agent_hold),
    Migration(3, "attempts.identity; genesys_connections and oauth_states for acting as a user", _user_identities),
    Migration(5, "the console: events.started_at, audit, and indexes of the event filters", _console),
    Migration(6, "safety_undos: card capture's limits on a mute or a recording pause left on", _safety_undos),
)


def current_version(conn: Connection) -> int:
    """Return the newest applied version, 0 when the database has never been migrated."""
    if not inspect(conn).has_table("schema_versions"):
        return 0
    return int(conn.execute(select(schema_versions.c.version).order_by(schema_versions.c.version.desc())
                            .limit(1)).scalar() or 0)


def upgrade(conn: Connection, *, now: datetime | None = None) -> list[Migration]:
    """Bring the schema to the latest version inside the caller's transaction; return the steps applied."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_ID})
    versions_metadata.create_all(conn)
    stamp = now or utcnow()
    done = current_version(conn)
    if done == 0 and not inspect(conn).has_table("events"):
        store_metadata.create_all(conn)  # a new database: today's tables, stamped with every version
        pending, run = list(MIGRATIONS), False
    else:
        # Every step not recorded yet, not only those above the newest: steps written on parallel branches may be
        # numbered out of the order in which they reach a database.
        applied = set(conn.execute(select(schema_versions.c.version)).scalars())
        pending, run = [m for m in MIGRATIONS if m.version not in applied], True
    for step in pending:
        if run:
            step.apply(conn)
        conn.execute(schema_versions.insert().values(version=step.version, description=step.description,
                                                     applied_at=stamp))
    return pending
