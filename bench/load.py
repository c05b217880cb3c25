"""Bench: the service under load, end to end: gunicorn + PostgreSQL + the fake Genesys, on loopback.

Two parts, each with its own service, scratch database and fake, all stopped at the end:

1. Rising rates. A pool of agents on live calls; signed events (the `helpdesk` source, Standard Webhooks) for them
   at `--rates` events per second, `--seconds` each, open loop (an event is due at its time whatever the answers
   do; intake latency runs from that time, so a late start counts against the server). Mixed in: duplicate
   deliveries (the same signed request again: it must be answered 200 and change nothing) and out-of-order
   deliveries (an event older than one already sent for that agent, demanding the opposite: it must not win).
   The fake has no rate limit and the service's own spacing is off ([genesys] requests_per_minute = 0): these
   phases measure the service. Per phase it prints accepted/s, p50/p99 intake latency, p50/p99 webhook-to-PATCH
   latency (from sending the event to its PATCH reaching the fake; both on this process's monotonic clock),
   Genesys API requests per event, and the count of lost, duplicated and misordered actions (each must be 0):
   - lost: an accepted event missing from the database, not final after the drain, or final in a state other
     than applied / skipped (failed, expired, no_call: every agent is on a call and every event is fresh), or
     applied without a PATCH that Genesys accepted;
   - duplicated: an event answered 202 more than once (a duplicate accepted again), more than one accepted PATCH,
     or an accepted PATCH that belongs to no event;
   - misordered: an agent whose final mute state on the fake differs from what their newest event (by occurred_at)
     demanded, or an accepted PATCH for an event older than one already PATCHed for that agent.
   A warm-up (two events per agent at 20/s) comes first and is not reported. Rates rise until the service no
   longer answers what is sent or p99 intake latency passes 500 ms; the highest rate held with p99 intake latency
   under 50 ms is printed.

2. A burst with and without the rate limiter. The fake limits each bearer token (each gunicorn worker has its own)
   to `--fake-limit` requests per `--fake-window` seconds, with 429 too.many.requests + Retry-After and the
   inin-ratelimit-* headers, as Genesys does (300 a minute; the default scales it to a 10 s window so the phase
   takes seconds, not minutes). `--burst` events (agents given by Genesys user id and conversation id, round-robin
   over `--burst-agents`) are posted back to back, once with [genesys] requests_per_minute set to the fake's limit
   per minute and once with 0 (off). Printed for both: 429s received, duration, event states, final mute states
   (they must be equal: the same events applied, every agent in the state its newest event demanded).

Run from the repository root (PostgreSQL as in the README; TEST_DATABASE_URL or postgresql://postgres@127.0.0.1/test):
    .venv/bin/python bench/load.py [--rates 25,50,100,200,400] [--seconds 6] [--burst 500] [--skip-rates]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402

from bench.intake import machine, percentile, wait_drained  # noqa: E402
from tests.support.databases import PG_ENV, postgres_url, scratch_postgres  # noqa: E402
from tests.support.fake_genesys import FakeGenesys  # noqa: E402
from tests.support.servers import Service, service_env, signed_request, write_config  # noqa: E402
from webhook.store import Store, attempts, events  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
SOURCE = "helpdesk"
MUTE = ("payment_in_progress", "open")  # (status, previous status) the shipped rules map to mute
UNMUTE = ("open", "payment_in_progress")
TARGET_P99_MS = 50.0
OVERLOAD_P99_MS = 500.0  # rates stop rising past this
HELD_SHARE = 0.95  # a rate is held when at least this share of it is accepted per second
DRAIN_TIMEOUT = 90.0
LEAD = 2.0  # seconds between signing a phase's deliveries and its first request
SENDERS = 32


# ---------------------------------------------------------------- events


@dataclass
class Agent:
    """A user on a live call at the fake."""

    email: str
    user_id: str
    conversation_id: str
    participant_id: str
    muted: bool = False  # what the newest event generated so far demands
    newest: datetime | None = None


@dataclass
class Sent:
    """One generated event: what it demands, and when its first delivery went out."""

    event_id: str
    agent: int
    occurred_at: datetime
    muted: bool
    out_of_order: bool = False
    first_sent: float | None = None


@dataclass(frozen=True)
class Delivery:
    """One signed request, due at start + offset."""

    offset: float
    event_id: str
    body: bytes
    headers: dict[str, str]
    duplicate: bool = False


def event_body(event_id: str, agent: Agent, occurred_at: datetime, muted: bool, *, by_id: bool) -> bytes:
    """A generic-mapping event: mute or unmute the agent (by e-mail, or by user id and conversation id)."""
    status, previous = MUTE if muted else UNMUTE
    who = {"genesys_user_id": agent.user_id} if by_id else {"email": agent.email}
    doc: dict[str, Any] = {"event_id": event_id, "occurred_at": occurred_at.isoformat().replace("+00:00", "Z"),
                           "ticket": {"id": event_id[-6:], "status": status, "previous_status": previous},
                           "agent": who}
    if by_id:
        doc["conversation_id"] = agent.conversation_id
    return json.dumps(doc).encode()


class Generator:
    """Makes each phase's signed deliveries: in-order events, duplicates and out-of-order ones, per agent."""

    def __init__(self, service: Service, agents: list[Agent], rng: random.Random, *, by_id: bool = False) -> None:
        self.service = service
        self.agents = agents
        self.rng = rng
        self.by_id = by_id
        self.sent: dict[str, Sent] = {}

    def phase(self, count: int, rate: float, start_wall: datetime, *, dup: float = 0.0, ooo: float = 0.0,
              round_robin: bool = False) -> list[Delivery]:
        """Return `count` deliveries due at i / rate seconds after start_wall (the wall clock of the first)."""
        out: list[Delivery] = []
        for i in range(count):
            offset = i / rate if rate else 0.0
            # A burst is all due at once; its events still occur in order, a millisecond apart.
            due_wall = start_wall + timedelta(seconds=offset if rate else i / 1000)
            roll = self.rng.random()
            if out and roll < dup:
                out.append(self._again(self.rng.choice(out), offset))
                continue
            index = i % len(self.agents) if round_robin else self.rng.randrange(len(self.agents))
            agent = self.agents[index]
            if agent.newest is not None and roll < dup + ooo:
                # Older than the agent's newest event, and demanding the opposite: it must never win.
                stale = agent.newest - timedelta(milliseconds=self.rng.randint(1, 500))
                out.append(self._new(index, stale, not agent.muted, offset, due_wall, out_of_order=True))
                continue
            agent.muted = not agent.muted
            agent.newest = due_wall
            out.append(self._new(index, due_wall, agent.muted, offset, due_wall))
        return out

    def _new(self, index: int, occurred_at: datetime, muted: bool, offset: float, due_wall: datetime, *,
             out_of_order: bool = False) -> Delivery:
        event_id = f"load-{uuid.uuid4().hex}"
        self.sent[event_id] = Sent(event_id, index, occurred_at, muted, out_of_order)
        body = event_body(event_id, self.agents[index], occurred_at, muted, by_id=self.by_id)
        headers = signed_request(self.service.settings, SOURCE, body, self.service.webhook_url(SOURCE), now=due_wall)
        return Delivery(offset, event_id, body, headers)

    @staticmethod
    def _again(original: Delivery, offset: float) -> Delivery:
        return Delivery(offset, original.event_id, original.body, original.headers, duplicate=True)


