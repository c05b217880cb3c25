"""The one default wall clock. Everything else takes time as a parameter (a `now`, or a clock passed in)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime (the default wall clock)."""
    return datetime.now(UTC)
