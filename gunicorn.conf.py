"""Gunicorn settings for the Procfile's web process (read by `gunicorn --config gunicorn.conf.py wsgi:app`)."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gunicorn import util
from gunicorn.glogging import Logger

os.environ.setdefault("LOG_FORMAT", "json")  # production: one JSON object per line on stdout
# /metrics adds up every worker's counters through files in this folder (prometheus_client's multiprocess mode).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="webhook-metrics-")

bind = f"0.0.0.0:{os.environ.get('PORT') or '8000'}"
workers = int(os.environ.get("WEB_CONCURRENCY") or "2")
# gevent: each connection is a greenlet, so a client that trickles its request holds memory, not one of a few
# threads (with gthread, 8 slow connections stopped all intake). gunicorn bounds the wait for a request head by
# `keepalive`; the service bounds the wait for a body (views.BODY_SECONDS). psycopg waits cooperatively under
# gevent, and the background worker threads and the sweeper run as greenlets.
worker_class = "gevent"
worker_connections = int(os.environ.get("WEB_CONNECTIONS") or "200")  # each may hold a body of up to 256 KiB
timeout = 25  # under the PaaS routers' 30 s
graceful_timeout = 20  # SIGTERM: in-flight events finish; queued ones stay "received" for the sweeper
keepalive = 5
accesslog = "-"
# The plain access line without the query string (%(U)s, not %(r)s) or the referrer: the OAuth callback's query
# carries the authorization code and state, which must never reach a log.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'
errorlog = "-"
preload_app = False  # each worker builds its own app, store pool and background threads after the fork


def on_starting(server: Any) -> None:
    """Check the settings before any worker is forked (a broken configuration ends the master once, exit 1, with
    every problem listed, instead of each worker failing and being booted again); start with empty metrics files."""
    from webhook.startup import load_settings

    load_settings()
    for stale in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges (its counters stay in the totals)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """Start the background worker and sweeper in the worker process, never in the master."""
    state = worker.wsgi.extensions["webhook"]
    state.start_background()


def worker_exit(server: Any, worker: Any) -> None:
    """Let in-flight events finish and hand queued ones back before the worker goes."""
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("webhook") if app is not None else None
    if state is not None:
        state.shutdown()


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own refusals (a bad request line, headers too large, HTTP/2.0 ...) as JSON, like every answer of
    the service, instead of its HTML page."""
    code = reason.lower().replace(" ", "_")
    body = json.dumps({"error": code, "detail": mesg}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


util.write_error = write_json_error


class PlainLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger for plain lines, with control characters from the request (a User-Agent, a bad request
    line) shown escaped: a client cannot forge a second log line or drive the reader's terminal."""

    def setup(self, cfg: Any) -> None:
        """Set up gunicorn's handlers, then give its error log the service's escaping plain formatter."""
        super().setup(cfg)
        from webhook.logs import PlainFormatter

        for handler in self.error_log.handlers:
            handler.setFormatter(PlainFormatter("%(asctime)s [%(process)d] [%(levelname)s] %(message)s"))

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        """The access log's fields, text escaped."""
        from webhook.logs import escape

        return {k: escape(v) if isinstance(v, str) else v
                for k, v in super().atoms(resp, req, environ, request_time).items()}


class JsonAccessLogger(Logger):  # type: ignore[misc]
    """Gunicorn's logger with the access log as one JSON object a line (path without its query string)."""

    def setup(self, cfg: Any) -> None:
        """Set up gunicorn's handlers, then make its error log JSON like the service's own lines."""
        super().setup(cfg)
        from webhook.logs import JsonFormatter

        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """Write one access line: time, method, path, status, duration and the request id."""
        if not self.cfg.accesslog:
            return
        request_id = next((v for k, v in resp.headers if k.lower() == "x-request-id"), None)
        self.access_log.info(json.dumps({
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": "info",
            "logger": "gunicorn.access", "message": f"{req.method} {req.path}", "status": resp.status_code,
            "duration_ms": round(request_time.total_seconds() * 1000, 1), "request_id": request_id,
        }))


logger_class = JsonAccessLogger if os.environ["LOG_FORMAT"] == "json" else PlainLogger
