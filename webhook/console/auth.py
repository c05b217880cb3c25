"""Who may enter the console: operators listed in [console] operators who log in with Genesys (the same
authorization-code flow as agent connections, storing no connection), or whoever knows CONSOLE_PASSWORD. Sessions
end after an idle time; every POST carries a CSRF token; every page sends the security headers."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.wrappers import Response

from webhook import oauth_flow
from webhook.app_state import get_state
from webhook.errors import StoreError
from webhook.genesys.auth import Me
from webhook.store import AuditEntry

logger = logging.getLogger(__name__)

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates", static_folder="static",
               static_url_path="/static")

OPEN_ENDPOINTS = frozenset({"console.login", "console.login_password", "console.login_genesys", "console.static"})
FREE_FAILURES = 3  # wrong passwords from one address before each further attempt must wait
MAX_WAIT_SECONDS = 300.0
MAX_NAME_CHARS = 64
MAX_SESSION_SECONDS = 12 * 3600.0  # a session ends this long after its login, however busy (a copied cookie too)


class Throttle:
    """Slows password guessing per client address: after FREE_FAILURES failures, each attempt must wait twice as
    long as the one before (1 s, 2 s, 4 s, ... at most MAX_WAIT_SECONDS); a success clears the address. Per
    process: with several gunicorn workers each counts on its own."""

    def __init__(self, max_addresses: int = 10000) -> None:
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (failures, epoch seconds of the next try)
        self._max = max_addresses

    def wait(self, address: str, now: float) -> float:
        """Return how many seconds this address must still wait before its next attempt (0: it may try now)."""
        with self._lock:
            _, until = self._failures.get(address, (0, 0.0))
        return max(until - now, 0.0)

    def failed(self, address: str, now: float) -> None:
        """Count a wrong password from this address."""
        with self._lock:
            if len(self._failures) >= self._max:  # a flood of addresses: forget the oldest half, keep bounded
                for key in list(self._failures)[: self._max // 2]:
                    del self._failures[key]
            failures = self._failures.get(address, (0, 0.0))[0] + 1
            wait = 0.0 if failures < FREE_FAILURES else min(2.0 ** (failures - FREE_FAILURES), MAX_WAIT_SECONDS)
            self._failures[address] = (failures, now + wait)

    def succeeded(self, address: str) -> None:
        """Forget this address's failures."""
        with self._lock:
            self._failures.pop(address, None)


@dataclass
class ConsoleState:
    """The console's per-app objects (app.extensions["console"])."""

    csrf: CSRFProtect
    throttle: Throttle = field(default_factory=Throttle)


def console_state() -> ConsoleState:
    """Return the current app's console objects."""
    state: ConsoleState = current_app.extensions["console"]
    return state


def operator() -> str:
    """Return the logged-in operator as the audit log names them."""
    return str(session.get("operator", ""))


def now() -> datetime:
    """Return the service's clock (injected in tests)."""
    return get_state().clock()


@bp.before_request
def guard() -> Response | None:
    """Check the CSRF token of every POST, and send a visitor without a live session to the login page."""
    if request.method == "POST":
        console_state().csrf.protect()
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if not session.get("operator"):
        return redirect(url_for("console.login", next=_local_next(request.full_path)), 303)
    moment = now().timestamp()
    idle = moment - float(session.get("seen", 0.0)) > get_state().settings.console.idle_seconds
    if idle or moment - float(session.get("since", 0.0)) > MAX_SESSION_SECONDS:
        session.clear()
        return redirect(url_for("console.login", expired=1), 303)
    session["seen"] = moment
    return None


@bp.after_request
def security_headers(response: Response) -> Response:
    """Send the headers every console page carries: no framing, no foreign scripts or styles, no caching."""
    _, login_host = get_state().settings.genesys.hosts()
    form_action = "'self'" + (f" {login_host}" if login_host else "")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'; "
        f"form-action {form_action}")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"  # CSRF's HTTPS check compares the Referer with the host
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(CSRFError)
def csrf_refused(exc: CSRFError) -> tuple[str, int]:
    """Refuse a POST without a valid CSRF token with a page that says what to do."""
    logger.warning("console: form refused (%s)", exc.description)
    reason = str(exc.description).rstrip(".")
    return render_template("console/message.html", title="This form cannot be accepted",
                           detail=f"{reason}. It may be older than your session, or come from another site. Go back, "
                                  "reload the page and try again."), 400


@bp.get("/login")
def login() -> str:
    """The login page: Log in with Genesys (listed operators) and/or the console password."""
    settings = get_state().settings
    return render_template("console/login.html", genesys=settings.console.genesys_login(settings.genesys),
                           password=bool(settings.console.password), expired=bool(request.args.get("expired")),
                           next=_local_next(request.args.get("next")))


