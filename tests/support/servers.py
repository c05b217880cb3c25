"""Run the real service (gunicorn with the shipped gunicorn.conf.py) and its commands as subprocesses on loopback.

Used by the end-to-end tests and by bench/. The service reads its settings from the environment built here, exactly
as on a PaaS: the test secrets, DATABASE_URL, WEBHOOK_CONFIG (the shipped config/webhook.toml or a copy with some
[processing] knobs changed) and either GENESYS_* pointing at a FakeGenesys or GENESYS_DRY_RUN=true.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import requests

from tests.support.app import CONFIG, ROOT, SECRETS
from tests.support.fake_genesys import FakeGenesys
from webhook import signatures
from webhook.config import Settings
from webhook.store import FINAL_STATES, EventRecord, Store

T = TypeVar("T")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# Variables of the developer's shell that would change what the service under test reads.
_SCRUBBED = re.compile(r"^(GENESYS_|DATABASE_URL$|WEBHOOK_CONFIG$|PORT$|WEB_CONCURRENCY$|GUNICORN_|FLASK_|LOG_FORMAT$"
                       r"|LOG_LEVEL$|.*_WEBHOOK_SECRET$|PROMETHEUS_MULTIPROC_DIR$)")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], T | None], timeout: float, *, interval: float = 0.02, message: str = "") -> T:
    """Poll predicate until it returns something truthy and return that; AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true after {timeout:.1f} s: {message or predicate}")
        time.sleep(interval)


def write_config(path: Path, *, requests_per_minute: float | None = 0, **processing: float) -> Path:
    """Write a copy of the shipped config/webhook.toml with the given [processing] knobs changed; return its path.

    [genesys] requests_per_minute is 0 (the service's own request spacing off) unless given: the fake Genesys has
    no rate limit unless a test sets one, and at the shipped 300 a minute 100 events take 20 s of waiting. A test of
    the spacing passes the value it tests; None keeps the shipped value."""
    source = Path(CONFIG).read_text(encoding="utf-8")
    if requests_per_minute is not None:
        source, found = re.subn(r"(?m)^requests_per_minute\s*=\s*[0-9.]+",
                                f"requests_per_minute = {requests_per_minute:g}", source, count=1)
        assert found, "config/webhook.toml has no [genesys] requests_per_minute"
    head, sep, rest = source.partition("\n[processing]\n")
    assert sep, "config/webhook.toml has no [processing] table"
    after = re.search(r"(?m)^\[", rest)  # the next table, which must keep its own keys
    section, tail = (rest[:after.start()], rest[after.start():]) if after else (rest, "")
    for key, value in processing.items():
        section, found = re.subn(rf"(?m)^{re.escape(key)}\s*=\s*[^#\n]*?(\s*#|$)", rf"{key} = {value!r}\1", section,
                                 count=1)
        if not found:
            section = section.rstrip("\n") + f"\n{key} = {value!r}\n\n"
    path.write_text(head + sep + section + tail, encoding="utf-8")
    return path


def _base_env(db_url: str, config_path: Path | str) -> dict[str, str]:
    """Return the developer's environment without what would change the service, plus the test secrets and paths."""
    base = {k: v for k, v in os.environ.items() if not _SCRUBBED.match(k)}
    return base | SECRETS | {"DATABASE_URL": db_url, "WEBHOOK_CONFIG": str(config_path), "PYTHONUNBUFFERED": "1"}


def service_env(fake: FakeGenesys, db_url: str, config_path: Path | str, **extra: str) -> dict[str, str]:
    """Return the environment of a live (not dry-run) service talking to the fake Genesys."""
    return _base_env(db_url, config_path) | {
        "GENESYS_DRY_RUN": "false",
        "GENESYS_CLIENT_ID": fake.client_id,
        "GENESYS_CLIENT_SECRET": fake.client_secret,
        "GENESYS_API_URL": fake.url,
        "GENESYS_LOGIN_URL": fake.url,
    } | extra


