"""End to end over HTTP: the real service under gunicorn on loopback, signed deliveries sent with `requests`.

One gunicorn process (the shipped gunicorn.conf.py, one worker) serves the whole module from the repository root, so
it reads config/webhook.toml as on a PaaS; the environment holds the test secrets, GENESYS_DRY_RUN=true and a SQLite
file in a temporary folder. The service uses the real clock, so bodies are freshened and signed with the wall clock.
Final states are read back through the store; the background worker decides them, so the test polls (bounded).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from tests.conftest import CONFIG, ROOT, SECRETS
from webhook import signatures
from webhook.cli import freshen
from webhook.config import Settings
from webhook.store import EventRecord, Store

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent  # the virtualenv's bin folder: gunicorn and flask live beside its python
GUNICORN = BIN / "gunicorn"
FLASK = BIN / "flask"
SAMPLES = ROOT / "samples"
START_TIMEOUT = 15.0
SETTLE_TIMEOUT = 15.0
# Variables of the developer's shell that would change what the service under test reads.
SCRUBBED = re.compile(r"^(GENESYS_|DATABASE_URL$|WEBHOOK_CONFIG$|PORT$|WEB_CONCURRENCY$|GUNICORN_|FLASK_"
                      r"|.*_WEBHOOK_SECRET$)")
T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll every 50 ms until predicate returns something truthy (waiting on another process, not on our logic)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """The running service: its address, environment, settings as it reads them, and a store on the same database."""

    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    settings: Settings
    store: Store
    log: Path
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, source: str) -> str:
        return f"{self.base}/webhooks/{source}"

    def sign(self, source: str, body: bytes, url: str | None = None) -> dict[str, str]:
        """The headers the source's real sender would send now (hubspot-v3 signs the exact URL)."""
        src = self.settings.sources[source]
        return signatures.sign(src.scheme, body=body, secret=src.secrets[0], now=datetime.now(UTC),
                               url=url or self.url(source), header=src.header) | {"Content-Type": "application/json"}

    def post(self, source: str, body: bytes, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
        signed = self.sign(source, body) if headers is None else headers
        return self.session.post(self.url(source), data=body, headers=signed, timeout=15, **kwargs)

    def settled(self, row_id: int) -> EventRecord:
        """Wait until the background worker has taken the event out of received/processing; return it."""
        def final() -> EventRecord | None:
            record = self.store.get(row_id)
            return record if record is not None and record.state not in ("received", "processing") else None

        return wait_for(final, SETTLE_TIMEOUT, f"event {row_id} leaves received\n{self.log_tail()}")

    def rows(self) -> int:
        return sum(self.store.counts().values())

    def log_tail(self, lines: int = 30) -> str:
        with suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


def service_env(tmp: Path, port: int) -> dict[str, str]:
    """The environment a PaaS would give the web process: secrets, dry-run Genesys, the database, the port."""
    metrics = tmp / "metrics"
    metrics.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not SCRUBBED.match(k)}
    return base | SECRETS | {
        "GENESYS_DRY_RUN": "true",
        "GENESYS_REGION": "", "GENESYS_CLIENT_ID": "", "GENESYS_CLIENT_SECRET": "",  # a stray .env cannot add them
        "GENESYS_API_URL": "", "GENESYS_LOGIN_URL": "",
        "DATABASE_URL": f"sqlite:///{tmp / 'e2e.db'}",
        "WEBHOOK_CONFIG": CONFIG,
        "PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "PYTHONUNBUFFERED": "1",
    }


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (master and worker), then SIGKILL whatever is left."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Create the schema, start gunicorn on a free loopback port, wait for /healthz; always stop it."""
    if not GUNICORN.exists():
        pytest.skip(f"gunicorn is not installed beside {sys.executable}")
    tmp = tmp_path_factory.mktemp("e2e")
    port = free_port()
    env = service_env(tmp, port)
    settings = Settings.from_env(env, config_path=CONFIG)
    store = Store.from_url(settings.database_url)
    store.create_schema()  # what the Procfile's release step (flask init) does before the web process starts
    log = tmp / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(GUNICORN), "--config", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "-w", "1", "wsgi:app"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: stop() reaches the master and its worker
    running = Server(process, port, env, settings, store, log)
    try:
        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {process.returncode}:\n{running.log_tail()}")
            try:
                return running.session.get(f"{running.base}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(healthy, START_TIMEOUT, f"gunicorn answers /healthz on port {port}")
        yield running
    finally:
        running.session.close()  # our kept-alive connections go before the graceful stop
        stop(process)
        store.close()


def sample(name: str, server: Server, source: str) -> bytes:
    """A shipped sample with fresh event ids and the current time (what `send --fresh` does)."""
    return freshen((SAMPLES / name).read_bytes(), server.settings.sources[source].mapping, datetime.now(UTC))


# ---------------------------------------------------------------- tests


def test_health_and_readiness_over_http(server: Server) -> None:
    assert server.session.get(f"{server.base}/healthz", timeout=5).json() == {"status": "ok"}
    ready = server.session.get(f"{server.base}/readyz", timeout=5)
    assert (ready.status_code, ready.json()["database"], ready.json()["genesys"]) == (200, "ok", "dry_run")


def test_zendesk_sample_is_accepted_and_decided_as_a_dry_run_mute(server: Server) -> None:
    body = sample("zendesk-status-changed.json", server, "zendesk")
    response = server.post("zendesk", body)
    assert response.status_code == 202, response.text
    [accepted] = response.json()["accepted"]
    assert accepted["event_id"] == json.loads(body)["id"]
    record = server.settled(accepted["id"])
    assert (record.state, record.action, record.agent, record.status) == (
        "dry_run", "mute", "jane.agent@example.com", "hold"), record.detail
    assert record.raw_body == body


def test_a_generic_event_is_accepted_and_a_duplicate_answers_200(server: Server) -> None:
    body = sample("generic-payment.json", server, "helpdesk")
    headers = server.sign("helpdesk", body)
    first = server.post("helpdesk", body, headers)
    assert first.status_code == 202, first.text
    [accepted] = first.json()["accepted"]
    record = server.settled(accepted["id"])
    assert (record.state, record.action, record.status) == ("dry_run", "mute", "payment_in_progress"), record.detail
    rows = server.rows()
    again = server.post("helpdesk", body, headers)  # the sender's retry of the same delivery
    resigned = server.post("helpdesk", body)  # a new delivery (new webhook-id) of the same event id
    for response in (again, resigned):
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": [], "duplicates": [accepted]}
    assert server.rows() == rows


def test_a_hubspot_array_signed_for_the_exact_url_gives_one_event_each(server: Server) -> None:
    body = sample("hubspot-batch.json", server, "hubspot")
    url = server.url("hubspot") + "?portalId=62515"
    response = server.session.post(url, data=body, headers=server.sign("hubspot", body, url), timeout=15)
    assert response.status_code == 202, response.text
    accepted = response.json()["accepted"]
    assert [a["event_id"] for a in accepted] == [str(item["eventId"]) for item in json.loads(body)]
    records = [server.settled(a["id"]) for a in accepted]
    assert [(r.state, r.action, r.agent) for r in records] == [
        ("dry_run", "mute", "omar.agent@example.com"), ("dry_run", "mute", "jane.agent@example.com")]


def test_hubspot_behind_a_proxy_is_verified_against_the_public_url(server: Server) -> None:
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


def test_refusals_are_json_and_store_nothing(server: Server) -> None:
    rows = server.rows()
    body = sample("generic-payment.json", server, "helpdesk")
    headers = server.sign("inhouse", body)
    tampered = server.post("inhouse", body.replace(b"payment_in_progress", b"open"), headers)
    assert tampered.status_code == 401
    assert tampered.json() == {"error": "invalid_signature", "detail": "signature mismatch"}
    unsigned = server.post("inhouse", body, {"Content-Type": "application/json"})
    assert (unsigned.status_code, unsigned.json()["error"]) == (401, "invalid_signature")
    unknown = server.session.post(f"{server.base}/webhooks/nosuchcrm", data=body, headers=headers, timeout=15)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_source")
    big = b"x" * (server.settings.max_body_bytes + 1)
    # Connection: close, because a kept-alive connection left with an unread body holds a gunicorn gthread worker
    # on SIGTERM until graceful_timeout (20 s) runs out (see the report).
    oversized = server.post("inhouse", big, server.sign("inhouse", big) | {"Connection": "close"})
    assert oversized.status_code == 413
    assert oversized.json() == {"error": "request_entity_too_large",
                                "detail": f"the body is larger than {server.settings.max_body_bytes} bytes"}
    wrong_method = server.session.get(server.url("inhouse"), timeout=15)
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405, "method_not_allowed")
    assert server.rows() == rows


