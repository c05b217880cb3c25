"""Parsing signed bodies into TicketEvents: presets, path tables, arrays, fallbacks, and what is invalid."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from webhook.errors import EventError
from webhook.events import (
    PRESETS,
    Envelope,
    InvalidItem,
    TicketEvent,
    field_map,
    parse,
    parse_time,
    resolve_agent,
    usable_message_id,
)

ROOT = Path(__file__).resolve().parent.parent
RECEIVED = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)
SIGNED = datetime(2026, 11, 23, 10, 0, 4, tzinfo=UTC)
AGENTS = {"zendesk:381920": "jane.agent@example.com", "hubspot:74512": "omar.agent@example.com"}
HUBSPOT = field_map({"event_id": "eventId", "occurred_at": "occurredAt", "ticket_id": "objectId",
                     "status": "propertyValue", "agent": ["ownerEmail", "ownerId"]})


def envelope(source: str = "helpdesk", **kw: object) -> Envelope:
    return Envelope(source, RECEIVED, **kw)  # type: ignore[arg-type]


def generic(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "event_id": "evt_1", "occurred_at": "2026-11-23T10:00:00Z",
        "ticket": {"id": "48213", "status": "Payment_In_Progress", "previous_status": "OPEN"},
        "agent": {"email": "jane.agent@example.com"},
    }
    body.update(changes)
    return body


def one(body: object, mapping: str = "generic", source: str = "helpdesk", **kw: object) -> TicketEvent | InvalidItem:
    items = parse(json.dumps(body).encode(), PRESETS[mapping], envelope(source, **kw), AGENTS)
    assert len(items) == 1
    return items[0]


def test_generic_body_becomes_an_event_with_lower_case_statuses() -> None:
    assert one(generic(conversation_id="3b0c8a52")) == TicketEvent(
        source="helpdesk", event_id="evt_1", occurred_at=datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
        ticket_id="48213", status="payment_in_progress", previous_status="open",
        agent="jane.agent@example.com", conversation_id="3b0c8a52")


def test_zendesk_sample_maps_assignee_through_agents_and_keeps_nanosecond_time() -> None:
    body = (ROOT / "samples" / "zendesk-status-changed.json").read_bytes()
    [event] = parse(body, PRESETS["zendesk-event"], envelope("zendesk"), AGENTS)
    assert isinstance(event, TicketEvent)
    assert (event.event_id, event.ticket_id, event.status, event.previous_status, event.agent) == (
        "cbe4028c-7239-495d-b020-f22348516046", "48213", "hold", "open", "jane.agent@example.com")
    assert event.occurred_at == datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)


def test_hubspot_array_yields_one_event_per_element_with_ms_times() -> None:
    body = (ROOT / "samples" / "hubspot-batch.json").read_bytes()
    items = parse(body, HUBSPOT, envelope("hubspot"), AGENTS)
    assert [(i.event_id, i.agent, i.status) for i in items if isinstance(i, TicketEvent)] == [
        ("1761234501", "omar.agent@example.com", "card_capture"),
        ("1761234502", "jane.agent@example.com", "payment_in_progress")]
    assert items[0].occurred_at == datetime.fromtimestamp(1795428000, tz=UTC)  # type: ignore[union-attr]


def test_agent_priority_user_id_then_email_then_crm_id() -> None:
    uid = "50fcd33c-1111-4222-8333-944444444444"
    both = one(generic(agent={"genesys_user_id": uid, "email": "x@example.com"}))
    assert isinstance(both, TicketEvent) and both.agent == uid
    crm = one(generic(agent={"crm_id": "381920"}), source="zendesk")
    assert isinstance(crm, TicketEvent) and crm.agent == "jane.agent@example.com"


def test_fallbacks_message_id_then_body_hash_and_signed_then_received_time() -> None:
    body = generic()
    del body["event_id"], body["occurred_at"]
    with_header = one(body, message_id="msg_2Lz", signed_at=SIGNED)
    assert isinstance(with_header, TicketEvent)
    assert (with_header.event_id, with_header.occurred_at) == ("msg_2Lz", SIGNED)
    bare = parse(json.dumps(body).encode(), PRESETS["generic"], envelope(), AGENTS)[0]
    assert isinstance(bare, TicketEvent)
    assert bare.event_id == "sha256:" + hashlib.sha256(json.dumps(body).encode()).hexdigest()
    assert bare.occurred_at == RECEIVED


def test_array_fallback_ids_are_distinct_per_element() -> None:
    items = parse(json.dumps([{"objectId": 1, "propertyValue": "x", "ownerId": "74512"}] * 2).encode(),
                  HUBSPOT, envelope("hubspot", message_id="m1"), AGENTS)
    assert [i.event_id for i in items] == ["m1:0", "m1:1"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "the body is empty"),
        (b"   \n", "the body is empty"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{nope", "not JSON"),
        (b'{"a": NaN}', "not JSON"),
        (b"[]", "empty JSON array"),
        (b'"just a string"', "expected a JSON object, got str"),
        (b"[1, 2]", "element 0: expected a JSON object, got int"),
        (json.dumps({"ticket": {"status": "open"}, "agent": {"email": "a@b.co"}}).encode(),
         "required field ticket_id is missing"),
        (json.dumps({"ticket": {"id": "1"}, "agent": {"email": "a@b.co"}}).encode(), "required field status"),
        (json.dumps({"ticket": {"id": "1", "status": "x"}}).encode(), "required field agent"),
        (json.dumps({"ticket": {"id": {"x": 1}, "status": "x"}, "agent": {"email": "a@b.co"}}).encode(),
         "ticket_id at ticket.id must be a string or a number, got dict"),
        (json.dumps({"ticket": {"id": "1", "status": "x"}, "agent": {"crm_id": "999"}}).encode(),
         r'"helpdesk:999" is not in \[agents\]'),
        (json.dumps(generic(occurred_at="yesterday")).encode(), "occurred_at at occurred_at is not a time"),
        (json.dumps(generic(occurred_at=True)).encode(), "occurred_at at occurred_at is not a time"),
        (json.dumps({"ticket": {"id": "x" * 600, "status": "x"}, "agent": {"email": "a@b.co"}}).encode(),
         "longer than 512"),
        (b"[" * 100000 + b"]" * 100000, "not JSON"),
    ],
)
def test_unparseable_bodies_become_invalid_items_with_a_reason(body: bytes, reason: str) -> None:
    items = parse(body, PRESETS["generic"], envelope(), AGENTS)
    assert len(items) >= 1
    assert isinstance(items[0], InvalidItem)

    assert re.search(reason, items[0].reason), items[0].reason


def test_one_bad_element_does_not_spoil_the_others() -> None:
    good = {"eventId": 7, "objectId": 1, "propertyValue": "card_capture", "ownerId": "74512"}
    items = parse(json.dumps([good, {"eventId": 8}]).encode(), HUBSPOT, envelope("hubspot"), AGENTS)
    assert isinstance(items[0], TicketEvent)
    assert isinstance(items[1], InvalidItem) and items[1].event_id == "8"
    assert "element 1: required field ticket_id" in items[1].reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-23T10:00:00Z", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        ("2026-11-23T10:00:00.123456789Z", datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=UTC)),
        ("2026-11-23T11:00:00+01:00", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        ("2026-11-23T10:00:00", datetime(2026, 11, 23, 10, tzinfo=UTC)),
        (1795428000, datetime.fromtimestamp(1795428000, tz=UTC)),
        (1795428000000, datetime.fromtimestamp(1795428000, tz=UTC)),
        ("1795428000000", datetime.fromtimestamp(1795428000, tz=UTC)),
    ],
)
def test_parse_time_accepts_iso_and_unix_seconds_or_ms(value: object, expected: datetime) -> None:
    assert parse_time(value) == expected


@pytest.mark.parametrize("value", ["soon", True, None, float("nan"), 1e300, -1e17, "2026-13-45T00:00:00Z", [1]])
def test_parse_time_refuses_what_is_not_a_time(value: object) -> None:
    with pytest.raises(ValueError):
        parse_time(value)


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 10**400, -(10**400)])
def test_parse_time_refuses_times_past_the_range_of_dates_with_a_value_error(value: object) -> None:
    """Found by tests/test_fuzz.py: these raised OverflowError, which intake answered with a 500."""
    with pytest.raises(ValueError, match="out of the range of dates"):
        parse_time(value)
    body = json.dumps({"ticket": {"id": "1", "status": "open"}, "agent": {"email": "a@b.co"},
                       "occurred_at": value}).encode()
    [item] = parse(body, PRESETS["generic"], envelope("helpdesk"))
    assert isinstance(item, InvalidItem) and "occurred_at at occurred_at is not a time" in item.reason


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown mapping 'nope'"),
        ({"ticket_id": "a", "status": "b"}, "mapping lacks agent"),
        ({"ticket_id": "a", "status": "b", "agent": "c", "colour": "d"}, "unknown mapping key"),
        ({"ticket_id": "a", "status": "b", "agent": []}, "must be a dotted path"),
        ({"ticket_id": "a", "status": 3, "agent": "c"}, "must be a dotted path"),
        (5, "must be a preset name .* or a table of field paths, got int"),  # found by test_fuzz: was TypeError
        (["generic"], "got list"),
        (True, "got bool"),
    ],
)
def test_bad_mappings_are_refused_with_a_hint(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        field_map(spec)  # type: ignore[arg-type]


def test_agent_map_prefers_the_source_qualified_key() -> None:
    agents = {"zendesk:1": "a@example.com", "1": "b@example.com"}
    assert resolve_agent("1", "zendesk", agents) == "a@example.com"
    assert resolve_agent("1", "hubspot", agents) == "b@example.com"
    with pytest.raises(EventError, match='add "x:2"'):
        resolve_agent("2", "x", agents)


def test_a_nul_character_makes_a_field_invalid_rather_than_unstorable() -> None:
    item = one(generic(ticket={"id": "4\u00008", "status": "open"}))
    assert isinstance(item, InvalidItem) and "ticket_id at ticket.id contains a NUL character" in item.reason
    assert "\x00" not in item.event_id


@pytest.mark.parametrize(("message_id", "usable"), [("msg_2Lz", True), ("m" * 513, False), ("msg\x00id", False),
                                                  ("", False), (None, False)])
def test_a_signature_id_is_used_only_when_it_can_be_stored(message_id: str | None, usable: bool) -> None:
    assert usable_message_id(message_id) == (message_id if usable else None)


def test_an_unpaired_surrogate_is_invalid_and_not_quoted_back() -> None:
    body = b'{"ticket": {"id": "1", "status": "op\\ud800en"}, "agent": {"crm_id": "\\udfff"}}'
    [item] = parse(body, PRESETS["generic"], envelope(), AGENTS)
    assert isinstance(item, InvalidItem) and "unpaired surrogate" in item.reason
    item.reason.encode("utf-8")  # storable
