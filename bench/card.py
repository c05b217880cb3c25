"""Bench: what [genesys] confirm costs a card capture, in Genesys requests per event and in webhook-to-final latency.

Runs the real service under gunicorn (one worker, SQLite in a temporary folder) twice, with `confirm = false` and
`confirm = true`, against the fake Genesys on loopback, with the card rules of tests/test_card_capture.py (status
card_capture: mute and pause the recording; card_done: unmute and resume). Agents are on recorded calls; each event
is sent and waited for one at a time. The fake shows a mute `--mute-delay` seconds after its 202 (Genesys applies a
participant change asynchronously; 0 = at once), which confirm has to wait out.
Run from the repository root:  .venv/bin/python bench/card.py [--agents 10] [--rounds 5] [--mute-delay 0]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.fake_genesys import FakeGenesys  # noqa: E402
from tests.support.servers import Service, service_env, wait_final  # noqa: E402
from tests.test_card_capture import card_config  # noqa: E402
from webhook.store import Store  # noqa: E402

EVENT_WAIT = 15.0


def body(agent: str, status: str, previous: str) -> bytes:
    """A generic-mapping event for the helpdesk source, occurring now."""
    return json.dumps({"event_id": f"bench-{uuid.uuid4()}", "occurred_at": datetime.now(UTC).isoformat(),
                       "ticket": {"id": "1", "status": status, "previous_status": previous},
                       "agent": {"email": agent}}).encode()


def run(confirm: bool, args: argparse.Namespace) -> dict[str, object]:
    """Measure one configuration: requests per event (cold first round apart) and latency, p50 and p99."""
    with tempfile.TemporaryDirectory(prefix="bench-card-") as folder, FakeGenesys() as fake:
        fake.mute_delay = args.mute_delay
        tmp = Path(folder)
        env = service_env(fake, f"sqlite:///{tmp / 'webhook.db'}", card_config(tmp, confirm=confirm),
                          LOG_LEVEL="WARNING")
        agents = []
        for n in range(args.agents):
            email = f"card{n}@example.com"
            fake.start_call(fake.add_user(email), recording="active")
            agents.append(email)
        latencies: list[float] = []
        warm_requests = warm_events = 0
        store = Store.from_url(env["DATABASE_URL"])
        with Service(env, tmp) as service:
            for round_ in range(args.rounds):
                for status, previous in (("card_capture", "open"), ("card_done", "card_capture")):
                    for agent in agents:
                        before = len([r for r in fake.log if r.path.startswith("/api/")])
                        started = time.monotonic()
                        answer = service.post("helpdesk", body(agent, status, previous))
                        record = wait_final(store, answer.json()["accepted"][0]["id"], EVENT_WAIT)
                        latencies.append((time.monotonic() - started) * 1000)
                        if record.state != "applied":
                            raise SystemExit(f"{record.state}: {record.detail}")
                        if round_ > 0:
                            warm_requests += len([r for r in fake.log if r.path.startswith("/api/")]) - before
                            warm_events += 1
        store.close()
    latencies.sort()
    return {"confirm": confirm, "events": len(latencies), "warm_requests_per_event": round(
        warm_requests / max(warm_events, 1), 2), "p50_ms": round(latencies[len(latencies) // 2], 1),
        "p99_ms": round(latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)], 1)}


def main() -> int:
    """Run both configurations and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="capture-and-done rounds per agent (the first is cold)")
    parser.add_argument("--mute-delay", type=float, default=0.0, help="seconds before the fake shows a mute")
    args = parser.parse_args()
    rows = [run(False, args), run(True, args)]
    print(f"card capture bench: gunicorn 1 worker, SQLite, fake Genesys (mute shown after {args.mute_delay:g} s)")
    print(f"{'confirm':8} {'events':>6} {'warm req/event':>14} {'p50 ms':>7} {'p99 ms':>7}")
    for row in rows:
        print(f"{row['confirm']!s:8} {row['events']:>6} {row['warm_requests_per_event']!s:>14} {row['p50_ms']!s:>7} "
              f"{row['p99_ms']!s:>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
