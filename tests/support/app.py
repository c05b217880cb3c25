"""The app under test: the repository's paths, the test secrets, settings from the shipped config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from webhook.config import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG = str(ROOT / "config" / "webhook.toml")

SECRETS = {
    "ZENDESK_WEBHOOK_SECRET": "zendesk-signing-secret-for-tests",
    "HELPDESK_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "INHOUSE_WEBHOOK_SECRET": "inhouse-secret-for-tests",
    "HUBSPOT_WEBHOOK_SECRET": "hubspot-client-secret-for-tests",
}


def make_settings(db: str, **overrides: Any) -> Settings:
    """Settings from the shipped config file with the test secrets, dry-run Genesys and inline processing."""
    env = SECRETS | {"GENESYS_DRY_RUN": "true", "DATABASE_URL": db}
    settings = Settings.from_env(env, config_path=CONFIG)
    return replace(settings, worker_threads=0, **overrides)


# The type of conftest's signed_post fixture: signed_post(source, body, *, at=, path=, secret=, headers=).
SignedPost = Callable[..., Any]
