"""Bench: how much of a hand-written durable receiver's intake throughput and latency the service keeps.

Starts three servers on loopback, one after the other, under the same gunicorn.conf.py and the same workers, threads
and worker class:

- the bare app (bench/bare_app.py): Flask that reads the body and answers 202; the ceiling of Flask under gunicorn;
- the hand-written durable receiver (bench/handwritten_app.py): what a user would write instead of the service;
  Flask, the raw body stored with one stdlib sqlite3 INSERT OR IGNORE keyed by the delivery id, WAL, one
  connection per thread, no verification, 202. The target is measured against this one;
- the service (`wsgi:app`: SQLite in a temporary folder, GENESYS_DRY_RUN=true, the shipped config/webhook.toml, fresh
  secrets generated here).

All three get the same kind of signed deliveries (the four shipped sources in turn, unique event ids), signed in bulk
before each phase with the time each request is due, so signatures are fresh and the timing holds no crypto:

- closed loop: `--concurrency` keep-alive connections send as fast as answers come back for `--closed-seconds`;
  requests per second is the maximum throughput;
- open loop: one request every 1/`--rate` s for `--seconds`, whatever the answers do; latency runs from the moment a
  request was due to the end of its answer (a late start counts against the server: no coordinated omission).

For the closed loop it also prints where the CPU went: the CPU of each server's processes per request (for the
service, until its background worker has processed every event: what an event costs in all), the load generator's
CPU per request, and how busy the machine was. When two servers saturate the machine, the ratio of throughputs is
about the inverse ratio of those per-request costs.

The load generator is stdlib http.client on threads: it costs less CPU per request than requests.Session, which
matters because it shares the machine's CPUs with the servers. Everything is bounded (requests signed per phase, a
wall-clock cap per phase, start and drain timeouts) and every server is stopped at the end.

Run from the repository root:  .venv/bin/python bench/intake.py [--rate 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import re
import sqlite3
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.servers import Service, dry_run_env, settings_of, worker_pids  # noqa: E402
from webhook import signatures  # noqa: E402
from webhook.config import Settings, secret_variable  # noqa: E402
from webhook.store import Store  # noqa: E402

CONFIG = ROOT / "config" / "webhook.toml"
SAMPLES = ROOT / "samples"
DRAIN_TIMEOUT = 60.0
TARGET_RATIO = 0.6  # the service keeps at least 60% of the hand-written durable receiver's throughput
TARGET_P99_MS = 25.0  # at the fixed rate, on SQLite


# ---------------------------------------------------------------- deliveries


@dataclass(frozen=True)
class Delivery:
    """One signed request, ready to send."""

    path: str
    body: bytes
    headers: dict[str, str]


class Deliveries:
    """Makes signed deliveries for the shipped sources in turn, each event with a new id."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sources = sorted(settings.sources)
        self.zendesk = json.loads((SAMPLES / "zendesk-status-changed.json").read_bytes())
        self.count = 0

    def make(self, n: int, port: int, due: datetime) -> list[Delivery]:
        """Sign n deliveries for the server on port, each signed (and its event dated) `due` (a few seconds ahead)."""
        return [self._one(port, due) for _ in range(n)]

    def _one(self, port: int, at: datetime) -> Delivery:
        self.count += 1
        source = self.sources[self.count % len(self.sources)]
        src = self.settings.sources[source]
        body = json.dumps(self._body(src.mapping.name, self.count, at)).encode()
        url = f"http://127.0.0.1:{port}/webhooks/{source}"
        headers = signatures.sign(src.scheme, body=body, secret=src.secrets[0], now=at, url=url, header=src.header)
        headers["Content-Type"] = "application/json"
        return Delivery(f"/webhooks/{source}", body, headers)

    def _body(self, mapping: str, n: int, at: datetime) -> Any:
        event_id = f"bench-{uuid.uuid4()}"
        when = at.isoformat().replace("+00:00", "Z")
        agent = f"agent-{n % 50}@example.com"
        if mapping == "zendesk-event":
            return self.zendesk | {"id": event_id, "time": when, "event": {"current": "HOLD", "previous": "OPEN"}}
        if mapping == "generic":
            return {"event_id": event_id, "occurred_at": when, "agent": {"email": agent},
                    "ticket": {"id": str(n), "status": "payment_in_progress", "previous_status": "open"}}
        return [{"eventId": event_id, "occurredAt": int(at.timestamp() * 1000), "objectId": n,  # hubspot
                 "subscriptionType": "ticket.propertyChange", "propertyName": "hs_pipeline_stage",
                 "propertyValue": "card_capture", "ownerEmail": agent}]


