"""The only SQL of the service (SQLAlchemy Core): deliveries and their events, the Genesys attempts, per-agent
ordering state, the processes that hold claims, and the users' connections."""

from __future__ import annotations

import builtins  # in Store, "list" is the method: annotations there say builtins.list
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import psycopg
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.sql.elements import TextClause

from webhook.errors import SchemaError, StoreError
from webhook.events import UUID_RE
from webhook.genesys.model import Attempt
from webhook.genesys.model import Connection as UserConnection

logger = logging.getLogger(__name__)

# The states of a stored event (README "States of an event"); every variable that holds one is annotated with these.
FinalState = Literal["applied", "skipped", "no_call", "expired", "failed", "dry_run", "invalid"]
EventState = Literal["received", "processing", FinalState]
FINAL_STATES: tuple[FinalState, ...] = get_args(FinalState)
STATES: tuple[EventState, ...] = get_args(EventState)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in and comes out as an aware UTC datetime on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC time")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Id = BigInteger().with_variant(Integer, "sqlite")
metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("event_id", String(600), nullable=False),
    Column("state", String(16), nullable=False),
    Column("detail", Text, nullable=False, default=""),
    Column("action", String(8)),
    Column("ticket_id", String(512)),
    Column("status", String(512)),
    Column("previous_status", String(512)),
    Column("agent", String(512)),
    Column("conversation_id", String(512)),
    Column("occurred_at", UTCDateTime()),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("claimed_at", UTCDateTime()),
    Column("started_at", UTCDateTime()),  # when the run that finished the event claimed it (the console's timeline)
    # The delivery (request) the event came in: its body and headers are stored once there, however many events.
    Column("delivery", Id, ForeignKey("deliveries.id"), index=True),
    Column("claimed_by", String(64)),  # the process (processes.id) holding the claim while processing
    UniqueConstraint("source", "event_id", name="uq_events_source_event_id"),
    Index("ix_events_state_received", "state", "received_at"),
    Index("ix_events_received", "received_at"),
    # The console's filters, each newest first (migration 5).
    Index("ix_events_state_id", "state", "id"),
    Index("ix_events_source_id", "source", "id"),
    Index("ix_events_agent_id", "agent", "id"),
    Index("ix_events_ticket_id", "ticket_id", "id"),
    # Row ids order ties between events and name events in `replay ID`: SQLite must never hand one out twice.
    sqlite_autoincrement=True,
)

# One row per signed request kept: the raw body and the stored headers, once, for all the events it holds (a JSON
# array of 1,000 events is one row here and 1,000 in events). An unparseable body is a delivery with one invalid event.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("signed_at", UTCDateTime()),
    Column("message_id", String(512)),
    Column("raw_body", LargeBinary, nullable=False),
    Column("headers", Text, nullable=False, default="{}"),
    Index("ix_deliveries_received", "received_at"),
    sqlite_autoincrement=True,
)

# The dedupe keys of every event received, kept longer than the events ([retention] keep_keys_days, a year at least):
# a captured delivery of a scheme without a signed timestamp stays a duplicate after `events purge` removed its event.
event_keys = Table(
    "event_keys",
    metadata,
    Column("source", String(64), primary_key=True),
    Column("event_id", String(600), primary_key=True),
    Column("seen_at", UTCDateTime(), nullable=False),
    Index("ix_event_keys_seen", "seen_at"),
)

# The processes that claim events (gunicorn workers, `replay`), each proving it is alive every few seconds. A claim
# whose process stopped beating is taken over at once; a live process's claim never is.
processes = Table(
    "processes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("beat_at", UTCDateTime(), nullable=False),
)

# The schema's version, written by webhook.migrations (`flask --app wsgi db upgrade`).
schema_versions = Table(
    "schema_versions",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)
SCHEMA_VERSION = 6  # the version this code needs: the last of webhook.migrations.MIGRATIONS
UPGRADE_COMMAND = "flask --app wsgi db upgrade"

