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
    from pathlib import Path

    from webhook.cli import setup_app

    configured = Path(".env").exists() or any(k.endswith("_WEBHOOK_SECRET") for k in os.environ)
    if configured:
        print(f"{exc}\n(only `flask --app wsgi init` and `db upgrade` work until these are fixed)\n", file=sys.stderr)
    elif "init" not in sys.argv[1:]:  # not while init is writing it
        print("no .env here yet: `flask --app wsgi init` writes one with fresh secrets\n", file=sys.stderr)
    app = setup_app(exc)
