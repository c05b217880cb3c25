"""Prometheus metrics: counters and a histogram per app, exposed on /metrics (multiprocess-aware under gunicorn)."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class Metrics:
    """The service's metrics; one instance per app, so that tests and processes never share counts by accident."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("webhook_events_received", "Events stored at intake.", ["source"], registry=r)
        self.rejected = Counter("webhook_requests_rejected", "Webhook requests refused, by reason.", ["reason"],
                                registry=r)
        self.duplicates = Counter("webhook_duplicates", "Deliveries of events already stored.", ["source"],
                                  registry=r)
        self.finished = Counter("webhook_events_finished", "Events that reached a final state.", ["state"],
                                registry=r)
        self.genesys_requests = Counter("webhook_genesys_requests", "Genesys requests, by HTTP status "
                                        "(none = no answer).", ["status"], registry=r)
        self.token_fetches = Counter("webhook_genesys_token_fetches", "OAuth token requests.", registry=r)
        self.latency = Histogram("webhook_processing_seconds", "From receipt to final state.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("webhook_worker_queue_depth", "Event ids waiting for a worker thread.",
                                 multiprocess_mode="livesum", registry=r)

    def render(self, oldest_unfinished: datetime | None, now: datetime) -> bytes:
        """Return the text exposition: every process's metrics under gunicorn, plus the oldest unfinished age."""
        registry = self.registry
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        age = (now - oldest_unfinished).total_seconds() if oldest_unfinished else 0.0
        extra = CollectorRegistry()
        extra.register(_Snapshot(lambda: GaugeMetricFamily(
            "webhook_oldest_unfinished_age_seconds", "Age of the oldest event still received or processing "
            "(0 when none).", value=max(age, 0.0))))
        return generate_latest(registry) + generate_latest(extra)


class _Snapshot(Collector):
    """A collector that reports one value computed at scrape time (from the database, shared by all processes)."""

    def __init__(self, make: Callable[[], Metric]) -> None:
        self.make = make

    def collect(self) -> Iterator[Metric]:
        yield self.make()


def authorized(header: str | None, token: str) -> bool:
    """Tell whether an Authorization header carries the metrics bearer token (compared in constant time)."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