attempts = Table(
    "attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event", Id, ForeignKey("events.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("method", String(8), nullable=False),
    Column("path", String(512), nullable=False),
    Column("status", Integer),
    Column("code", String(200)),
    Column("correlation_id", String(200)),
    Column("duration_ms", Float, nullable=False),
    Column("error", Text),
    Column("identity", String(160)),  # who acted: agent:<user id>, service_user:<user id> or client_credentials
)

# The Genesys users who authorized the service (agents, and the one service user). Tokens are Fernet ciphertext.
# A refresh takes the row's lease (compare-and-set on version) so that only one process refreshes at a time.
genesys_connections = Table(
    "genesys_connections",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("email", String(320), nullable=False),
    Column("email_lower", String(320), nullable=False, index=True),
    Column("name", String(256), nullable=False),
    Column("refresh_token", Text, nullable=False),
    Column("access_token", Text),
    Column("access_expires_at", UTCDateTime()),
    Column("state", String(8), nullable=False),
    Column("reason", Text, nullable=False),
    Column("broken_at", UTCDateTime()),
    Column("refreshed_at", UTCDateTime()),
    Column("used_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("version", Integer, nullable=False),
    Column("lease", String(64)),
    Column("lease_until", UTCDateTime()),
)

# Authorization-code flows in progress, and the service-user links that may start one. Keys are SHA-256 hex of the
# secret values (the state, the link), so a copy of the database cannot finish a flow; the PKCE verifier is
# encrypted. Each row is single-use (used_at) and short-lived (expires_at).
oauth_states = Table(
    "oauth_states",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("purpose", String(16), nullable=False),  # agent | service_user | link | login (the console)
    Column("browser", String(64)),  # SHA-256 hex of the cookie that binds the flow to one browser
    Column("verifier", Text),
    Column("link", String(64)),  # a service-user flow: the key of the link that started it
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False, index=True),
    Column("used_at", UTCDateTime()),
)

# Card capture's safety limits: a mute or a recording pause the service applied, and when to undo it if no newer
# event has. One row per agent and kind; an event that undoes it deletes the row, a newer one replaces it. The
# sweeper turns a row that came due into a stored event of source "safety" (so it survives a restart).
safety_undos = Table(
    "safety_undos",
    metadata,
    Column("agent", String(512), primary_key=True),
    Column("kind", String(8), primary_key=True),  # mute | pause
    Column("event", Id, nullable=False),  # the event that applied it
    Column("conversation_id", String(512), nullable=False),
    Column("participant_id", String(512)),
    Column("due_at", UTCDateTime(), nullable=False, index=True),
)

# What operators did in the console (replays, disconnections, service-user links, logins): who, when, what it
# touched. No foreign key to events: an audit line outlives the purge of the event it names.
audit = Table(
    "audit",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("operator", String(320), nullable=False),
    Column("action", String(32), nullable=False),
    Column("event", Id),
    Column("target", String(512), nullable=False),
    Column("detail", Text, nullable=False),
    Index("ix_audit_event", "event", "id"),
    sqlite_autoincrement=True,
)

agent_state = Table(
    "agent_state",
    metadata,
    Column("agent", String(512), primary_key=True),
    Column("occurred_at", UTCDateTime(), nullable=False),
    Column("event", Id, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The event acting on this agent's microphone right now, and until when its hold lasts (a crash frees it then):
    # two events for one agent never call Genesys at once, so an older PATCH can never land after a newer one.
    Column("holder", Id),
    Column("held_until", UTCDateTime()),
    Index("ix_agent_state_holder", "holder"),
)


CLAIMED_FROM = "claimed from "  # the detail of an event while it is processing: "claimed from received"

# The statements of the per-event path, built once: SQLAlchemy then reuses their cache keys and compiled forms.
_GET = select(events).where(events.c.id == bindparam("pk"))
_DELIVERY = select(deliveries).where(deliveries.c.id == bindparam("pk"))
_FIND_KEY = select(events.c.id, events.c.state).where(events.c.source == bindparam("source"),
                                                      events.c.event_id == bindparam("event_id"))
# Claim an event as it was just read (compare and set): its state is unchanged and, for a processing event, so is
# the claim being taken over. One plain UPDATE: on SQLite it runs and commits without holding the write lock while
# Python code reads a result.
_CLAIM = update(events).where(
    events.c.id == bindparam("pk"), events.c.state == bindparam("seen"),
    or_(events.c.state != "processing", events.c.claimed_at == bindparam("seen_claimed", type_=UTCDateTime())),
).values(state="processing", claimed_at=bindparam("now", type_=UTCDateTime()),
         updated_at=bindparam("now", type_=UTCDateTime()), detail=bindparam("claimed_from"),
         claimed_by=bindparam("owner", type_=String()))
_BEAT = text(
    "INSERT INTO processes (id, host, pid, started_at, beat_at) VALUES (:owner, :host, :pid, :started, :now) "
    "ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at"
).bindparams(bindparam("owner", type_=String()), bindparam("host", type_=String()), bindparam("pid"),
             bindparam("started", type_=UTCDateTime()), bindparam("now", type_=UTCDateTime()))
_ALIVE = select(processes.c.id).where(processes.c.id == bindparam("owner"),
                                      processes.c.beat_at >= bindparam("alive_after", type_=UTCDateTime()))
_FINISH_CLAIMED = update(events).where(
    events.c.id == bindparam("pk"), events.c.state == "processing",
    events.c.claimed_at == bindparam("claimed", type_=UTCDateTime()),
).values(state=bindparam("new_state"), detail=bindparam("new_detail"), action=bindparam("new_action"),
         updated_at=bindparam("now", type_=UTCDateTime()), claimed_at=None, claimed_by=None,
         started_at=bindparam("claimed", type_=UTCDateTime()))
# Take an agent's slot in one statement (the same text on SQLite and PostgreSQL): a new agent gets a row; a known
# one moves only to a newer (occurred_at, event) and only when no other event holds it (or its hold ran out).
_ADVANCE = text(
    "INSERT INTO agent_state (agent, occurred_at, event, updated_at, holder, held_until) "
    "VALUES (:who, :occurred, :pk, :now, :holder, :until) "
    "ON CONFLICT (agent) DO UPDATE SET occurred_at = excluded.occurred_at, event = excluded.event, "
    "updated_at = excluded.updated_at, holder = excluded.holder, held_until = excluded.held_until "
    "WHERE (agent_state.occurred_at < excluded.occurred_at "
    "OR (agent_state.occurred_at = excluded.occurred_at AND agent_state.event <= excluded.event)) "
    "AND (agent_state.holder IS NULL OR agent_state.holder = excluded.event OR agent_state.held_until < :now)"
).bindparams(bindparam("who", type_=String()), bindparam("occurred", type_=UTCDateTime()), bindparam("pk"),
             bindparam("now", type_=UTCDateTime()), bindparam("holder"), bindparam("until", type_=UTCDateTime()))
_SLOT = select(agent_state.c.occurred_at, agent_state.c.event).where(agent_state.c.agent == bindparam("who"))
_RELEASE = update(agent_state).where(agent_state.c.holder == bindparam("pk")).values(holder=None, held_until=None)

# What advance_agent says: this event owns the agent's slot; a newer event owns it (skip this one); or another
# event is acting on the agent now (wait for it).
OURS, OLDER, BUSY = "ours", "older", "busy"


@dataclass(frozen=True)
class NewDelivery:
    """A signed request to keep once: its raw body, the headers worth keeping, and what its signature said."""

    source: str
    received_at: datetime
    raw_body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    signed_at: datetime | None = None
    message_id: str | None = None


@dataclass(frozen=True)
class NewEvent:
    """A row to insert at intake: a parsed event, or an invalid body with its reason in `detail`."""

    source: str
    event_id: str
    state: EventState
    detail: str
    received_at: datetime
    ticket_id: str | None = None
    status: str | None = None
    previous_status: str | None = None
    agent: str | None = None
    conversation_id: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class Saved:
    """The outcome of saving one NewEvent: its row id and whether it was already stored (id None: it was received
    before and its row has since been purged; its dedupe key is kept)."""

    id: int | None
    source: str
    event_id: str
    duplicate: bool
    state: EventState | Literal["purged"]  # purged: a duplicate whose event row is gone, its dedupe key kept


@dataclass(frozen=True)
class Delivery:
    """A stored request: the raw body and headers its events came with."""

    id: int
    source: str
    received_at: datetime
    signed_at: datetime | None
    message_id: str | None
    raw_body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class EventRecord:
    """A stored event as read back from the database (its body is its delivery's: Store.delivery)."""

    id: int
    source: str
    event_id: str
    state: EventState
    detail: str
    action: str | None
    ticket_id: str | None
    status: str | None
    previous_status: str | None
    agent: str | None
    conversation_id: str | None
    occurred_at: datetime | None
    received_at: datetime
    updated_at: datetime
    claimed_at: datetime | None
    delivery: int | None = None
    claimed_by: str | None = None
    started_at: datetime | None = None

    def summary(self) -> dict[str, Any]:
        """Return the JSON-ready fields shown by `events list --json` (no body)."""
        return {
            "id": self.id, "source": self.source, "event_id": self.event_id, "state": self.state,
            "detail": self.detail, "action": self.action, "ticket_id": self.ticket_id, "status": self.status,
            "previous_status": self.previous_status, "agent": self.agent, "conversation_id": self.conversation_id,
            "occurred_at": _iso(self.occurred_at), "received_at": _iso(self.received_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True)
class Undo:
    """A mute or recording pause the service applied, to be undone at due_at unless a newer event undoes it."""

    agent: str
    kind: str  # mute | pause
    event: int
    conversation_id: str
    participant_id: str | None
    due_at: datetime


@dataclass(frozen=True)
class OAuthState:
    """An authorization-code flow in progress, or a one-time service-user link (see the oauth_states table)."""

    key: str
    purpose: str
    browser: str | None
    verifier: str | None = field(repr=False)
    link: str | None
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


# Time limits on the database: a request must be answered, 503 when need
# be, within 5 s however the database behaves; /readyz within 2 s.
UNIT_SECONDS = 3.0  # a unit of work waits at most this long for the database's answers, connecting included
CONNECT_SECONDS = 2  # PostgreSQL's connect timeout (libpq's smallest)
POOL_SECONDS = 1.5  # the wait for a pooled connection when every one is in use
READY_SECONDS = 1.5  # /readyz's write probe
BULK_SECONDS = 120.0  # a purge batch, an export batch
MIGRATION_SECONDS = 3600.0
SQLITE_BUSY_SECONDS = 3.0  # how long SQLite waits for another process's write lock
SQLITE_C_BUSY_SECONDS = 0.005  # SQLite's own wait, in C, holds every greenlet of a gevent worker: kept short
_DEADLINE: ContextVar[float | None] = ContextVar("store_deadline", default=None)


class Store:
    """Events, attempts and ordering state in one SQL database (SQLite locally, PostgreSQL in production)."""

    def __init__(self, engine: Engine, *, timeout: float = UNIT_SECONDS) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self.timeout = timeout  # the longest a unit of work may wait for the database, by default
        # SQLite hands the new row id back as lastrowid: without RETURNING, the insert runs in one step.
        returning = None if self.dialect == "sqlite" else "id"
        self._insert_event = self._insert_ignore(events, ["source", "event_id"], returning=returning)
        self._insert_key = self._insert_ignore(event_keys, ["source", "event_id"])
        self._insert_delivery = self._insert(deliveries, returning=returning)
        self._save_single = _save_single_statement() if self.dialect == "postgresql" else None

    @classmethod
    def from_url(cls, url: str) -> Store:
        """Open a store with time limits: SQLite files get their folder, WAL mode and a busy timeout; PostgreSQL a
        connect timeout, a statement timeout, and a deadline on every answer (see _tx)."""
        if url.startswith("sqlite"):
            _make_sqlite_folder(url)
            engine = create_engine(url, connect_args={"timeout": SQLITE_C_BUSY_SECONDS, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "do_execute", _sqlite_execute)
            event.listen(engine, "do_execute_no_params", _sqlite_execute_no_params)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, pool_timeout=POOL_SECONDS,
                                   connect_args={"connect_timeout": CONNECT_SECONDS,
                                                 "options": f"-c statement_timeout={int(UNIT_SECONDS * 1000)}"})
            event.listen(engine, "do_connect", _guarded_connect)
        return cls(engine)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def _tx(self, *, atomic: bool = False, timeout: float | None = None) -> Iterator[Connection]:
        """One unit of work on a pooled connection, committed at the end and rolled back on an error.

        On SQLite the driver does not open transactions (see _sqlite_pragmas): each statement commits on its own,
        so SQLite's single write lock is held inside one statement, never while Python code runs between two. A
        unit of several writes that must stand or fall together passes atomic=True: BEGIN IMMEDIATE takes the
        write lock up front (a read-then-write transaction could otherwise fail to upgrade when another process
        wrote in between). On PostgreSQL every unit is one transaction.

        The unit has `timeout` seconds (default self.timeout) for the database to answer, its connection included:
        a server that hangs (stopped, out of disk, behind a dead network path) ends it with StoreError instead of
        holding the request, and the connection is dropped. A longer unit (purge, export) says so.
        """
        limit = self.timeout if timeout is None else timeout
        token = _DEADLINE.set(time.monotonic() + limit)
        try:
            with self.engine.begin() as conn:
                if atomic and self.dialect == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                if self.dialect == "postgresql" and limit != UNIT_SECONDS:
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(limit * 1000)}")
                yield conn
        except SQLAlchemyError as exc:
            refused = getattr(exc, "orig", None)
            if not isinstance(exc, DBAPIError) and isinstance(refused, ValueError):
                # Refused before it reached the database (a naive datetime): the caller's bug, not an outage.
                raise ValueError(str(refused)) from exc
            problem = self.schema_problem() if _missing_schema(exc) else None
            if problem:
                logger.error("store error: %s", problem)
                raise SchemaError(problem) from exc
            logger.warning("store error: %s", type(exc).__name__)
            raise StoreError(f"the database cannot be used: {type(exc).__name__}") from exc
        finally:
            _DEADLINE.reset(token)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection whose statements commit together or not at all, with no time limit (for migrations)."""
        with self._tx(atomic=True, timeout=MIGRATION_SECONDS) as conn:
            yield conn

    def create_schema(self) -> None:
        """Create the tables and stamp the schema's version, as `db upgrade` does on a new database (idempotent)."""
        from webhook.migrations import upgrade

        with self.transaction() as conn:
            upgrade(conn)

    def schema_problem(self) -> str | None:
        """Say what is wrong with the schema (missing, older than this code), with the command that fixes it; None
        when it is current (or newer) or when the database cannot be asked."""
        token = _DEADLINE.set(time.monotonic() + self.timeout)
        try:
            with self.engine.connect() as conn:
                names = set(inspect(conn).get_table_names())
                version = (int(conn.execute(select(func.max(schema_versions.c.version))).scalar() or 0)
                           if "schema_versions" in names else 0)
        except SQLAlchemyError:
            return None
        finally:
            _DEADLINE.reset(token)
        return schema_verdict(version, has_tables="events" in names)

    def ping(self) -> None:
        """Raise StoreError unless the database answers a trivial query."""
        with self._tx() as conn:
            conn.execute(text("SELECT 1"))

    def readiness(self, owner: str, *, host: str, pid: int, started_at: datetime, now: datetime) -> datetime | None:
        """Prove the database can be written, not only read: write this process's heartbeat, in one unit with the
        read of the oldest unfinished event's receipt time, which it returns."""
        with self._tx(atomic=True, timeout=READY_SECONDS) as conn:
            conn.execute(_BEAT, {"owner": owner, "host": host[:255], "pid": pid, "started": started_at, "now": now})
            return conn.execute(select(func.min(events.c.received_at))
                                .where(events.c.state.in_(["received", "processing"]))).scalar()

    def save(self, delivery: NewDelivery | int, rows: Sequence[NewEvent], *, revive: bool = False) -> list[Saved]:
        """Store a delivery once with its events, in one transaction. An event whose (source, event_id) was received
        before (its dedupe key is kept even after the event is purged) is a duplicate; a delivery none of whose
        events is new is not stored. `delivery` may also be the id of a stored delivery. With revive (replay
        --file: a person's decision), an event whose key is known but whose row was purged is stored again."""
        if self._save_single is not None and len(rows) == 1 and isinstance(delivery, NewDelivery) and not revive:
            return self._save_one_postgres(delivery, rows[0])
        with self._tx(atomic=True) as conn:
            return self._save_in(conn, delivery, rows, revive=revive)

    def _save_in(self, conn: Connection, delivery: NewDelivery | int, rows: Sequence[NewEvent], *,
                 revive: bool = False) -> list[Saved]:
        """save() inside the caller's transaction."""
        if self.dialect == "postgresql" and len(rows) > 1:
            self._lock_keys(conn, rows)
        fresh = [self._new_key(conn, row) or (revive and self._purged(conn, row)) for row in rows]
        pk = None
        if any(fresh):
            pk = delivery if isinstance(delivery, int) else self._store_delivery(conn, delivery)
        saved: list[Saved] = []
        for row, new in zip(rows, fresh, strict=True):
            inserted = self._insert_one(conn, row, pk) if new else None
            saved.append(inserted or self._duplicate(conn, row))
        return saved

    @staticmethod
    def _lock_keys(conn: Connection, rows: Sequence[NewEvent]) -> None:
        """Take a transaction lock per key in one global order, so overlapping batches cannot deadlock."""
        keys = sorted({int.from_bytes(hashlib.sha256(f"{r.source}\x00{r.event_id}".encode()).digest()[:8], "big",
                                      signed=True) for r in rows})
        conn.execute(text("SELECT pg_advisory_xact_lock(k) FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k "
                          "ORDER BY 1) AS ordered"), {"keys": keys})

    def _new_key(self, conn: Connection, row: NewEvent) -> bool:
        """Record the event's dedupe key; True when it was never seen (the one authority on duplicates)."""
        result = conn.execute(self._insert_key, {"source": row.source, "event_id": row.event_id,
                                                 "seen_at": row.received_at})
        return bool(result.rowcount == 1)

    def _save_one_postgres(self, delivery: NewDelivery, row: NewEvent) -> list[Saved]:
        """The usual delivery, one event, on PostgreSQL: key, delivery and event in one statement (one round trip)."""
        assert self._save_single is not None
        values = self._event_values(row, None) | {
            "d_signed_at": delivery.signed_at, "d_message_id": delivery.message_id, "d_raw_body": delivery.raw_body,
            "d_headers": json.dumps(dict(delivery.headers), sort_keys=True), "d_source": delivery.source,
            "d_received_at": delivery.received_at}
        with self._tx() as conn:
            row_id = conn.execute(self._save_single, values).scalar()
            if row_id is not None:
                return [Saved(int(row_id), row.source, row.event_id, False, row.state)]
            return [self._duplicate(conn, row)]

    @staticmethod
    def _event_values(row: NewEvent, delivery: int | None) -> dict[str, Any]:
        return {
            "source": row.source, "event_id": row.event_id, "state": row.state, "detail": row.detail,
            "ticket_id": row.ticket_id, "status": row.status, "previous_status": row.previous_status,
            "agent": row.agent, "conversation_id": row.conversation_id, "occurred_at": row.occurred_at,
            "received_at": row.received_at, "updated_at": row.received_at, "action": None, "claimed_at": None,
            "delivery": delivery, "claimed_by": None, "started_at": None,
        }

    @staticmethod
    def _purged(conn: Connection, row: NewEvent) -> bool:
        return conn.execute(_FIND_KEY, {"source": row.source, "event_id": row.event_id}).first() is None

    def _store_delivery(self, conn: Connection, delivery: NewDelivery) -> int:
        values = {"source": delivery.source, "received_at": delivery.received_at, "signed_at": delivery.signed_at,
                  "message_id": delivery.message_id, "raw_body": delivery.raw_body,
                  "headers": json.dumps(dict(delivery.headers), sort_keys=True)}
        result = conn.execute(self._insert_delivery, values)
        return int(result.lastrowid if self.dialect == "sqlite" else result.scalar_one())

    def _insert_one(self, conn: Connection, row: NewEvent, delivery: int | None) -> Saved | None:
        result = conn.execute(self._insert_event, self._event_values(row, delivery))
        row_id = (result.lastrowid if result.rowcount == 1 else None) if self.dialect == "sqlite" else result.scalar()
        return Saved(int(row_id), row.source, row.event_id, False, row.state) if row_id is not None else None

    @staticmethod
    def _duplicate(conn: Connection, row: NewEvent) -> Saved:
        found = conn.execute(_FIND_KEY, {"source": row.source, "event_id": row.event_id}).first()
        if found is None:  # received before; its event was purged, its key is kept
            return Saved(None, row.source, row.event_id, True, "purged")
        return Saved(int(found.id), row.source, row.event_id, True, found.state)

    @staticmethod
    def _insert_ignore(table: Table, keys: list[str], returning: str | None = None) -> TextClause:
        """INSERT ... ON CONFLICT (keys) DO NOTHING [RETURNING], text that SQLite and PostgreSQL both accept.

        Written as typed text because SQLAlchemy does not cache the compiled form of the dialects' own insert
        constructs: compiling one per webhook cost more than the rest of the intake.
        """
        names = [c.name for c in table.columns if not (c.primary_key and c.autoincrement is True)]
        # Only table and column names of this module go into the text; every value is a bound parameter.
        sql = (f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)}) "  # noqa: S608
               f"ON CONFLICT ({', '.join(keys)}) DO NOTHING" + (f" RETURNING {returning}" if returning else ""))
        return text(sql).bindparams(*(bindparam(n, type_=table.c[n].type) for n in names))

    @staticmethod
    def _insert(table: Table, returning: str | None = None) -> TextClause:
        """A plain INSERT as typed text (see _insert_ignore)."""
        names = [c.name for c in table.columns if not (c.primary_key and c.autoincrement is True)]
        sql = (f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})"  # noqa: S608
               + (f" RETURNING {returning}" if returning else ""))
        return text(sql).bindparams(*(bindparam(n, type_=table.c[n].type) for n in names))

    def get(self, event_id: int) -> EventRecord | None:
        """Return one stored event by row id, or None."""
        with self._tx() as conn:
            row = conn.execute(_GET, {"pk": event_id}).mappings().first()
        return _record(row) if row else None

    def delivery(self, pk: int | None) -> Delivery | None:
        """Return a stored delivery (the raw body and headers of its events), or None."""
        if pk is None:
            return None
        with self._tx() as conn:
            row = conn.execute(_DELIVERY, {"pk": pk}).mappings().first()
        return _delivery(row) if row else None

    def delivery_of(self, event_pk: int) -> Delivery | None:
        """Return the delivery an event came in, or None."""
        record = self.get(event_pk)
        return self.delivery(record.delivery) if record else None

    def list(
        self,
        *,
        state: EventState | None = None,
        source: str | None = None,
        since: datetime | None = None,
        limit: int | None = 50,
        ids: Sequence[int] | None = None,
    ) -> list[EventRecord]:
        """Return stored events, newest first, filtered by state, source, receipt time or ids."""
        query = select(events).order_by(events.c.id.desc())
        if state:
            query = query.where(events.c.state == state)
        if source:
            query = query.where(events.c.source == source)
        if since:
            query = query.where(events.c.received_at >= since)
        if ids is not None:
            query = query.where(events.c.id.in_(list(ids)))
        if limit:
            query = query.limit(limit)
        with self._tx() as conn:
            return [_record(row) for row in conn.execute(query).mappings()]

    def iter_deliveries(self, batch: int = 50) -> Iterator[tuple[Delivery, builtins.list[EventRecord]]]:
        """Yield every stored delivery with its events, oldest first, in batches (for export: each body once)."""
        last = 0
        while True:
            with self._tx(timeout=BULK_SECONDS) as conn:
                rows = conn.execute(select(deliveries).where(deliveries.c.id > last).order_by(deliveries.c.id)
                                    .limit(batch)).mappings().all()
                ids = [row["id"] for row in rows]
                mine: dict[int, builtins.list[EventRecord]] = {pk: [] for pk in ids}
                for event_row in conn.execute(select(events).where(events.c.delivery.in_(ids))
                                              .order_by(events.c.id)).mappings():
                    mine[event_row["delivery"]].append(_record(event_row))
            if not rows:
                return
            for row in rows:
                yield _delivery(row), mine[row["id"]]
            last = rows[-1]["id"]

    def find(self, source: str, event_id: str) -> EventRecord | None:
        """Return the stored event with this sender id, or None."""
        with self._tx() as conn:
            row = conn.execute(
                select(events).where(events.c.source == source, events.c.event_id == event_id)
            ).mappings().first()
        return _record(row) if row else None

    def attempts(self, event_pk: int) -> builtins.list[Attempt]:
        """Return the Genesys requests made for one event, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(
                select(attempts).where(attempts.c.event == event_pk).order_by(attempts.c.id)
            ).mappings()
            return [Attempt(**{k: v for k, v in r.items() if k not in ("id", "event")}) for r in rows]

    def counts(self) -> dict[str, int]:
        """Return how many events are in each state."""
        with self._tx() as conn:
            rows = conn.execute(select(events.c.state, func.count()).group_by(events.c.state)).all()
        return {state: int(count) for state, count in rows}

    def claim(
        self, event_pk: int, *, now: datetime, stale_before: datetime, states: Sequence[EventState] = ("received",),
        owner: str | None = None, alive_after: datetime | None = None,
    ) -> EventRecord | None:
        """Move an event in one of `states` to processing, claimed by `owner` (a process id); a processing event too
        when its claim is older than stale_before, or when the process holding it has not proved it is alive since
        alive_after. When this caller won it, return the event as it was before (its state then), else None."""
        with self._tx() as conn:
            row = conn.execute(_GET, {"pk": event_pk}).mappings().first()
            if row is None:
                return None
            record = _record(row)
            stale = record.state == "processing" and (
                (record.claimed_at is not None and record.claimed_at < stale_before)
                or (alive_after is not None and record.claimed_by not in (None, owner)
                    and conn.execute(_ALIVE, {"owner": record.claimed_by, "alive_after": alive_after}).first() is None))
            if record.state not in states and not stale:
                return None
            won = conn.execute(_CLAIM, {"pk": event_pk, "seen": record.state, "seen_claimed": record.claimed_at,
                                        "now": now, "claimed_from": CLAIMED_FROM + record.state,
                                        "owner": owner}).rowcount == 1
        return replace(record, claimed_at=now, updated_at=now, detail="", claimed_by=owner) if won else None

    def finish(self, event_pk: int, *, state: FinalState, detail: str, now: datetime, action: str | None = None,
               fields: Mapping[str, Any] | None = None, claimed_at: datetime | None = None,
               release_hold: bool = False) -> bool:
        """Record an event's final state, detail and action (plus re-parsed fields); with claimed_at, only while
        that claim still holds. With release_hold, free the agent slot this event holds (advance_agent's
        hold_until), in the same transaction and only if the event's row was written: a run whose claim was taken
        over must not free the hold its successor took. Return whether the event's row was written."""
        with self._tx(atomic=release_hold) as conn:
            if claimed_at is not None and not fields:  # the live path: one statement built once
                params = {"pk": event_pk, "claimed": claimed_at, "new_state": state, "new_detail": detail[:2000],
                          "new_action": action, "now": now}
                written = conn.execute(_FINISH_CLAIMED, params).rowcount == 1
            else:
                values = {"state": state, "detail": detail[:2000], "action": action, "updated_at": now,
                          "claimed_at": None}
                values.update(fields or {})
                query = update(events).where(events.c.id == event_pk)
                if claimed_at is not None:
                    values["started_at"] = claimed_at
                    query = query.where(events.c.state == "processing", events.c.claimed_at == claimed_at)
                written = conn.execute(query.values(**values)).rowcount == 1
            if written and release_hold:
                conn.execute(_RELEASE, {"pk": event_pk})
            return written

    def release(self, event_pk: int, *, now: datetime) -> None:
        """Hand a claimed event back to the sweeper (used at shutdown)."""
        with self._tx() as conn:
            conn.execute(update(events).where(events.c.id == event_pk, events.c.state == "processing")
                         .values(state="received", claimed_at=None, updated_at=now))

    def add_attempt(self, event_pk: int, attempt: Attempt) -> None:
        """Keep one Genesys request made for an event (its `at` set)."""
        with self._tx() as conn:
            conn.execute(insert(attempts).values(event=event_pk, **(asdict(attempt) | {"path": attempt.path[:512]})))

    def advance_agent(self, agent: str, *, occurred_at: datetime, event_pk: int, now: datetime,
                      hold_until: datetime | None = None) -> str:
        """Take the agent's ordering slot for this event, in one conditional statement, unless a newer event has it
        (OLDER) or another event holds it while it acts on Genesys (BUSY); OURS when this event may act. With
        hold_until, this event also holds the slot until then, or until finish(release_hold=True) frees it."""
        params = {"who": agent, "occurred": occurred_at, "pk": event_pk, "now": now,
                  "holder": event_pk if hold_until is not None else None, "until": hold_until}
        with self._tx() as conn:
            if conn.execute(_ADVANCE, params).rowcount == 1:
                return OURS
            slot = conn.execute(_SLOT, {"who": agent}).one()
        return OLDER if (slot.occurred_at, int(slot.event)) > (occurred_at, event_pk) else BUSY

    def agent_slot(self, agent: str) -> tuple[datetime, int] | None:
        """Return (occurred_at, event row id) of the newest event acted on for an agent, or None."""
        with self._tx() as conn:
            row = conn.execute(_SLOT, {"who": agent}).first()
        return (row[0], int(row[1])) if row else None

    def pending(self, *, received_before: datetime | None, stale_before: datetime | None, limit: int = 100,
                owner: str | None = None, alive_after: datetime | None = None) -> builtins.list[int]:
        """Return ids of events left in received, or stuck in processing with a stale claim or a claim whose process
        stopped proving it is alive (since alive_after; never owner's own), oldest first."""
        stuck = []
        if received_before is not None:
            stuck.append(and_(events.c.state == "received", events.c.received_at < received_before))
        if stale_before is not None:
            stuck.append(and_(events.c.state == "processing", events.c.claimed_at < stale_before))
        if alive_after is not None:
            live = select(processes.c.id).where(processes.c.beat_at >= alive_after)
            orphaned = and_(events.c.state == "processing", events.c.claimed_by.is_not(None),
                            events.c.claimed_by.not_in(live))
            stuck.append(orphaned if owner is None else and_(orphaned, events.c.claimed_by != owner))
        if not stuck:
            return []
        with self._tx() as conn:
            rows = conn.execute(select(events.c.id).where(or_(*stuck)).order_by(events.c.id).limit(limit)).all()
        return [int(r[0]) for r in rows]

    def oldest_unfinished(self) -> datetime | None:
        """Return the receipt time of the oldest event still received or processing."""
        with self._tx() as conn:
            return conn.execute(select(func.min(events.c.received_at))
                                .where(events.c.state.in_(["received", "processing"]))).scalar()

    # -- the processes that claim events --

    def beat(self, owner: str, *, host: str, pid: int, started_at: datetime, now: datetime) -> None:
        """Record that the process `owner` is alive now (its claims are then never taken over)."""
        with self._tx() as conn:
            conn.execute(_BEAT, {"owner": owner, "host": host[:255], "pid": pid, "started": started_at, "now": now})

    def forget_process(self, owner: str) -> None:
        """Remove a process that stops (a graceful shutdown hands its claims back first)."""
        with self._tx() as conn:
            conn.execute(delete(processes).where(processes.c.id == owner))

    def forget_dead_processes(self, *, before: datetime) -> int:
        """Remove processes that last proved they were alive before a time; return how many."""
        with self._tx() as conn:
            return int(conn.execute(delete(processes).where(processes.c.beat_at < before)).rowcount)

    # -- retention --

    def purge(self, *, before: datetime, batch: int = 1000, keep_slots_after: datetime | None = None) -> int:
        """Delete events received before a time, with their attempts and the deliveries left without an event, in
        batches; then the agents' ordering slots no remaining event refers to whose last event is older than
        before and than keep_slots_after (the age limit: an event older than that is never acted on anyway, so the
        slot guards nothing). Dedupe keys stay (purge_keys). Return how many events went."""
        total = 0
        while True:
            with self._tx(atomic=True, timeout=BULK_SECONDS) as conn:
                rows = conn.execute(select(events.c.id, events.c.delivery).where(events.c.received_at < before)
                                    .order_by(events.c.id).limit(batch)).all()
                if not rows:
                    break
                ids = [r[0] for r in rows]
                conn.execute(delete(attempts).where(attempts.c.event.in_(ids)))
                conn.execute(delete(events).where(events.c.id.in_(ids)))
                touched = {r[1] for r in rows if r[1] is not None}
                left = select(events.c.id).where(events.c.delivery == deliveries.c.id).exists()
                conn.execute(delete(deliveries).where(deliveries.c.id.in_(touched), ~left))
            total += len(ids)
        horizon = min(before, keep_slots_after) if keep_slots_after else before
        unused = ~select(events.c.id).where(events.c.id == agent_state.c.event).exists()
        with self._tx(timeout=BULK_SECONDS) as conn:
            conn.execute(delete(agent_state).where(
                agent_state.c.occurred_at < horizon, agent_state.c.updated_at < before, unused,
                or_(agent_state.c.holder.is_(None), agent_state.c.held_until < before)))
        return total

    def purge_keys(self, *, before: datetime) -> int:
        """Forget the dedupe keys of events first received before a time (kept far longer than the events)."""
        with self._tx(timeout=BULK_SECONDS) as conn:
            return int(conn.execute(delete(event_keys).where(event_keys.c.seen_at < before)).rowcount)

    # -- Genesys connections (the ConnectionRepo of webhook.genesys.auth) --

    def connection(self, user_id: str) -> UserConnection | None:
        """Return the connection of a Genesys user id."""
        return self._one_connection(genesys_connections.c.user_id == user_id.lower())

    def find_connection(self, agent: str) -> UserConnection | None:
        """Return the agent connection of a Genesys user id or e-mail (case-insensitive)."""
        column = genesys_connections.c.user_id if UUID_RE.match(agent) else genesys_connections.c.email_lower
        return self._one_connection(and_(column == agent.lower(), genesys_connections.c.kind == "agent"))

    def service_user(self) -> UserConnection | None:
        """Return the service user's connection."""
        return self._one_connection(genesys_connections.c.kind == "service_user")

    def connections(self) -> builtins.list[UserConnection]:
        """Return every connection, the service user first, then by e-mail."""
        query = select(genesys_connections).order_by(genesys_connections.c.kind.desc(),
                                                     genesys_connections.c.email_lower)
        with self._tx() as conn:
            return [_connection(row) for row in conn.execute(query).mappings()]

    def save_connection(self, connection: UserConnection) -> None:
        """Insert or replace a user's connection; a new service user replaces the old one, in one transaction.

        The version keeps growing across a replace, so that a process that read the old row cannot take a refresh
        lease on the new one (and refresh it with the old refresh token). The service user who signs in on the
        agents' page stays the service user, with the new tokens."""
        values = {name: getattr(connection, name) for name in _CONNECTION_FIELDS}
        values |= {"user_id": connection.user_id.lower(), "email_lower": connection.email.lower(), "lease": None,
                   "lease_until": None, "created_at": connection.created_at or connection.refreshed_at}
        with self._tx(atomic=True) as conn:
            if self.dialect == "postgresql":  # two service users saved at once must not both survive the delete
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CONNECTIONS_LOCK})
            old = conn.execute(select(genesys_connections.c.version, genesys_connections.c.kind)
                               .where(genesys_connections.c.user_id == values["user_id"])).first()
            if old is not None:
                values["version"] = int(old.version) + 1
                if old.kind == "service_user":
                    values["kind"] = "service_user"
            stale = genesys_connections.c.user_id == values["user_id"]
            if connection.kind == "service_user":
                stale = or_(stale, genesys_connections.c.kind == "service_user")
            if values["email_lower"]:  # an e-mail names one user: an older connection that still claims it is stale
                stale = or_(stale, and_(genesys_connections.c.email_lower == values["email_lower"],
                                        genesys_connections.c.kind == "agent"))
            conn.execute(delete(genesys_connections).where(stale))
            conn.execute(insert(genesys_connections).values(**values))

    def delete_connection(self, user_id: str) -> bool:
        """Delete a connection; return whether there was one."""
        with self._tx() as conn:
            return conn.execute(delete(genesys_connections)
                                .where(genesys_connections.c.user_id == user_id.lower())).rowcount == 1

    def lease_refresh(self, user_id: str, *, version: int, lease: str, until: datetime, now: datetime) -> bool:
        """Take the right to refresh a connection still at version with no live lease; True when taken."""
        free = or_(genesys_connections.c.lease.is_(None), genesys_connections.c.lease_until < now)
        query = update(genesys_connections).where(
            genesys_connections.c.user_id == user_id, genesys_connections.c.version == version,
            genesys_connections.c.state == "ok", free).values(lease=lease, lease_until=until)
        with self._tx() as conn:
            return conn.execute(query).rowcount == 1

    def store_refresh(self, user_id: str, *, lease: str, access_token: str, access_expires_at: datetime,
                      refresh_token: str, now: datetime, email: str | None = None, name: str | None = None) -> bool:
        """Store refreshed tokens (and the user's current e-mail and name, when given) under the lease, bump the
        version and end the lease; True when written."""
        values: dict[str, Any] = {
            "access_token": access_token, "access_expires_at": access_expires_at, "refresh_token": refresh_token,
            "refreshed_at": now, "version": genesys_connections.c.version + 1, "lease": None, "lease_until": None}
        if email is not None:  # Genesys says who the user is now: an e-mail reassigned to someone else moves on
            values |= {"email": email, "email_lower": email.lower(), "name": name or ""}
        query = update(genesys_connections).where(
            genesys_connections.c.user_id == user_id, genesys_connections.c.lease == lease).values(**values)
        with self._tx() as conn:
            return conn.execute(query).rowcount == 1

    def end_lease(self, user_id: str, *, lease: str) -> None:
        """Give a refresh lease up without new tokens."""
        with self._tx() as conn:
            conn.execute(update(genesys_connections).where(genesys_connections.c.user_id == user_id,
                                                           genesys_connections.c.lease == lease)
                         .values(lease=None, lease_until=None))

    def mark_broken(self, user_id: str, *, lease: str, reason: str, now: datetime) -> None:
        """Mark a connection broken under the lease, dropping its access token (the refresh token was refused)."""
        with self._tx() as conn:
            conn.execute(update(genesys_connections).where(genesys_connections.c.user_id == user_id,
                                                           genesys_connections.c.lease == lease)
                         .values(state="broken", reason=reason, broken_at=now, access_token=None,
                                 access_expires_at=None, lease=None, lease_until=None,
                                 version=genesys_connections.c.version + 1))

    def touch_connection(self, user_id: str, *, now: datetime) -> None:
        """Record that a connection was just used to act."""
        with self._tx() as conn:
            conn.execute(update(genesys_connections).where(genesys_connections.c.user_id == user_id)
                         .values(used_at=now))

    def rewrite_tokens(self, rewrite: Callable[[str], str]) -> int:
        """Pass every stored token and PKCE verifier through rewrite (key rotation); return the connections
        rewritten. A row is written only if no refresh changed it since it was read (compare-and-set on version):
        a refresh in between is read again, so its new refresh token is never overwritten by the old one."""
        done = 0
        for user_id in [c.user_id for c in self.connections()]:
            for _ in range(10):
                with self._tx() as conn:
                    row = conn.execute(select(genesys_connections).where(
                        genesys_connections.c.user_id == user_id)).mappings().first()
                    if row is None:
                        break
                    written = conn.execute(update(genesys_connections).where(
                        genesys_connections.c.user_id == user_id,
                        genesys_connections.c.version == row["version"],
                    ).values(refresh_token=rewrite(row["refresh_token"]),
                             access_token=rewrite(row["access_token"]) if row["access_token"] else None)).rowcount
                if written:
                    done += 1
                    break
        with self._tx() as conn:
            flows = conn.execute(select(oauth_states.c.key, oauth_states.c.verifier)
                                 .where(oauth_states.c.verifier.is_not(None))).all()
            for key, verifier in flows:
                conn.execute(update(oauth_states).where(oauth_states.c.key == key).values(verifier=rewrite(verifier)))
        return done

    def _one_connection(self, where: Any) -> UserConnection | None:
        with self._tx() as conn:
            row = conn.execute(select(genesys_connections).where(where).limit(1)).mappings().first()
        return _connection(row) if row else None

    # -- authorization-code flows in progress --

    def add_oauth_state(self, state: OAuthState) -> None:
        """Keep a flow in progress (or a service-user link) until it is used or expires."""
        with self._tx() as conn:
            conn.execute(insert(oauth_states).values(**asdict(state)))

    def oauth_state(self, key: str) -> OAuthState | None:
        """Return a flow in progress by key."""
        with self._tx() as conn:
            row = conn.execute(select(oauth_states).where(oauth_states.c.key == key)).mappings().first()
        return OAuthState(**row) if row else None

    def spend_oauth_state(self, key: str, *, now: datetime) -> bool:
        """Mark a flow (or link) used, only if it is unused and unexpired; True for the one caller that did."""
        query = update(oauth_states).where(oauth_states.c.key == key, oauth_states.c.used_at.is_(None),
                                           oauth_states.c.expires_at > now).values(used_at=now)
        with self._tx() as conn:
            return conn.execute(query).rowcount == 1

    def oauth_states_in_progress(self, *, now: datetime) -> int:
        """Return how many flows and links have not expired yet."""
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).select_from(oauth_states)
                                    .where(oauth_states.c.expires_at > now)).scalar() or 0)

    # -- card capture's safety limits --

    def schedule_undo(self, undo: Undo) -> None:
        """Remember to undo a mute or a pause at undo.due_at, replacing an earlier one of the agent's of that kind."""
        with self._tx(atomic=True) as conn:
            conn.execute(delete(safety_undos).where(safety_undos.c.agent == undo.agent,
                                                    safety_undos.c.kind == undo.kind))
            conn.execute(insert(safety_undos).values(**asdict(undo)))

    def cancel_undo(self, agent: str, kind: str) -> None:
        """Forget the pending undo of an agent's mute or pause (a newer event undid it, or the safety event ran)."""
        with self._tx() as conn:
            conn.execute(delete(safety_undos).where(safety_undos.c.agent == agent, safety_undos.c.kind == kind))

    def due_undos(self, *, now: datetime, limit: int = 100) -> builtins.list[Undo]:
        """Return the pending undos that came due, oldest first."""
        query = select(safety_undos).where(safety_undos.c.due_at <= now).order_by(safety_undos.c.due_at).limit(limit)
        with self._tx() as conn:
            return [Undo(**row) for row in conn.execute(query).mappings()]

    def pending_undos(self) -> builtins.list[Undo]:
        """Return every pending undo (for tests and the console)."""
        with self._tx() as conn:
            return [Undo(**row) for row in conn.execute(select(safety_undos).order_by(safety_undos.c.due_at))
                    .mappings()]

    def spawn_undo(self, undo: Undo, delivery: NewDelivery, event: NewEvent) -> Saved | None:
        """Turn a due undo into its stored safety event (and its delivery), in one transaction; None when another
        process (or a newer event) took the undo first."""
        with self._tx(atomic=True) as conn:
            taken = conn.execute(delete(safety_undos).where(
                safety_undos.c.agent == undo.agent, safety_undos.c.kind == undo.kind,
                safety_undos.c.event == undo.event)).rowcount == 1
            if not taken:
                return None
            [saved] = self._save_in(conn, delivery, [event])
            conn.execute(insert(audit).values(  # in the audit beside the operators' actions, as the service's own
                at=event.received_at, operator="safety limit", action=f"undo {undo.kind}", event=saved.id,
                target=f"{undo.agent} on call {undo.conversation_id}"[:512],
                detail=f"event {undo.event}'s {undo.kind} was not undone by {_iso(undo.due_at)}"))
            return saved

    def purge_oauth_states(self, *, before: datetime) -> int:
        """Delete flows and links that expired before a time."""
        with self._tx() as conn:
            return int(conn.execute(delete(oauth_states).where(oauth_states.c.expires_at < before)).rowcount)

    # -- the operators' console: event pages, agents, the last day, the audit log --

    def event_lines(self, where: EventFilter, *, before: int | None = None, after: int | None = None,
                    limit: int = 50) -> builtins.list[EventRecord]:
        """Return one page of events matching the filter, newest first: older than the row id `before`, or the
        oldest `limit` of those newer than `after` (the page before, going back up)."""
        query = select(events).where(*where.clauses()).limit(limit)
        if after is not None:
            query = query.where(events.c.id > after).order_by(events.c.id)
        else:
            query = query.order_by(events.c.id.desc())
        if before is not None:
            query = query.where(events.c.id < before)
        with self._tx() as conn:
            lines = [_record(row) for row in conn.execute(query).mappings()]
        return lines[::-1] if after is not None else lines

    def event_ids(self, where: EventFilter, *, limit: int) -> builtins.list[int]:
        """Return the row ids of the events matching the filter, newest first, at most limit."""
        query = select(events.c.id).where(*where.clauses()).order_by(events.c.id.desc()).limit(limit)
        with self._tx() as conn:
            return [int(r[0]) for r in conn.execute(query)]

    def state_counts(self, where: EventFilter) -> dict[str, int]:
        """Return how many events match the filter (its state aside) in each state."""
        query = select(events.c.state, func.count()).where(*replace(where, state=None).clauses())
        with self._tx() as conn:
            rows = conn.execute(query.group_by(events.c.state)).all()
        return {state: int(count) for state, count in rows}

    def agents_seen(self, *, limit: int = 500) -> builtins.list[AgentLine]:
        """Return each agent named by an event (the most recently seen first): their last event and last applied."""
        newest = (select(events.c.agent, func.max(events.c.id).label("last")).where(events.c.agent.is_not(None))
                  .group_by(events.c.agent).order_by(func.max(events.c.id).desc()).limit(limit))
        with self._tx() as conn:
            last = {row.agent: int(row.last) for row in conn.execute(newest)}
            applied: dict[str, int] = {str(r[0]): int(r[1]) for r in conn.execute(
                select(events.c.agent, func.max(events.c.id)).where(events.c.state == "applied",
                                                                    events.c.agent.in_(list(last)))
                .group_by(events.c.agent))} if last else {}
            wanted = set(last.values()) | set(applied.values())
            rows = {int(r["id"]): _record(r) for r in conn.execute(
                select(events).where(events.c.id.in_(wanted))).mappings()} if wanted else {}
        return [AgentLine(agent, rows[pk], rows.get(applied[agent]) if agent in applied else None)
                for agent, pk in last.items()]

    def final_states_by_hour(self, *, since: datetime) -> builtins.list[tuple[str, str, int]]:
        """Return (hour "YYYY-MM-DD HH" in UTC, state, count) of the events received since a time."""
        if self.dialect == "sqlite":  # stored as "YYYY-MM-DD HH:MM:SS.ffffff" in UTC
            hour: Any = func.substr(events.c.received_at, 1, 13)
        else:
            hour = func.to_char(func.timezone("UTC", events.c.received_at), "YYYY-MM-DD HH24")
        query = (select(hour.label("hour"), events.c.state, func.count()).where(events.c.received_at >= since)
                 .group_by(hour, events.c.state))
        with self._tx() as conn:
            return [(str(h), str(state), int(n)) for h, state, n in conn.execute(query)]

    def applied_latencies(self, *, since: datetime, limit: int = 20000) -> builtins.list[tuple[datetime, float]]:
        """Return (received_at, seconds from receipt to the final state) of the newest applied events since a time."""
        query = (select(events.c.received_at, events.c.updated_at)
                 .where(events.c.state == "applied", events.c.received_at >= since)
                 .order_by(events.c.id.desc()).limit(limit))
        with self._tx() as conn:
            return [(r.received_at, (r.updated_at - r.received_at).total_seconds()) for r in conn.execute(query)]

    def add_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Keep what an operator did (one line per event touched), in one transaction."""
        if not entries:
            return
        with self._tx(atomic=len(entries) > 1) as conn:
            conn.execute(insert(audit), [{"at": e.at, "operator": e.operator[:320], "action": e.action,
                                          "event": e.event, "target": e.target[:512], "detail": e.detail[:2000]}
                                         for e in entries])

    def audit_lines(self, *, event: int | None = None, limit: int | None = 100) -> builtins.list[AuditEntry]:
        """Return audit lines, newest first; only those of one event when given."""
        query = select(audit).order_by(audit.c.id.desc())
        if event is not None:
            query = query.where(audit.c.event == event)
        if limit:
            query = query.limit(limit)
        with self._tx() as conn:
            return [AuditEntry(**{k: v for k, v in row.items()}) for row in conn.execute(query).mappings()]


@dataclass(frozen=True)
class EventFilter:
    """What the console's events page filters on; None (or "") means any."""

    state: str | None = None
    source: str | None = None
    agent: str | None = None
    ticket: str | None = None
    since: datetime | None = None

    def clauses(self) -> builtins.list[Any]:
        """Return the WHERE clauses of the filter."""
        found: builtins.list[Any] = []
        for column, value in ((events.c.state, self.state), (events.c.source, self.source),
                              (events.c.agent, self.agent), (events.c.ticket_id, self.ticket)):
            if value:
                found.append(column == value)
        if self.since is not None:
            found.append(events.c.received_at >= self.since)
        return found




