"""The console's pages: overview, events, an event's detail, replay (preview, then run), agents, connections, rules
and the audit log. Every stored field reaches the page through Jinja's autoescape and the `visible` filter."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import click
from flask import abort, redirect, render_template, request, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from webhook import oauth_flow
from webhook import replay as replaying
from webhook.app_state import get_state
from webhook.cli import parse_since
from webhook.console import chart
from webhook.console.auth import bp, operator
from webhook.errors import GenesysError, StoreError
from webhook.genesys.model import Attempt, Connection
from webhook.processing import REPLAYABLE
from webhook.rules import decide_fields
from webhook.store import FINAL_STATES, STATES, AuditEntry, EventFilter, EventRecord

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
MAX_REPLAY = 200  # events per replay from the console; `flask --app wsgi replay` has no limit
REFRESH_SECONDS = 10
# C0 and C1 controls, DEL, and the bidirectional overrides and isolates that can make text read other than it is.
HIDDEN_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
LINE_RE = re.compile(r"[\t\n]")


def visible(value: Any, *, lines: bool = False) -> str:
    """Return text with control and bidi characters shown as escapes (\\x1b, \\u202e); newlines and tabs too
    unless lines (a pretty-printed body). Jinja's autoescape then escapes the markup."""
    if value is None:
        return "-"
    text = value.isoformat(sep=" ", timespec="seconds").replace("+00:00", "Z") if isinstance(value, datetime) \
        else str(value)
    text = HIDDEN_RE.sub(_escape_char, text)
    return text if lines else LINE_RE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def body_text(raw: bytes) -> str:
    """Return a body for reading: JSON pretty-printed, other UTF-8 as is, anything else as base64."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode()
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return text


@bp.app_template_filter("visible")
def _visible_filter(value: Any) -> str:
    return visible(value)


@bp.app_template_filter("instant")
def _instant_filter(value: datetime | None) -> str:
    """A time to the millisecond (the timeline's steps are often within one second)."""
    return "-" if value is None else value.isoformat(sep=" ", timespec="milliseconds").replace("+00:00", "Z")


@bp.app_template_filter("ago")
def _ago_filter(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = (get_state().clock() - value).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


# ---------------------------------------------------------------- overview


@bp.get("/")
def overview() -> str:
    """Readiness, Genesys mode, the oldest unfinished event and the last 24 hours."""
    state = get_state()
    now = state.clock()
    since = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=chart.HOURS - 1)
    try:
        state.store.ping()
        oldest = state.store.oldest_unfinished()
        by_hour = state.store.final_states_by_hour(since=since)
        # Only what the live path could have applied: a replay with --force of an old event is no latency figure.
        limit = state.settings.max_event_age_seconds + state.settings.retry_budget_seconds
        latencies = [s for s in state.store.applied_latencies(since=since) if s[1] <= limit]
        database = "ok"
    except StoreError:
        oldest, by_hour, latencies, database = None, [], [], "not answering"
    totals: dict[str, int] = {}
    for _, name, count in by_hour:
        totals[name] = totals.get(name, 0) + count
    cfg = state.settings.genesys
    return render_template(
        "console/overview.html", database=database, mode="dry run" if cfg.dry_run else "live",
        identities=cfg.identities(), oldest=oldest, totals=totals, states_chart=chart.states_by_hour(by_hour, now),
        latency_chart=chart.latency_by_hour(latencies, now), stack=chart.STACK, latency_count=len(latencies),
        p50=chart.percentile([s for _, s in latencies], 50) * 1000 if latencies else None,
        p95=chart.percentile([s for _, s in latencies], 95) * 1000 if latencies else None)


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Filters:
    """The events page's query: the filter, as typed, and what was wrong with it."""

    where: EventFilter
    args: dict[str, str]
    problems: tuple[str, ...]


def read_filters(values: MultiDict[str, str]) -> Filters:
    """Read state, source, agent, ticket and since from a query or a form; name every bad value."""
    args = {k: values.get(k, "").strip() for k in ("state", "source", "agent", "ticket", "since")}
    problems = []
    if args["state"] and args["state"] not in STATES:
        problems.append(f"state {args['state']!r} is not one of {', '.join(STATES)}")
    since = None
    if args["since"]:
        try:
            since = parse_since(args["since"], get_state().clock())
        except click.BadParameter as exc:
            problems.append(f"since: {exc.message}")
    where = EventFilter(state=args["state"] or None, source=args["source"] or None, agent=args["agent"] or None,
                        ticket=args["ticket"] or None, since=since)
    return Filters(where, {k: v for k, v in args.items() if v}, tuple(problems))


@bp.get("/events")
def events_page() -> tuple[str, int]:
    """The event log, newest first, filtered, a page at a time, with the counts per state."""
    state = get_state()
    filters = read_filters(request.args)
    problems = list(filters.problems)
    before, after = _row_id("before", problems), _row_id("after", problems)
    refresh = request.args.get("refresh") == "1"
    rows: list[EventRecord] = []
    counts: dict[str, int] = {}
    has_older = has_newer = False
    if not problems:
        rows = state.store.event_lines(filters.where, before=before, after=after, limit=PAGE_SIZE + 1)
        if after is not None:
            has_newer, rows, has_older = len(rows) > PAGE_SIZE, rows[-PAGE_SIZE:], True
        else:
            has_older, rows, has_newer = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE], before is not None
        counts = state.store.state_counts(filters.where)
    page = render_template(
        "console/events.html", rows=rows, args=filters.args, problems=problems, counts=counts, states=STATES,
        total=sum(counts.values()), sources=sorted(state.settings.sources), has_older=has_older,
        has_newer=has_newer, refresh=refresh, refresh_seconds=REFRESH_SECONDS, max_replay=MAX_REPLAY,
        matching=counts.get(filters.where.state, 0) if filters.where.state else sum(counts.values()))
    return page, 400 if problems else 200


