"""Retry decisions, pure: whether and how long to wait before trying a failed Genesys request again."""

from __future__ import annotations

from collections.abc import Callable

MAX_ATTEMPTS = 6  # tries of one request, the first included (a 401 re-login is not counted)
MAX_RETRY_AFTER = 180.0  # the official SDKs give up on a longer Retry-After
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
RETRYABLE_STATUSES = frozenset({502, 503, 504})


def retry_delay(
    *,
    status: int | None,
    attempt: int,
    retry_after: float | None,
    now: float,
    deadline: float,
    rng: Callable[[], float],
) -> float | None:
    """Return the seconds to wait before retrying failed attempt number `attempt` (0 = first), or None: do not retry."""
    if attempt + 1 >= MAX_ATTEMPTS:
        return None
    if status == 429:
        if retry_after is not None and retry_after > MAX_RETRY_AFTER:
            return None
        wait = _backoff(attempt, rng) if retry_after is None else max(0.0, retry_after)
    elif status is None or status in RETRYABLE_STATUSES:
        wait = _backoff(attempt, rng)
    else:
        return None
    return wait if now + wait < deadline else None


def _backoff(attempt: int, rng: Callable[[], float]) -> float:
    """Return an equal-jitter exponential backoff: half of the step fixed, half random."""
    step = min(BACKOFF_CAP, BACKOFF_BASE * 2.0**attempt)
    return step / 2 + rng() * step / 2