@dataclass(frozen=True)
class AgentLine:
    """An agent seen in events: their newest event, and their newest applied one (what the microphone should be)."""

    agent: str
    last: EventRecord
    applied: EventRecord | None


@dataclass(frozen=True)
class AuditEntry:
    """One thing an operator did in the console: who, when, the action, what it touched and how it ended."""

    at: datetime
    operator: str
    action: str
    target: str
    detail: str
    event: int | None = None
    id: int | None = None



CONNECTIONS_LOCK = 0x636F6E6E  # pg_advisory_xact_lock key of connection replacements ("conn")
_CONNECTION_FIELDS = ("kind", "email", "name", "refresh_token", "access_token", "access_expires_at", "state", "reason",
                      "broken_at", "refreshed_at", "used_at", "version")


def _connection(row: RowMapping) -> UserConnection:
    values = {k: v for k, v in row.items() if k not in ("email_lower", "lease", "lease_until")}
    return UserConnection(**values)


def _record(row: RowMapping) -> EventRecord:
    return EventRecord(**row)


def _delivery(row: RowMapping) -> Delivery:
    values = dict(row)
    values["raw_body"] = bytes(values["raw_body"])
    try:
        values["headers"] = json.loads(values["headers"] or "{}")
    except ValueError:
        values["headers"] = {}
    return Delivery(**values)


