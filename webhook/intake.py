"""One delivery in: verify, parse, store once. Used by the webhook view and by `replay --file` (its import and the
export it reads). No Flask here: the view passes the request's parts in."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from webhook import signatures
from webhook.config import Settings, Source
from webhook.events import Envelope, InvalidItem, TicketEvent, encodable, parse, parse_time, usable_message_id
from webhook.signatures import TIMESTAMPED_SCHEMES
from webhook.store import Delivery, EventRecord, NewDelivery, NewEvent, Saved, Store

# Headers never stored with a delivery: signatures and credentials are not needed to replay it.
UNSTORED_HEADERS = frozenset({
    "authorization", "cookie", "proxy-authorization", "webhook-signature", "svix-signature",
    "x-zendesk-webhook-signature", "x-hubspot-signature", "x-hubspot-signature-v3", "x-hub-signature",
    "x-hub-signature-256",
})
MAX_STORED_HEADER_CHARS = 1024
IMPORT_MARK = "x-crm-mute-bridge-import"  # a header kept with every delivery `replay --file` inserts
IMPORT_NOTE = "inserted by replay --file; its signature was not verified again"


@dataclass(frozen=True)
class Received:
    """What intake made of one delivery: each item's row (new or duplicate) and the items that could not be parsed."""

    saved: list[Saved]
    invalid: list[InvalidItem]


def receive(source: Source, body: bytes, headers: Any, *, method: str, url: str, now: datetime, store: Store,
            agents: Mapping[str, str]) -> Received:
    """Verify a delivery's signature, parse its events and store the delivery once with them.

    SignatureError when the signature does not hold (nothing is stored); StoreError when the database cannot take
    it (the sender retries on the 503)."""
    verified = signatures.verify(source.scheme, body=body, headers=headers, secrets=source.secrets, now=now,
                                 tolerance=source.tolerance_seconds, method=method, url=url, header=source.header)
    envelope = Envelope(source.name, now, verified.signed_at, usable_message_id(verified.message_id),
                        unsigned_time=source.scheme not in TIMESTAMPED_SCHEMES)
    items = parse(body, source.mapping, envelope, agents)
    delivery = new_delivery(body, stored_headers(headers.items(), source.header), envelope)
    saved = store.save(delivery, [new_event(item, envelope) for item in items])
    return Received(saved, [item for item in items if isinstance(item, InvalidItem)])


def new_delivery(body: bytes, headers: Mapping[str, str], envelope: Envelope) -> NewDelivery:
    """Turn a verified request into the delivery row that keeps its body and headers once."""
    return NewDelivery(source=envelope.source, received_at=envelope.received_at, raw_body=body, headers=headers,
                       signed_at=envelope.signed_at, message_id=envelope.message_id)


def new_event(item: TicketEvent | InvalidItem, envelope: Envelope) -> NewEvent:
    """Turn a parsed item into the event row that intake stores."""
    row = NewEvent(source=item.source, event_id=item.event_id, state="received", detail="",
                   received_at=envelope.received_at)
    if isinstance(item, InvalidItem):
        return replace(row, state="invalid", detail=item.reason)
    return replace(row, ticket_id=item.ticket_id, status=item.status, previous_status=item.previous_status,
                   agent=item.agent, conversation_id=item.conversation_id, occurred_at=item.occurred_at)


def stored_headers(items: Iterable[tuple[str, str]], signature_header: str) -> dict[str, str]:
    """Keep the request headers useful for replay and diagnosis; never signatures or credentials."""
    skip = UNSTORED_HEADERS | {signature_header.lower()}
    return {k: v[:MAX_STORED_HEADER_CHARS] for k, v in items if k.lower() not in skip}


# ---------------------------------------------------------------- export (`events export`), each body once


def export_lines(delivery: Delivery, records: Iterable[EventRecord]) -> list[dict[str, Any]]:
    """Return the JSON Lines of one delivery: the delivery (headers and raw body: base64, and as text if UTF-8), then
    each of its events (the summary, pointing at the delivery by its id)."""
    line: dict[str, Any] = {
        "kind": "delivery", "delivery": delivery.id, "source": delivery.source,
        "received_at": _iso(delivery.received_at), "signed_at": _iso(delivery.signed_at),
        "message_id": delivery.message_id, "headers": dict(delivery.headers),
        "raw_body_base64": base64.b64encode(delivery.raw_body).decode(),
    }
    with contextlib.suppress(UnicodeDecodeError):
        line["raw_body"] = delivery.raw_body.decode("utf-8")
    return [line, *({"kind": "event", **r.summary(), "delivery": delivery.id} for r in records)]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


# ---------------------------------------------------------------- import (`replay --file`)


