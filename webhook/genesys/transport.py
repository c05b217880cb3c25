"""One HTTP exchange with Genesys, reported as an Attempt; error answers turned into the GenesysError hierarchy."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import requests

from webhook.errors import (
    STATUS_ERRORS,
    GenesysBudgetError,
    GenesysError,
    GenesysRateLimitedError,
    GenesysUnavailableError,
)
from webhook.genesys.model import Attempt, Recorder

logger = logging.getLogger(__name__)

Json = dict[str, Any]
DEFAULT_TIMEOUT: tuple[float, float] = (3.05, 10.0)
CORRELATION_HEADER = "ININ-Correlation-Id"
_TRANSIENT = (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError)


def exchange(
    session: requests.Session,
    method: str,
    url: str,
    path: str,
    *,
    clock: Callable[[], float],
    timeout: tuple[float, float],
    record: Recorder | None,
    identity: str | None = None,
    **kwargs: Any,
) -> requests.Response:
    """Send one request and report it as an Attempt (made as `identity`); no answer becomes GenesysUnavailableError."""
    started = clock()
    try:
        response = session.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        report(record, Attempt(method, path, None, None, None, _elapsed_ms(clock, started), f"no answer: {reason}",
                               identity))
        logger.warning("genesys %s %s: no answer (%s)", method, path, reason)
        # A timeout or a broken connection may heal; anything else (a bad URL, say) will not.
        cls = GenesysUnavailableError if isinstance(exc, _TRANSIENT) else GenesysError
        raise cls(f"Genesys did not answer {method} {path} ({reason})") from exc
    code, message = error_fields(response) if response.status_code >= 400 else (None, None)
    correlation_id = response.headers.get(CORRELATION_HEADER)
    attempt = Attempt(method, path, response.status_code, code, correlation_id, _elapsed_ms(clock, started), message,
                      identity)
    report(record, attempt)
    _log_attempt(attempt)
    return response


def report(record: Recorder | None, attempt: Attempt) -> None:
    """Hand an attempt to the caller's recorder, if any."""
    if record is not None:
        record(attempt)


def _log_attempt(attempt: Attempt) -> None:
    """Log an attempt's ids and status only (never a body or a token)."""
    level = logging.DEBUG if attempt.status is not None and attempt.status < 400 else logging.WARNING
    logger.log(level, "genesys %s %s -> %s code=%s correlation_id=%s as %s", attempt.method, attempt.path,
               attempt.status, attempt.code, attempt.correlation_id, attempt.identity or "-")


def _elapsed_ms(clock: Callable[[], float], started: float) -> float:
    """Return the milliseconds since started."""
    return round((clock() - started) * 1000, 3)


def bounded_timeout(timeout: tuple[float, float], remaining: float) -> tuple[float, float]:
    """Return the (connect, read) timeout cut to the time left; GenesysBudgetError when none is left."""
    if remaining <= 0:
        raise GenesysBudgetError("the deadline passed before the request to Genesys could be sent")
    return min(timeout[0], remaining), min(timeout[1], remaining)


def error_fields(response: requests.Response) -> tuple[str | None, str]:
    """Return the Genesys (or OAuth) error code and message of an answer; a non-JSON body does not crash."""
    body = json_or_none(response)
    if not isinstance(body, dict):
        return None, f"{response.reason or 'error'} (the answer is not JSON)"
    code = body.get("code") or body.get("error")
    message = body.get("message") or body.get("error_description") or body.get("description") or response.reason
    return (str(code) if code else None), str(message or "")


def json_or_none(response: requests.Response) -> Any:
    """Return the JSON body of an answer, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def json_body(response: requests.Response) -> Json:
    """Return the JSON object of a successful answer; GenesysError when it is something else."""
    body = json_or_none(response)
    if not isinstance(body, dict):
        raise GenesysError("Genesys answered without the expected JSON object", status=response.status_code,
                           correlation_id=response.headers.get(CORRELATION_HEADER))
    return body


def error_from(response: requests.Response) -> GenesysError:
    """Return the error of an error answer: class by status, Genesys code, message and correlation id verbatim."""
    code, message = error_fields(response)
    cls = STATUS_ERRORS.get(response.status_code, GenesysError)
    details: dict[str, Any] = {"status": response.status_code, "code": code,
                               "correlation_id": response.headers.get(CORRELATION_HEADER)}
    if issubclass(cls, GenesysRateLimitedError):
        return cls(message, retry_after=retry_after(response), **details)
    return cls(message, **details)


def retry_after(response: requests.Response) -> float | None:
    """Return the Retry-After header in seconds, or None when absent or not a finite number."""
    try:
        value = float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
    return max(0.0, value) if math.isfinite(value) else None



def segment(identifier: str) -> str:
    """Quote an id for use as one URL path segment."""
    return quote(identifier, safe="")