def schema_verdict(version: int, *, has_tables: bool) -> str | None:
    """Say what is wrong with a schema at `version` (0: never migrated), with the command that fixes it, or None."""
    if version >= SCHEMA_VERSION:
        return None
    if version == 0 and not has_tables:
        return (f"the database has no schema yet: run `{UPGRADE_COMMAND}` (the Procfile's release step) to create "
                "it")
    found = f"version {version}" if version else "a version from before versioning"
    return (f"the database schema is outdated ({found}; this code needs version {SCHEMA_VERSION}): run "
            f"`{UPGRADE_COMMAND}` (the Procfile's release step) to migrate it")


def _missing_schema(exc: SQLAlchemyError) -> bool:
    """Tell whether the database refused a statement for a table or column it does not have (SQLite says "no such
    table", PostgreSQL "relation ... does not exist")."""
    text_ = str(getattr(exc, "orig", exc)).lower()
    return "no such table" in text_ or "no such column" in text_ or "does not exist" in text_ or (
        "has no column named" in text_)




class _GuardedConnection(psycopg.Connection[Any]):
    """A psycopg connection that gives up on an answer past the current unit of work's deadline (Store._tx).

    PostgreSQL's statement_timeout needs a server that still runs: a stopped (SIGSTOP), swapped-out or unreachable
    server never answers, and the kernel keeps acknowledging the bytes sent, so no TCP timeout fires either. psycopg
    waits in short intervals; past the deadline the connection is closed and OperationalError raised, which
    SQLAlchemy treats as a disconnect (the connection is dropped from the pool)."""

    def wait(self, gen: Any, interval: float | None = 0.1) -> Any:
        deadline = _DEADLINE.get()
        if deadline is None:
            return super().wait(gen, interval=0.1 if interval is None else interval)
        return super().wait(self._bounded(gen, deadline), interval=0.1)

    def _bounded(self, gen: Any, deadline: float) -> Any:
        try:
            state = next(gen)
        except StopIteration as done:  # nothing to wait for
            return done.value
        while True:
            ready = yield state
            if not ready and time.monotonic() >= deadline:
                self.pgconn.finish()
                raise psycopg.OperationalError("the database did not answer in time; the connection was closed")
            try:
                state = gen.send(ready)
            except StopIteration as done:
                return done.value


