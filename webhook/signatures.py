"""Webhook signature schemes: verify an incoming request, sign an outgoing one.

Pure: no Flask, no I/O, no clock (the caller passes ``now``). Facts about each sender are in
``reference/webhook-signing.md``; the contract is DESIGN.md section 4.3.

Decisions worth knowing:

- Every secret in ``secrets`` is stripped; blank entries (from a comma-separated variable) are ignored, and a call
  with no usable secret fails with "no secret configured" instead of passing.
- ``standard`` secrets: an optional ``whsec_`` prefix is removed and the rest is base64-decoded (padding optional),
  as the reference library does; a secret that is not base64 is unusable (never used as raw bytes, which would hide a
  pasted-wrong secret behind "signature mismatch" forever).
- Checks run in a fixed order: headers present, headers well formed, timestamp within tolerance, signature. Reasons
  name a header or a check, never a header value, a signature or a secret.
- ``message_id`` is only returned when the sender signs it (``webhook-id``). Zendesk's invocation id, HubSpot's and
  GitHub's delivery ids are outside the signature: a replay with a new id would slip past dedupe, so they are None.
- Programming and configuration errors (unknown scheme, naive ``now``, negative tolerance, ``secrets`` given as one
  string, hubspot-v3 without ``url``) raise ``ValueError``/``TypeError``; anything a sender controls raises
  ``SignatureError`` only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets as _random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from webhook.errors import SignatureError


class Headers(Protocol):
    """What verify() needs of request headers: a plain dict and werkzeug's Headers both fit."""

    def get(self, key: str, /) -> str | None: ...
    def keys(self) -> Iterable[str]: ...
    def __getitem__(self, key: str, /) -> str: ...

SCHEMES: frozenset[str] = frozenset({"standard", "zendesk", "hubspot-v3", "hmac-sha256"})
TIMESTAMPED_SCHEMES: frozenset[str] = frozenset({"standard", "zendesk", "hubspot-v3"})  # sign a timestamp
DEFAULT_HMAC_HEADER = "X-Hub-Signature-256"

ZENDESK_SIGNATURE = "X-Zendesk-Webhook-Signature"
ZENDESK_TIMESTAMP = "X-Zendesk-Webhook-Signature-Timestamp"
HUBSPOT_SIGNATURE = "X-HubSpot-Signature-v3"
HUBSPOT_TIMESTAMP = "X-HubSpot-Request-Timestamp"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_WHSEC_PREFIX = "whsec_"
_MAX_SIGNATURE_ENTRIES = 16  # a standard header carries one entry per live secret; more is noise or an attack
_MAX_BASE64_CHARS = 512  # a base64 SHA-256 is 44 characters, a whsec_ key under 100: anything longer is not ours
_UNIX_DIGITS = re.compile(r"[0-9]{1,20}")
_ISO_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})")
_HEX_SHA256 = re.compile(r"sha256=([0-9a-fA-F]{64})", re.IGNORECASE)
_HUBSPOT_ESCAPES = re.compile(r"%(3A|2F|3F|40|21|24|27|28|29|2A|2C|3B)", re.IGNORECASE)


@dataclass(frozen=True)
class Verified:
    """What a valid signature vouches for besides the body."""

    signed_at: datetime | None  # the signed timestamp (UTC, aware) where the scheme has one
    message_id: str | None  # the sender's delivery id where it is covered by the signature (standard: webhook-id)