# ---------------------------------------------------------------- servers


def bench_env(tmp: Path) -> dict[str, str]:
    """The environment of every server: fresh secrets for every configured source, dry run, SQLite in tmp (the
    hand-written receiver's own file is HANDWRITTEN_DB)."""
    with CONFIG.open("rb") as handle:
        sources = tomllib.load(handle)["sources"]
    secrets = {secret_variable(name): signatures.generate_secret(table["scheme"]) for name, table in sources.items()}
    return dry_run_env(f"sqlite:///{tmp / 'bench.db'}", CONFIG, HANDWRITTEN_DB=str(tmp / "handwritten.db"), **secrets)


# ---------------------------------------------------------------- load


@dataclass
class Result:
    """What one phase measured."""

    sent: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    server_cpu_ms: float = math.nan  # CPU of the server's processes per request, its background work included
    load_cpu_ms: float = math.nan  # CPU of this load generator per request
    machine_busy: float = math.nan  # share of all CPUs busy (not idle, not waiting for I/O) during the phase

    @property
    def rps(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        return percentile(self.latencies_ms, p)


def percentile(values: Sequence[float], p: float) -> float:
    """Return the p-th percentile (nearest rank), NaN when there are none."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1] if ordered else math.nan


class Client:
    """One keep-alive connection; reconnects once when the server has closed it in between."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def send(self, delivery: Delivery) -> str:
        for attempt in (1, 2):
            try:
                self.connection.request("POST", delivery.path, delivery.body, delivery.headers)
                response = self.connection.getresponse()
                response.read()
                return str(response.status)
            except (http.client.HTTPException, OSError) as exc:
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                if attempt == 2:
                    return type(exc).__name__
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.connection.close()


def closed_loop(port: int, deliveries: Sequence[Delivery], concurrency: int, seconds: float) -> Result:
    """Send as fast as answers come back on `concurrency` connections, for `seconds` or until the deliveries run out."""
    result = Result()
    feed = iter(deliveries)
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def run() -> None:
        client = Client(port)
        try:
            while time.perf_counter() < stop_at:
                with lock:
                    delivery = next(feed, None)
                if delivery is None:
                    return
                began = time.perf_counter()
                status = client.send(delivery)
                elapsed = time.perf_counter() - began
                with lock:
                    result.sent += 1
                    result.statuses[status] += 1
                    result.latencies_ms.append(elapsed * 1000)
        finally:
            client.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=run, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    result.seconds = time.perf_counter() - started
    return result


def open_loop(port: int, deliveries: Sequence[Delivery], rate: float, start: float, senders: int = 32) -> Result:
    """Send delivery i at start + i/rate (perf_counter), whatever the answers do; latency from the due time."""
    result = Result()
    indexes = iter(range(len(deliveries)))
    lock = threading.Lock()

    def run() -> None:
        client = Client(port)
        try:
            while True:
                with lock:
                    i = next(indexes, None)
                if i is None:
                    return
                due = start + i / rate
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                status = client.send(deliveries[i])
                done = time.perf_counter()
                with lock:
                    result.sent += 1
                    result.statuses[status] += 1
                    result.latencies_ms.append((done - due) * 1000)
        finally:
            client.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(len(deliveries) / rate + 60)
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------- the run


@dataclass
class Measured:
    name: str
    closed: Result
    fixed: Result


def measure(server: Service, make: Deliveries, args: argparse.Namespace, drain: Store | None) -> Measured:
    """Warm up, then the fixed-rate phase, then the closed loop (its backlog cannot spoil the latencies)."""
    lead = 3.0  # seconds between starting to sign a phase's deliveries and its first request
    warm = make.make(200, server.port, datetime.now(UTC))
    closed_loop(server.port, warm, args.concurrency, 5)
    wait_drained(drain)
    count = int(args.rate * args.seconds)
    now, start = datetime.now(UTC), time.perf_counter() + lead  # the same instant on both clocks, then the lead
    due = [make.make(1, server.port, now + timedelta(seconds=lead + i / args.rate))[0] for i in range(count)]
    if time.perf_counter() > start - 0.5:
        raise SystemExit(f"signing {count} deliveries took more than {lead - 0.5:g} s; lower --rate or --seconds")
    fixed = open_loop(server.port, due, args.rate, start)
    wait_drained(drain)
    budget = min(args.max_requests, int(args.closed_seconds * 20_000))
    burst = make.make(budget, server.port, datetime.now(UTC) + timedelta(seconds=lead))
    time.sleep(max(0.0, lead - 1))
    server_before, load_before, machine_before = server_cpu(server), time.process_time(), machine_ticks()
    closed = closed_loop(server.port, burst, args.concurrency, args.closed_seconds)
    load_after, machine_after = time.process_time(), machine_ticks()
    wait_drained(drain)  # the events' processing after the answers is part of what a request costs the service
    if closed.sent:
        closed.server_cpu_ms = (server_cpu(server) - server_before) * 1000 / closed.sent
        closed.load_cpu_ms = (load_after - load_before) * 1000 / closed.sent
    total, idle = (after - before for after, before in zip(machine_after, machine_before, strict=True))
    closed.machine_busy = 1 - idle / total if total else math.nan
    return Measured(server.name, closed, fixed)


def server_cpu(server: Service) -> float:
    """CPU seconds (user + system) used so far by a server's gunicorn master and its live workers; NaN off Linux."""
    assert server.process is not None, "not running"
    if not Path("/proc/stat").is_file():
        return math.nan
    used = 0
    for pid in (server.process.pid, *worker_pids(server)):
        with suppress(OSError):  # a worker that ended meanwhile
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # after "(comm)": utime is 12th
            used += int(fields[11]) + int(fields[12])
    return used / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(all, idle + iowait) CPU ticks of the machine since boot, from /proc/stat; (0, 0) off Linux."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    return sum(values), values[3] + values[4]


def wait_drained(store: Store | None, timeout: float = DRAIN_TIMEOUT) -> None:
    """Let the service's background worker finish what it was handed (bounded), so phases do not overlap."""
    if store is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = store.counts()
        if not counts.get("received") and not counts.get("processing"):
            return
        time.sleep(0.1)
    print(f"  (the service still had {store.counts()} after {timeout:.0f} s)", file=sys.stderr)


def machine() -> str:
    model = ""
    with suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from importlib.metadata import version

    return (f"nproc={usable} (cpu_count={os.cpu_count()}) {model}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; gunicorn {version('gunicorn')}, Flask {version('flask')}")


def report(bare: Measured, hand: Measured, service: Measured, args: argparse.Namespace) -> dict[str, Any]:
    servers = (bare, hand, service)
    ratio = service.closed.rps / hand.closed.rps if hand.closed.rps else math.nan
    of_bare = service.closed.rps / bare.closed.rps if bare.closed.rps else math.nan
    p99 = service.fixed.percentile(99)

    def each(value: Any) -> tuple[str, ...]:
        return tuple(value(m) for m in servers)

    rows = [
        ("max throughput, closed loop (req/s)", each(lambda m: f"{m.closed.rps:9.0f}"),
         f"{ratio:.0%} of hand-written ({of_bare:.0%} of bare)",
         f"target >= {TARGET_RATIO:.0%} of hand-written: {'PASS' if ratio >= TARGET_RATIO else 'FAIL'}"),
        ("  closed-loop p50 / p99 (ms)",
         each(lambda m: f"{m.closed.percentile(50):4.1f}/{m.closed.percentile(99):4.1f}"), "", ""),
        (f"p50 at {args.rate:g} req/s (ms)", each(lambda m: f"{m.fixed.percentile(50):9.2f}"), "", ""),
        (f"p99 at {args.rate:g} req/s (ms)", each(lambda m: f"{m.fixed.percentile(99):9.2f}"), "",
         f"target < {TARGET_P99_MS:g} ms: {'PASS' if p99 < TARGET_P99_MS else 'FAIL'}"),
        (f"max at {args.rate:g} req/s (ms)", each(lambda m: f"{max(m.fixed.latencies_ms):9.2f}"), "", ""),
        ("server CPU per request, closed loop (ms)", each(lambda m: f"{m.closed.server_cpu_ms:9.2f}"), "",
         "the service's processing after the answer included"),
        ("load generator CPU per request (ms)", each(lambda m: f"{m.closed.load_cpu_ms:9.2f}"), "", ""),
        ("machine busy in the closed loop", each(lambda m: f"{m.closed.machine_busy:9.0%}"), "", ""),
        ("achieved rate (req/s)", each(lambda m: f"{m.fixed.rps:9.1f}"), "", ""),
    ]
    print(f"\n{'':42}{'bare app':>12}{'hand-written':>13}{'service':>12}")
    for label, (b, h, s), extra, target in rows:
        print(f"{label:42}{b:>12}{h:>13}{s:>12}  {extra} {target}".rstrip())
    for m in servers:
        print(f"answers, {m.name}: closed loop {dict(m.closed.statuses)} in {m.closed.seconds:.1f} s; "
              f"fixed rate {dict(m.fixed.statuses)} in {m.fixed.seconds:.1f} s")
    return {
        "machine": machine(), "workers": args.workers, "threads": args.threads, "worker_class": "gevent",
        "concurrency": args.concurrency, "rate": args.rate, "seconds": args.seconds,
        "closed_seconds": args.closed_seconds, "ratio": ratio, "ratio_target": TARGET_RATIO,
        "ratio_of_bare": of_bare, "p99_target_ms": TARGET_P99_MS,
        **{m.name: {"closed_rps": m.closed.rps, "closed_p50_ms": m.closed.percentile(50),
                    "closed_p99_ms": m.closed.percentile(99), "server_cpu_ms": m.closed.server_cpu_ms,
                    "load_cpu_ms": m.closed.load_cpu_ms, "machine_busy": m.closed.machine_busy,
                    "fixed_rps": m.fixed.rps,
                    "fixed_p50_ms": m.fixed.percentile(50), "fixed_p99_ms": m.fixed.percentile(99),
                    "statuses_closed": dict(m.closed.statuses), "statuses_fixed": dict(m.fixed.statuses)}
           for m in servers},
    }


def handwritten_rows(path: Path) -> int:
    """How many deliveries the hand-written receiver stored (each one answered 202 must be there)."""
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("SELECT count(*) FROM deliveries").fetchone()[0])


