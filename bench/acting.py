"""Bench: how fast and how cheaply the service acts on events, against the fake Genesys on loopback.

Starts the real service under gunicorn (the shipped gunicorn.conf.py, SQLite in a temporary folder) and the fake
Genesys (instant answers) in this process, then measures:

- end-to-end latency, from just before the webhook POST is sent to the PATCH arriving at the fake (both read from
  this process's monotonic clock: the fake runs here), p50 and p99;
- Genesys requests per applied event, cold (the first event of an agent: user search + analytics + GET call + PATCH
  for an e-mail; less for a Genesys user id or a known conversation id) and warm (agents already on a known call);
- token requests per process per token lifetime;
- the same, cold and warm, for each identity the service acts as: client credentials (the phases above), the service
  user (agents who did not connect; an analytics query and the call, as the service user) and the agent's own
  connection (GET /api/v2/conversations/calls, then the PATCH). Token requests are counted apart.

The service's request spacing ([genesys] requests_per_minute) is off, as the fake has no rate limit: with the shipped
300 a minute, a stream faster than about 4.5 requests a second is spaced by design. Everything is bounded (event
counts, a wait per event, a wall-clock cap) and stopped at the end.
Run from the repository root:  .venv/bin/python bench/acting.py [--agents 20] [--warm 200] [--burst 40] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fake_genesys import FakeGenesys, LoggedRequest  # noqa: E402
from tests.support.servers import (  # noqa: E402
    Service,
    connect_service_user,
    connect_user,
    free_port,
    service_env,
    user_client_env,
    wait_until,
    write_config,
)
from webhook.genesys.auth import token_ttl  # noqa: E402

MUTE = ("payment_in_progress", "open")
UNMUTE = ("open", "payment_in_progress")
EVENT_WAIT = 10.0  # seconds one event may take before the bench gives up
TOKEN_MARGIN = 60.0  # ClientCredentials' default margin


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    events: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    api_requests: int = 0
    token_requests: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Return the numbers worth printing."""
        lat = sorted(self.latencies_ms)
        return {"phase": self.name, "events": self.events,
                "p50_ms": round(percentile(lat, 50), 1) if lat else None,
                "p99_ms": round(percentile(lat, 99), 1) if lat else None,
                "max_ms": round(lat[-1], 1) if lat else None,
                "api_requests_per_event": round(self.api_requests / self.events, 3) if self.events else None,
                "token_requests": self.token_requests, "requests_by_kind": self.by_kind}


