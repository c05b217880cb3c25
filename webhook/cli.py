"""Flask commands (`flask --app wsgi <command>`): init, send, events, rules, replay, agent, genesys."""

from __future__ import annotations

import functools
import json
import re
import secrets
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import requests
from flask import Flask
from flask.cli import AppGroup, with_appcontext

from webhook import intake, oauth_flow, signatures
from webhook import replay as replaying
from webhook.app_state import AppState, genesys_client, get_state
from webhook.config import Settings, secret_variable, source_schemes
from webhook.crypto import generate_key
from webhook.errors import ConfigError, GenesysError, SchemaError, StoreError
from webhook.events import FieldMap, lookup, parse_time
from webhook.genesys.auth import UserConnections
from webhook.intake import IMPORT_MARK, IMPORT_NOTE
from webhook.logs import escape
from webhook.processing import HOLD_MARGIN_SECONDS, REPLAYABLE, failure_detail
from webhook.store import STATES, EventState, Store

__all__ = ["IMPORT_MARK", "IMPORT_NOTE", "escape"]  # kept importable from here (tests, other commands)
DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str | None, now: datetime, option: str = "--since") -> datetime | None:
    """Turn "90s", "15m", "1h", "30d", "2w" or an ISO-8601 time into an aware datetime; a duration reaching back
    before year 1 is refused in one line naming the option."""
    if not value:
        return None
    match = DURATION_RE.match(value.strip())
    if match:
        try:
            return now - timedelta(seconds=float(match.group(1)) * UNITS[match.group(2)])
        except OverflowError as exc:  # 1000000w, 99999999999999999999d: before year 1
            raise click.BadParameter(f"{value!r} reaches back before year 1; give a shorter duration such as 30d",
                                     param_hint=option) from exc
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is neither a duration such as 1h or 30d nor an ISO-8601 time",
                                 param_hint=option) from exc


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], widths: dict[int, int] | None = None) -> str:
    """Format rows as a plain text table; columns listed in widths are cut to that many characters."""
    cut = widths or {}
    cells = [[_cell(v, cut.get(i)) for i, v in enumerate(row)] for row in rows]
    sizes = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(sizes[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(c.ljust(sizes[i]) for i, c in enumerate(r)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any, width: int | None) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M:%S")
    elif isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    text = escape(text)  # stored fields come from senders: never raw control characters on a terminal
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


# ---------------------------------------------------------------- init


@click.command("init")
@click.option("--env-file", default=".env", show_default=True, type=click.Path(dir_okay=False))
@click.option("--example", default=".env.example", show_default=True, type=click.Path(dir_okay=False))
def init_command(env_file: str, example: str) -> None:
    """Create .env with fresh secrets (never overwriting one) and create the database tables."""
    env_path = Path(env_file)
    if env_path.exists():
        click.echo(f"{env_path} exists; left as it is")
    else:
        env_path.write_text(fresh_env(Path(example).read_text(encoding="utf-8"), source_schemes()), encoding="utf-8")
        env_path.chmod(0o600)
        click.echo(f"wrote {env_path} with fresh webhook secrets and GENESYS_DRY_RUN=true")
    from dotenv import load_dotenv

    load_dotenv(env_path, override=True)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    upgrade_database(settings.database_url)


def fresh_env(example: str, schemes: dict[str, str]) -> str:
    """Fill .env.example's empty webhook secrets with fresh ones in each scheme's form, the token encryption key and
    the console's session key; dry-run Genesys."""
    wanted = {secret_variable(name): scheme for name, scheme in schemes.items()}
    lines = []
    for original in example.splitlines():
        name, sep, value = original.partition("=")
        name = name.strip()
        line = original
        if sep and not original.lstrip().startswith("#"):
            if name in wanted and not value.strip():
                line = f"{name}={signatures.generate_secret(wanted.pop(name) or 'hmac-sha256')}"
            elif name == "GENESYS_DRY_RUN":
                line = "GENESYS_DRY_RUN=true"
            elif name == "TOKEN_ENCRYPTION_KEY" and not value.strip():
                line = f"TOKEN_ENCRYPTION_KEY={generate_key()}"
            elif name == "SECRET_KEY" and not value.strip():
                line = f"SECRET_KEY={secrets.token_urlsafe(48)}"
        lines.append(line)
    for name, scheme in wanted.items():  # sources the example does not list yet
        lines.append(f"{name}={signatures.generate_secret(scheme or 'hmac-sha256')}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- send


@click.command("send")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--source", "-s", required=True, help="The configured source whose scheme and secret sign the body.")
@click.option("--url", default=None, help="Where to POST; default http://127.0.0.1:5000/webhooks/<source>.")
@click.option("--fresh", is_flag=True, help="Give each event a new id and the current time (for samples).")
@with_appcontext
def send_command(file: str, source: str, url: str | None, fresh: bool) -> None:
    """Sign a JSON file with the source's own scheme and first secret, POST it, and print the answer."""
    state = get_state()
    src = state.settings.sources.get(source)
    if src is None:
        raise click.ClickException(f"unknown source {source!r}; configured: {', '.join(state.settings.sources)}")
    body = Path(file).read_bytes()
    if fresh:
        body = freshen(body, src.mapping, state.clock())
    target = url or f"http://127.0.0.1:5000/webhooks/{source}"
    headers = signatures.sign(src.scheme, body=body, secret=src.secrets[0], now=state.clock(), url=target,
                              header=src.header)
    headers["Content-Type"] = "application/json"
    try:
        response = requests.post(target, data=body, headers=headers, timeout=(3.05, 15))
    except requests.RequestException as exc:
        raise click.ClickException(f"could not reach {target}: {type(exc).__name__}; is the service running?") from exc
    click.echo(f"HTTP {response.status_code}")
    click.echo(response.text.strip())
    if response.status_code >= 400:
        sys.exit(1)


def freshen(body: bytes, mapping: FieldMap, now: datetime) -> bytes:
    """Rewrite a sample's event id and time (the first path of each) to a new id and now, keeping the time's form."""
    document = json.loads(body)
    for item in document if isinstance(document, list) else [document]:
        if not isinstance(item, dict):
            continue
        if mapping.event_id:
            _set_path(item, mapping.event_id[0], f"sample-{uuid.uuid4()}")
        if mapping.occurred_at:
            numeric = isinstance(lookup(item, mapping.occurred_at[0]), (int, float))
            stamp = int(now.timestamp() * 1000) if numeric else now.isoformat().replace("+00:00", "Z")
            _set_path(item, mapping.occurred_at[0], stamp)
    return json.dumps(document, indent=2).encode()


def _set_path(document: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


# ---------------------------------------------------------------- events


events_cli = AppGroup("events", help="The event log: list, show, export, purge.")


@events_cli.command("list")
@click.option("--state", type=click.Choice(STATES))
@click.option("--source")
@click.option("--since", help="A duration (90s, 15m, 1h, 30d) or an ISO-8601 time.")
@click.option("--limit", default=50, show_default=True, help="0 means all.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
def events_list(state: EventState | None, source: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """List stored events, newest first."""
    app = get_state()
    rows = app.store.list(state=state, source=source, since=parse_since(since, app.clock()), limit=limit or None)
    if as_json:
        click.echo(json.dumps([r.summary() for r in rows], indent=2))
        return
    click.echo(table(["id", "received", "source", "event_id", "state", "action", "agent", "detail"],
                     [(r.id, r.received_at, r.source, r.event_id, r.state, r.action, r.agent, r.detail)
                      for r in rows], {3: 24, 6: 32, 7: 70}))


@events_cli.command("show")
@click.argument("event_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def events_show(event_id: int, as_json: bool) -> None:
    """Show one event with its body and every Genesys attempt."""
    app = get_state()
    record = app.store.get(event_id)
    if record is None:
        raise click.ClickException(f"no event with id {event_id}; `events list` shows the ids")
    attempts = app.store.attempts(event_id)
    delivery = app.store.delivery(record.delivery)
    headers = dict(delivery.headers) if delivery else {}
    body = delivery.raw_body if delivery else b""
    if as_json:
        doc = record.summary() | {"delivery": record.delivery, "headers": headers, "body": _body_text(body),
                                  "attempts": [a.as_json() for a in attempts]}
        click.echo(json.dumps(doc, indent=2))
        return
    for key, value in record.summary().items():
        click.echo(f"{key:>16}: {escape(str(value)) if value is not None else '-'}")
    click.echo(f"{'delivery':>16}: {record.delivery if record.delivery is not None else '-'}")
    click.echo(f"{'headers':>16}: {'-' if not headers else ''}")
    for name, value in sorted(headers.items()):
        click.echo(f"{'':>18}{escape(name)}: {escape(value)}")
    click.echo(f"{'body':>16}: {_shown_body(body)[:4000]}")
    if attempts:
        click.echo("\nGenesys attempts:")
        click.echo(table(["at", "request", "status", "code", "correlation id", "identity", "ms", "error"],
                         [(a.at, f"{a.method} {a.path}", a.status, a.code, a.correlation_id, a.identity,
                           f"{a.duration_ms:.0f}", a.error) for a in attempts]))


def _body_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        return "base64:" + base64.b64encode(body).decode()


def _shown_body(body: bytes) -> str:
    """The body for a terminal: JSON laid out again with its strings' control characters escaped (the layout's own
    line breaks kept); anything else on one line with every control character escaped."""
    text = _body_text(body)
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return escape(text)
    laid_out = json.dumps(document, indent=2, ensure_ascii=False)
    return "\n".join(escape(line) for line in laid_out.splitlines())


@events_cli.command("export")
@click.option("--output", "-o", type=click.File("w"), default="-", help="File to write; default standard output.")
def events_export(output: Any) -> None:
    """Write every stored delivery and its events as JSON Lines, each raw body once (the input of `replay --file`)."""
    count = bodies = 0
    for delivery, records in get_state().store.iter_deliveries():
        for line in intake.export_lines(delivery, records):
            output.write(json.dumps(line) + "\n")
        count += len(records)
        bodies += 1
    click.echo(f"exported {count} event(s) from {bodies} delivery(ies)", err=True)


@events_cli.command("purge")
@click.option("--older-than", "older_than", help="A duration such as 30d or 12h; default [retention] keep_days.")
@click.option("--batch", default=1000, show_default=True, help="Rows deleted per transaction.")
def events_purge(older_than: str | None, batch: int) -> None:
    """Delete events received before the cut-off, with their Genesys attempts, in batches."""
    app = get_state()
    now = app.clock()
    spec = older_than or f"{app.settings.keep_days:g}d"
    if not DURATION_RE.match(spec.strip()):
        raise click.BadParameter(f"{spec!r} is not a duration such as 30d, 12h or 2w", param_hint="--older-than")
    cutoff = parse_since(spec, now, "--older-than")
    assert cutoff is not None
    # An agent's ordering slot guards against events older than its last one; past the age limit (and any hold)
    # every such event is expired anyway, so a slot whose event is gone and older than that guards nothing.
    horizon = now - timedelta(seconds=app.settings.max_event_age_seconds + app.settings.retry_budget_seconds
                              + HOLD_MARGIN_SECONDS)
    deleted = app.store.purge(before=cutoff, batch=batch, keep_slots_after=horizon)
    keys = app.store.purge_keys(before=now - timedelta(days=app.settings.keep_keys_days))
    app.store.purge_oauth_states(before=now)  # sign-ins and service-user links that can no longer be used
    click.echo(f"deleted {deleted} event(s) received before {cutoff.isoformat(timespec='seconds')}"
               + (f"; forgot {keys} dedupe key(s) older than {app.settings.keep_keys_days:g} days" if keys else ""))


# ---------------------------------------------------------------- db


db_cli = AppGroup("db", help="The database schema.")


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the schema to the latest version (idempotent; the Procfile's release step)."""
    upgrade_database(get_state().settings.database_url)


def upgrade_database(url: str) -> None:
    """Apply the pending migrations to the database at url and say what was done."""
    from webhook.migrations import MIGRATIONS, upgrade

    store = Store.from_url(url)
    try:
        with store.transaction() as conn:
            applied = upgrade(conn)
    except StoreError as exc:  # the driver's error, named by its class (never its text: it may hold the URL)
        raise click.ClickException(f"cannot migrate the database: {type(exc.__cause__ or exc).__name__}; "
                                   "check DATABASE_URL") from exc
    finally:
        store.close()
    latest = MIGRATIONS[-1].version
    if applied:
        steps = ", ".join(f"{m.version} ({m.description})" for m in applied)
        click.echo(f"database at version {latest}; applied: {steps}")
    else:
        click.echo(f"database already at version {latest}; nothing to do")


# ---------------------------------------------------------------- rules


rules_cli = AppGroup("rules", help="The rules table.")


@rules_cli.command("check")
@click.option("--status", help="A ticket status to test against the rules.")
@click.option("--from", "previous", help="The previous status.")
@click.option("--source", default="*", help="The source the event would come from.")
def rules_check(status: str | None, previous: str | None, source: str) -> None:
    """Print the rules as a table and, given --status, which rule matches."""
    from webhook.rules import decide_fields

    settings = get_state().settings
    click.echo(f"rules from {settings.config_path} (first match wins):")
    click.echo(table(["#", "source", "status", "from", "action", "name"],
                     [(n, r.source, r.status, r.previous, r.action, r.name)
                      for n, r in enumerate(settings.rules, start=1)]))
    if status is not None:
        decision = decide_fields(settings.rules, source, status, previous)
        click.echo(f"\nstatus {status!r}" + (f" from {previous!r}" if previous else "")
                   + f" (source {source}): {decision.action} ({decision.detail})")


# ---------------------------------------------------------------- replay


@click.command("replay")
@click.argument("ids", nargs=-1, type=int)
@click.option("--state", type=click.Choice(REPLAYABLE), help="Replay the events in this state.")
@click.option("--source", help="Only events of this source.")
@click.option("--since", help="Only events received since: a duration (1h, 30d) or an ISO-8601 time.")
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False),
              help="JSON Lines from `events export`; events not in the database are imported first.")
@click.option("--dry-run", is_flag=True, help="Show what would happen; change nothing, call nothing.")
@click.option("--force", is_flag=True, help="Skip the age and ordering guards (act on old events).")
@with_appcontext
def replay_command(ids: tuple[int, ...], state: EventState | None, source: str | None, since: str | None,
                   file: str | None, dry_run: bool, force: bool) -> None:
    """Run saved events through the same processing again and print a table of outcomes."""
    app = get_state()
    if not (ids or state or source or since or file):
        raise click.UsageError("name the events: IDs, --state, --source, --since or --file")
    targets, problems = _replay_targets(app, ids, state, source, since, file, dry_run)
    if not dry_run:
        app.liveness.start()  # this process's claims must not look abandoned to the service's sweepers
    try:
        outcomes = replaying.replay(app.processor, targets, dry_run=dry_run, force=force)
    finally:
        if not dry_run:
            app.liveness.stop()
    click.echo(table(replaying.COLUMNS, [replaying.row(o) for o in outcomes]
                     + [(where, None, "-", "unreadable", why) for where, why in problems]))
    bad = replaying.failed(outcomes)
    click.echo(f"{len(outcomes)} replayed{' (dry run)' if dry_run else ''}, {len(bad)} failed, "
               f"{len(problems)} unreadable line(s)")
    if bad or problems:
        sys.exit(1)


def _replay_targets(app: AppState, ids: tuple[int, ...], state: EventState | None, source: str | None,
                    since: str | None, file: str | None, dry_run: bool) -> tuple[list[int], list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    if file:
        lines, problems = intake.read_export(Path(file))
        imported: dict[int, int] = {}
        targets = [intake.import_line(app.store, line, dry_run=dry_run, settings=app.settings, now=app.clock(),
                                      imported=imported) for line in lines]
        return [t for t in targets if t is not None], problems
    records = app.store.list(state=state, source=source, since=parse_since(since, app.clock()), limit=None,
                             ids=list(ids) or None)
    found = {r.id for r in records}
    problems = [(f"id {pk}", "no such event") for pk in ids if pk not in found]
    return sorted(found), problems


# ---------------------------------------------------------------- agent, genesys


agent_cli = AppGroup("agent", help="Mute or unmute an agent by hand.")


@agent_cli.command("mute")
@click.argument("agent")
@click.option("--conversation", help="The Genesys conversation id, when you know it (skips the search).")
def agent_mute(agent: str, conversation: str | None) -> None:
    """Find AGENT's live voice call (AGENT = e-mail or Genesys user id) and mute their microphone."""
    _set_agent(agent, True, conversation)


@agent_cli.command("unmute")
@click.argument("agent")
@click.option("--conversation", help="The Genesys conversation id, when you know it (skips the search).")
def agent_unmute(agent: str, conversation: str | None) -> None:
    """Find AGENT's live voice call and unmute their microphone."""
    _set_agent(agent, False, conversation)


def _set_agent(agent: str, muted: bool, conversation: str | None) -> None:
    app = get_state()
    verb = "mute" if muted else "unmute"
    if app.genesys is None:
        click.echo(f"dry run (GENESYS_DRY_RUN=true): would {verb} {agent}; set GENESYS_DRY_RUN=false and the "
                   "GENESYS_* credentials to act")
        return
    deadline = time.monotonic() + app.settings.retry_budget_seconds
    try:
        applied = app.genesys.act(agent, muted, conversation_id=conversation, deadline=deadline)
    except GenesysError as exc:
        raise click.ClickException(failure_detail(exc, app.settings.genesys)) from exc
    if applied is None:
        raise click.ClickException(f"{agent} is not on a live voice call; nothing to {verb}")
    target = applied.target
    note = f" ({target.note})" if target.note else ""
    click.echo(f"{verb}d {agent}: user {target.user_id}, call {target.conversation_id}, "
               f"participant {target.participant_id}, as {applied.identity}{note}")


genesys_cli = AppGroup("genesys", help="Genesys Cloud connection.")


@genesys_cli.command("check")
def genesys_check() -> None:
    """Check every configured identity (token, org, permissions, connections); explain the participant rule."""
    app = get_state()
    client = app.genesys
    if client is None:
        cfg = app.settings.genesys
        if not (cfg.identities() and (cfg.region or cfg.api_url)):
            raise click.ClickException("no Genesys credentials: set GENESYS_REGION and GENESYS_CLIENT_ID and "
                                       "_SECRET, or GENESYS_USER_CLIENT_ID and _SECRET (GENESYS_DRY_RUN may stay "
                                       "true while you check)")
        client = genesys_client(app.settings, app.users)
    api_url, _ = app.settings.genesys.hosts()
    click.echo(f"Genesys API {api_url}; identities tried in order: {', '.join(client.act_as) or 'none'}")
    results = client.check(deadline=time.monotonic() + app.settings.retry_budget_seconds)
    for result in results:
        click.echo(f"{'ok  ' if result.ok else 'FAIL'} {result.name}: {escape(result.detail)}")
    if not all(r.ok for r in results):
        sys.exit(1)


@genesys_cli.command("connect")
@click.option("--service-user", is_flag=True, help="Print a one-time link (10 minutes) that connects the service "
                                                   "user instead of the page agents open.")
def genesys_connect(service_user: bool) -> None:
    """Print the link that connects a Genesys user to the service (alone on the last line)."""
    app = get_state()
    users = _users(app)
    if not service_user:
        click.echo("Each agent opens this page once, logs in to Genesys and allows the service to act for them:")
        click.echo(users.connect_url)
        return
    link = oauth_flow.new_service_user_link(app.store, now=app.clock())
    click.echo("Open this link (valid 10 minutes, once) in a browser and log in to Genesys as the service user, a "
               "dedicated account whose role holds conversation:communication:disconnect, "
               "analytics:conversationDetail:view and directory:user:view. It replaces any earlier service user.")
    click.echo(f"{users.connect_url}?link={link}")


@genesys_cli.command("connections")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
def genesys_connections(as_json: bool) -> None:
    """List the Genesys users connected to the service (the service user first)."""
    app = get_state()
    rows = [c.summary() for c in app.store.connections()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no connections yet: `genesys connect` prints the page agents open")
        return
    click.echo(table(["kind", "user id", "e-mail", "name", "state", "reason", "refreshed", "used"],
                     [(r["kind"], r["user_id"], r["email"], r["name"], r["state"], r["reason"], r["refreshed_at"],
                       r["used_at"]) for r in rows], {5: 60}))


@genesys_cli.command("disconnect")
@click.argument("user")
def genesys_disconnect(user: str) -> None:
    """Revoke USER's token at Genesys (DELETE /api/v2/tokens/me) and delete the connection (USER: id or e-mail)."""
    app = get_state()
    users = _users(app)
    connection = app.store.connection(user) or app.store.find_connection(user) or next(
        (c for c in app.store.connections() if c.email.lower() == user.strip().lower()), None)
    if connection is None:
        raise click.ClickException(f"no connection for {user!r}; `genesys connections` lists them")
    revoked = "its token was revoked at Genesys"
    try:
        users.revoke(connection, deadline=time.monotonic() + app.settings.retry_budget_seconds)
    except GenesysError as exc:
        revoked = f"its token could not be revoked at Genesys ({exc}); it ends by itself when it expires"
    app.store.delete_connection(connection.user_id)
    click.echo(f"disconnected {connection.kind} {connection.email or connection.user_id} ({connection.user_id}): "
               f"{escape(revoked)}")


@genesys_cli.command("rotate-keys")
def genesys_rotate_keys() -> None:
    """Encrypt every stored token again with the first key of TOKEN_ENCRYPTION_KEY (then the old keys can go)."""
    app = get_state()
    count = app.store.rewrite_tokens(_users(app).cipher.rotate)
    click.echo(f"encrypted the tokens of {count} connection(s) with the first key; the other keys may now be removed")


# ---------------------------------------------------------------- audit


audit_cli = AppGroup("audit", help="What operators did in the console.")


@audit_cli.command("list")
@click.option("--event", "event", type=int, help="Only the lines of this event id.")
@click.option("--limit", default=50, show_default=True, help="0 means all.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
def audit_list(event: int | None, limit: int, as_json: bool) -> None:
    """List the console's audit log, newest first: replays, forced replays, disconnections, service-user links."""
    lines = get_state().store.audit_lines(event=event, limit=limit or None)
    if as_json:
        click.echo(json.dumps([{"id": a.id, "at": a.at.isoformat().replace("+00:00", "Z"), "operator": a.operator,
                                "action": a.action, "event": a.event, "target": a.target, "detail": a.detail}
                               for a in lines], indent=2))
        return
    if not lines:
        click.echo("no audit lines yet: the console records replays, disconnections and service-user links")
        return
    click.echo(table(["at", "operator", "action", "event", "target", "detail"],
                     [(a.at, escape(a.operator), a.action, a.event, escape(a.target), escape(a.detail))
                      for a in lines], {4: 40, 5: 80}))


def _users(app: AppState) -> UserConnections:
    if app.users is None:
        raise click.ClickException("acting as a user is not set up: set GENESYS_USER_CLIENT_ID, "
                                   "GENESYS_USER_CLIENT_SECRET, PUBLIC_URL and TOKEN_ENCRYPTION_KEY (README: \"Acting "
                                   "as a user\")")
    return app.users


def init_app(app: Flask) -> None:
    """Register every command on the app."""
    for command in (init_command, send_command, events_cli, rules_cli, replay_command, agent_cli, genesys_cli,
                    db_cli, audit_cli):
        app.cli.add_command(store_errors_named(command))


def store_errors_named(command: click.Command) -> click.Command:
    """Make a database that cannot be used end a command (and its subcommands) with one line and exit code 1, not
    a traceback; idempotent, as create_app may run more than once in a process."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            store_errors_named(sub)
    callback = command.callback
    if callback is None or getattr(callback, "store_errors_named", False):
        return command

    @functools.wraps(callback)
    def named(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except SchemaError as exc:
            raise click.ClickException(str(exc)) from exc
        except StoreError as exc:
            raise click.ClickException(f"{exc}; check DATABASE_URL and that the database is running") from exc

    named.store_errors_named = True  # type: ignore[attr-defined]
    command.callback = named
    return command
