"""The values the Genesys client shares with the store and the commands: no HTTP, no SQL, no third-party imports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

IdentityKind = Literal["agent", "service_user", "client_credentials"]
IDENTITY_KINDS: tuple[IdentityKind, ...] = ("agent", "service_user", "client_credentials")
ConnectionKind = Literal["agent", "service_user"]
ConnectionState = Literal["ok", "broken"]


@dataclass(frozen=True)
class Identity:
    """Who a request acts as: a connected agent, the service user, or the client-credentials client (no user)."""

    kind: IdentityKind
    user_id: str | None = None

    def __str__(self) -> str:
        return self.kind if self.user_id is None else f"{self.kind}:{self.user_id}"


CLIENT_CREDENTIALS = Identity("client_credentials")


@dataclass(frozen=True)
class Attempt:
    """One HTTP request to Genesys, as recorded with the event it served (never a token or a body)."""

    method: str
    path: str
    status: int | None
    code: str | None
    correlation_id: str | None
    duration_ms: float
    error: str | None
    identity: str | None = None  # str(Identity) of who acted; None for a request made as nobody in particular
    at: datetime | None = None  # set when the attempt is stored with its event

    def as_json(self) -> dict[str, Any]:
        """Return the attempt as `events show --json` prints it."""
        values = asdict(self)
        values["at"] = self.at.isoformat() if self.at else None
        return values


Recorder = Callable[[Attempt], None]


@dataclass(frozen=True)
class Connection:
    """A Genesys user who authorized the service: an agent, or the one service user. Tokens stay encrypted here."""

    user_id: str
    kind: ConnectionKind
    email: str
    name: str
    refresh_token: str = field(repr=False)  # Fernet ciphertext
    access_token: str | None = field(default=None, repr=False)  # Fernet ciphertext
    access_expires_at: datetime | None = None
    state: ConnectionState = "ok"
    reason: str = ""
    broken_at: datetime | None = None
    refreshed_at: datetime | None = None
    used_at: datetime | None = None
    created_at: datetime | None = None
    version: int = 0  # bumped by every stored refresh: a compare-and-set guard across processes

    def summary(self) -> dict[str, Any]:
        """Return the fields `genesys connections --json` prints (no token)."""
        return {"user_id": self.user_id, "email": self.email, "name": self.name, "kind": self.kind,
                "state": self.state, "reason": self.reason or None, "broken_at": _iso(self.broken_at),
                "refreshed_at": _iso(self.refreshed_at), "used_at": _iso(self.used_at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
