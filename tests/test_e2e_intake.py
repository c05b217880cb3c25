"""End to end over HTTP: the real service under gunicorn on loopback, signed deliveries sent with `requests`.

One gunicorn process (the shipped gunicorn.conf.py, one worker) serves the whole module from the repository root, so
it reads config/webhook.toml as on a PaaS; the environment holds the test secrets, GENESYS_DRY_RUN=true and a SQLite
file in a temporary folder. The service uses the real clock, so bodies are freshened and signed with the wall clock.
Final states are read back through the store; the background worker decides them, so the test polls (bounded).
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from tests.support.app import ROOT
from tests.support.servers import Service, dry_run_env, run_cli, wait_final, wait_until
from webhook.cli import freshen
from webhook.store import EventRecord, Store

pytestmark = pytest.mark.e2e

SAMPLES = ROOT / "samples"
SETTLE_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service on a SQLite file in a temporary folder, one worker, for the whole module; always stopped."""
    pytest.importorskip("gunicorn")
    tmp = tmp_path_factory.mktemp("e2e")
    with Service(dry_run_env(f"sqlite:///{tmp / 'e2e.db'}"), tmp, workers=1) as service:
        yield service


@pytest.fixture(scope="module")
def store(server: Service) -> Iterator[Store]:
    """A store on the service's database, to read back what it stored."""
    store = Store.from_url(server.settings.database_url)
    yield store
    store.close()


def settled(store: Store, row_id: int) -> EventRecord:
    """Wait until the background worker has taken the event out of received/processing; return it."""
    return wait_final(store, row_id, SETTLE_TIMEOUT)


def rows(store: Store) -> int:
    return sum(store.counts().values())


def sample(name: str, server: Service, source: str) -> bytes:
    """A shipped sample with fresh event ids and the current time (what `send --fresh` does)."""
    return freshen((SAMPLES / name).read_bytes(), server.settings.sources[source].mapping, datetime.now(UTC))


# ---------------------------------------------------------------- tests


def test_health_and_readiness_over_http(server: Service) -> None:
    assert server.session.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = server.session.get(f"{server.url}/readyz", timeout=5)
    assert (ready.status_code, ready.json()["database"], ready.json()["genesys"]) == (200, "ok", "dry_run")


def test_zendesk_sample_is_accepted_and_decided_as_a_dry_run_mute(server: Service, store: Store) -> None:
    body = sample("zendesk-status-changed.json", server, "zendesk")
    response = server.post("zendesk", body)
    assert response.status_code == 202, response.text
    [accepted] = response.json()["accepted"]
    assert accepted["event_id"] == json.loads(body)["id"]
    record = settled(store, accepted["id"])
    assert (record.state, record.action, record.agent, record.status) == (
        "dry_run", "mute", "jane.agent@example.com", "hold"), record.detail
    assert store.delivery(record.delivery).raw_body == body  # type: ignore[union-attr]


def test_a_generic_event_is_accepted_and_a_duplicate_answers_200(server: Service, store: Store) -> None:
    body = sample("generic-payment.json", server, "helpdesk")
    headers = server.sign("helpdesk", body)
    first = server.post("helpdesk", body, headers)
    assert first.status_code == 202, first.text
    [accepted] = first.json()["accepted"]
    record = settled(store, accepted["id"])
    assert (record.state, record.action, record.status) == ("dry_run", "mute", "payment_in_progress"), record.detail
    before = rows(store)
    again = server.post("helpdesk", body, headers)  # the sender's retry of the same delivery
    resigned = server.post("helpdesk", body)  # a new delivery (new webhook-id) of the same event id
    for response in (again, resigned):
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": [], "duplicates": [accepted]}
    assert rows(store) == before


def test_a_hubspot_array_signed_for_the_exact_url_gives_one_event_each(server: Service, store: Store) -> None:
    body = sample("hubspot-batch.json", server, "hubspot")
    url = server.webhook_url("hubspot") + "?portalId=62515"
    response = server.session.post(url, data=body, headers=server.sign("hubspot", body, url), timeout=15)
    assert response.status_code == 202, response.text
    accepted = response.json()["accepted"]
    assert [a["event_id"] for a in accepted] == [str(item["eventId"]) for item in json.loads(body)]
    records = [settled(store, a["id"]) for a in accepted]
    assert [(r.state, r.action, r.agent) for r in records] == [
        ("dry_run", "mute", "omar.agent@example.com"), ("dry_run", "mute", "jane.agent@example.com")]


