"""Fuzz rls.set_context_signed() through SQL (atheris): `make fuzz`, or under a running test server:

    python tests/harness/cluster.py run -- .venv/bin/python tests/fuzz/fuzz_tokens.py -max_total_time=300

Five kinds of input reach the server: raw strings as tokens (the prefix, base64url and
signature checks), arbitrary payload bytes signed with the real key (base64url decoding of the
payload and the JSON parser), JSON objects with fuzzed member values, signed (the member
checks), a genuine reusable token followed by a fuzzed use suffix (the use's layout and MAC
checks), and signed payload bytes sent as a use with a genuine MAC (the payload checks behind a
use, and the per-backend token cache). Every call must end in success or an ordinary SQL error;
a lost connection means the backend crashed, and the fuzzer stops with the input that did it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time

import atheris
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

DB = "django_rls_fuzz"
KEY = secrets.token_urlsafe(48)
server = os.environ["DATABASE_URL"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: bytes) -> str:
    part = f"v1.{b64(payload)}"
    return f"{part}.{b64(hmac.new(KEY.encode(), part.encode(), hashlib.sha256).digest())}"


def used(token: str, made: str) -> str:
    """A use of token with this "<seq>.<time>" and its genuine MAC."""
    signature = token.rsplit(".", 1)[1]
    return f"{token}.{made}.{b64(hmac.new(KEY.encode(), f'{signature}.{made}'.encode(), hashlib.sha256).digest())}"


def setup() -> psycopg.Connection:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        data_directory = admin.execute("SHOW data_directory").fetchone()[0]
        admin.execute(
            sql.SQL("COPY (SELECT {}) TO {}").format(sql.Literal(KEY), sql.Literal(f"{data_directory}/fuzz.key"))
        )
        admin.execute("ALTER SYSTEM SET django_rls.signing_key_file = 'fuzz.key'")
        admin.execute("SELECT pg_reload_conf()")
    conn = psycopg.connect(make_conninfo(server, dbname=DB), autocommit=True)
    conn.execute("CREATE EXTENSION django_rls")
    # A superuser's session: allowed a context, so that valid tokens reach the setter too.
    conn.execute("SET django_rls.allow_bypassing_roles = on")
    time.sleep(0.5)  # let the reload reach new backends
    return conn


conn = setup()
ISSUER = secrets.token_urlsafe(16)
VALUES = [
    None,
    True,
    0,
    -1,
    2**63,
    1.5,
    "",
    "42",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    [],
    {},
    {"a": [1, {"b": None}]},
]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 4)
    if mode == 0:
        token = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 20000))
    elif mode == 1:
        token = signed(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4000)))
    elif mode == 3:
        reusable = signed(
            json.dumps(
                {
                    "site": 1,
                    "user": None,
                    "claims": None,
                    "iat": int(time.time()) - 1,
                    "exp": int(time.time()) + 60,
                    "iss": ISSUER,
                }
            ).encode()
        )
        token = reusable + fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200))
    elif mode == 4:
        made = f"{fdp.ConsumeIntInRange(1, 2**63 - 1)}.{fdp.ConsumeIntInRange(1, 2**63 - 1)}"
        token = used(signed(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4000))), made)
    else:
        now = int(time.time())
        payload: dict = {"iat": now - 1, "exp": now + 60, "iss": secrets.token_urlsafe(16), "seq": 1}
        for member in ("site", "user", "claims", "iat", "exp", "iss", "seq", "db", "extra"):
            if fdp.ConsumeBool():
                choice = fdp.ConsumeIntInRange(0, len(VALUES))
                payload[member] = VALUES[choice] if choice < len(VALUES) else fdp.ConsumeUnicodeNoSurrogates(64)
        token = signed(json.dumps(payload).encode())
    token = token.replace("\x00", "")
    try:
        with conn.transaction():
            conn.execute("SELECT rls.set_context_signed(%s)", (token,))
    except psycopg.Error:
        if conn.broken or conn.closed:
            raise  # the backend went away: a crash
        # otherwise refused, as bad tokens should be


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
