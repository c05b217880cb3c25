"""Explanations: one line a person can act on for every Genesys error (what it answered, what it means, what to do)."""

from __future__ import annotations

from webhook.errors import (
    GenesysAuthError,
    GenesysBadRequestError,
    GenesysBudgetError,
    GenesysConnectionError,
    GenesysError,
    GenesysNotFoundError,
    GenesysPermissionError,
    GenesysRateLimitedError,
    GenesysThrottledError,
    GenesysUnavailableError,
)

CALL_DISCONNECTED = "conversation.error.call.disconnected"

PARTICIPANT_RULE_CODES: frozenset[str] = frozenset({
    "not.a.user",
    "conversation.error.not.conversation.participant",
    "conversation.error.forbidden.not.active.participant",
    "missing.permissions",
})

_USER_TOKEN_REMEDY = ("let the service act as a user: each agent opens <PUBLIC_URL>/genesys/connect once, or an "
                      "administrator connects a service user with `flask --app wsgi genesys connect --service-user` "
                      "(README: \"Acting as a user\")")
RULE_FACT = ("Genesys lets only a user change a call participant (mute, hold, transfer): a user may change their own "
              "leg, and a user whose role holds conversation:communication:disconnect may change any leg; a "
              "client-credentials token has no user")
_PARTICIPANT_RULE = f"{RULE_FACT}, so this org refuses the mute from the identity that sent it"

PARTICIPANT_RULE_NOTE = (f"informational: {RULE_FACT}, so a real org may answer a client-credentials mute with 400 "
                         "not.a.user, and another user's mute with 403 missing.permissions; the service tries its "
                         "identities in the order of [genesys] act_as and moves on after such a refusal")

_CODE_HINTS: dict[str, tuple[str, str]] = {
    "not.a.user": (f"this request needs a user context: {_PARTICIPANT_RULE}", _USER_TOKEN_REMEDY),
    "conversation.error.not.conversation.participant": (
        f"the token's identity is not a participant of this conversation: {_PARTICIPANT_RULE}", _USER_TOKEN_REMEDY),
    "conversation.error.forbidden.not.active.participant": (
        f"the token's identity is not an active participant of this call: {_PARTICIPANT_RULE}", _USER_TOKEN_REMEDY),
    "missing.permissions": (
        ("the identity's role lacks a permission this request needs (the message names it), or, on the mute, "
         f"the participant rule: {_PARTICIPANT_RULE}"),
        ("add the permission to the role of the OAuth client or of the service user; if the role has it and the mute "
         f"is still refused, {_USER_TOKEN_REMEDY}")),
    "not.found": ("the call or participant no longer exists, even after the agent's calls were looked up again",
                  "if the agent is still on a call, replay the event"),
    CALL_DISCONNECTED: ("the call was disconnected before the change, even after the agent's calls were looked up "
                        "again", "if the agent is still on a call, replay the event"),
}

_CLASS_HINTS: tuple[tuple[type[GenesysError], tuple[str, str]], ...] = (
    (GenesysThrottledError, (
        "this process spaces its Genesys requests to stay under the OAuth client's rate limit ([genesys] "
        "requests_per_minute, or the allowance Genesys' inin-ratelimit headers reported), and a burst took every "
        "slot until after the event's deadline",
        "if the call is still live, replay the event; if such bursts are normal, ask Genesys support to raise the "
        "OAuth client's limit and then raise requests_per_minute")),
    (GenesysBudgetError, (
        "the retry budget or the event's deadline ran out before Genesys accepted the request",
        "if the call is still live, replay the event; if it keeps happening, raise [processing] retry_budget_seconds")),
    (GenesysConnectionError, (
        "the user's connection to Genesys no longer works (Genesys refused its refresh token: revoked, logged out or "
        "password changed)",
        "the user opens <PUBLIC_URL>/genesys/connect again (the service user: `genesys connect --service-user`)")),
    (GenesysAuthError, (
        "the Genesys login failed or a fresh token was refused",
        "check GENESYS_CLIENT_ID, GENESYS_CLIENT_SECRET (or GENESYS_USER_CLIENT_ID and _SECRET for a user's token) "
        "and GENESYS_REGION (an OAuth client belongs to one org)")),
    (GenesysRateLimitedError, (
        "Genesys is rate limiting this OAuth client (about 300 requests a minute)",
        "the service waits for Retry-After within its budget; if it persists, lower the event rate")),
    (GenesysUnavailableError, (
        "Genesys is failing or could not be reached",
        "the service retried with backoff; replay the event once Genesys answers again if the call is still live")),
    (GenesysPermissionError, (
        "the identity's role lacks a permission this request needs",
        "add the permission the message names to the role of the OAuth client or of the service user")),
    (GenesysNotFoundError, (
        "Genesys has no such user, call or participant",
        "check the agent's id or e-mail (or the [agents] map); a call may simply have ended")),
    (GenesysBadRequestError, (
        "Genesys refused the request as invalid",
        "read the message; give Genesys support the correlation id if it is unclear")),
)


def explain(error: GenesysError) -> str:
    """Return one line a person can act on: what Genesys answered, what it means and what to do."""
    meaning, remedy = _CODE_HINTS.get(error.code or "") or next(
        (hint for cls, hint in _CLASS_HINTS if isinstance(error, cls)),
        ("Genesys answered with an unexpected error", "give Genesys support the correlation id"))
    answered = str(error).replace("\n", " ")
    return f"Genesys: {answered}. Meaning: {meaning}. To do: {remedy}."