def dry_run_env(db_url: str, config_path: Path | str = CONFIG, **extra: str) -> dict[str, str]:
    """Return the environment of a dry-run service: it decides every event but calls no Genesys."""
    return _base_env(db_url, config_path) | {
        "GENESYS_DRY_RUN": "true",
        # Set but empty, so that a stray .env in the repository root cannot add them.
        "GENESYS_REGION": "", "GENESYS_CLIENT_ID": "", "GENESYS_CLIENT_SECRET": "", "GENESYS_API_URL": "",
        "GENESYS_LOGIN_URL": "",
    } | extra


def settings_of(env: Mapping[str, str]) -> Settings:
    """Return the Settings the service builds from this environment."""
    return Settings.from_env(env, config_path=env["WEBHOOK_CONFIG"])


def signed_request(settings: Settings, source: str, body: bytes, url: str, *,
                   now: datetime | None = None) -> dict[str, str]:
    """Return the headers a real sender of `source` sends with body to url (signed at now, default the wall clock)."""
    src = settings.sources[source]
    headers = signatures.sign(src.scheme, body=body, secret=src.secrets[0], now=now or datetime.now(UTC), url=url,
                              header=src.header)
    return headers | {"Content-Type": "application/json"}


def wait_final(store: Store, event_pk: int, timeout: float) -> EventRecord:
    """Wait until the service's background worker has put the event in a final state; return it."""
    def done() -> EventRecord | None:
        record = store.get(event_pk)
        return record if record is not None and record.state in FINAL_STATES else None
    return wait_until(done, timeout, message=f"event {event_pk} reaches a final state")


def create_schema(db_url: str) -> None:
    """Create the tables (what the Procfile's release step does before the web process starts)."""
    store = Store.from_url(db_url)
    try:
        store.create_schema()
    finally:
        store.close()


