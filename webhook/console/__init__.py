"""The operators' console under /console: server-rendered pages over the event log, replay, agents, connections and
rules; off (404) unless someone can log in. Flask at the edge only: the pages call the store, the processor and the
pure modules."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from webhook.config import Settings

SESSION_COOKIE = "crm_mute_bridge_console"


def enabled(settings: Settings) -> bool:
    """Tell whether the console is on: listed operators who can log in with Genesys, or CONSOLE_PASSWORD."""
    return settings.console.enabled(settings.genesys)


def init_app(app: Flask, settings: Settings) -> None:
    """Register the console when someone can log in; otherwise register nothing, so /console answers 404."""
    if not enabled(settings):
        return
    from webhook.console import auth, pages

    app.secret_key = settings.console.secret_key
    secure = (settings.genesys.public_url or "").startswith("https://")
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure, PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.console.idle_seconds),
        # The token is checked by the console's own before_request (webhooks carry no token: they are signed).
        WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None, WTF_CSRF_SSL_STRICT=True,
    )
    app.extensions["console"] = auth.ConsoleState(CSRFProtect(app), auth.Throttle())
    assert pages.overview is not None  # imported for its views, which it adds to the blueprint auth guards
    app.register_blueprint(auth.bp)
