"""crm-mute-bridge: signed CRM ticket-status webhooks in, Genesys Cloud microphone mute/unmute out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # importing the package stays light: gunicorn's master imports webhook.logs before forking, and
    # requests (urllib3) imported there would break TLS in a gevent worker, which patches ssl after the fork
    from flask import Flask

    from webhook.config import Settings


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
    genesys: object | None = None,
    background: bool = True,
    log_stream: TextIO | None = None,
) -> Flask:
    """Build the app: settings from the environment unless given; store, Genesys client, worker, views, commands.
    Logs go to log_stream (default stdout; webhook.startup passes stderr under `flask`, whose stdout is output)."""
    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from webhook import cli, console, logs, views
    from webhook.app_state import AppState, genesys_client, user_connections
    from webhook.clock import utcnow
    from webhook.config import Settings
    from webhook.genesys.client import GenesysClient
    from webhook.liveness import Liveness
    from webhook.metrics import Metrics
    from webhook.processing import Processor
    from webhook.store import Store
    from webhook.worker import Sweeper, Worker

    settings = settings or Settings.from_env()
    clock = clock or utcnow
    logs.configure(settings.log_format, settings.log_level, stream=log_stream)
    app = Flask(__name__, instance_relative_config=False)
    # One byte over the limit, so that the view sees a cut chunked body as too large (views.receive).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)  # type: ignore[method-assign]
    store = Store.from_url(settings.database_url)
    users = user_connections(settings, store, clock)
    client = genesys if genesys is not None else (None if settings.genesys.dry_run else genesys_client(settings, users))
    assert client is None or isinstance(client, GenesysClient)
    metrics = Metrics()
    liveness = Liveness(store, clock)
    processor = Processor(store, settings, client, clock=clock, metrics=metrics, liveness=liveness)
    worker = Worker(processor, threads=settings.worker_threads, queue_size=settings.worker_queue_size)
    sweeper = Sweeper(store, worker, interval=settings.sweep_interval_seconds,
                      stale_after=settings.stale_claim_seconds, clock=clock, liveness=liveness)
    liveness.after_beat = sweeper.take_over
    state = AppState(settings, store, client, processor, worker, sweeper, clock, metrics, liveness, users=users,
                     background=background)
    app.extensions["webhook"] = state
    logs.init_app(app)
    views.init_app(app)
    cli.init_app(app)
    console.init_app(app, settings)

    @app.before_request
    def _start_background() -> None:
        state.start_background()

    return app
