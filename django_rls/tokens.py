"""Sign request contexts for ``rls.set_context_signed()`` and the statement marker.

The token format is specified in docs/security.md; this module is the
reference implementation. Two kinds of token:

- ``sign_context()``: a single-use token, spent by the first statement or
  transaction that sends it;
- ``sign_reusable()``: a reusable token, signed once for a context and sent as a
  new *use* with each statement (``ReusableToken.use()``): the token, the next
  sequence number, the time and a MAC of them. A use costs one short HMAC instead of a
  signature, and the server verifies the token once per backend and then only
  the MAC. The server never accepts a reusable token alone.

Each token names its issuer, and a single-use token or a use carries the
issuer's next sequence number; the server remembers, per issuer, which recent
numbers were spent (a sliding window), so its memory does not grow with the
rate of tokens. Every process is its own issuer: the id is drawn at random on
import and again in a forked child, so two processes never share one.
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
from functools import lru_cache
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


def current_issuer() -> str:
    """This process's issuer id (a forked child draws its own)."""
    return _issuer.issuer


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_INNER_PAD = bytes(byte ^ 0x36 for byte in range(256))
_OUTER_PAD = bytes(byte ^ 0x5C for byte in range(256))


class HmacSha256:
    """HMAC-SHA256 under one key, the key's padded blocks hashed once (RFC 2104, section 4).

    The same function as ``hmac.digest(key, message, "sha256")`` (tests/test_tokens.py
    checks it), in about half the time for the short messages of a use.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(key.translate(_INNER_PAD))
        self._outer = hashlib.sha256(key.translate(_OUTER_PAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


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


@lru_cache(maxsize=8)
def _hmac_for(key_bytes: bytes) -> HmacSha256:
    """One HmacSha256 per key, shared by every reusable token signed with it."""
    return HmacSha256(key_bytes)


def _key_bytes(key: str | bytes) -> bytes:
    key_bytes = key.encode() if isinstance(key, str) else key
    if len(key_bytes) < MIN_KEY_LENGTH:
        raise ValueError(f"the signing key must be at least {MIN_KEY_LENGTH} bytes long")
    return key_bytes


def _signed_token(
    key_bytes: bytes,
    site: int | str | uuid.UUID | None,
    user: int | str | uuid.UUID | None,
    claims: Mapping[str, Any] | None,
    lifetime: int,
    database: str | None,
    issuer: str,
    sequence: int | None,
    now: float | None,
) -> tuple[str, int]:
    """The token ("v1.<payload>.<signature>") and its expiry; without a sequence it is reusable."""
    if lifetime < 1:
        raise ValueError("the token lifetime must be at least one second")
    issued_at = int(now if now is not None else time.time())
    payload: dict[str, Any] = {
        "site": _id_member(site, "site"),
        "user": _id_member(user, "user"),
        "claims": dict(claims) if claims is not None else None,
        "iat": issued_at,
        "exp": issued_at + lifetime,
        "iss": issuer,
    }
    if sequence is not None:
        payload["seq"] = sequence
    if database is not None:
        payload["db"] = database
    encoded = _b64url(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    signed_part = f"{TOKEN_VERSION}.{encoded}"
    signature = hmac.new(key_bytes, signed_part.encode("ascii"), hashlib.sha256).digest()
    return f"{signed_part}.{_b64url(signature)}", issued_at + lifetime


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
    key_bytes = _key_bytes(key)
    if (issuer is None) != (sequence is None):
        raise ValueError("pass both issuer and sequence, or neither")
    if issuer is None or sequence is None:
        issuer, sequence = _issuer.next()
    token, _ = _signed_token(key_bytes, site, user, claims, lifetime, database, issuer, sequence, now)
    return token


class ReusableToken:
    """A token without ``seq``: signed once, accepted only as a use, each use once.

    ``use()`` returns ``<token>.<seq>.<time>.<mac>``: a sequence number of the token's
    issuer, the Unix time, and their MAC, HMAC-SHA256 over ``<signature>.<seq>.<time>``.
    """

    __slots__ = ("_mac", "_signature", "expires_at", "issuer", "token")

    def __init__(self, token: str, issuer: str, expires_at: int, mac: HmacSha256) -> None:
        self.token = token
        self.issuer = issuer
        self.expires_at = expires_at
        self._signature = token.rsplit(".", 1)[1]
        self._mac = mac

    def use(self, sequence: int | None = None, now: float | None = None) -> str:
        """A use with this sequence number, by default the process issuer's next one.

        The default needs a token of this process's issuer (``current_issuer()``): a
        forked child signs tokens of its own.
        """
        if sequence is None:
            issuer, sequence = _issuer.next()
            if issuer != self.issuer:
                raise ValueError("this reusable token belongs to another issuer (signed before a fork); sign a new one")
        made = f"{sequence}.{int(now if now is not None else time.time())}"
        mac = self._mac.digest(f"{self._signature}.{made}".encode("ascii"))
        return f"{self.token}.{made}.{_b64url(mac)}"


def sign_reusable(
    key: str | bytes,
    *,
    site: int | str | uuid.UUID | None,
    user: int | str | uuid.UUID | None,
    claims: Mapping[str, Any] | None = None,
    lifetime: int = DEFAULT_LIFETIME,
    database: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> ReusableToken:
    """Return a reusable token for this context, valid for ``lifetime`` seconds.

    Send ``token.use()`` with each statement or transaction; never the token alone.
    ``issuer`` defaults to this process's issuer; a token of another issuer needs
    explicit sequence numbers in ``use()``, increasing for that issuer.
    """
    key_bytes = _key_bytes(key)
    issuer = issuer if issuer is not None else _issuer.issuer
    token, expires_at = _signed_token(key_bytes, site, user, claims, lifetime, database, issuer, None, now)
    return ReusableToken(token, issuer, expires_at, _hmac_for(key_bytes))


def generate_key() -> str:
    """Return a new random signing key (64 URL-safe characters)."""
    return secrets.token_urlsafe(48)
