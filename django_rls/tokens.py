"""Sign request contexts for ``rls.set_context_signed()``.

The token format is specified in docs/security.md; this module is the
reference implementation. A token is single-use and short-lived: sign a new
one for every transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any

TOKEN_VERSION = "v1"
MIN_KEY_LENGTH = 32
DEFAULT_LIFETIME = 30


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _id_member(value: Any, what: str) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, a UUID or None, not a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"{what} must be an int, a UUID, a string or None, not {type(value).__name__}")


def sign_context(
    key: str | bytes,
    *,
    site: int | str | uuid.UUID | None,
    user: int | str | uuid.UUID | None,
    claims: Mapping[str, Any] | None = None,
    lifetime: int = DEFAULT_LIFETIME,
    database: str | None = None,
    nonce: str | None = None,
    now: float | None = None,
) -> str:
    """Return a token that sets this context once, within ``lifetime`` seconds.

    ``key`` must be one of the keys in the server's ``django_rls.signing_key``.
    ``database``, when given, binds the token to that database name.
    """
    key_bytes = key.encode() if isinstance(key, str) else key
    if len(key_bytes) < MIN_KEY_LENGTH:
        raise ValueError(f"the signing key must be at least {MIN_KEY_LENGTH} bytes long")
    if lifetime < 1:
        raise ValueError("the token lifetime must be at least one second")
    issued_at = int(now if now is not None else time.time())
    payload: dict[str, Any] = {
        "site": _id_member(site, "site"),
        "user": _id_member(user, "user"),
        "claims": dict(claims) if claims is not None else None,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "nonce": nonce if nonce is not None else secrets.token_urlsafe(16),
    }
    if database is not None:
        payload["db"] = database
    encoded = _b64url(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    signed_part = f"{TOKEN_VERSION}.{encoded}"
    signature = hmac.new(key_bytes, signed_part.encode("ascii"), hashlib.sha256).digest()
    return f"{signed_part}.{_b64url(signature)}"


def generate_key() -> str:
    """Return a new random signing key (64 URL-safe characters)."""
    return secrets.token_urlsafe(48)
