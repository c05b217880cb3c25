"""The service run exactly as the Procfile says: release twice, gunicorn with two workers on PostgreSQL, SIGTERM
while events are in flight, a restart, and every accepted event in a final state."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from tests.support.app import CONFIG, ROOT
from tests.support.fake_genesys import FakeGenesys
from tests.support.servers import (
    dry_run_env,
    free_port,
    service_env,
    settings_of,
    signed_request,
    wait_until,
    write_config,
)
from webhook.store import FINAL_STATES, Store

pytestmark = pytest.mark.e2e
WAIT = 60.0


def procfile() -> dict[str, str]:
    """Return the Procfile's process types and their commands."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


def run(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a Procfile command the way a platform does: a shell in the app's folder, the virtualenv on PATH."""
    with log.open("ab") as out:
        return subprocess.Popen(["/bin/sh", "-c", f"exec {command}"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def test_release_twice_then_web_survives_sigterm_with_events_in_flight(scratch_pg_url: str,
                                                                       tmp_path: Path) -> None:
    processes = procfile()
    assert set(processes) == {"release", "web"}
    with FakeGenesys() as fake:
        agents = [f"agent{n}@example.com" for n in range(24)]
        for agent in agents:
            fake.start_call(fake.add_user(agent))
        config = write_config(tmp_path / "webhook.toml", sweep_interval_seconds=0.5, retry_budget_seconds=5,
                              stale_claim_seconds=11)
        port = free_port()
        env = service_env(fake, scratch_pg_url.replace("postgresql+psycopg://", "postgres://"), config,
                          PORT=str(port), WEB_CONCURRENCY="2", METRICS_TOKEN="procfile-metrics-token")
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

        releases = [subprocess.run(["/bin/sh", "-c", processes["release"]], cwd=ROOT, env=env, capture_output=True,
                                   text=True, timeout=60) for _ in range(2)]
        assert [r.returncode for r in releases] == [0, 0], releases[0].stderr + releases[1].stderr
        assert "applied: 1" in releases[0].stdout
        assert "nothing to do" in releases[1].stdout

        settings = settings_of(env)
        base = f"http://127.0.0.1:{port}"
        web = run(processes["web"], env, tmp_path / "web.log")
        accepted: list[int] = []
        try:
            wait_until(lambda: healthy(base), 30, interval=0.05, message="web answers /healthz")
            # Every PATCH takes 2 s: at SIGTERM all 8 threads (2 workers x 4) are mid-PATCH and the rest is queued.
            fake.slow(2, count=len(agents), path_prefix="/api/v2/conversations/calls/")
            for n, agent in enumerate(agents):
                body = json.dumps({"event_id": f"proc-{uuid.uuid4()}", "occurred_at": datetime.now(UTC).isoformat(),
                                   "ticket": {"id": str(n), "status": "payment_in_progress"},
                                   "agent": {"email": agent}}).encode()
                url = f"{base}/webhooks/inhouse"
                answer = requests.post(url, data=body, headers=signed_request(settings, "inhouse", body, url),
                                       timeout=10)
                assert answer.status_code == 202, answer.text
                accepted.append(answer.json()["accepted"][0]["id"])
            wait_until(lambda: fake.patches, 10, message="a PATCH is in flight")
            os.killpg(web.pid, signal.SIGTERM)
            assert web.wait(timeout=40) == 0, (tmp_path / "web.log").read_text()[-3000:]
            store = Store.from_url(scratch_pg_url)
            at_stop = [store.get(pk).state for pk in accepted]  # type: ignore[union-attr]
            # In-flight events finished during the graceful stop; queued ones were handed back as received.
            assert "applied" in at_stop and "received" in at_stop, at_stop
            assert set(at_stop) <= {"applied", "received"}, at_stop

            web = run(processes["web"], env, tmp_path / "web.log")
            wait_until(lambda: healthy(base), 30, interval=0.05, message="web answers /healthz again")
            records = wait_until(lambda: all_final(store, accepted), WAIT, message="every accepted event is final")
            # Both workers' counters add up on /metrics (prometheus_client's multiprocess mode).
            scraped = requests.get(f"{base}/metrics", headers={"Authorization": "Bearer procfile-metrics-token"},
                                   timeout=5).text
            finished = metric(scraped, 'webhook_events_finished_total{state="applied"}')
        finally:
            with_suppressed_kill(web)
        store.close()
    assert {r.state for r in records} == {"applied"}, [(r.id, r.state, r.detail) for r in records]
    assert finished == len(agents) - at_stop.count("applied")  # counted by the processes now running
    muted = [p for p in fake.patches if p.status == 202]
    assert len({p.path for p in muted}) == len(agents)  # every agent's own participant, once each at least
    log = (tmp_path / "web.log").read_text()
    assert '"logger": "gunicorn.access"' in log and "Handling signal: term" in log


def misspelt_config(tmp_path: Path) -> Path:
    """A copy of the shipped config whose [intake] key is misspelt (the typo a user makes)."""
    path = tmp_path / "webhook.toml"
    path.write_text(Path(CONFIG).read_text().replace("\nmax_body_bytes ", "\nmax_body_byte "), encoding="utf-8")
    return path


TYPO = "intake.max_body_byte: unknown key; [intake] has max_body_bytes, trusted_proxies"


def test_a_broken_config_stops_the_gunicorn_master_once_before_any_worker(tmp_path: Path) -> None:
    env = dry_run_env(f"sqlite:///{tmp_path / 'webhook.db'}", misspelt_config(tmp_path), PORT=str(free_port()),
                      WEB_CONCURRENCY="2")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    web = run(procfile()["web"], env, tmp_path / "web.log")
    try:
        code = web.wait(timeout=20)
    finally:
        with_suppressed_kill(web)
    log = (tmp_path / "web.log").read_text()
    assert code == 1, log[-3000:]
    assert log.count("crm-mute-bridge cannot start:") == 1 and log.count(TYPO) == 1, log[-3000:]
    assert "Booting worker" not in log


def test_the_release_step_fails_with_the_problems_of_a_broken_config(tmp_path: Path) -> None:
    env = dry_run_env(f"sqlite:///{tmp_path / 'webhook.db'}", misspelt_config(tmp_path))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    release = subprocess.run(["/bin/sh", "-c", procfile()["release"]], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    assert release.returncode == 1, release.stdout + release.stderr
    assert release.stderr.count(TYPO) == 1
    assert release.stderr.rstrip().endswith(
        "Error: the database was not migrated: fix the configuration problem(s) above first")
    assert not (tmp_path / "webhook.db").exists()


def metric(text: str, sample: str) -> float:
    """Return one sample's value from a Prometheus text exposition (0 when absent)."""
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " ")), 0.0)


def healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/readyz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def all_final(store: Store, ids: list[int]) -> list[object] | None:
    records = [store.get(pk) for pk in ids]
    return records if all(r is not None and r.state in FINAL_STATES for r in records) else None  # type: ignore[return-value]


def with_suppressed_kill(process: subprocess.Popen[bytes]) -> None:
    """Stop a web process group however it is doing: SIGTERM, then SIGKILL."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.parametrize("log_format", ["json", "plain"])
def test_the_gunicorn_master_never_imports_requests(tmp_path: Path, log_format: str) -> None:
    """The gevent worker patches ssl after the fork; urllib3 imported before that (in the master, through the
    config or its logger) would break every TLS request to Genesys with a RecursionError."""
    script = ("import runpy, sys\n"
              "from gunicorn.config import Config\n"
              "ns = runpy.run_path('gunicorn.conf.py')\n"
              "cfg = Config()\n"
              "[cfg.set(k, ns[k]) for k in ('accesslog', 'errorlog', 'access_log_format')]\n"
              "ns['logger_class'](cfg)\n"
              "print(ns['worker_class'], sorted(m for m in ('requests', 'urllib3', 'psycopg', 'gevent') "
              "if m in sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR")}
    env |= {"LOG_FORMAT": log_format, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gevent []"
