"""Replaying saved events: the one loop behind `flask replay` and the console's Replay page."""

from __future__ import annotations

from collections.abc import Iterable

from webhook.processing import REPLAYABLE, Outcome, Processor

COLUMNS = ("event", "action", "old state", "new state", "detail")  # the table both print
FAILED_STATES = ("failed", "invalid", "missing")


def replay(processor: Processor, ids: Iterable[int], *, dry_run: bool, force: bool) -> list[Outcome]:
    """Run each event through processing again (any replayable state), or with dry_run only preview it."""
    return [processor.preview(pk, force=force) if dry_run else processor.process(pk, states=REPLAYABLE, force=force)
            for pk in ids]


def failed(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """Return the outcomes that count as failed (the command's exit status, the console's summary)."""
    return [o for o in outcomes if o.new_state in FAILED_STATES]


def row(outcome: Outcome) -> tuple[int, str | None, str, str, str]:
    """Return the outcome as a row of COLUMNS."""
    return outcome.event, outcome.action, outcome.old_state, outcome.new_state, outcome.detail


FORCE_SKIPS = ("the age guard (events older than max_event_age_seconds are acted on), the future-date guard, and "
               "the ordering guard and the agent's hold (an older event may undo a newer one)")
