"""Tokens at rest: Fernet encryption through MultiFernet, so that keys can be rotated (the first key encrypts)."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from webhook.errors import WebhookError


class TokenCipherError(WebhookError):
    """A stored token cannot be decrypted with any of the configured keys (a key was removed too early)."""


def parse_keys(value: str) -> tuple[str, ...]:
    """Return the comma-separated keys of TOKEN_ENCRYPTION_KEY; ValueError naming the position of a bad one."""
    keys = tuple(k.strip() for k in value.split(",") if k.strip())
    for number, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"key {number} of {len(keys)} is not a Fernet key (32 url-safe base64 bytes); make one "
                             "with `python -c 'from cryptography.fernet import Fernet; "
                             "print(Fernet.generate_key().decode())'`") from exc
    return keys


def generate_key() -> str:
    """Return a fresh Fernet key."""
    return Fernet.generate_key().decode()


class TokenCipher:
    """Encrypts with the first key and decrypts with any, so that a new key can go first while old rows still read."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def __repr__(self) -> str:
        return "TokenCipher(...)"

    def encrypt(self, text: str) -> str:
        """Return the ciphertext of a token."""
        return self._fernet.encrypt(text.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        """Return the token of a ciphertext; TokenCipherError when no key opens it."""
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise TokenCipherError("a stored token cannot be decrypted with TOKEN_ENCRYPTION_KEY: keep the old key "
                                   "after the new one until `flask --app wsgi genesys rotate-keys` has run") from exc

    def rotate(self, ciphertext: str) -> str:
        """Return the ciphertext encrypted again with the first key."""
        return self._fernet.rotate(ciphertext.encode()).decode()