# ---------------------------------------------------------------- sending


@dataclass
class Answer:
    delivery: Delivery
    sent_at: float
    done: float
    latency_ms: float
    status: str


def send_all(port: int, deliveries: Sequence[Delivery], start: float, senders: int = SENDERS) -> list[Answer]:
    """Send delivery i at start + offset (time.monotonic), whatever the answers do; keep each answer."""
    answers: list[Answer] = []
    indexes = iter(range(len(deliveries)))
    lock = threading.Lock()
    path = f"/webhooks/{SOURCE}"

    def run() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            while True:
                with lock:
                    i = next(indexes, None)
                if i is None:
                    return
                delivery = deliveries[i]
                due = start + delivery.offset
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                sent_at = time.monotonic()
                try:
                    connection.request("POST", path, delivery.body, delivery.headers)
                    response = connection.getresponse()
                    response.read()
                    status = str(response.status)
                except (http.client.HTTPException, OSError) as exc:
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                    status = type(exc).__name__
                done = time.monotonic()
                with lock:
                    answers.append(Answer(delivery, sent_at, done, (done - min(due, sent_at)) * 1000, status))
        finally:
            connection.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(senders)]
    for thread in threads:
        thread.start()
    last = deliveries[-1].offset if deliveries else 0.0
    for thread in threads:
        thread.join(last + 60)
    return answers


