"""WSGI entry point: `gunicorn wsgi:app` serves it, `flask --app wsgi <command>` runs the commands."""

from __future__ import annotations

from webhook.startup import wsgi_app

app = wsgi_app()