def test_hubspot_behind_a_proxy_is_verified_against_the_public_url(server: Service) -> None:
    body = sample("hubspot-batch.json", server, "hubspot")
    public = "https://hooks.example.com/webhooks/hubspot"
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "hooks.example.com", "X-Forwarded-For": "203.0.113.9"}
    response = server.post("hubspot", body, server.sign("hubspot", body, public) | proxy)
    assert response.status_code == 202, response.text
    assert len(response.json()["accepted"]) == 2
    # The same request signed for the loopback URL is not what the sender called through the proxy.
    body = sample("hubspot-batch.json", server, "hubspot")
    refused = server.post("hubspot", body, server.sign("hubspot", body) | proxy)
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_signature")


def test_refusals_are_json_and_store_nothing(server: Service, store: Store) -> None:
    before = rows(store)
    body = sample("generic-payment.json", server, "helpdesk")
    headers = server.sign("inhouse", body)
    tampered = server.post("inhouse", body.replace(b"payment_in_progress", b"open"), headers)
    assert tampered.status_code == 401
    assert tampered.json() == {"error": "invalid_signature", "detail": "signature mismatch"}
    unsigned = server.post("inhouse", body, {"Content-Type": "application/json"})
    assert (unsigned.status_code, unsigned.json()["error"]) == (401, "invalid_signature")
    unknown = server.post("nosuchcrm", body, headers)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_source")
    big = b"x" * (server.settings.max_body_bytes + 1)
    # Connection: close, because a kept-alive connection left with an unread body holds a gunicorn gthread worker
    # on SIGTERM until graceful_timeout (20 s) runs out (see the report).
    oversized = server.post("inhouse", big, server.sign("inhouse", big) | {"Connection": "close"})
    assert oversized.status_code == 413
    assert oversized.json() == {"error": "request_entity_too_large",
                                "detail": f"the body is larger than {server.settings.max_body_bytes} bytes"}
    wrong_method = server.session.get(server.webhook_url("inhouse"), timeout=15)
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405, "method_not_allowed")
    assert rows(store) == before