# ---------------------------------------------------------------- checking


@dataclass
class Verdict:
    """What the database and the fake say about a set of events."""

    states: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    misordered: list[str] = field(default_factory=list)
    patch_latencies_ms: list[float] = field(default_factory=list)
    event_states: dict[str, str] = field(default_factory=dict)


def verify(store: Store, fake: FakeGenesys, generator: Generator, event_ids: set[str], answers: list[Answer],
           log_from: int) -> Verdict:
    """Check the events of one phase against the database and the fake's log (from index log_from)."""
    verdict = Verdict()
    with store.engine.connect() as conn:
        rows = {r.event_id: r for r in conn.execute(
            select(events.c.id, events.c.event_id, events.c.state).where(events.c.source == SOURCE))
            if r.event_id in event_ids}
        patches = conn.execute(
            select(attempts.c.correlation_id, events.c.event_id)
            .join(events, events.c.id == attempts.c.event)
            .where(attempts.c.method == "PATCH", attempts.c.status == 202)).all()
    by_correlation = {p.correlation_id: p.event_id for p in patches if p.event_id in event_ids}
    check_events(verdict, rows, event_ids, Counter(by_correlation.values()), answers)
    check_order(verdict, fake, generator, by_correlation, log_from)
    return verdict


def check_events(verdict: Verdict, rows: dict[str, Any], event_ids: set[str], accepted_patches: Counter[str],
                 answers: list[Answer]) -> None:
    """Lost and duplicated: every event final as applied or skipped, at most one accepted PATCH each."""
    # A duplicate may overtake its original on another connection; what matters is that only one is accepted.
    accepted = Counter(a.delivery.event_id for a in answers if a.status == "202")
    for event_id, times in accepted.items():
        if times > 1:
            verdict.duplicated.append(f"{event_id}: accepted {times} times (answered 202 to a duplicate)")
    for event_id in event_ids:
        row = rows.get(event_id)
        state = row.state if row is not None else "missing"
        verdict.states[state] += 1
        verdict.event_states[event_id] = state
        if state not in ("applied", "skipped"):
            verdict.lost.append(f"{event_id}: {state}")
        elif state == "applied" and accepted_patches[event_id] == 0:
            verdict.lost.append(f"{event_id}: applied without an accepted PATCH")
        if accepted_patches[event_id] > 1:
            verdict.duplicated.append(f"{event_id}: {accepted_patches[event_id]} accepted PATCHes")


def check_order(verdict: Verdict, fake: FakeGenesys, generator: Generator, by_correlation: dict[str, str],
                log_from: int) -> None:
    """Misordered: PATCHes per agent in arrival order never go back in time; final states match the newest event."""
    newest_patched: dict[int, datetime] = {}
    for request in fake.log[log_from:]:
        if request.method != "PATCH" or request.status != 202:
            continue
        event_id = by_correlation.get(request.correlation_id)
        if event_id is None:
            verdict.duplicated.append(f"PATCH {request.correlation_id} belongs to no event of this phase")
            continue
        sent = generator.sent[event_id]
        if sent.agent in newest_patched and sent.occurred_at < newest_patched[sent.agent]:
            verdict.misordered.append(f"{event_id}: PATCHed after a newer event of agent {sent.agent}")
        newest_patched[sent.agent] = max(newest_patched.get(sent.agent, sent.occurred_at), sent.occurred_at)
        if sent.first_sent is not None:
            verdict.patch_latencies_ms.append((request.time - sent.first_sent) * 1000)
    for index, agent in enumerate(generator.agents):
        if agent.newest is not None and fake.muted(agent.conversation_id, agent.participant_id) != agent.muted:
            verdict.misordered.append(f"agent {index}: final mute state differs from the newest event's demand")


