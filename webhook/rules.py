"""The rules table: first match wins, no match means "none". Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from webhook.events import TicketEvent

Action = Literal["mute", "unmute", "none"]
ACTIONS: tuple[Action, ...] = ("mute", "unmute", "none")
Recording = Literal["pause", "resume"]
RECORDINGS: tuple[Recording, ...] = ("pause", "resume")
RULE_KEYS = ("source", "status", "from", "action", "recording", "name")


@dataclass(frozen=True)
class Rule:
    """One row: which events it matches and what to do; "*" matches anything, None for `from` means any."""

    action: Action
    status: tuple[str, ...] = ("*",)
    source: str = "*"
    previous: tuple[str, ...] = ("*",)
    name: str = ""
    recording: Recording | None = None  # also pause or resume the call's recording (secure pause)

    def matches(self, source: str, status: str, previous: str | None) -> bool:
        """Tell whether this rule applies to an event with these fields (statuses compared case-insensitively)."""
        if self.source not in ("*", source):
            return False
        if "*" not in self.status and status.lower() not in self.status:
            return False
        return "*" in self.previous or (previous is not None and previous.lower() in self.previous)


@dataclass(frozen=True)
class Decision:
    """The outcome of the rules: an action, the rule that gave it (1-based), and a detail for the event log."""

    action: Action
    rule: int | None
    detail: str
    recording: Recording | None = None

    @property
    def acts(self) -> bool:
        """Tell whether Genesys is to be changed at all (the microphone, the recording, or both)."""
        return self.action != "none" or self.recording is not None


def decide(rules: Sequence[Rule], event: TicketEvent) -> Decision:
    """Return the action of the first rule that matches the event, or "none" when no rule does."""
    return decide_fields(rules, event.source, event.status, event.previous_status)


def decide_fields(rules: Sequence[Rule], source: str, status: str, previous: str | None) -> Decision:
    """Same as decide(), from the three fields the rules look at (used by `rules check`)."""
    for number, rule in enumerate(rules, start=1):
        if rule.matches(source, status, previous):
            label = f"rule {number}" + (f" ({rule.name})" if rule.name else "")
            return Decision(rule.action, number, label, rule.recording)
    return Decision("none", None, "no rule matched")


def rule_from_table(table: Mapping[str, Any]) -> Rule:
    """Build a Rule from one [[rules]] table of the config; ValueError names what is wrong and how to fix it."""
    unknown = sorted(set(table) - set(RULE_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; a rule has {', '.join(RULE_KEYS)}")
    action = table.get("action")
    if action not in ACTIONS:
        raise ValueError(f"action is {action!r}; it must be one of {', '.join(ACTIONS)}")
    source = table.get("source", "*")
    if not isinstance(source, str) or not source:
        raise ValueError('source must be a source name or "*"')
    name = table.get("name", "")
    if not isinstance(name, str):
        raise ValueError("name must be a string")
    recording = table.get("recording")
    if recording is not None and recording not in RECORDINGS:
        raise ValueError(f"recording is {recording!r}; it must be one of {', '.join(RECORDINGS)} (or left out)")
    return Rule(
        action=action,
        status=_statuses(table.get("status", "*"), "status"),
        source=source,
        previous=_statuses(table.get("from", "*"), "from"),
        name=name,
        recording=recording,
    )


def _statuses(value: Any, key: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f'{key} must be a status, a list of statuses, or "*"')
    return tuple(v.lower() for v in values)
