"""The one error hierarchy of the service, named by meaning."""

from __future__ import annotations


class WebhookError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(WebhookError):
    """The configuration has one or more problems; all of them are listed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} configuration problem(s):\n{lines}")


class SignatureError(WebhookError):
    """A request's signature is missing, malformed, stale or wrong (answered 401)."""


class EventError(WebhookError):
    """A signed body cannot be turned into ticket events (stored as invalid, answered 400)."""


class StoreError(WebhookError):
    """The database cannot be read or written (answered 503 with Retry-After)."""


class SchemaError(StoreError):
    """The database has no schema, or an older one than this code needs; the message names the command to run."""


class GenesysError(WebhookError):
    """Genesys Cloud refused or failed a request."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.correlation_id = correlation_id
        super().__init__(message)

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}" if self.status else "no HTTP answer"]
        if self.code:
            parts.append(self.code)
        text = f"{' '.join(parts)}: {self.message}"
        if self.correlation_id:
            text += f" (ININ-Correlation-Id {self.correlation_id})"
        return text


class GenesysBadRequestError(GenesysError):
    """Genesys answered 400: the request is wrong or not allowed for this token (final)."""


class GenesysAuthError(GenesysError):
    """The OAuth login failed, or a fresh token was refused with 401."""


class GenesysConnectionError(GenesysAuthError):
    """A user's connection cannot give a token: none stored, marked broken, or its refresh token was refused."""


class GenesysNoIdentityError(GenesysError):
    """No configured identity could act for the agent; `reasons` says, per identity, why not."""

    def __init__(self, agent: str, reasons: list[str]) -> None:
        super().__init__(f"no identity could act for {agent}: {'; '.join(reasons) or 'none is configured'}")
        self.agent = agent
        self.reasons = list(reasons)

    def __str__(self) -> str:
        return self.message


class GenesysPermissionError(GenesysError):
    """Genesys answered 403: the OAuth client's role lacks a permission (final)."""


class GenesysNotFoundError(GenesysError):
    """Genesys answered 404: the user, call or participant does not exist (any more)."""


class GenesysRateLimitedError(GenesysError):
    """Genesys answered 429; `retry_after` holds its Retry-After seconds when given."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class GenesysUnavailableError(GenesysError):
    """Genesys answered 5xx, timed out or could not be reached (retryable)."""


class GenesysBudgetError(GenesysError):
    """The retry budget or the event's deadline ran out before Genesys accepted the request."""


class GenesysThrottledError(GenesysBudgetError):
    """This process's own request spacing (the rate limiter) has no slot for the request before its deadline."""


STATUS_ERRORS: dict[int, type[GenesysError]] = {
    400: GenesysBadRequestError,
    401: GenesysAuthError,
    403: GenesysPermissionError,
    404: GenesysNotFoundError,
    429: GenesysRateLimitedError,
    500: GenesysUnavailableError,
    502: GenesysUnavailableError,
    503: GenesysUnavailableError,
    504: GenesysUnavailableError,
}
