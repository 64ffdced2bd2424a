"""Sign request contexts for ``rls.set_context_signed()``.

The token format is specified in docs/security.md; this module is the
reference implementation. A token is single-use and short-lived: sign a new
one for every statement or transaction.

Each token names its issuer and carries the issuer's next sequence number; the
server remembers, per issuer, which recent numbers were spent (a sliding
window), so its memory does not grow with the rate of tokens. Every process
is its own issuer: the id is drawn at random on import and again in a forked
child, so two processes never share one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

TOKEN_VERSION = "v1"
MIN_KEY_LENGTH = 32
DEFAULT_LIFETIME = 30
# The server's default django_rls.max_token_lifetime: longer-lived tokens are refused.
SERVER_MAX_LIFETIME = 300


class _Issuer:
    """This process's issuer id and its last sequence number."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.issuer = secrets.token_urlsafe(16)
        self._sequence = 0
        self._lock = threading.Lock()

    def next(self) -> tuple[str, int]:
        with self._lock:
            self._sequence += 1
            return self.issuer, self._sequence


_issuer = _Issuer()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_issuer.reset)


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
    issuer: str | None = None,
    sequence: int | None = None,
    now: float | None = None,
) -> str:
    """Return a token that sets this context once, within ``lifetime`` seconds.

    ``key`` must be one of the keys in the server's ``django_rls.signing_key_file``.
    ``database``, when given, binds the token to that database name. ``issuer`` and
    ``sequence`` default to this process's issuer and its next number; pass both to
    sign as another issuer (each issuer's numbers must increase).
    """
    key_bytes = key.encode() if isinstance(key, str) else key
    if len(key_bytes) < MIN_KEY_LENGTH:
        raise ValueError(f"the signing key must be at least {MIN_KEY_LENGTH} bytes long")
    if lifetime < 1:
        raise ValueError("the token lifetime must be at least one second")
    if (issuer is None) != (sequence is None):
        raise ValueError("pass both issuer and sequence, or neither")
    if issuer is None or sequence is None:
        issuer, sequence = _issuer.next()
    issued_at = int(now if now is not None else time.time())
    payload: dict[str, Any] = {
        "site": _id_member(site, "site"),
        "user": _id_member(user, "user"),
        "claims": dict(claims) if claims is not None else None,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "iss": issuer,
        "seq": sequence,
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