# ---------------------------------------------------------------- the run


@contextmanager
def running(fake: FakeGenesys, db_url: str, tmp: Path, name: str, workers: int, per_minute: float,
            **processing: float) -> Iterator[Service]:
    """Start the service against the fake and this database, with these knobs; always stop it."""
    config = write_config(tmp / f"{name}.toml", requests_per_minute=per_minute, **processing)
    env = service_env(fake, db_url, config, LOG_LEVEL="WARNING", WEB_CONCURRENCY=str(workers))
    with Service(env, tmp, workers=workers, name=name) as service:
        yield service


def make_agents(fake: FakeGenesys, count: int, prefix: str) -> list[Agent]:
    agents = []
    for n in range(count):
        email = f"{prefix}{n}@example.com"
        user_id = fake.add_user(email)
        conversation_id, participant_id = fake.start_call(user_id)
        agents.append(Agent(email, user_id, conversation_id, participant_id))
    return agents


def run_phase(service: Service, fake: FakeGenesys, store: Store, generator: Generator, deliveries: list[Delivery],
              start: float) -> tuple[list[Answer], Verdict, float, int]:
    """Send one phase's deliveries, drain, verify; return answers, verdict, seconds sending, API requests."""
    log_from = len(fake.log)
    answers = send_all(service.port, deliveries, start)
    sending = max((a.done for a in answers), default=start) - start
    for answer in sorted(answers, key=lambda a: a.sent_at):
        sent = generator.sent[answer.delivery.event_id]
        if sent.first_sent is None:
            sent.first_sent = answer.sent_at
    event_ids = {d.event_id for d in deliveries}
    wait_drained(store, DRAIN_TIMEOUT)
    verdict = verify(store, fake, generator, event_ids, answers, log_from)
    api = sum(1 for r in fake.log[log_from:] if r.path.startswith("/api/"))
    return answers, verdict, sending, api


def rates_part(db_url: str, tmp: Path, args: argparse.Namespace, rng: random.Random) -> list[dict[str, Any]]:
    """Rising rates until p99 intake latency passes the target; one row per phase."""
    rows: list[dict[str, Any]] = []
    with FakeGenesys() as fake, running(fake, db_url, tmp, "rates", args.workers, 0) as service:
        store = Store.from_url(db_url)
        try:
            generator = Generator(service, make_agents(fake, args.agents, "agent"), rng)
            # Warm-up, not reported: each agent's first event (user search, call lookup), the workers' first
            # requests and database connections.
            wall, start = datetime.now(UTC) + timedelta(seconds=LEAD), time.monotonic() + LEAD
            run_phase(service, fake, store, generator, generator.phase(args.agents * 2, 20, wall), start)
            for rate in args.rates:
                count = int(rate * args.seconds)
                wall, start = datetime.now(UTC) + timedelta(seconds=LEAD), time.monotonic() + LEAD
                deliveries = generator.phase(count, rate, wall, dup=args.dup, ooo=args.ooo)
                if time.monotonic() > start - 0.2:
                    print(f"  signing {count} deliveries took too long; skipping {rate:g}/s", file=sys.stderr)
                    break
                answers, verdict, sending, api = run_phase(service, fake, store, generator, deliveries, start)
                row = phase_row(rate, answers, verdict, sending, api)
                rows.append(row)
                print_row(row)
                if row["intake_p99_ms"] >= OVERLOAD_P99_MS or not row["held"]:
                    break  # overloaded: a higher rate only grows the backlog
        finally:
            store.close()
    return rows