def _save_single_statement() -> TextClause:
    """PostgreSQL: record the key, then (only if it is new) the delivery, then the event pointing at it; one statement.
    Returns the event's id, or no row for a duplicate."""
    names = [c.name for c in events.columns if c.name != "id"]
    kept = [c.name for c in deliveries.columns if c.name != "id"]
    # Only table and column names of this module go into the text; every value is a bound parameter.
    sql = (
        "WITH k AS (INSERT INTO event_keys (source, event_id, seen_at) VALUES (:source, :event_id, :received_at) "  # noqa: S608
        "ON CONFLICT (source, event_id) DO NOTHING RETURNING 1), "
        f"d AS (INSERT INTO deliveries ({', '.join(kept)}) SELECT {', '.join(':d_' + n for n in kept)} "
        "WHERE EXISTS (SELECT 1 FROM k) RETURNING id) "
        f"INSERT INTO events ({', '.join(names)}) SELECT "
        f"{', '.join('d.id' if n == 'delivery' else ':' + n for n in names)} FROM d "
        "ON CONFLICT (source, event_id) DO NOTHING RETURNING id")
    params = [bindparam(n, type_=events.c[n].type) for n in names if n != "delivery"]
    params += [bindparam("d_" + n, type_=deliveries.c[n].type) for n in kept]
    return text(sql).bindparams(*params)