def test_a_signed_body_that_is_not_json_is_stored_invalid_and_400(server: Service, store: Store) -> None:
    body = f"ticket=48213&status=payment_in_progress&nonce={uuid.uuid4()}".encode()
    response = server.post("inhouse", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_event"
    [invalid] = response.json()["invalid"]
    record = store.get(invalid["id"])
    assert record is not None
    assert (record.state, store.delivery(record.delivery).raw_body) == ("invalid", body)  # type: ignore[union-attr]
    assert "not JSON" in record.detail


def test_a_chunked_delivery_is_read_whole(server: Service, store: Store) -> None:
    body = sample("generic-payment.json", server, "helpdesk")
    chunks = iter([body[:10], body[10:50], body[50:]])  # an iterator: requests sends Transfer-Encoding: chunked
    response = server.session.post(server.webhook_url("helpdesk"), data=chunks,
                                   headers=server.sign("helpdesk", body), timeout=15)
    assert response.status_code == 202, response.text
    assert settled(store, response.json()["accepted"][0]["id"]).state == "dry_run"


def test_a_chunked_delivery_over_the_limit_is_413(server: Service, store: Store) -> None:
    big = b"x" * (server.settings.max_body_bytes + 10_000)
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    headers = server.sign("inhouse", big) | {"Connection": "close"}  # as above: the rest of the body is not read
    before = rows(store)
    response = server.session.post(server.webhook_url("inhouse"), data=chunks, headers=headers, timeout=15)
    assert response.status_code == 413, f"{response.status_code} {response.text}"
    assert response.json()["error"] == "request_entity_too_large"
    assert rows(store) == before


def test_the_send_command_posts_a_fresh_signed_sample(server: Service, store: Store) -> None:
    before = rows(store)
    result = run_cli(server.env, "send", "samples/generic-payment.json", "--source", "helpdesk", "--fresh",
                     "--url", server.webhook_url("helpdesk"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP 202" in result.stdout, result.stdout + result.stderr
    accepted = json.loads(result.stdout.split("HTTP 202", 1)[1])["accepted"]
    assert settled(store, accepted[0]["id"]).state == "dry_run"
    assert rows(store) == before + 1


# ---------------------------------------------------------------- hostile clients (issue 11)


def _raw(server: Service, request: bytes) -> bytes:
    """Send raw bytes on a new connection and return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(("request_bytes", "status", "error"), [
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(200)) + b"\r\n", 431,
     "request_header_fields_too_large"),
], ids=["http2", "bad-method", "too-many-headers"])
def test_the_http_servers_own_refusals_are_json(server: Service, request_bytes: bytes, status: int,
                                                error: str) -> None:
    """Issue 11, smaller: gunicorn's refusals came back as HTML although every answer is promised as JSON."""
    head, _, body = _raw(server, request_bytes).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"] == error


def test_the_plain_access_and_error_logs_escape_control_characters(tmp_path: Path) -> None:
    """Issue 11, finding 6: gunicorn's plain access log printed raw control characters from the User-Agent."""
    env = dry_run_env(f"sqlite:///{tmp_path / 'plain.db'}", LOG_FORMAT="plain")
    with Service(env, tmp_path, workers=1, name="plain") as service:
        agent = "curl\x1b[2J\x1b]0;owned\x07 \x9b31m"
        assert service.session.get(f"{service.url}/healthz", headers={"User-Agent": agent}, timeout=10).ok
        _raw(service, b"GET /\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: "curl\\x1b[2J" in service.log_path.read_text(errors="replace"), 10,
                   message="the access line is written")
    log = service.log_path.read_bytes()
    assert b"\x1b" not in log and b"\x07" not in log and "\x9b".encode() not in log
    assert "curl\\x1b[2J\\x1b]0;owned\\x07 \\x9b31m" in log.decode()


def test_signed_webhooks_are_answered_while_slow_clients_trickle(tmp_path: Path) -> None:
    """Issue 11, finding 2: with gthread, 8 connections trickling a request stopped all intake (20: 0 of 4 probes
    answered). 20 connections trickling a head and 10 a body, for about 12 s: every signed probe is answered
    (bench/slow_clients.py measures the latency)."""
    from bench.slow_clients import SlowClient

    env = dry_run_env(f"sqlite:///{tmp_path / 'slow.db'}")
    with Service(env, tmp_path, workers=2, name="slow") as service:
        stop = threading.Event()
        slow = [SlowClient(service.port, body=n >= 20, trickle=0.5, stop=stop) for n in range(30)]
        for client in slow:
            client.start()
        try:
            wait_until(lambda: sum(c.connections for c in slow) >= 30, 10, message="every slow client connected")
            answers = []
            for n in range(10):
                body = json.dumps({"event_id": f"probe-{uuid.uuid4()}", "occurred_at": datetime.now(UTC).isoformat(),
                                   "ticket": {"id": str(n), "status": "open"},
                                   "agent": {"email": "probe@example.com"}}).encode()
                answers.append(requests.post(service.webhook_url("inhouse"), data=body,
                                             headers=service.sign("inhouse", body) | {"Connection": "close"},
                                             timeout=5).status_code)
                stop.wait(1.0)
        finally:
            stop.set()
    assert answers == [202] * 10


def test_a_body_that_does_not_arrive_in_time_is_408_and_holds_nothing(server: Service, store: Store) -> None:
    """A slow body costs a greenlet for at most views.BODY_SECONDS (10 s), then the connection is answered and closed;
    nothing is stored."""
    before = rows(store)
    head = (b"POST /webhooks/inhouse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{\"event_id\":")
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 REQUEST TIMEOUT", answer[:200]
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {"error": "request_timeout",
                                                          "detail": "the body did not arrive within 10 s"}
    assert rows(store) == before
