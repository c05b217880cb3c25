"""Gunicorn settings for the Procfile's web process (read by `gunicorn --config gunicorn.conf.py wsgi:app`)."""

from __future__ import annotations

import os
from typing import Any

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = 25  # under the PaaS routers' 30 s
graceful_timeout = 20  # SIGTERM: in-flight events finish; queued ones stay "received" for the sweeper
keepalive = 5
accesslog = "-"
errorlog = "-"
preload_app = False  # each worker builds its own app, store pool and background threads after the fork


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