@bp.post("/login/password")
def login_password() -> Response | tuple[str, int]:
    """Check the console password in constant time; wrong guesses from one address are slowed down."""
    settings = get_state().settings
    expected = settings.console.password
    if not expected:
        return render_template("console/message.html", title="No console password",
                               detail="CONSOLE_PASSWORD is not set: log in with Genesys."), 404
    address = request.remote_addr or "unknown"
    throttle = console_state().throttle
    moment = now().timestamp()
    wait = throttle.wait(address, moment)
    if wait > 0:
        return _login_again(f"Too many wrong passwords from your address: wait {wait:.0f} s before trying again.",
                            429, retry_after=wait)
    name = request.form.get("name", "").strip()
    given = request.form.get("password", "")
    if not hmac.compare_digest(_digest(given), _digest(expected)):
        throttle.failed(address, moment)
        logger.warning("console: wrong password")
        return _login_again("Wrong password.", 401)
    if not name or len(name) > MAX_NAME_CHARS:
        return _login_again(f"Give your name (1 to {MAX_NAME_CHARS} characters): the audit log records who acted.",
                            400)
    throttle.succeeded(address)
    return _enter(f"password:{name}", request.form.get("next"))


@bp.post("/login/genesys")
def login_genesys() -> Response | tuple[str, int]:
    """Send the browser to the Genesys login (the authorization-code flow, purpose login)."""
    state = get_state()
    if state.users is None or not state.settings.console.genesys_login(state.settings.genesys):
        return _login_again("Logging in with Genesys is not set up here.", 404)
    try:
        started = oauth_flow.start(state.store, state.users, link=None, now=state.clock(), login=True)
    except StoreError:
        return _login_again("The service's database is not answering; try again shortly.", 503)
    session["after_login"] = _local_next(request.form.get("next"))  # where to go once Genesys sends the user back
    response = redirect(started.authorize_url, 303)
    response.set_cookie(oauth_flow.COOKIE, started.cookie, max_age=int(oauth_flow.FLOW_SECONDS), httponly=True,
                        secure=(state.settings.genesys.public_url or "").startswith("https://"), samesite="Lax",
                        path="/genesys")
    return response


def genesys_login_finished(me: Me) -> Response:
    """Let a Genesys user in when their user id or e-mail is in [console] operators (called by /genesys/callback)."""
    settings = get_state().settings
    listed = settings.console.operators
    if me.user_id.lower() not in listed and (not me.email or me.email.lower() not in listed):
        logger.warning("console: Genesys login refused, user not listed in [console] operators")
        body = render_template(
            "console/message.html", title="You are not an operator of this console",
            detail=f"Genesys says you are {me.name or me.email or me.user_id} ({me.email or 'no e-mail'}, user id "
                   f"{me.user_id}). Only the users listed in [console] operators of the service's configuration may "
                   "enter: ask its administrator to add your e-mail or user id. No connection was made.")
        return Response(body, status=403, mimetype="text/html", headers={"Cache-Control": "no-store"})
    return _enter(me.email or me.user_id, session.get("after_login"))


@bp.post("/logout")
def logout() -> Response:
    """End the session."""
    session.clear()
    return redirect(url_for("console.login"), 303)


def _enter(who: str, next_url: str | None) -> Response:
    state = get_state()
    session.clear()  # a new session (and CSRF token) for whoever logs in
    session.permanent = True
    session["operator"] = who
    session["seen"] = session["since"] = state.clock().timestamp()
    state.store.add_audit([AuditEntry(at=state.clock(), operator=who, action="login", target="console",
                                      detail="logged in")])
    logger.info("console: operator logged in")
    return redirect(_local_next(next_url) or url_for("console.overview"), 303)


def _login_again(message: str, status: int, *, retry_after: float | None = None) -> tuple[Any, int]:
    settings = get_state().settings
    body = render_template("console/login.html", genesys=settings.console.genesys_login(settings.genesys),
                           password=bool(settings.console.password), error=message,
                           next=_local_next(request.form.get("next")))
    response = Response(body, status=status, mimetype="text/html")
    if retry_after is not None:
        response.headers["Retry-After"] = str(math.ceil(retry_after))
    return response, status


def _local_next(value: str | None) -> str | None:
    """Keep a return address only when it is a console path (never another site: no open redirect)."""
    if not value or not value.startswith("/console/") or value.startswith("//") or "\\" in value:
        return None
    return value.rstrip("?")


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()