def test_a_signed_body_that_is_not_json_is_stored_invalid_and_400(server: Server) -> None:
    body = f"ticket=48213&status=payment_in_progress&nonce={uuid.uuid4()}".encode()
    response = server.post("inhouse", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_event"
    [invalid] = response.json()["invalid"]
    record = server.store.get(invalid["id"])
    assert record is not None
    assert (record.state, record.raw_body) == ("invalid", body)
    assert "not JSON" in record.detail


def test_a_chunked_delivery_is_read_whole(server: Server) -> None:
    body = sample("generic-payment.json", server, "helpdesk")
    chunks = iter([body[:10], body[10:50], body[50:]])  # an iterator: requests sends Transfer-Encoding: chunked
    response = server.session.post(server.url("helpdesk"), data=chunks, headers=server.sign("helpdesk", body),
                                   timeout=15)
    assert response.status_code == 202, response.text
    assert server.settled(response.json()["accepted"][0]["id"]).state == "dry_run"


def test_a_chunked_delivery_over_the_limit_is_413(server: Server) -> None:
    big = b"x" * (server.settings.max_body_bytes + 10_000)
    chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
    headers = server.sign("inhouse", big) | {"Connection": "close"}  # as above: the rest of the body is not read
    rows = server.rows()
    response = server.session.post(server.url("inhouse"), data=chunks, headers=headers, timeout=15)
    assert response.status_code == 413, f"{response.status_code} {response.text}"
    assert response.json()["error"] == "request_entity_too_large"
    assert server.rows() == rows


def test_the_send_command_posts_a_fresh_signed_sample(server: Server) -> None:
    rows = server.rows()
    result = subprocess.run(
        [str(FLASK), "--app", "wsgi", "send", "samples/generic-payment.json", "--source", "helpdesk", "--fresh",
         "--url", server.url("helpdesk")],
        cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP 202" in result.stdout, result.stdout + result.stderr
    accepted = json.loads(result.stdout.split("HTTP 202", 1)[1])["accepted"]
    assert server.settled(accepted[0]["id"]).state == "dry_run"
    assert server.rows() == rows + 1