def verify(
    scheme: str,
    *,
    body: bytes,
    headers: Headers,
    secrets: Sequence[str],
    now: datetime,
    tolerance: float = 300,
    method: str = "POST",
    url: str = "",
    header: str = DEFAULT_HMAC_HEADER,
) -> Verified:
    """Check a request's signature under `scheme`; raise SignatureError with a coarse, loggable reason."""
    verifier = _VERIFIERS.get(scheme)
    if verifier is None:
        raise ValueError(f"unknown signature scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    _check_arguments(body, secrets, now, tolerance)
    if scheme == "hubspot-v3" and not url:
        raise ValueError("hubspot-v3 signs the full request URL: pass url=")
    request = _Request(bytes(body), headers, _usable_secrets(secrets), now, tolerance, method, url, header)
    try:
        return verifier(request)
    except (ValueError, OverflowError) as exc:  # a safety net: binascii.Error and UnicodeError are ValueErrors
        raise SignatureError("malformed signature headers") from exc


def sign(
    scheme: str,
    *,
    body: bytes,
    secret: str,
    now: datetime,
    method: str = "POST",
    url: str = "",
    header: str = DEFAULT_HMAC_HEADER,
    message_id: str | None = None,
) -> dict[str, str]:
    """Return the headers a real sender of `scheme` would send with `body` (message_id is used by standard only)."""
    signer = _SIGNERS.get(scheme)
    if signer is None:
        raise ValueError(f"unknown signature scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    _check_now(now)
    if not secret.strip():
        raise ValueError("cannot sign with an empty secret")
    if scheme == "hubspot-v3" and not url:
        raise ValueError("hubspot-v3 signs the full request URL: pass url=")
    key = _standard_key(secret.strip()) if scheme == "standard" else _text_key(secret.strip())
    if key is None:
        raise ValueError(f"not a usable {scheme} secret")
    return signer(bytes(body), key, now, method, url, header, message_id)


def generate_secret(scheme: str) -> str:
    """Return a fresh random secret in the form `scheme` uses ("whsec_" + base64 for standard)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown signature scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    if scheme == "standard":
        return _WHSEC_PREFIX + base64.b64encode(_random.token_bytes(32)).decode("ascii")
    return _random.token_urlsafe(32)


# --- the request as the verifiers see it -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    body: bytes
    headers: Headers
    secrets: tuple[str, ...]
    now: datetime
    tolerance: float
    method: str
    url: str
    header: str

    def get(self, name: str) -> str | None:
        """The header's value, stripped, looked up case-insensitively; None when absent."""
        value = self.headers.get(name)
        if value is None:
            wanted = name.lower()
            for key in self.headers.keys():  # noqa: SIM118 - iterating werkzeug's Headers yields (name, value)
                if isinstance(key, str) and key.lower() == wanted:
                    value = self.headers[key]
                    break
        if value is None:
            return None
        if not isinstance(value, str):
            raise SignatureError(f"malformed header {name}")
        return value.strip()

    def require(self, name: str) -> str:
        """The header's value; SignatureError when absent or empty."""
        value = self.get(name)
        if not value:
            raise SignatureError(f"missing header {name}")
        return value

    def keys(self, derive: Callable[[str], bytes | None]) -> list[bytes]:
        """The HMAC keys of the configured secrets; SignatureError when none is usable."""
        keys = [key for key in map(derive, self.secrets) if key]
        if not keys:
            raise SignatureError("no secret configured")
        return keys


def _check_arguments(body: bytes, secrets: Sequence[str], now: datetime, tolerance: float) -> None:
    # These are the caller's mistakes, not the sender's: fail loudly rather than answer 401 forever.
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("body must be the raw request bytes")
    if isinstance(secrets, (str, bytes)):
        raise TypeError("secrets must be a sequence of secrets, not one string")
    _check_now(now)
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError("tolerance must be a finite number of seconds >= 0")


def _check_now(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def _usable_secrets(secrets: Sequence[str]) -> tuple[str, ...]:
    return tuple(s.strip() for s in secrets if isinstance(s, str) and s.strip())


def _standard_key(secret: str) -> bytes | None:
    """The key of a Standard Webhooks secret: base64 after an optional whsec_ prefix; None if not base64."""
    encoded = secret.removeprefix(_WHSEC_PREFIX)
    return _b64decode(encoded)


def _text_key(secret: str) -> bytes | None:
    """The key of the other schemes: the secret string itself as UTF-8 (env bytes restored via surrogateescape)."""
    try:
        return secret.encode("utf-8", "surrogateescape")
    except UnicodeError:
        return None


def _b64decode(value: str) -> bytes | None:
    """Strict standard base64, padding optional; None when it is not base64."""
    if len(value) > _MAX_BASE64_CHARS:
        return None
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (ValueError, binascii.Error):  # non-ASCII input raises ValueError
        return None


def _b64_signature(value: str) -> bytes | None:
    """A signature in canonical base64 only: the last character of a 32-byte MAC carries 2 unused bits, so 4
    spellings decode alike; the senders' own libraries compare the text, and so does this (None otherwise)."""
    decoded = _b64decode(value)
    if decoded is None or base64.b64encode(decoded).decode("ascii").rstrip("=") != value.rstrip("="):
        return None
    return decoded


def _utf8(*parts: str) -> bytes:
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeError as exc:
        raise SignatureError("malformed signature headers") from exc


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _matches(keys: list[bytes], message: bytes, received: list[bytes]) -> bool:
    """True when any key's MAC equals any received signature (constant time, on bytes)."""
    found = False
    for key in keys:
        expected = _mac(key, message)
        for candidate in received:
            found |= hmac.compare_digest(expected, candidate)
    return found


def _ticks(now: datetime, unit: timedelta) -> int:
    """Whole `unit`s since the epoch, exact (no float rounding)."""
    return (now - _EPOCH) // unit


def _check_window(delta: int, tolerance: float) -> None:
    """SignatureError when `delta` microseconds between the signed time and now exceed the tolerance."""
    if abs(delta) > tolerance * 1_000_000:
        raise SignatureError(f"timestamp outside tolerance ({tolerance:g} s)")


def _unix(value: str, name: str, unit: timedelta, request: _Request) -> datetime:
    """Parse an integer epoch timestamp in `unit`, check the window, return it as an aware UTC datetime."""
    if not _UNIX_DIGITS.fullmatch(value):
        raise SignatureError(f"malformed header {name}")
    ticks = int(value)
    _check_window(ticks * (unit // _MICROSECOND) - _ticks(request.now, _MICROSECOND), request.tolerance)
    try:
        return _EPOCH + ticks * unit
    except OverflowError as exc:  # only reachable with an absurdly large configured tolerance
        raise SignatureError(f"timestamp outside tolerance ({request.tolerance:g} s)") from exc


# --- standard (Standard Webhooks, Svix) ----------------------------------------------------------------------------


def _verify_standard(request: _Request) -> Verified:
    parts = ("id", "timestamp", "signature")
    svix = all(request.get("webhook-" + p) is None for p in parts) and any(request.get("svix-" + p) for p in parts)
    prefix = "svix-" if svix else "webhook-"
    msg_id = request.require(prefix + "id")
    timestamp = request.require(prefix + "timestamp")
    signatures = _standard_signatures(request.require(prefix + "signature"), prefix + "signature")
    signed_at = _unix(timestamp, prefix + "timestamp", timedelta(seconds=1), request)
    keys = request.keys(_standard_key)
    if not _matches(keys, _utf8(msg_id, ".", timestamp, ".") + request.body, signatures):
        raise SignatureError("signature mismatch")
    return Verified(signed_at=signed_at, message_id=msg_id)


def _standard_signatures(value: str, name: str) -> list[bytes]:
    """The decoded v1 signatures among the header's first entries; other versions are ignored."""
    v1 = [
        entry[3:]
        for entry in value.split(maxsplit=_MAX_SIGNATURE_ENTRIES)[:_MAX_SIGNATURE_ENTRIES]
        if entry.startswith("v1,")
    ]
    if not v1:
        raise SignatureError(f"no v1 signature in header {name}")
    decoded = [sig for sig in map(_b64_signature, v1) if sig is not None]
    if not decoded:
        raise SignatureError(f"malformed header {name}")
    return decoded


def _sign_standard(
    body: bytes, key: bytes, now: datetime, method: str, url: str, header: str, message_id: str | None
) -> dict[str, str]:
    msg_id = message_id or "msg_" + _random.token_hex(16)
    timestamp = str(_ticks(now, timedelta(seconds=1)))
    signature = base64.b64encode(_mac(key, f"{msg_id}.{timestamp}.".encode() + body)).decode("ascii")
    return {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature}"}


# --- zendesk -------------------------------------------------------------------------------------------------------


def _verify_zendesk(request: _Request) -> Verified:
    signature = _b64_header(request, ZENDESK_SIGNATURE)
    timestamp = request.require(ZENDESK_TIMESTAMP)
    signed_at = _iso_utc(timestamp, request)
    keys = request.keys(_text_key)
    if not _matches(keys, _utf8(timestamp) + request.body, [signature]):
        raise SignatureError("signature mismatch")
    return Verified(signed_at=signed_at, message_id=None)


def _b64_header(request: _Request, name: str) -> bytes:
    """Return the decoded base64 signature header `name`; SignatureError when it is missing or malformed."""
    signature = _b64_signature(request.require(name))
    if signature is None:
        raise SignatureError(f"malformed header {name}")
    return signature


def _iso_utc(value: str, request: _Request) -> datetime:
    """Parse Zendesk's ISO-8601 timestamp (with Z or an offset), check the window, return it in UTC."""
    if not _ISO_UTC.fullmatch(value):
        raise SignatureError(f"malformed header {ZENDESK_TIMESTAMP}")
    try:
        signed_at = datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # 2021-02-30, 0000-01-01, 9999-12-31T23:59:59-01:00
        raise SignatureError(f"malformed header {ZENDESK_TIMESTAMP}") from exc
    _check_window((signed_at - request.now) // _MICROSECOND, request.tolerance)
    return signed_at


def _sign_zendesk(
    body: bytes, key: bytes, now: datetime, method: str, url: str, header: str, message_id: str | None
) -> dict[str, str]:
    at = now.astimezone(UTC)
    timestamp = f"{at.year:04d}-{at.month:02d}-{at.day:02d}T{at.hour:02d}:{at.minute:02d}:{at.second:02d}Z"
    signature = base64.b64encode(_mac(key, timestamp.encode("ascii") + body)).decode("ascii")
    return {ZENDESK_SIGNATURE: signature, ZENDESK_TIMESTAMP: timestamp}


# --- hubspot-v3 ----------------------------------------------------------------------------------------------------


def _verify_hubspot(request: _Request) -> Verified:
    signature = _b64_header(request, HUBSPOT_SIGNATURE)
    timestamp = request.require(HUBSPOT_TIMESTAMP)
    signed_at = _unix(timestamp, HUBSPOT_TIMESTAMP, timedelta(milliseconds=1), request)
    keys = request.keys(_text_key)
    message = _hubspot_message(request.method, request.url, request.body, timestamp)
    if not _matches(keys, message, [signature]):
        raise SignatureError("signature mismatch")
    return Verified(signed_at=signed_at, message_id=None)


def _hubspot_uri(url: str) -> str:
    """The URL as HubSpot signs it: only the escapes HubSpot lists are decoded (one pass, case-insensitive)."""
    return _HUBSPOT_ESCAPES.sub(lambda m: chr(int(m.group(1), 16)), url)


def _hubspot_message(method: str, url: str, body: bytes, timestamp: str) -> bytes:
    return _utf8(method, _hubspot_uri(url)) + body + timestamp.encode("ascii")


def _sign_hubspot(
    body: bytes, key: bytes, now: datetime, method: str, url: str, header: str, message_id: str | None
) -> dict[str, str]:
    timestamp = str(_ticks(now, timedelta(milliseconds=1)))
    signature = base64.b64encode(_mac(key, _hubspot_message(method, url, body, timestamp))).decode("ascii")
    return {HUBSPOT_SIGNATURE: signature, HUBSPOT_TIMESTAMP: timestamp}


# --- hmac-sha256 (GitHub style) ------------------------------------------------------------------------------------


def _verify_hmac(request: _Request) -> Verified:
    received = request.require(request.header)
    match = _HEX_SHA256.fullmatch(received)
    if match is None:
        raise SignatureError(f"malformed header {request.header}")
    keys = request.keys(_text_key)
    if not _matches(keys, request.body, [bytes.fromhex(match.group(1))]):
        raise SignatureError("signature mismatch")
    return Verified(signed_at=None, message_id=None)


def _sign_hmac(
    body: bytes, key: bytes, now: datetime, method: str, url: str, header: str, message_id: str | None
) -> dict[str, str]:
    return {header: "sha256=" + _mac(key, body).hex()}


_VERIFIERS: dict[str, Callable[[_Request], Verified]] = {
    "standard": _verify_standard,
    "zendesk": _verify_zendesk,
    "hubspot-v3": _verify_hubspot,
    "hmac-sha256": _verify_hmac,
}
_SIGNERS = {
    "standard": _sign_standard,
    "zendesk": _sign_zendesk,
    "hubspot-v3": _sign_hubspot,
    "hmac-sha256": _sign_hmac,
}
