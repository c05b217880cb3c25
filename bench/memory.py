"""Bench: resident memory of a gunicorn worker while it takes 10,000 events (target: < 120 MB, flat from 5,000 on).

Starts the real service under gunicorn with ONE worker (the shipped gunicorn.conf.py, SQLite in a temporary folder)
acting live against the fake Genesys on loopback, sends signed events for a pool of agents on calls from a few client
threads, waits for every event to reach a final state, and reads the worker's VmRSS from /proc at each checkpoint.
Bounded in count and time; loopback only; everything is stopped at the end.

Run from the repository root:  .venv/bin/python bench/memory.py [--events 10000] [--agents 50] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fake_genesys import FakeGenesys  # noqa: E402
from tests.support.servers import (  # noqa: E402
    Service,
    service_env,
    wait_until,
    worker_pids,
    write_config,
)
from webhook.store import Store  # noqa: E402

TIME_CAP = 600.0  # seconds the whole run may take


def rss_mb(pid: int) -> float:
    """Return a process's resident set size in MB, read from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def worker_pid(service: Service) -> int:
    """Return the pid of the service's single gunicorn worker."""
    children = worker_pids(service)
    assert len(children) == 1, f"expected one worker, found {children}"
    return children[0]


def finished_count(store: Store) -> int:
    """Return how many events have reached a final state."""
    return sum(n for state, n in store.counts().items() if state not in ("received", "processing"))


def body(n: int, agent: str) -> bytes:
    status, previous = ("payment_in_progress", "open") if n % 2 == 0 else ("open", "payment_in_progress")
    return json.dumps({"event_id": f"mem-{uuid.uuid4()}", "occurred_at": datetime.now(UTC).isoformat(),
                       "ticket": {"id": str(n), "status": status, "previous_status": previous},
                       "agent": {"email": agent}}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    started = time.monotonic()
    checkpoints = sorted({args.events // 10 * k for k in range(1, 11)} | {args.events // 2, args.events})
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, FakeGenesys() as fake:
        agents = [f"agent{n}@example.com" for n in range(args.agents)]
        for agent in agents:
            fake.start_call(fake.add_user(agent))
        db = f"sqlite:///{tmp}/memory.db"
        # Spacing off ([genesys] requests_per_minute = 0): at the shipped 300 a minute, 10,000 events take 37 min.
        config = write_config(Path(tmp) / "webhook.toml", requests_per_minute=0)
        env = service_env(fake, db, config, LOG_LEVEL="WARNING")
        service = Service(env, Path(tmp), workers=1, threads=4, name="memory").start()
        store = Store.from_url(db)
        try:
            pid = worker_pid(service)
            print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, worker pid {pid}")
            print(f"{'events':>8} {'rss_mb':>8} {'final':>8}")
            print(f"{0:>8} {rss_mb(pid):>8.1f} {0:>8}")
            sent = 0
            readings: dict[int, float] = {}
            with ThreadPoolExecutor(args.clients) as pool:
                for checkpoint in checkpoints:
                    batch = range(sent, checkpoint)
                    codes = list(pool.map(lambda n: service.post("inhouse", body(n, agents[n % len(agents)]))
                                          .status_code, batch))
                    assert all(c == 202 for c in codes), f"unexpected answers: {set(codes)}"
                    sent = checkpoint
                    wait_until(lambda target=sent: finished_count(store) >= target,
                               max(TIME_CAP - (time.monotonic() - started), 1), message="events finished")
                    readings[checkpoint] = rss_mb(pid)
                    finished = finished_count(store)
                    print(f"{checkpoint:>8} {readings[checkpoint]:>8.1f} {finished:>8}")
            half, end = readings[args.events // 2], readings[args.events]
            print(f"\nstates: {store.counts()}")
            print(f"rss at {args.events // 2}: {half:.1f} MB, at {args.events}: {end:.1f} MB, "
                  f"growth {end - half:+.1f} MB")
            print(f"target: < 120 MB -> {'met' if end < 120 else 'MISSED'}; flat from {args.events // 2} "
                  f"(growth < 5 MB) -> {'met' if end - half < 5 else 'MISSED'}")
            print(f"took {time.monotonic() - started:.0f} s")
        finally:
            store.close()
            service.close()


if __name__ == "__main__":
    main()