@contextmanager
def kept_or_temporary(keep: Path | None) -> Iterator[Path]:
    """The folder for the database, logs and metrics: `keep` (left in place), or a temporary one removed after."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        if any(keep.iterdir()):
            raise SystemExit(f"{keep} is not empty")
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as folder:
        yield Path(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second of the fixed-rate phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the fixed-rate phase")
    parser.add_argument("--closed-seconds", type=float, default=5.0, help="length of the closed-loop phase")
    parser.add_argument("--concurrency", type=int, default=16, help="connections of the closed-loop phase")
    parser.add_argument("--max-requests", type=int, default=30_000, help="deliveries signed for a closed loop")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")),
                        help="gunicorn workers of both servers (gunicorn.conf.py's default)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("GUNICORN_THREADS", "4")),
                        help="gunicorn threads per worker of both servers (gunicorn.conf.py's default)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--keep", type=Path, help="an empty folder to keep the servers' logs and database in")
    args = parser.parse_args(argv)
    if not (0 < args.rate <= 5000 and 0 < args.seconds <= 120 and 0 < args.closed_seconds <= 60
            and 0 < args.concurrency <= 256):
        parser.error("bounds: rate <= 5000, seconds <= 120, closed-seconds <= 60, concurrency <= 256")
    print(f"machine: {machine()}")
    kind = re.search(r'^worker_class = "(\w+)"', (ROOT / "gunicorn.conf.py").read_text(), re.MULTILINE)
    print(f"servers: gunicorn --config gunicorn.conf.py, {args.workers} worker(s), worker class "
          f"{kind.group(1) if kind else '?'}; loopback only")
    print(f"load: closed loop {args.concurrency} connections for {args.closed_seconds:g} s; "
          f"open loop {args.rate:g} req/s for {args.seconds:g} s ({int(args.rate * args.seconds)} requests)")
    with kept_or_temporary(args.keep) as tmp:
        env = bench_env(tmp)
        settings = settings_of(env)
        make = Deliveries(settings)
        print("bare app ...", flush=True)
        with Service(env, tmp, workers=args.workers, threads=args.threads, name="bare",
                     app="bench.bare_app:app") as bare_app:
            bare = measure(bare_app, make, args, None)
        print("hand-written durable receiver ...", flush=True)
        with Service(env, tmp, workers=args.workers, threads=args.threads, name="handwritten",
                     app="bench.handwritten_app:app") as hand_app:
            hand = measure(hand_app, make, args, None)
        kept = handwritten_rows(Path(env["HANDWRITTEN_DB"]))
        store = Store.from_url(settings.database_url)
        try:
            print("service ...", flush=True)
            with Service(env, tmp, workers=args.workers, threads=args.threads, name="service") as receiver:
                service = measure(receiver, make, args, store)
            final = store.counts()
        finally:
            store.close()
        print(f"stored events by state: {final}; deliveries the hand-written receiver kept: {kept}")
        numbers = report(bare, hand, service, args) | {"stored": final, "handwritten_stored": kept}
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
