"""The rules table: first match wins, wildcards, lists, case-insensitive statuses, and bad rules refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from webhook.events import TicketEvent
from webhook.rules import Rule, decide, decide_fields, rule_from_table

RULES = tuple(rule_from_table(t) for t in [
    {"status": ["payment_in_progress", "card_capture"], "action": "mute", "name": "card"},
    {"from": ["payment_in_progress", "card_capture"], "action": "unmute"},
    {"source": "zendesk", "status": "hold", "action": "mute"},
    {"source": "zendesk", "status": "solved", "from": "hold", "action": "unmute"},
    {"source": "zendesk", "from": "hold", "action": "none"},
])


@pytest.mark.parametrize(
    ("source", "status", "previous", "action", "rule"),
    [
        ("helpdesk", "payment_in_progress", "open", "mute", 1),
        ("helpdesk", "CARD_CAPTURE", None, "mute", 1),
        ("helpdesk", "open", "Payment_In_Progress", "unmute", 2),
        ("helpdesk", "solved", "card_capture", "unmute", 2),
        ("helpdesk", "hold", "open", "none", None),
        ("zendesk", "hold", "open", "mute", 3),
        ("zendesk", "HOLD", None, "mute", 3),
        ("zendesk", "solved", "hold", "unmute", 4),
        ("zendesk", "open", "hold", "none", 5),
        ("zendesk", "open", None, "none", None),
        ("zendesk", "payment_in_progress", "hold", "mute", 1),
    ],
)
def test_first_matching_rule_decides(source: str, status: str, previous: str | None, action: str,
                                     rule: int | None) -> None:
    decision = decide_fields(RULES, source, status, previous)
    assert (decision.action, decision.rule) == (action, rule)


def test_decide_reads_the_event_fields_and_names_the_rule() -> None:
    event = TicketEvent("helpdesk", "e", datetime(2026, 1, 1, tzinfo=UTC), "1", "card_capture", None,
                        "a@example.com", None)
    assert decide(RULES, event).detail == "rule 1 (card)"
    assert decide((), event).detail == "no rule matched"


def test_from_without_previous_status_matches_only_the_wildcard() -> None:
    assert Rule("mute", previous=("open",)).matches("s", "x", None) is False
    assert Rule("mute").matches("s", "x", None) is True


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"status": "x"}, "action is None; it must be one of mute, unmute, none"),
        ({"status": "x", "action": "silence"}, "action is 'silence'"),
        ({"status": [], "action": "mute"}, "status must be a status"),
        ({"status": 3, "action": "mute"}, "status must be a status"),
        ({"from": [""], "action": "mute"}, "from must be a status"),
        ({"source": "", "action": "mute"}, "source must be"),
        ({"action": "mute", "stauts": "x"}, "unknown key"),
        ({"action": "mute", "name": 1}, "name must be a string"),
    ],
)
def test_bad_rules_are_refused_with_what_to_fix(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rule_from_table(table)


def test_a_rule_may_also_pause_or_resume_the_recording() -> None:
    rules = (rule_from_table({"status": "card_capture", "action": "mute", "recording": "pause"}),
             rule_from_table({"status": "recording_only", "action": "none", "recording": "resume"}),
             rule_from_table({"status": "*", "action": "none"}))
    capture = decide_fields(rules, "zendesk", "card_capture", None)
    assert (capture.action, capture.recording, capture.acts) == ("mute", "pause", True)
    only = decide_fields(rules, "zendesk", "recording_only", None)
    assert (only.action, only.recording, only.acts) == ("none", "resume", True)
    nothing = decide_fields(rules, "zendesk", "open", None)
    assert (nothing.action, nothing.recording, nothing.acts) == ("none", None, False)
    with pytest.raises(ValueError, match="recording is 'stop'; it must be one of pause, resume"):
        rule_from_table({"action": "mute", "recording": "stop"})
