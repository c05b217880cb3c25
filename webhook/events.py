"""Ticket events: the TicketEvent value and parse(), which turns a signed body into events. Pure."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from webhook.errors import EventError

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_FIELD_CHARS = 512
MAX_ITEMS = 1000


@dataclass(frozen=True)
class TicketEvent:
    """One ticket status change, as the rules and the Genesys client see it."""

    source: str
    event_id: str
    occurred_at: datetime
    ticket_id: str
    status: str
    previous_status: str | None
    agent: str
    conversation_id: str | None


@dataclass(frozen=True)
class InvalidItem:
    """A signed body (or one element of a JSON array) that could not be turned into an event."""

    source: str
    event_id: str
    reason: str


@dataclass(frozen=True)
class Envelope:
    """What intake knows about a delivery besides its body: used for the event_id and occurred_at fallbacks."""

    source: str
    received_at: datetime
    signed_at: datetime | None = None
    message_id: str | None = None
    unsigned_time: bool = False  # the scheme signs no timestamp: the body's occurred_at is the only signed time


@dataclass(frozen=True)
class FieldMap:
    """Where each TicketEvent field lives in a body: dotted paths; a tuple means the first present value wins."""

    ticket_id: tuple[str, ...]
    status: tuple[str, ...]
    agent: tuple[str, ...]
    event_id: tuple[str, ...] = ()
    occurred_at: tuple[str, ...] = ()
    previous_status: tuple[str, ...] = ()
    conversation_id: tuple[str, ...] = ()
    name: str = field(default="custom", compare=False)


REQUIRED_FIELDS = ("ticket_id", "status", "agent")
MAPPING_FIELDS = (*REQUIRED_FIELDS, "event_id", "occurred_at", "previous_status", "conversation_id")

PRESETS: dict[str, FieldMap] = {
    "generic": FieldMap(
        name="generic",
        event_id=("event_id",),
        occurred_at=("occurred_at",),
        ticket_id=("ticket.id",),
        status=("ticket.status",),
        previous_status=("ticket.previous_status",),
        agent=("agent.genesys_user_id", "agent.email", "agent.crm_id"),
        conversation_id=("conversation_id",),
    ),
    "zendesk-event": FieldMap(
        name="zendesk-event",
        event_id=("id",),
        occurred_at=("time",),
        ticket_id=("detail.id",),
        status=("event.current",),
        previous_status=("event.previous",),
        agent=("detail.assignee_id",),
    ),
}


def field_map(spec: str | Mapping[str, Any]) -> FieldMap:
    """Build a FieldMap from a preset name or a table of dotted paths; ValueError names what is wrong."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown mapping {spec!r}; presets: {', '.join(PRESETS)}, or a table of field paths")
        return PRESETS[spec]
    if not isinstance(spec, Mapping):  # a number, a boolean or an array in the TOML
        raise ValueError(f"mapping must be a preset name ({', '.join(PRESETS)}) or a table of field paths, "
                         f"got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(MAPPING_FIELDS))
    if unknown:
        raise ValueError(f"unknown mapping key(s) {', '.join(unknown)}; known: {', '.join(MAPPING_FIELDS)}")
    missing = [name for name in REQUIRED_FIELDS if name not in spec]
    if missing:
        raise ValueError(f"mapping lacks {', '.join(missing)}; each needs a dotted path such as \"ticket.id\"")
    paths: dict[str, tuple[str, ...]] = {}
    for name, value in spec.items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"mapping key {name} must be a dotted path or a list of them")
        paths[name] = tuple(values)
    return FieldMap(
        ticket_id=paths["ticket_id"], status=paths["status"], agent=paths["agent"],
        event_id=paths.get("event_id", ()), occurred_at=paths.get("occurred_at", ()),
        previous_status=paths.get("previous_status", ()), conversation_id=paths.get("conversation_id", ()))


def parse(
    body: bytes,
    mapping: FieldMap,
    envelope: Envelope,
    agents: Mapping[str, str] | None = None,
) -> list[TicketEvent | InvalidItem]:
    """Turn a signed body into events; a JSON array yields one per element; what cannot be parsed is an InvalidItem."""
    digest = hashlib.sha256(body).hexdigest()
    whole = envelope.message_id or f"sha256:{digest}"  # the signature's id header first (DESIGN 4.4)
    try:
        document = _load_json(body)
    except EventError as exc:
        return [InvalidItem(envelope.source, whole, str(exc))]
    if isinstance(document, list):
        if not document:
            return [InvalidItem(envelope.source, whole, "the body is an empty JSON array")]
        if len(document) > MAX_ITEMS:
            reason = f"the body holds {len(document)} events; at most {MAX_ITEMS} are accepted in one delivery"
            return [InvalidItem(envelope.source, whole, reason)]
        return [_parse_item(item, i, digest, mapping, envelope, agents or {}) for i, item in enumerate(document)]
    return [_parse_item(document, None, digest, mapping, envelope, agents or {})]