def _row_id(name: str, problems: list[str]) -> int | None:
    value = request.args.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        problems.append(f"{name} must be an event id (a whole number), got {value[:40]!r}")
        return None
    return int(value)


@bp.get("/events/<int:pk>")
def event_page(pk: int) -> tuple[str, int]:
    """One event: its fields, the rule, a timeline of every Genesys attempt, the body, the headers, the audit."""
    state = get_state()
    record = state.store.get(pk)
    if record is None:
        return render_template("console/message.html", title=f"No event {pk}",
                               detail="It may have been purged. The events page lists the stored ones."), 404
    attempts = state.store.attempts(pk)
    delivery = state.store.delivery(record.delivery)  # the request it came in: its body and headers, kept once
    decision = (decide_fields(state.settings.rules, record.source, record.status, record.previous_status)
                if record.status is not None else None)
    return render_template(
        "console/event.html", event=record, attempts=attempts, decision=decision, timeline=timeline(record, attempts),
        body=visible(body_text(delivery.raw_body), lines=True) if delivery else "(the request was not kept)",
        headers=sorted(delivery.headers.items()) if delivery else [], delivery=delivery,
        audit=state.store.audit_lines(event=pk, limit=None), replayable=record.state in REPLAYABLE), 200


@dataclass(frozen=True)
class Step:
    """One line of an event's timeline: received, claimed, a Genesys attempt, or the final state."""

    at: datetime | None
    name: str
    detail: str
    attempt: Attempt | None = None


def timeline(record: EventRecord, attempts: list[Attempt]) -> list[Step]:
    """Return the event's steps in time order (ties keep the order received, claimed, attempts, final)."""
    steps = [Step(record.received_at, "received", "stored and answered 2xx")]
    claimed = record.claimed_at if record.state == "processing" else record.started_at
    if claimed is not None:
        steps.append(Step(claimed, "claimed", "a worker is acting on it now" if record.state == "processing"
                          else "claimed by the run that gave the final state"))
    steps += [Step(a.at, "Genesys", "", a) for a in attempts]
    if record.state in FINAL_STATES:
        steps.append(Step(record.updated_at, record.state, record.detail))
    order = {id(step): n for n, step in enumerate(steps)}
    return sorted(steps, key=lambda s: (s.at or record.received_at, order[id(s)]))


# ---------------------------------------------------------------- replay


@bp.post("/replay")
def replay_preview() -> tuple[str, int]:
    """Show what a replay would do, per event (replay --dry-run); the confirmation runs it."""
    state = get_state()
    force = request.form.get("force") == "1"
    ids, problem = _replay_ids()
    if problem:
        return render_template("console/message.html", title="Nothing to replay", detail=problem), 400
    outcomes = replaying.replay(state.processor, ids, dry_run=True, force=force)
    return render_template("console/replay.html", outcomes=outcomes, ids=ids, force=force, ran=False,
                           columns=replaying.COLUMNS, force_skips=replaying.FORCE_SKIPS,
                           failed=len(replaying.failed(outcomes))), 200


@bp.post("/replay/run")
def replay_run() -> tuple[str, int]:
    """Run the previewed events through processing again, record each in the audit log, show the replay table."""
    state = get_state()
    force = request.form.get("force") == "1"
    ids, problem = _replay_ids()
    if problem:
        return render_template("console/message.html", title="Nothing to replay", detail=problem), 400
    who, action = operator(), "replay_forced" if force else "replay"
    started = time.monotonic()
    outcomes = replaying.replay(state.processor, ids, dry_run=False, force=force)
    now = state.clock()
    state.store.add_audit([AuditEntry(at=now, operator=who, action=action, event=o.event, target=f"event {o.event}",
                                      detail=f"{o.old_state} -> {o.new_state}: {o.detail}") for o in outcomes])
    logger.info("console: %d event(s) replayed%s in %.1f s", len(outcomes), " with force" if force else "",
                time.monotonic() - started)
    return render_template("console/replay.html", outcomes=outcomes, ids=ids, force=force, ran=True,
                           columns=replaying.COLUMNS, force_skips=replaying.FORCE_SKIPS,
                           failed=len(replaying.failed(outcomes))), 200