def _guarded_connect(dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() >= deadline:
        # The unit's time is spent (a ping of a pooled connection hung, say): no new connection is tried.
        raise psycopg.OperationalError("no time left to connect to the database")
    return _GuardedConnection.connect(*cargs, **cparams)


def _make_sqlite_folder(url: str) -> None:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:" and not path.startswith("file:"):
        folder = Path(path).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # Left to the first query, which raises StoreError like any other unreachable database.
            logger.warning("cannot create the SQLite folder %s: %s", folder, exc.strerror)


def _sqlite_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    _wait_for_sqlite_lock(lambda: cursor.execute(statement, parameters))
    return True


def _sqlite_execute_no_params(cursor: Any, statement: str, context: Any) -> bool:
    _wait_for_sqlite_lock(lambda: cursor.execute(statement))
    return True


def _wait_for_sqlite_lock(run: Callable[[], Any]) -> None:
    """Run a statement; while another process holds SQLite's write lock, wait in Python (time.sleep, which a gevent
    worker patches, so its other greenlets keep serving) for up to SQLITE_BUSY_SECONDS. SQLite's own busy wait sleeps
    inside C and would stop the whole worker. A statement refused as busy took no effect, so running it again is
    safe."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    pause = 0.001
    while True:
        try:
            run()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + pause > deadline:
                raise
        _pause(pause)
        pause = min(pause * 2, 0.05)


def _pause(seconds: float) -> None:
    time.sleep(seconds)  # looked up at each call: gevent's patched sleep in a gevent worker


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # The driver's autocommit: no implicit BEGIN before a write, so a one-statement unit holds the write lock only
    # while SQLite runs it (Store._tx emits BEGIN IMMEDIATE for the units that need several statements).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
