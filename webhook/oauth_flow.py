"""The authorization-code flow that connects a Genesys user, Flask-free: start (state, PKCE, browser binding) and
finish (checks, code exchange, the connection stored). The views only translate it to redirects and pages."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from webhook.crypto import TokenCipherError
from webhook.errors import GenesysError, WebhookError
from webhook.genesys.auth import Me, UserConnections, pkce_pair
from webhook.genesys.model import Connection, ConnectionKind
from webhook.store import OAuthState, Store

FLOW_SECONDS = 600.0  # a state, and a service-user link, are valid 10 minutes
KEEP_EXPIRED_SECONDS = 3600.0
MAX_FLOWS = 1000  # sign-ins in progress at once: anyone may open the connect page, so its rows are bounded
COOKIE = "crm_mute_bridge_flow"  # binds a flow to the browser that started it


class FlowError(WebhookError):
    """A connection flow cannot go on (answered 400 with a page); the message says what happened and what to do."""

    def __init__(self, title: str, detail: str) -> None:
        super().__init__(f"{title}: {detail}")
        self.title = title
        self.detail = detail


@dataclass(frozen=True)
class Started:
    """Where to send the browser, and the cookie value that binds the flow to it."""

    authorize_url: str
    cookie: str = field(repr=False)


def secret_key(value: str) -> str:
    """Return the key a secret value is stored under (its SHA-256), so the database never holds the value."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_service_user_link(store: Store, *, now: datetime) -> str:
    """Make a one-time service-user link (valid 10 minutes) and return its secret part."""
    token = secrets.token_urlsafe(32)
    store.add_oauth_state(OAuthState(secret_key(token), "link", None, None, None, now,
                                     now + timedelta(seconds=FLOW_SECONDS), None))
    return token


def start(store: Store, users: UserConnections, *, link: str | None, now: datetime, login: bool = False) -> Started:
    """Begin a flow: an agent's, the service user's when a valid one-time link is given, or (login) an operator's
    console login, which stores no connection."""
    # Anyone may open the connect page: flows expired an hour ago are deleted as new ones start, so the table holds
    # at most 70 minutes of them (a late callback within the hour is still told "expired", not "unknown").
    store.purge_oauth_states(before=now - timedelta(seconds=KEEP_EXPIRED_SECONDS))
    if store.oauth_states_in_progress(now=now) >= MAX_FLOWS:
        raise FlowError("Too many sign-ins are in progress",
                        f"more than {MAX_FLOWS} were started in the last 10 minutes. Try again in a few minutes.")
    purpose, link_key = ("login" if login else "agent"), None
    if link is not None:
        row = store.oauth_state(secret_key(link))
        # Spent here, at once: two browsers opening one link cannot both go on (a failed sign-in needs a new link).
        if row is None or row.purpose != "link" or not store.spend_oauth_state(row.key, now=now):
            raise FlowError("This service-user link cannot be used",
                            "it is unknown, already used, or older than 10 minutes. Run `flask --app wsgi genesys "
                            "connect --service-user` for a new one.")
        purpose, link_key = "service_user", row.key
    state, cookie = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    store.add_oauth_state(OAuthState(secret_key(state), purpose, secret_key(cookie), users.cipher.encrypt(verifier),
                                     link_key, now, now + timedelta(seconds=FLOW_SECONDS), None))
    return Started(users.grant.authorize_url(state, challenge), cookie)


def finish(store: Store, users: UserConnections, *, state: str | None, code: str | None, error: str | None,
           error_description: str | None, cookie: str | None, now: datetime, deadline: float) -> Connection | Me:
    """Finish a flow from the callback's query and cookie: check everything, exchange the code, store the user; a
    console login only says who signed in (Me), its tokens deleted at Genesys and never stored."""
    row = _live_state(store, state, now)
    if not cookie or not hmac.compare_digest(secret_key(cookie), row.browser or ""):
        raise FlowError("This browser did not start the connection",
                        "its cookie is missing or belongs to another attempt (cookies blocked, or the link was "
                        "opened in another browser). Start again in this browser.")
    if not store.spend_oauth_state(row.key, now=now):
        raise FlowError("This sign-in was already used", "each sign-in works once. Start again.")
    if error:
        described = f" ({error_description[:300]})" if error_description else ""
        raise FlowError("Genesys did not authorize the service",
                        f"the login answered {error[:100]}{described}. Nothing was stored; start again and allow "
                        "the service when Genesys asks.")
    if not code:
        raise FlowError("The callback carries no code", "Genesys sent neither a code nor an error. Start again.")
    try:
        verifier = users.cipher.decrypt(row.verifier or "")
    except TokenCipherError as exc:
        raise FlowError("This sign-in cannot be finished",
                        "its data was encrypted with a key the service no longer has. Start again.") from exc
    if row.purpose == "login":
        try:
            return users.identify(code, verifier, deadline=deadline)
        except GenesysError as exc:
            raise FlowError("Genesys refused the sign-in",
                            f"{exc}. Nobody was logged in. Open the console's login page and try again.") from exc
    try:
        return users.connect(code, verifier, kind=_kind(row.purpose), deadline=deadline)
    except GenesysError as exc:
        raise FlowError("Genesys refused the sign-in",
                        f"{exc}. Nothing was stored. Check that the OAuth client is of grant type Code "
                        "Authorization with this service's redirect URI, then start again"
                        f"{' with a new service-user link' if row.link else ''}.") from exc


def _live_state(store: Store, state: str | None, now: datetime) -> OAuthState:
    if not state:
        raise FlowError("The callback carries no state", "open the connect page again to start over.")
    row = store.oauth_state(secret_key(state))
    if row is None or row.purpose not in ("agent", "service_user", "login"):
        raise FlowError("Unknown sign-in", "this callback does not belong to a connection started here. Start again.")
    if row.used_at is not None:
        raise FlowError("This sign-in was already used", "each sign-in works once. Start again.")
    if row.expires_at <= now:
        raise FlowError("This sign-in expired", "it must be finished within 10 minutes. Start again.")
    return row


def _kind(purpose: str) -> ConnectionKind:
    return "service_user" if purpose == "service_user" else "agent"
