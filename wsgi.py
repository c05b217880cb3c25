"""WSGI entry point: `gunicorn wsgi:app` serves it, `flask --app wsgi <command>` runs the commands."""

from __future__ import annotations

import os
import sys

from webhook import create_app
from webhook.errors import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
        raise SystemExit(f"crm-mute-bridge cannot start:\n{exc}") from exc
    from webhook.cli import setup_app

    print(f"{exc}\n(only `flask --app wsgi init` works until these are fixed)\n", file=sys.stderr)
    app = setup_app(exc)
