"""The one way in: every process (gunicorn's master and workers, `flask --app wsgi <command>`) starts here, reads its
settings once through Settings, and reports a broken configuration the same way."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from flask import Flask

from webhook.config import Settings
from webhook.errors import ConfigError

HEADLINE = "crm-mute-bridge cannot start:"


def load_settings(*, cli: bool = False) -> Settings | ConfigError:
    """Read .env, the environment and the TOML into Settings. With a configuration problem a server process exits 1
    with every problem listed once; under the CLI the problem is returned, for the setup app."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        if not cli:
            raise SystemExit(cannot_start(exc)) from exc
        return exc


def wsgi_app() -> Flask:
    """Build the app that wsgi.py exposes: the service's, or under `flask` with a broken configuration the setup app
    (where only `init` works and `db upgrade` fails with the problems)."""
    from webhook import create_app

    cli = os.environ.get("FLASK_RUN_FROM_CLI") == "true"  # set by the `flask` command itself
    settings = load_settings(cli=cli)
    if isinstance(settings, ConfigError):
        listed = configured()
        if listed:
            print(f"{settings}\n(only `flask --app wsgi init` works until these are fixed)\n", file=sys.stderr)
        elif "init" not in sys.argv[1:]:  # not while init is writing it
            print("no .env here yet: `flask --app wsgi init` writes one with fresh secrets\n", file=sys.stderr)
        return setup_app(settings, listed=listed)
    # Under `flask <command>` stdout is the command's output (tables, JSON): logs go to stderr there.
    return create_app(settings, log_stream=sys.stderr if cli else sys.stdout)


def cannot_start(problem: ConfigError) -> str:
    """The text a process prints once before it exits for a configuration problem."""
    return f"{HEADLINE}\n{problem}"


def configured() -> bool:
    """Tell whether this folder or environment was set up at all (a .env, or some source's secret)."""
    return Path(".env").exists() or any(k.endswith("_WEBHOOK_SECRET") for k in os.environ)


def setup_app(problem: ConfigError, *, listed: bool = False) -> Flask:
    """An app for a broken configuration: `init` runs, `db upgrade` exits 1 with the problems (or, when they were
    listed already, a pointer to them), and every request is answered 503 with them."""
    from webhook.cli import init_command

    app = Flask(__name__)
    app.cli.add_command(init_command)
    db = click.Group("db", help="The database schema.")

    @db.command("upgrade")
    def db_upgrade() -> None:
        """Refuse to migrate: the release step must fail while the configuration is broken."""
        if listed:
            raise click.ClickException("the database was not migrated: fix the configuration problem(s) above first")
        raise click.ClickException(cannot_start(problem))

    app.cli.add_command(db)

    @app.route("/", defaults={"path": ""})
    @app.route("/<path:path>", methods=["GET", "POST"])
    def misconfigured(path: str) -> tuple[dict[str, Any], int]:
        return {"error": "misconfigured", "detail": "; ".join(problem.problems)}, 503

    return app
