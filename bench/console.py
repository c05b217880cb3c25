"""Bench: the console's events page with 100,000 stored events (target: p95 under 300 ms, SQLite and PostgreSQL).

Fills a scratch database (SQLite in a temporary folder; with --database-url, also a scratch PostgreSQL database made
beside that URL's and dropped afterwards) with events spread over 30 days, 200 agents, 20,000 tickets and the usual
mix of final states, migrated like a deployment (`db upgrade`: migration 5's indexes). Then, through the app in
process (the Flask test client, logged in with the console password), it asks for the events page with each kind of
filter, the first page and deep pages, and prints p50, p95 and the slowest answer per query, counts per state
included. No network; bounded in count.

Run from the repository root:  .venv/bin/python bench/console.py [--events 100000] [--repeats 30]
                               [--database-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert  # noqa: E402

from tests.support.app import make_settings  # noqa: E402
from tests.support.clocks import Clock  # noqa: E402
from tests.support.databases import scratch_postgres  # noqa: E402
from webhook import create_app  # noqa: E402
from webhook.config import Console, database_url  # noqa: E402
from webhook.console.chart import percentile  # noqa: E402
from webhook.migrations import upgrade  # noqa: E402
from webhook.store import Store, events  # noqa: E402

PASSWORD = "bench-console-password"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
STATES = [("applied", 55), ("dry_run", 10), ("skipped", 15), ("no_call", 10), ("expired", 5), ("failed", 4),
          ("invalid", 1)]
BATCH = 5000


def rows(count: int, seed: int) -> Iterator[list[dict[str, object]]]:
    """Yield batches of event rows, oldest first, received over the 30 days before NOW."""
    rng = random.Random(seed)
    names, weights = zip(*STATES, strict=True)
    span = 30 * 86400
    batch: list[dict[str, object]] = []
    for n in range(count):
        received = NOW - timedelta(seconds=span * (1 - n / count))
        state = rng.choices(names, weights)[0]
        agent = f"agent{rng.randrange(200):03d}@example.com"
        ticket = str(10000 + rng.randrange(20000))
        body = json.dumps({"event_id": f"evt-{n}", "occurred_at": received.isoformat(),
                           "ticket": {"id": ticket, "status": "payment_in_progress", "previous_status": "open"},
                           "agent": {"email": agent}}).encode()
        batch.append({"source": rng.choice(("helpdesk", "zendesk", "hubspot")), "event_id": f"evt-{n}",
                      "state": state, "detail": f"{state}: bench event {n}", "action": "mute", "ticket_id": ticket,
                      "status": "payment_in_progress", "previous_status": "open", "agent": agent,
                      "conversation_id": None, "occurred_at": received, "received_at": received,
                      "updated_at": received + timedelta(milliseconds=rng.randrange(3, 40)), "claimed_at": None,
                      "started_at": received, "signed_at": received, "message_id": None, "raw_body": body,
                      "headers": '{"Content-Type": "application/json"}'})
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def fill(url: str, count: int) -> float:
    """Migrate the empty database and insert count events; return the seconds it took."""
    started = time.perf_counter()
    store = Store.from_url(url)
    try:
        with store.transaction() as conn:
            upgrade(conn)
        for batch in rows(count, seed=13):
            with store.transaction() as conn:
                conn.execute(insert(events), batch)
        if store.dialect == "postgresql":  # what autovacuum does after a bulk load; SQLite is left as deployed
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE events")
    finally:
        store.close()
    return time.perf_counter() - started


def queries(url: str) -> list[tuple[str, str]]:
    """Return (label, path) of the pages to time; deep pages start below ids found in the database."""
    store = Store.from_url(url)
    try:
        with store.engine.connect() as conn:
            top = conn.exec_driver_sql("SELECT max(id) FROM events").scalar() or 0
    finally:
        store.close()
    return [
        ("first page, no filter", "/console/events"),
        ("page halfway down (before=)", f"/console/events?before={max(top // 2, 1)}"),
        ("state=failed", "/console/events?state=failed"),
        ("state=failed, 60% down", f"/console/events?state=failed&before={max(top * 4 // 10, 1)}"),
        ("source=zendesk", "/console/events?source=zendesk"),
        ("agent", "/console/events?agent=agent042@example.com"),
        ("ticket", "/console/events?ticket=12345"),
        ("since=1h", "/console/events?since=1h"),
        ("since=7d & state=no_call", "/console/events?since=7d&state=no_call"),
        ("agent & state=applied", "/console/events?agent=agent007@example.com&state=applied"),
    ]


def measure(url: str, repeats: int) -> list[tuple[str, float, float, float, int]]:
    """Time each query repeats times through the logged-in test client; return (label, p50, p95, max ms, rows)."""
    settings = replace(make_settings(url), console=Console(password=PASSWORD, secret_key="b" * 48))
    app = create_app(settings, clock=Clock(NOW), background=False)
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console/login").get_data(as_text=True))
    assert token, "no CSRF token on the login page"
    login = client.post("/console/login/password", data={"name": "bench", "password": PASSWORD,
                                                         "csrf_token": token.group(1)})
    assert login.status_code == 303, login.status_code
    results = []
    try:
        for label, path in queries(url):
            client.get(path)  # warm: the statements' compiled forms, the page cache
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                answer = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200, (path, answer.status_code)
            shown = answer.get_data(as_text=True).count('aria-label="select event')
            results.append((label, percentile(times, 50), percentile(times, 95), max(times), shown))
    finally:
        app.extensions["webhook"].store.close()
    return results


def report(name: str, url: str, count: int, repeats: int) -> bool:
    seconds = fill(url, count)
    print(f"\n{name}: {count:,} events stored in {seconds:.1f} s; {repeats} requests per query")
    print(f"{'query':<30} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'rows':>5}")
    worst = 0.0
    for label, p50, p95, slowest, shown in measure(url, repeats):
        worst = max(worst, p95)
        print(f"{label:<30} {p50:>8.1f} {p95:>8.1f} {slowest:>8.1f} {shown:>5}")
    verdict = "met" if worst < 300 else "NOT met"
    print(f"{name}: worst p95 {worst:.1f} ms (target < 300 ms: {verdict})")
    return worst < 300


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-console-") as folder:
        yield f"sqlite:///{folder}/webhook.db"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--database-url", help="a PostgreSQL URL: a scratch database is made beside it")
    args = parser.parse_args()
    print(f"Python {platform.python_version()}, {platform.machine()}, {platform.node()}")
    ok = True
    with sqlite_url() as url:
        ok &= report("SQLite", url, args.events, args.repeats)
    if args.database_url:
        with scratch_postgres(database_url(args.database_url)) as url:
            ok &= report("PostgreSQL", url, args.events, args.repeats)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