def _load_json(body: bytes) -> Any:
    if not body.strip():
        raise EventError("the body is empty; send a JSON object or array")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"the body is not UTF-8 (bad byte at offset {exc.start}); send UTF-8 JSON") from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise EventError(f"the body is not JSON: {str(exc)[:120]}") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_item(
    item: Any,
    index: int | None,
    digest: str,
    mapping: FieldMap,
    envelope: Envelope,
    agents: Mapping[str, str],
) -> TicketEvent | InvalidItem:
    suffix = "" if index is None else f":{index}"
    where = "" if index is None else f"element {index}: "
    fallback_id = f"{envelope.message_id}{suffix}" if envelope.message_id else f"sha256:{digest}{suffix}"
    if not isinstance(item, dict):
        return InvalidItem(envelope.source, fallback_id, f"{where}expected a JSON object, got {type(item).__name__}")
    event_id = fallback_id
    try:
        event_id = _text(item, mapping.event_id, "event_id") or fallback_id
        occurred = _time(item, mapping.occurred_at) or envelope.signed_at
        event = TicketEvent(
            source=envelope.source,
            event_id=event_id,
            occurred_at=occurred or envelope.received_at,
            ticket_id=_required(item, mapping.ticket_id, "ticket_id"),
            status=_required(item, mapping.status, "status").lower(),
            previous_status=_lower(_text(item, mapping.previous_status, "previous_status")),
            agent=resolve_agent(_required(item, mapping.agent, "agent"), envelope.source, agents),
            conversation_id=_text(item, mapping.conversation_id, "conversation_id"),
        )
        if occurred is None and envelope.unsigned_time and mapping.occurred_at:
            # Dated at receipt, a captured delivery replayed later would look fresh to the age and ordering guards.
            raise EventError(f"required field occurred_at is missing (looked at {', '.join(mapping.occurred_at)}): "
                             "this source's signature carries no timestamp, so the time the guards use must come "
                             "from the signed body; send the time the ticket changed")
        return event
    except EventError as exc:
        return InvalidItem(envelope.source, event_id, f"{where}{exc}")


def usable_message_id(value: str | None) -> str | None:
    """Return a signature's delivery id if it can serve as an event id and be stored, else None."""
    if value and len(value) <= MAX_FIELD_CHARS and value.isprintable():
        return value
    return None


def resolve_agent(value: str, source: str, agents: Mapping[str, str]) -> str:
    """Map a CRM agent id through [agents] ("source:id" first, then "id"); a UUID or e-mail stands as is."""
    for key in (f"{source}:{value}", value):
        if key in agents:
            return agents[key]
    if UUID_RE.match(value) or EMAIL_RE.match(value):
        return value
    raise EventError(
        f'agent "{value}" is neither a Genesys user id nor an e-mail, and "{source}:{value}" is not in [agents]; '
        f'add "{source}:{value}" = "<e-mail or user id>" to [agents] in the config'
    )


def lookup(document: Any, path: str) -> Any:
    """Return the value at a dotted path (numeric parts index lists), or None when any step is missing."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _text(item: Any, paths: Sequence[str], name: str) -> str | None:
    for path in paths:
        value = lookup(item, path)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise EventError(f"{name} at {path} must be a string or a number, got {type(value).__name__}")
        text = _scalar_text(value).strip()
        if "\x00" in text:
            raise EventError(f"{name} at {path} contains a NUL character")
        if not text.isascii() and not encodable(text):
            raise EventError(f"{name} at {path} contains an unpaired surrogate (\\ud800-\\udfff); send valid Unicode")
        if len(text) > MAX_FIELD_CHARS:
            raise EventError(f"{name} at {path} is longer than {MAX_FIELD_CHARS} characters")
        if text:
            return text
    return None


def encodable(text: str) -> bool:
    """Tell whether text can be stored as UTF-8 (no unpaired surrogate, which JSON's \\ud800 escapes can carry)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scalar_text(value: str | int | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventError("a number field is not finite")
        return str(int(value)) if value.is_integer() else str(value)
    return str(value)


def _required(item: Any, paths: Sequence[str], name: str) -> str:
    value = _text(item, paths, name)
    if value is None:
        raise EventError(f"required field {name} is missing (looked at {', '.join(paths)})")
    return value


def _lower(value: str | None) -> str | None:
    return value.lower() if value is not None else None


def _time(item: Any, paths: Sequence[str]) -> datetime | None:
    for path in paths:
        value = lookup(item, path)
        if value is None or value == "":
            continue
        try:
            return parse_time(value)
        except ValueError as exc:
            raise EventError(f"occurred_at at {path} is not a time: {exc}") from exc
    return None


def parse_time(value: Any) -> datetime:
    """Parse an ISO-8601 string (any fraction length) or Unix seconds/milliseconds into an aware UTC datetime;
    ValueError names what is wrong."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"\d{9,16}(\.\d+)?", value)):
        try:
            number = float(value)
        except OverflowError as exc:  # an int of hundreds of digits
            raise ValueError("the number is out of the range of dates") from exc
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        seconds = number / 1000 if number > 1e11 else number
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError) as exc:
            raise ValueError(f"{value} is out of the range of dates") from exc
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 string or Unix time, got {type(value).__name__}")
    text = value.strip().replace("z", "Z")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # Zendesk sends nanoseconds; Python keeps microseconds
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC, 9999-12-31T23:59-01:00 after 9999
        raise ValueError(f"{text[:40]} is out of the range of dates") from exc