class Service:
    """The real service under gunicorn (`gunicorn --config gunicorn.conf.py wsgi:app`) on a free loopback port.

    `app` runs another WSGI app under the same gunicorn.conf.py instead (bench/ compares with "bench.bare_app:app").
    """

    def __init__(self, env: Mapping[str, str], log_dir: Path, *, workers: int = 1, threads: int = 4,
                 name: str = "service", app: str = "wsgi:app", port: int = 0) -> None:
        self.env = dict(env)
        self.settings = settings_of(env)
        self.log_dir = log_dir
        self.workers = workers
        self.threads = threads
        self.name = name
        self.app = app
        self.port = port
        self.fixed_port = port  # 0: a free port at each start; else always this one (a PUBLIC_URL names it)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.session = requests.Session()

    @property
    def url(self) -> str:
        """Return the base URL of the running service."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Return the file that holds the current run's stdout and stderr."""
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def start(self) -> Service:
        """Create the schema, start gunicorn in its own process group and wait for /healthz."""
        assert self.process is None, "already running"
        create_schema(self.env["DATABASE_URL"])
        self.port, self.starts = self.fixed_port or free_port(), self.starts + 1
        command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "-b", f"127.0.0.1:{self.port}",
                   "--workers", str(self.workers), "--threads", str(self.threads), self.app]
        # The workers' metrics files beside the log (removed or kept with it), not in gunicorn.conf.py's default.
        metrics = self.log_dir / f"{self.name}-{self.starts}-metrics"
        metrics.mkdir(exist_ok=True)
        env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics)} | self.env
        with self.log_path.open("wb") as log:
            # A group of its own: kill() reaches the master and its workers, like a container being killed.
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(self._healthy, START_TIMEOUT, interval=0.05, message=f"{self.name} answers /healthz")
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            return self.session.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def webhook_url(self, source: str) -> str:
        """Return the URL a sender of `source` posts to."""
        return f"{self.url}/webhooks/{source}"

    def sign(self, source: str, body: bytes, url: str | None = None, *, now: datetime | None = None) -> dict[str, str]:
        """Return the headers of body sent to url (default the source's webhook URL), signed at now (the wall clock)."""
        return signed_request(self.settings, source, body, url or self.webhook_url(source), now=now)

    def post(self, source: str, body: bytes, headers: Mapping[str, str] | None = None, *,
             now: datetime | None = None, timeout: float = 15) -> requests.Response:
        """POST body to /webhooks/<source> with headers, by default signed with the source's first secret at now."""
        headers = self.sign(source, body, now=now) if headers is None else headers
        return self.session.post(self.webhook_url(source), data=body, headers=headers, timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send sig to the master and its workers; with SIGKILL, wait until they are gone."""
        assert self.process is not None, "not running"
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait(timeout=STOP_TIMEOUT)
            self._wait_group_gone()
            self.process = None

    def restart(self) -> Service:
        """Start again (on a new port) after kill() or stop()."""
        if self.process is not None:
            self.stop()
        return self.start()

    def stop(self) -> None:
        """SIGTERM (gunicorn's graceful stop), then SIGKILL whatever is left after STOP_TIMEOUT; idempotent."""
        if self.process is None:
            return
        process, self.process = self.process, None
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)
        with suppress(ProcessLookupError):  # workers that outlived their master
            os.killpg(process.pid, signal.SIGKILL)

    def _wait_group_gone(self) -> None:
        assert self.process is not None
        pgid = self.process.pid

        def gone() -> bool:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_until(gone, STOP_TIMEOUT, message=f"process group {pgid} is gone")

    def log_tail(self, lines: int = 40) -> str:
        """Return the end of the current run's log (for assertion messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Close the HTTP session (its kept-alive connections go before the graceful stop), then stop the service."""
        self.session.close()
        self.stop()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def running_service(env: Mapping[str, str], log_dir: Path, **kwargs: Any) -> Iterator[Service]:
    """Yield a started Service and always tear it down."""
    service = Service(env, log_dir, **kwargs)
    try:
        yield service.start()
    finally:
        service.close()


def connect_user(fake: FakeGenesys, service_url: str, user_id: str,
                 path: str = "/genesys/connect") -> requests.Response:
    """Go through the browser flow as a user: the service's connect page, the fake's login, the callback."""
    browser = requests.Session()
    fake.consent_as(user_id)
    start = browser.get(service_url + path, allow_redirects=False, timeout=10)
    assert start.status_code == 302, start.text
    login = browser.get(start.headers["Location"], allow_redirects=False, timeout=10)
    assert login.status_code == 302, login.text
    return browser.get(login.headers["Location"], allow_redirects=False, timeout=10)


def user_client_env(fake: FakeGenesys, port: int) -> dict[str, str]:
    """Return the variables of the authorization-code client for a service on this loopback port."""
    from cryptography.fernet import Fernet

    return {"GENESYS_USER_CLIENT_ID": fake.user_client_id, "GENESYS_USER_CLIENT_SECRET": fake.user_client_secret,
            "PUBLIC_URL": f"http://127.0.0.1:{port}", "TOKEN_ENCRYPTION_KEY": Fernet.generate_key().decode()}


def connect_service_user(fake: FakeGenesys, env: Mapping[str, str], service_url: str, user_id: str) -> None:
    """Make the one-time link with `genesys connect --service-user` and connect the service user through it."""
    result = run_cli(env, "genesys", "connect", "--service-user")
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip().splitlines()[-1]
    assert link.startswith(service_url + "/genesys/connect?link="), link
    answer = connect_user(fake, service_url, user_id, link.removeprefix(service_url))
    assert answer.status_code == 200 and "as the service user" in answer.text, answer.text


def run_cli(env: Mapping[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `flask --app wsgi <args>` from the repository root with env; return the finished process."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=dict(env),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def worker_pids(service: Service) -> list[int]:
    """Return the pids of a running service's gunicorn workers (the master's children)."""
    assert service.process is not None, "not running"
    master = service.process.pid
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text()
    except OSError:
        return []
    return sorted(int(pid) for pid in children.split())


def pid_of_connection(local_port: int, pids: Iterable[int]) -> int | None:
    """Return which of pids holds the TCP socket whose local port is local_port (the client side of a request)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        with suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
    return None