def phase_row(rate: float, answers: list[Answer], verdict: Verdict, sending: float, api: int) -> dict[str, Any]:
    statuses = Counter(a.status for a in answers)
    answered = statuses.get("202", 0) + statuses.get("200", 0)  # accepted, or recognised as a duplicate
    unique = sum(verdict.states.values())
    seconds = max(sending, 1e-9)  # from the first due time to the last answer
    intake = [a.latency_ms for a in answers]
    return {
        "rate": rate, "sent": len(answers), "events": unique, "statuses": dict(statuses),
        "accepted_per_s": round(statuses.get("202", 0) / seconds, 1),
        "held": answered == len(answers) and answered / seconds >= HELD_SHARE * rate,
        "intake_p50_ms": round(percentile(intake, 50), 2), "intake_p99_ms": round(percentile(intake, 99), 2),
        "patch_p50_ms": round(percentile(verdict.patch_latencies_ms, 50), 1),
        "patch_p99_ms": round(percentile(verdict.patch_latencies_ms, 99), 1),
        "api_requests_per_event": round(api / unique, 3) if unique else None,
        "states": dict(verdict.states), "lost": len(verdict.lost), "duplicated": len(verdict.duplicated),
        "misordered": len(verdict.misordered),
        "examples": (verdict.lost + verdict.duplicated + verdict.misordered)[:5],
    }


def print_row(row: dict[str, Any]) -> None:
    print(f"{row['rate']:>7g} {row['sent']:>6} {row['accepted_per_s']:>9} {row['intake_p50_ms']:>8} "
          f"{row['intake_p99_ms']:>8} {row['patch_p50_ms']:>8} {row['patch_p99_ms']:>8} "
          f"{row['api_requests_per_event']!s:>8} {row['lost']:>5} {row['duplicated']:>5} {row['misordered']:>5}  "
          f"{row['states']}", flush=True)
    for example in row["examples"]:
        print(f"        {example}")