def percentile(ordered: Sequence[float], p: float) -> float:
    """Return the p-th percentile of sorted values (nearest rank)."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def kind(request: LoggedRequest) -> str:
    """Name a request to the fake: token, users, analytics, call, patch, other."""
    if request.path == "/oauth/token":
        return "token"
    parts = request.path.split("/")
    if "participants" in parts:
        return "patch"
    return "call" if len(parts) > 3 and parts[3] == "conversations" else (parts[3] if len(parts) > 3 else "other")


def body(agent: dict[str, str], change: tuple[str, str], conversation_id: str | None = None) -> bytes:
    """A generic-mapping event for the helpdesk source, occurring now."""
    doc: dict[str, Any] = {"event_id": f"bench-{uuid.uuid4()}",
                           "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                           "ticket": {"id": "1", "status": change[0], "previous_status": change[1]},
                           "agent": agent}
    if conversation_id:
        doc["conversation_id"] = conversation_id
    return json.dumps(doc).encode()


class Bench:
    """The fake, the service and the phases."""

    def __init__(self, fake: FakeGenesys, service: Service, deadline: float) -> None:
        self.fake = fake
        self.service = service
        self.deadline = deadline
        self.muted: dict[str, bool] = {}

    def agents(self, count: int, prefix: str) -> list[tuple[str, str, str, str]]:
        """Create users on live calls: (e-mail, user id, conversation id, participant id)."""
        made = []
        for n in range(count):
            email = f"{prefix}{n}@example.com"
            user_id = self.fake.add_user(email)
            conversation_id, participant_id = self.fake.start_call(user_id)
            made.append((email, user_id, conversation_id, participant_id))
        return made

    def run(self, name: str, jobs: list[tuple[bytes, str]], *, wait_each: bool) -> Phase:
        """Post each (body, PATCH path) job; wait for its PATCH one by one, or post all first (a burst)."""
        phase = Phase(name)
        start = len(self.fake.log)
        sent: list[tuple[float, str, int]] = []
        for raw, path in jobs:
            if time.monotonic() > self.deadline:
                print(f"  {name}: wall-clock cap reached after {phase.events} events", file=sys.stderr)
                break
            before = sum(1 for r in self.fake.log[start:] if r.path == path)
            at = time.monotonic()
            answer = self.service.post("helpdesk", raw)
            if answer.status_code != 202:
                raise SystemExit(f"{name}: the service answered {answer.status_code}: {answer.text}")
            sent.append((at, path, before))
            phase.events += 1
            if wait_each:
                phase.latencies_ms.append(self.arrival(path, start, before, at))
        if not wait_each:
            phase.latencies_ms = [self.arrival(path, start, before, at) for at, path, before in sent]
        log = self.fake.log[start:]
        phase.api_requests = sum(1 for r in log if r.path.startswith("/api/"))
        phase.token_requests = sum(1 for r in log if r.path == "/oauth/token")
        for request in log:
            phase.by_kind[kind(request)] = phase.by_kind.get(kind(request), 0) + 1
        bad = [r for r in log if r.status is not None and r.status >= 400]
        if bad:
            raise SystemExit(f"{name}: the fake answered errors: {[(r.path, r.status) for r in bad][:5]}")
        return phase

    def arrival(self, path: str, start: int, before: int, sent_at: float) -> float:
        """Wait for the next PATCH on path and return its latency in ms."""
        def arrived() -> LoggedRequest | None:
            matching = [r for r in self.fake.log[start:] if r.path == path]
            return matching[before] if len(matching) > before else None
        request: LoggedRequest = wait_until(arrived, EVENT_WAIT, interval=0.001, message=f"a PATCH on {path}")
        return (request.time - sent_at) * 1000

    def flip(self, participant_id: str) -> tuple[str, str]:
        """Alternate mute and unmute per participant, so that every event changes something."""
        self.muted[participant_id] = not self.muted.get(participant_id, False)
        return MUTE if self.muted[participant_id] else UNMUTE


def patch_path(conversation_id: str, participant_id: str) -> str:
    return f"/api/v2/conversations/calls/{conversation_id}/participants/{participant_id}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench and print the results (also written to bench/results/)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=20, help="agents per cold phase")
    parser.add_argument("--warm", type=int, default=200, help="events in the warm stream")
    parser.add_argument("--burst", type=int, default=40, help="warm events posted back to back (max: --agents)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    parser.add_argument("--expires-in", type=int, default=86400, help="the fake's token lifetime (s)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="wall-clock cap for the whole run")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-acting-") as folder, \
            FakeGenesys(expires_in=args.expires_in) as fake:
        tmp = Path(folder)
        # The service's own request spacing is off: this bench measures its latency, not Genesys' rate limit
        # (bench/load.py measures the spacing).
        config = write_config(tmp / "webhook.toml", requests_per_minute=0)
        port = free_port()
        env = service_env(fake, f"sqlite:///{tmp / 'webhook.db'}", config, LOG_LEVEL="WARNING",
                          **user_client_env(fake, port))
        with Service(env, tmp, workers=args.workers, port=port) as service:
            bench = Bench(fake, service, started + args.max_seconds)
            phases = phases_of(bench, args)
            phases += identity_phases(bench, env, args)
            duration = time.monotonic() - started
    report(phases, sum(1 for r in fake.log if r.grant == "client_credentials"), args, duration)
    return 0


def phases_of(bench: Bench, args: argparse.Namespace) -> list[Phase]:
    """Run the cold phases (three ways of naming the agent), the warm stream and the warm burst."""
    by_email = bench.agents(args.agents, "cold")
    by_id = bench.agents(args.agents, "uuid")
    by_call = bench.agents(args.agents, "conv")
    path: Callable[[tuple[str, str, str, str]], str] = lambda a: patch_path(a[2], a[3])  # noqa: E731
    phases = [
        bench.run("cold, agent by e-mail", [(body({"email": a[0]}, bench.flip(a[3])), path(a)) for a in by_email],
                  wait_each=True),
        bench.run("cold, agent by Genesys user id", [(body({"genesys_user_id": a[1]}, bench.flip(a[3])), path(a))
                                                     for a in by_id], wait_each=True),
        bench.run("cold, user id + conversation id", [
            (body({"genesys_user_id": a[1]}, bench.flip(a[3]), conversation_id=a[2]), path(a)) for a in by_call],
            wait_each=True),
    ]
    stream = [by_email[n % len(by_email)] for n in range(args.warm)]
    phases.append(bench.run("warm stream (one at a time)",
                            [(body({"email": a[0]}, bench.flip(a[3])), path(a)) for a in stream], wait_each=True))
    burst = [by_email[n % len(by_email)] for n in range(min(args.burst, len(by_email)))]
    phases.append(bench.run("warm burst (back to back)",
                            [(body({"email": a[0]}, bench.flip(a[3])), path(a)) for a in burst], wait_each=False))
    return phases


def identity_phases(bench: Bench, env: dict[str, str], args: argparse.Namespace) -> list[Phase]:
    """Cold then warm events acted on as the service user (agents who did not connect), then as each agent's own
    connection; the client-credentials phases above ran before any user connected."""
    fake, url = bench.fake, bench.service.url
    service_user = fake.add_user("bench-service-user@example.com")
    connect_service_user(fake, env, url, service_user)
    via_service = bench.agents(args.agents, "svc")
    connected = bench.agents(args.agents, "own")
    for _, user_id, _, _ in connected:
        connect_user(fake, url, user_id)
    path: Callable[[tuple[str, str, str, str]], str] = lambda a: patch_path(a[2], a[3])  # noqa: E731
    phases = []
    for label, agents in (("service user", via_service), ("agent's own token", connected)):
        phases.append(bench.run(f"cold, as {label}", [(body({"email": a[0]}, bench.flip(a[3])), path(a))
                                                     for a in agents], wait_each=True))
        stream = [agents[n % len(agents)] for n in range(args.warm // 2)]
        phases.append(bench.run(f"warm, as {label}", [(body({"email": a[0]}, bench.flip(a[3])), path(a))
                                                     for a in stream], wait_each=True))
    return phases


def report(phases: list[Phase], tokens: int, args: argparse.Namespace, duration: float) -> None:
    """Print a table and write the JSON next to this file."""
    ttl = token_ttl(args.expires_in, TOKEN_MARGIN)
    lifetimes = max(1, math.ceil(duration / ttl))
    rows = [p.summary() for p in phases]
    print(f"crm-mute-bridge acting bench: gunicorn {args.workers} worker(s), SQLite, fake Genesys on loopback, "
          f"{duration:.1f} s")
    print(f"{'phase':34} {'events':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'API req/event':>13}  requests")
    for row in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(row["requests_by_kind"].items()))
        print(f"{row['phase']:34} {row['events']:>6} {row['p50_ms']!s:>7} {row['p99_ms']!s:>7} {row['max_ms']!s:>7} "
              f"{row['api_requests_per_event']!s:>13}  {kinds}")
    per = tokens / (args.workers * lifetimes)
    print(f"client-credentials token requests: {tokens} for {args.workers} worker process(es) over {duration:.1f} s, "
          "a token kept "
          f"{ttl:.0f} s (lifetime {args.expires_in} s): {per:.2f} per process per token lifetime (target 1; a worker "
          "that handled no event fetches none, so with several workers this is a lower bound)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"acting-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"args": vars(args), "duration_s": round(duration, 2), "token_requests": tokens,
                                "tokens_per_process_per_lifetime": per, "phases": rows}, indent=2))
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    raise SystemExit(main())
