"""Versioned schema changes, applied in order by `flask --app wsgi db upgrade` (the Procfile's release step).

Why not Alembic: the schema is a few tables of SQLAlchemy Core, and each change must run on SQLite and PostgreSQL;
numbered Python steps written with Core DDL do that in a page, reviewed like any other code, with no second
configuration to keep in step. An empty database is created from the current table definitions and stamped with
the latest version (as `alembic stamp head` would); an existing one gets the steps it lacks, each in the same
transaction as its version row, under a lock so that two release processes cannot both apply a step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import MetaData, bindparam, inspect, select, text, update
from sqlalchemy.engine import Connection

from webhook.clock import utcnow
from webhook.store import (
    SCHEMA_VERSION,
    agent_state,
    attempts,
    audit,
    deliveries,
    event_keys,
    events,
    genesys_connections,
    oauth_states,
    processes,
    safety_undos,
    schema_versions,
)
from webhook.store import metadata as store_metadata

versions_metadata = MetaData()  # schema_versions alone (it is also one of the store's tables)
schema_versions.to_metadata(versions_metadata)
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


_MOVED = ("raw_body", "headers", "signed_at", "message_id")  # from events to deliveries in version 4
_MOVE_BATCH = 100  # events read at a time (bodies of up to 16 MiB each)


def _deliveries(conn: Connection) -> None:
    """Version 4: each request's body and headers once, in deliveries (events point at theirs); the dedupe keys
    kept apart from the events (event_keys); events.claimed_by and the processes that prove they are alive."""
    for table in (deliveries, event_keys, processes):
        table.create(conn, checkfirst=True)
    present = {c["name"] for c in inspect(conn).get_columns("events")}
    for name in ("delivery", "claimed_by"):
        if name not in present:
            kind = events.c[name].type.compile(dialect=conn.dialect)
            reference = " REFERENCES deliveries (id)" if name == "delivery" else ""
            conn.execute(text(f"ALTER TABLE events ADD COLUMN {name} {kind}{reference}"))
    if set(_MOVED) <= present:
        _move_bodies(conn)
        for name in _MOVED:
            conn.execute(text(f"ALTER TABLE events DROP COLUMN {name}"))
    for index in events.indexes:
        index.create(conn, checkfirst=True)
    conn.execute(text("INSERT INTO event_keys (source, event_id, seen_at) SELECT source, event_id, received_at "
                      "FROM events WHERE true ON CONFLICT (source, event_id) DO NOTHING"))  # WHERE: SQLite's parser


def _move_bodies(conn: Connection) -> None:
    """Give every event a delivery holding its body and headers; the events of one request (same source, receipt
    time, signature data, headers and body bytes) share one, so a JSON array's body is kept once."""
    recent: dict[tuple[Any, ...], int] = {}
    read = text("SELECT id, source, received_at, signed_at, message_id, raw_body, headers FROM events "
                "WHERE delivery IS NULL ORDER BY id LIMIT :n")
    point = update(events).where(events.c.id.in_(bindparam("ids", expanding=True))).values(
        delivery=bindparam("delivery"))
    while rows := conn.execute(read, {"n": _MOVE_BATCH}).mappings().all():
        for row in rows:
            body = bytes(row["raw_body"])
            headers = row["headers"] or "{}"
            key = (row["source"], str(row["received_at"]), str(row["signed_at"]), row["message_id"], headers,
                   hashlib.sha256(body).digest())
            pk = recent.get(key)
            if pk is None:
                result = conn.execute(deliveries.insert().values(
                    source=row["source"], received_at=_aware(row["received_at"]),
                    signed_at=_aware(row["signed_at"]), message_id=row["message_id"], raw_body=body,
                    headers=headers if _is_json(headers) else "{}"))
                pk = int(result.inserted_primary_key[0])
                if len(recent) > 5000:
                    recent.clear()
                recent[key] = pk
            conn.execute(point, {"ids": [row["id"]], "delivery": pk})


def _aware(value: Any) -> Any:
    """A timestamp read back by plain SQL: SQLite returns text, PostgreSQL an aware datetime."""
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


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
    Migration(4, "deliveries: each request's body once; event_keys kept beyond the events; processes and claim "
                 "owners", _deliveries),
    Migration(5, "the console: events.started_at, audit, and indexes of the event filters", _console),
    Migration(6, "safety_undos: card capture's limits on a mute or a recording pause left on", _safety_undos),
)
assert MIGRATIONS[-1].version == SCHEMA_VERSION, "store.SCHEMA_VERSION names the last migration"


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
    schema_versions.create(conn, checkfirst=True)
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