def burst_part(db_url: str, tmp: Path, args: argparse.Namespace, limited: bool) -> dict[str, Any]:
    """One burst against the rate-limited fake, with the service's spacing on or off."""
    per_minute = args.fake_limit * 60 / args.fake_window if limited else 0
    name = "burst-on" if limited else "burst-off"
    with FakeGenesys() as fake:
        fake.limit_rate(args.fake_limit, window=args.fake_window)
        with running(fake, db_url, tmp, name, args.workers, per_minute, retry_budget_seconds=60.0,
                     stale_claim_seconds=90.0) as service:
            store = Store.from_url(db_url)
            try:
                generator = Generator(service, make_agents(fake, args.burst_agents, "burst"), random.Random(7),
                                      by_id=True)
                wall = datetime.now(UTC) + timedelta(seconds=LEAD)
                deliveries = generator.phase(args.burst, 0, wall, round_robin=True)
                began = time.monotonic()
                answers, verdict, _, api = run_phase(service, fake, store, generator, deliveries, began)
                duration = max((r.time for r in fake.log if r.path.startswith("/api/")), default=began) - began
            finally:
                store.close()
        by_position = [verdict.event_states[d.event_id] for d in deliveries]
        finals = [fake.muted(a.conversation_id, a.participant_id) for a in generator.agents]
    return {"mode": f"limiter on ({per_minute:g}/min)" if limited else "limiter off (0)",
            "429s": fake.too_many_requests, "api_requests": api, "seconds_to_last_request": round(duration, 1),
            "answers": dict(Counter(a.status for a in answers)), "states": dict(verdict.states),
            "lost": len(verdict.lost), "duplicated": len(verdict.duplicated), "misordered": len(verdict.misordered),
            "examples": (verdict.lost + verdict.duplicated + verdict.misordered)[:5],
            "event_states": by_position, "final_muted": finals}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                        default=[25, 50, 100, 150, 200, 300], help="events per second of the rising phases")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each rate phase")
    parser.add_argument("--agents", type=int, default=50, help="agents on calls in the rate phases")
    parser.add_argument("--dup", type=float, default=0.05, help="share of duplicate deliveries")
    parser.add_argument("--ooo", type=float, default=0.05, help="share of out-of-order deliveries")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (gunicorn.conf.py's default)")
    parser.add_argument("--burst", type=int, default=500, help="events of the burst")
    parser.add_argument("--burst-agents", type=int, default=100, help="agents of the burst (round-robin)")
    parser.add_argument("--fake-limit", type=int, default=100, help="the fake's requests per window per token")
    parser.add_argument("--fake-window", type=float, default=10.0, help="the fake's window (s)")
    parser.add_argument("--skip-rates", action="store_true")
    parser.add_argument("--skip-burst", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if not (all(0 < r <= 2000 for r in args.rates) and 0 < args.seconds <= 30 and 0 < args.burst <= 2000
            and 0 < args.agents <= 1000 and 0 < args.burst_agents <= args.burst):
        parser.error("bounds: rates <= 2000/s, seconds <= 30, burst <= 2000, agents <= 1000")
    pg = postgres_url() or postgres_url_default()
    print(f"machine: {machine()}")
    print(f"service: gunicorn, {args.workers} worker(s), PostgreSQL (scratch database), fake Genesys on loopback")
    numbers: dict[str, Any] = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "json"}}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
        tmp = Path(folder)
        if not args.skip_rates:
            print(f"\nrising rates: {args.agents} agents, {args.seconds:g} s a phase, {args.dup:.0%} duplicates, "
                  f"{args.ooo:.0%} out of order; fake without rate limit, requests_per_minute = 0")
            print(f"{'rate/s':>7} {'sent':>6} {'accept/s':>9} {'in p50':>8} {'in p99':>8} {'pat p50':>8} "
                  f"{'pat p99':>8} {'api/evt':>8} {'lost':>5} {'dup':>5} {'order':>5}  states   (latencies in ms)")
            with scratch_postgres(pg) as db_url:
                rows = rates_part(db_url, tmp, args, random.Random(1))
            held = [r["rate"] for r in rows if r["intake_p99_ms"] < TARGET_P99_MS and r["held"]]
            print(f"highest rate held with p99 intake latency under {TARGET_P99_MS:g} ms: "
                  f"{max(held) if held else 'none'} events/s")
            numbers["rates"] = rows
            numbers["highest_rate_held"] = max(held) if held else None
        if not args.skip_burst:
            print(f"\nburst: {args.burst} events over {args.burst_agents} agents, back to back; the fake allows "
                  f"{args.fake_limit} requests per {args.fake_window:g} s per token")
            bursts = []
            for limited in (True, False):
                with scratch_postgres(pg) as db_url:
                    result = burst_part(db_url, tmp, args, limited)
                bursts.append(result)
                print(f"  {result['mode']:24} 429s {result['429s']:>4}  API requests {result['api_requests']:>4}  "
                      f"last request after {result['seconds_to_last_request']:>5} s  states {result['states']}  "
                      f"lost {result['lost']} dup {result['duplicated']} order {result['misordered']}", flush=True)
                for example in result["examples"]:
                    print(f"        {example}")
            on, off = bursts
            same_events = on["event_states"] == off["event_states"]
            same_finals = on["final_muted"] == off["final_muted"]
            print(f"  fewer 429s with the limiter: {on['429s'] < off['429s']} ({on['429s']} vs {off['429s']}); "
                  f"same event states: {same_events}; same final mute states: {same_finals}")
            numbers["burst"] = [{k: v for k, v in b.items() if k not in ("event_states", "final_muted")}
                                | {"final_muted_count": sum(b["final_muted"])} for b in bursts]
            numbers["burst_same_event_states"] = same_events
            numbers["burst_same_final_states"] = same_finals
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


def postgres_url_default() -> str:
    """Start the local PostgreSQL through the tests' helper with the default URL when TEST_DATABASE_URL is unset."""
    os.environ.setdefault(PG_ENV, DEFAULT_PG)
    url = postgres_url()
    if url is None:
        raise SystemExit(f"PostgreSQL is needed: set {PG_ENV}")
    return url


if __name__ == "__main__":
    raise SystemExit(main())
