"""Request spacing: a thread-safe token bucket per OAuth token, narrowed by what Genesys' rate-limit headers say."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from webhook.errors import GenesysThrottledError
from webhook.genesys.retry import MAX_RETRY_AFTER

# Genesys' default limit per client-credentials token (client.credentials.token.rate.per.minute on its limits page).
DEFAULT_REQUESTS_PER_MINUTE = 300.0
MIN_REQUESTS_PER_MINUTE = 10.0  # below this the bucket would hold under one request
BURST_SHARE = 0.1  # the bucket holds a tenth of the minute's allowance; the rest refills over the minute
LIMIT_WINDOW = 60.0
NEW_WINDOW_SLACK = 1.5  # inin-ratelimit-reset is whole seconds: an end this much past the known one is a new window
RATELIMIT_ALLOWED = "inin-ratelimit-allowed"
RATELIMIT_COUNT = "inin-ratelimit-count"
RATELIMIT_RESET = "inin-ratelimit-reset"


@dataclass(frozen=True)
class RateLimitHeaders:
    """An answer's inin-ratelimit-* headers: `count` of `allowed` requests used; the window ends in `reset` s."""

    allowed: int
    count: int
    reset: float


def ratelimit_headers(headers: Mapping[str, str]) -> RateLimitHeaders | None:
    """Return the inin-ratelimit-* values of an answer, or None when one is missing or not a non-negative number."""
    try:
        values = RateLimitHeaders(int(headers[RATELIMIT_ALLOWED]), int(headers[RATELIMIT_COUNT]),
                                  float(headers[RATELIMIT_RESET]))
    except (KeyError, ValueError):
        return None
    if min(values.allowed, values.count, values.reset) < 0 or not math.isfinite(values.reset):
        return None
    return values


class RateLimiter:
    """Spaces this process's Genesys API requests: a thread-safe token bucket, narrowed by what Genesys reports.

    The bucket holds a tenth of the minute's allowance and refills the rest over the minute, so that no 60 s window
    ever carries more than `per_minute` requests (whether Genesys counts in fixed or sliding windows). When answers
    carry inin-ratelimit-* headers and the current window's allowance is spent, requests wait for its reset; a 429's
    Retry-After holds every thread, not only the one that got it. Slots are reserved under the lock (the bucket may go
    below zero) and waited for outside it, so waiting threads queue in order.
    """

    def __init__(self, per_minute: float, *, clock: Callable[[], float]) -> None:
        if per_minute < MIN_REQUESTS_PER_MINUTE:
            raise ValueError(f"requests per minute must be at least {MIN_REQUESTS_PER_MINUTE:g}, got {per_minute:g}")
        self.per_minute = per_minute
        self.capacity = max(1.0, per_minute * BURST_SHARE)
        self.rate = (per_minute - self.capacity) / LIMIT_WINDOW  # requests per second
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._stamp = clock()
        self._hold_until = -math.inf
        self._window_end = -math.inf  # the Genesys window the headers describe, and the requests it has left
        self._window_left = 0
        self._in_flight = 0

    def __repr__(self) -> str:
        return f"RateLimiter({self.per_minute:g}/min)"

    def reserve(self, deadline: float) -> float:
        """Take the next free slot and return the seconds to wait for it; GenesysThrottledError when it is too late."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            bucket = now if self._tokens >= 1 else now + (1 - self._tokens) / self.rate
            window = self._window_end if now < self._window_end and self._window_left <= 0 else now
            at = max(now, self._hold_until, bucket, window)
            if at >= deadline:
                raise GenesysThrottledError(
                    f"rate limit: next Genesys slot in {at - now:.1f} s is past this event's budget "
                    f"({max(deadline - now, 0.0):.1f} s left; limit {self.per_minute:g} requests a minute)")
            self._tokens -= 1
            if at < self._window_end:
                self._window_left -= 1
            self._in_flight += 1
            return at - now

    def settle(self, reported: RateLimitHeaders | None = None, retry_after: float | None = None) -> None:
        """Close a reserved slot once its answer (or failure) is in, learning from the answer's rate-limit headers."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            now = self._clock()
            if retry_after is not None and retry_after <= MAX_RETRY_AFTER:  # past it the event gives up, nobody waits
                self._hold_until = max(self._hold_until, now + retry_after)
            if reported is not None:
                self._narrow(reported, now)

    def _narrow(self, reported: RateLimitHeaders, now: float) -> None:
        """Take Genesys' count for the current window; requests still in flight may not be in it yet."""
        left = reported.allowed - reported.count - self._in_flight
        end = now + reported.reset
        if now >= self._window_end or end > self._window_end + NEW_WINDOW_SLACK:
            self._window_end, self._window_left = end, left
        else:
            self._window_left = min(self._window_left, left)
            self._window_end = max(self._window_end, end)