def read_export(path: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Read `events export` JSON Lines; return the usable event lines (each with its delivery's body, headers and
    signature data) and (line, reason) for each unusable one. Lines written before deliveries existed, each event
    with its own body, are read too."""
    good: list[dict[str, Any]] = []
    bad: list[tuple[str, str]] = []
    seen: dict[int, dict[str, Any]] = {}  # the file's delivery lines by their exported id
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = export_line(raw, seen)
            except ValueError as exc:
                bad.append((f"line {number}", str(exc)))
                continue
            if line.get("kind") == "delivery":
                seen[line["delivery"]] = line
            else:
                good.append(line)
    return good, bad


def export_line(raw: bytes, deliveries: Mapping[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Read one export line: a delivery, an event of a delivery read earlier, or an event with its own body (an
    export from before deliveries existed); ValueError names what is wrong with it."""
    try:
        line = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError("not a JSON object in UTF-8") from exc
    if not isinstance(line, dict):
        raise ValueError("not a JSON object")
    if line.get("kind") == "delivery":
        return _delivery_line(line)
    for key, longest in (("source", 64), ("event_id", 600)):  # the columns' sizes
        if not isinstance(line.get(key), str) or not line[key]:
            raise ValueError(f"{key} is missing or not a string")
        if len(line[key]) > longest or "\x00" in line[key] or not encodable(line[key]):
            raise ValueError(f"{key} is longer than {longest} characters, or holds a NUL or an unpaired surrogate")
    if line.get("kind") == "event":
        found = (deliveries or {}).get(line["delivery"]) if isinstance(line.get("delivery"), int) else None
        if found is None:
            raise ValueError(f"its delivery {line.get('delivery')!r} is not on a line before it")
        received = _time(line, "received_at") or found["received_at"]
        return line | {key: found[key] for key in ("body", "headers", "signed_at", "message_id")} | {
            "received_at": received, "delivery_key": found["delivery"]}
    return _delivery_line(line) | {"source": line["source"], "event_id": line["event_id"], "delivery_key": None}


def _delivery_line(line: dict[str, Any]) -> dict[str, Any]:
    """Check and decode a line's body, times and headers (a delivery line, or an old event line with its own)."""
    if line.get("kind") == "delivery" and (not isinstance(line.get("delivery"), int) or isinstance(
            line.get("delivery"), bool)):
        raise ValueError("delivery is missing or not a number")
    if line.get("kind") == "delivery" and (not isinstance(line.get("source"), str) or not line["source"]):
        raise ValueError("source is missing or not a string")
    if isinstance(line.get("raw_body_base64"), str):
        try:
            line["body"] = base64.b64decode(line["raw_body_base64"], validate=True)
        except ValueError as exc:
            raise ValueError("raw_body_base64 is not base64") from exc
    elif isinstance(line.get("raw_body"), str):
        line["body"] = line["raw_body"].encode("utf-8", "surrogatepass")
    else:
        raise ValueError("raw_body_base64 (or raw_body) is missing")
    for key in ("received_at", "signed_at"):
        line[key] = _time(line, key)
    headers = line.get("headers")
    line["headers"] = {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else {}
    line["message_id"] = usable_message_id(line.get("message_id") if isinstance(line.get("message_id"), str)
                                           else None)
    return line


def _time(line: Mapping[str, Any], key: str) -> datetime | None:
    try:
        return parse_time(line[key]) if line.get(key) else None
    except ValueError as exc:
        raise ValueError(f"{key} is not a time") from exc


def import_line(store: Store, line: dict[str, Any], *, dry_run: bool, settings: Settings, now: datetime,
                imported: dict[int, int]) -> int | None:
    """Return the id of an exported event, inserting it (to be parsed on replay) when the database lacks it; the
    events of one exported delivery share one new delivery (`imported` maps the file's delivery ids to new ones).

    A file carries no signature to check again (signatures are never stored), so the delivery keeps IMPORT_MARK among
    its headers for good: whoever reads it later can tell it came from a file, not a verified request."""
    existing = store.find(line["source"], line["event_id"])
    if existing is not None or dry_run:
        return existing.id if existing else None
    source = settings.sources.get(line["source"])
    received = line["received_at"] or now
    row = NewEvent(source=line["source"], event_id=line["event_id"], state="received",
                   detail="imported by replay --file", received_at=received)
    key = line.get("delivery_key")
    delivery: NewDelivery | int
    if key is not None and key in imported:
        delivery = imported[key]
    else:
        kept = stored_headers(line["headers"].items(), source.header if source else "")
        delivery = NewDelivery(source=line["source"], received_at=received, raw_body=line["body"],
                               headers=kept | {IMPORT_MARK: IMPORT_NOTE}, signed_at=line["signed_at"],
                               message_id=line["message_id"])
    [saved] = store.save(delivery, [row], revive=True)  # the file's events, even those purged here
    if key is not None and saved.id is not None and not saved.duplicate:
        record = store.get(saved.id)
        if record is not None and record.delivery is not None:
            imported[key] = record.delivery
    return saved.id