def _replay_ids() -> tuple[list[int], str | None]:
    """Return the events a replay form names (ids, or every event its filter matches), newest first."""
    form = request.form
    if form.get("scope") == "filter":
        filters = read_filters(form)
        if filters.problems:
            return [], "; ".join(filters.problems)
        ids = get_state().store.event_ids(filters.where, limit=MAX_REPLAY + 1)
    else:
        raw = form.getlist("id")
        if not all(v.isdigit() and len(v) <= 18 for v in raw):
            return [], "the event ids must be whole numbers"
        ids = sorted({int(v) for v in raw}, reverse=True)
    if not ids:
        return [], "no event is selected, or the filter matches none. Tick events on the events page first."
    if len(ids) > MAX_REPLAY:
        return [], (f"more than {MAX_REPLAY} events: the console replays at most {MAX_REPLAY} at once. Narrow the "
                    "filter, or use `flask --app wsgi replay` on the server.")
    return ids, None


# ---------------------------------------------------------------- agents, connections


@bp.get("/agents")
def agents_page() -> str:
    """Every agent seen: last event, last action applied, the microphone the service believes, their connection."""
    state = get_state()
    connections = state.store.connections()
    by_key: dict[str, Connection] = {}
    for c in connections:
        by_key[c.user_id.lower()] = c
        if c.email and c.kind == "agent":
            by_key.setdefault(c.email.lower(), c)
    rows = [(a, by_key.get(a.agent.lower())) for a in state.store.agents_seen()]
    return render_template("console/agents.html", rows=rows, users=state.users is not None)


@bp.get("/connections")
def connections_page() -> str:
    """The connected Genesys users (genesys connections), with disconnect and the service-user link."""
    state = get_state()
    return render_template("console/connections.html", connections=state.store.connections(),
                           users=state.users is not None, link=None)


@bp.post("/connections/disconnect")
def disconnect() -> Response | tuple[str, int]:
    """Delete a user's token at Genesys and the connection here (genesys disconnect), and audit it."""
    state = get_state()
    if state.users is None:
        abort(404)
    user_id = request.form.get("user_id", "")
    connection = state.store.connection(user_id) if user_id else None
    if connection is None:
        return render_template("console/message.html", title="No such connection",
                               detail="It may have been disconnected already; the connections page lists them."), 404
    outcome = "its token was deleted at Genesys"
    try:
        state.users.revoke(connection, deadline=time.monotonic() + state.settings.retry_budget_seconds)
    except GenesysError as exc:
        outcome = f"its token could not be deleted at Genesys ({exc}); it ends by itself when it expires"
    state.store.delete_connection(connection.user_id)
    state.store.add_audit([AuditEntry(at=state.clock(), operator=operator(), action="disconnect",
                                      target=f"{connection.kind} {connection.email or connection.user_id} "
                                             f"({connection.user_id})", detail=outcome)])
    return redirect(url_for("console.connections_page", done=f"disconnected {connection.email or connection.user_id}"),
                    303)


@bp.post("/connections/service-user-link")
def service_user_link() -> tuple[str, int]:
    """Make a one-time link (10 minutes) that connects the service user, show it once, and audit that it was made."""
    state = get_state()
    if state.users is None:
        abort(404)
    token = oauth_flow.new_service_user_link(state.store, now=state.clock())
    state.store.add_audit([AuditEntry(at=state.clock(), operator=operator(), action="service_user_link",
                                      target="service user", detail="one-time link made (valid 10 minutes)")])
    return render_template("console/connections.html", connections=state.store.connections(), users=True,
                           link=f"{state.users.connect_url}?link={token}"), 200


# ---------------------------------------------------------------- rules, audit


@bp.get("/rules")
def rules_page() -> str:
    """The rules table, and which rule matches a status, previous status and source."""
    settings = get_state().settings
    status = request.args.get("status", "").strip()
    previous = request.args.get("from", "").strip() or None
    source = request.args.get("source", "").strip() or "*"
    decision = decide_fields(settings.rules, source, status, previous) if status else None
    return render_template("console/rules.html", rules=list(enumerate(settings.rules, start=1)), decision=decision,
                           status=status, previous=previous or "", source=source, sources=sorted(settings.sources),
                           config_path=settings.config_path)


@bp.get("/audit")
def audit_page() -> str:
    """What operators did, newest first."""
    return render_template("console/audit.html", lines=get_state().store.audit_lines(limit=200))
