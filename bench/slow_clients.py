"""Bench: signed webhooks answered while slow clients hold connections open (a slowloris on loopback).

Starts the service as deployed (gunicorn.conf.py, 2 workers, SQLite in a temporary folder, GENESYS_DRY_RUN=true),
then opens `--header-clients` connections that trickle a request head one byte at a time and `--body-clients`
connections that send a whole head announcing a body and trickle the body, each a byte every `--trickle` seconds;
a client whose connection the server closes opens a new one and starts again, as an attacker would. Meanwhile it
sends signed webhooks (`--rate` a second, each on a new connection, with a 10 s client timeout) and measures each
one's latency from the moment it was due.

It prints how many probes were answered, and in what, and their p50 / p99 / max latency. Target: every probe
answered, p99 under 1 s. Everything is bounded: at most `--seconds` (60) of load, then the slow clients are closed
and the service stopped; loopback only.

Run from the repository root:  .venv/bin/python bench/slow_clients.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.intake import bench_env, machine, percentile  # noqa: E402
from tests.support.servers import Service, signed_request  # noqa: E402

TARGET_P99_MS = 1000.0
PROBE_TIMEOUT = 10.0


class SlowClient(threading.Thread):
    """One connection that sends its request a byte at a time, reconnecting whenever the server closes it."""

    def __init__(self, port: int, *, body: bool, trickle: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.body, self.trickle, self.stop = port, body, trickle, stop
        self.connections = 0

    def run(self) -> None:
        head = b"POST /webhooks/inhouse HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    self.connections += 1
                    if self.body:  # a complete head, then a body that never quite arrives
                        sock.sendall(head + b"Content-Length: 100000\r\n\r\n")
                        slow = b"{" + b" " * 99_999
                    else:  # a head that never ends
                        slow = head + b"X-Slow: " + b"a" * 100_000
                    for byte in slow:
                        if self.stop.wait(self.trickle):
                            return
                        sock.sendall(bytes([byte]))
            except OSError:  # closed by the server: start again
                self.stop.wait(0.05)


def probe(port: int, env_settings: object, due: float, results: list[tuple[str, float]], lock: threading.Lock) -> None:
    """Send one signed webhook on a new connection; record its status and latency from `due`."""
    body = json.dumps({"event_id": f"probe-{uuid.uuid4()}", "occurred_at": datetime.now(UTC).isoformat(),
                       "ticket": {"id": "1", "status": "payment_in_progress"},
                       "agent": {"email": "probe@example.com"}}).encode()
    url = f"http://127.0.0.1:{port}/webhooks/inhouse"
    headers = signed_request(env_settings, "inhouse", body, url)  # type: ignore[arg-type]
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT)
        connection.request("POST", "/webhooks/inhouse", body, headers)
        response = connection.getresponse()
        response.read()
        status = str(response.status)
        connection.close()
    except (http.client.HTTPException, OSError) as exc:
        status = type(exc).__name__
    with lock:
        results.append((status, (time.perf_counter() - due) * 1000))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load (at most 60)")
    parser.add_argument("--rate", type=float, default=5.0, help="signed probes a second")
    parser.add_argument("--header-clients", type=int, default=20)
    parser.add_argument("--body-clients", type=int, default=10)
    parser.add_argument("--trickle", type=float, default=0.5, help="seconds between two bytes of a slow client")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if not (0 < args.seconds <= 60 and 0 < args.rate <= 50 and 0 <= args.header_clients + args.body_clients <= 200):
        parser.error("bounds: seconds <= 60, rate <= 50, at most 200 slow clients")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as folder:
        tmp = Path(folder)
        env = bench_env(tmp)
        with Service(env, tmp, workers=args.workers, threads=args.threads, name="service") as service:
            print(f"service: gunicorn.conf.py, {args.workers} worker(s) x {args.threads} thread(s), "
                  f"worker class {worker_class(service)}; {args.header_clients} clients trickling a head, "
                  f"{args.body_clients} trickling a body, a byte every {args.trickle:g} s; "
                  f"{args.rate:g} signed probes/s for {args.seconds:g} s", flush=True)
            stop = threading.Event()
            slow = [SlowClient(service.port, body=n >= args.header_clients, trickle=args.trickle, stop=stop)
                    for n in range(args.header_clients + args.body_clients)]
            for client in slow:
                client.start()
            time.sleep(1.0)  # let them take their connections first
            results: list[tuple[str, float]] = []
            lock = threading.Lock()
            probes: list[threading.Thread] = []
            start = time.perf_counter()
            count = int(args.seconds * args.rate)
            for n in range(count):
                due = start + n / args.rate
                time.sleep(max(due - time.perf_counter(), 0))
                thread = threading.Thread(target=probe, args=(service.port, service.settings, due, results, lock),
                                          daemon=True)
                thread.start()
                probes.append(thread)
            for thread in probes:
                thread.join(PROBE_TIMEOUT + 5)
            stop.set()
            reconnects = sum(c.connections for c in slow)
    statuses = Counter(s for s, _ in results)
    latencies = [ms for s, ms in results if s in ("200", "202")]
    numbers = {
        "probes": count, "answered": len(latencies), "statuses": dict(statuses),
        "p50_ms": round(percentile(latencies, 50), 1), "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies, default=float("nan")), 1), "slow_connections_opened": reconnects,
    }
    print(f"probes answered 2xx: {numbers['answered']} of {count} (statuses {dict(statuses)})")
    print(f"latency of answered probes: p50 {numbers['p50_ms']} ms, p99 {numbers['p99_ms']} ms, "
          f"max {numbers['max_ms']} ms (target p99 < {TARGET_P99_MS:.0f} ms: "
          f"{'met' if latencies and len(latencies) == count and numbers['p99_ms'] < TARGET_P99_MS else 'NOT met'})")
    print(f"connections the slow clients opened: {reconnects}")
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
    return 0


def worker_class(service: Service) -> str:
    """The worker class gunicorn says it uses (its start-up line "Using worker: ...")."""
    for line in service.log_path.read_text(errors="replace").splitlines():
        if "Using worker: " in line:
            return line.split("Using worker: ", 1)[1].split('"')[0].strip()
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
