"""Through a real PgBouncer: transaction pooling shares server connections between clients, and no
context crosses from one to another; signed tokens and replay protection still hold; session pooling
with DISCARD ALL clears a session context."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from django.db import connections
from django.test import Client
from psycopg import sql

from django_rls.tokens import sign_context, sign_reusable
from tests.harness.pgbouncer import PGBOUNCER, PgBouncer
from tests.modes import library_only
from tests.roles import APP_ROLE, PASSWORD, TEST_DB

pytestmark = pytest.mark.skipif(not Path(PGBOUNCER).exists(), reason="pgbouncer is not installed")
HOSTS = ["megacorp1.test", "megacorp2.test"]


def _bouncer(pool_mode: str, pool_size: int = 2) -> Iterator[PgBouncer]:
    server = urlparse(os.environ["DATABASE_URL"])
    bouncer = PgBouncer(TEST_DB, server.hostname or "127.0.0.1", server.port or 5432, [APP_ROLE], pool_mode, pool_size)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def transaction_pool(live_db) -> Iterator[PgBouncer]:
    yield from _bouncer("transaction")


@pytest.fixture
def single_server_pool(live_db) -> Iterator[PgBouncer]:
    """Transaction pooling over one server connection: every client shares it."""
    yield from _bouncer("transaction", pool_size=1)


@pytest.fixture
def session_pool(live_db) -> Iterator[PgBouncer]:
    yield from _bouncer("session")


def bouncer_dsn(bouncer: PgBouncer) -> str:
    return f"host=127.0.0.1 port={bouncer.port} dbname={TEST_DB} user={APP_ROLE} password={PASSWORD}"


@pytest.fixture(params=["server-side binding", "client-side binding"])
def bouncer_alias(request, transaction_pool, extra_alias) -> Iterator[str]:
    """A Django alias of the app role that goes through PgBouncer in transaction mode.

    With server-side binding each query carries its context; with client-side binding the
    context goes in its own pipelined statements.
    """
    alias = extra_alias("bouncer", user=APP_ROLE, password=PASSWORD)
    connections.settings[alias].update(
        {
            "HOST": "127.0.0.1",
            "PORT": str(transaction_pool.port),
            "DISABLE_SERVER_SIDE_CURSORS": True,  # what Django asks for behind transaction pooling
            "OPTIONS": {"prepare_threshold": None, "server_side_binding": request.param == "server-side binding"},
        }
    )
    yield alias


def _request(i: int) -> tuple[int, dict]:
    site = i % 2 + 1
    try:
        return site, Client().get("/notes/on/bouncer/", HTTP_HOST=HOSTS[site - 1]).json()
    finally:
        connections.close_all()


def test_interleaved_requests_through_transaction_pooling(bouncer_alias):
    # Two server connections serve ten threads: contexts of both sites pass through each one.
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(_request, range(60)))
    assert [body for _, body in results] == [{"sites": [site]} for site, _ in results]


def _signed_request(i: int) -> tuple[int, dict]:
    site = i % 2 + 1
    try:
        return site, Client().get("/notes/query-by-query/bouncer/?n=4", HTTP_HOST=HOSTS[site - 1]).json()
    finally:
        connections.close_all()


def test_interleaved_signed_requests_through_transaction_pooling(bouncer_alias, settings, signing_keys, admin_conn):
    """Signed mode, signatures required: each request's statements, each with a use of its context's
    reusable token, land on whichever of the two server connections is free, and every backend
    verifies the token itself (once) and then each use."""
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": signing_keys[0]}
    role = sql.Identifier(APP_ROLE)
    admin_conn.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(role))
    try:
        with ThreadPoolExecutor(max_workers=10) as pool:
            results = list(pool.map(_signed_request, range(60)))
    finally:
        admin_conn.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(role))
    assert [body for _, body in results] == [{"sites": [site]} for site, _ in results]


def test_atomic_requests_through_transaction_pooling(bouncer_alias):
    """PgBouncer does not pass django_rls.preloaded on: the bridge asks inside the request's transaction."""
    connections.settings[bouncer_alias]["ATOMIC_REQUESTS"] = True
    connections.close_all()
    try:
        for host, site in ((HOSTS[0], 1), (HOSTS[1], 2)):
            assert Client().get("/notes/on/bouncer/", HTTP_HOST=host).json() == {"sites": [site]}
            connections.close_all()  # every request on a new connection: its first query is in a transaction
    finally:
        connections.settings[bouncer_alias]["ATOMIC_REQUESTS"] = False


def connect(bouncer: PgBouncer) -> psycopg.Connection:
    return psycopg.connect(bouncer_dsn(bouncer), autocommit=True, prepare_threshold=None)


def test_transaction_scope_leaves_nothing_on_a_shared_server_connection(unbound_app_role, single_server_pool):
    with connect(single_server_pool) as first, connect(single_server_pool) as second:
        with first.transaction():
            first.execute("SELECT rls.set_context('1', NULL)")
            assert first.execute("SELECT DISTINCT site_id FROM testapp_note").fetchall() == [(1,)]
        # The same server connection now serves the second client: it sees no context and no rows.
        assert (
            second.execute("SELECT pg_backend_pid()").fetchone() == first.execute("SELECT pg_backend_pid()").fetchone()
        )
        assert second.execute("SELECT rls.context()->>'site'").fetchone() == (None,)
        assert second.execute("SELECT DISTINCT site_id FROM testapp_note").fetchall() == []


def test_session_scope_would_leak_there_which_is_why_it_is_not_the_default(unbound_app_role, single_server_pool):
    with connect(single_server_pool) as first, connect(single_server_pool) as second:
        first.execute("SELECT rls.set_context('2', NULL, NULL, false)")
        assert second.execute("SELECT DISTINCT site_id FROM testapp_note").fetchall() == [(2,)]
        second.execute("SELECT rls.clear_context()")


def test_signed_tokens_and_replay_through_transaction_pooling(unbound_app_role, transaction_pool, signing_keys):
    token = sign_context(signing_keys[0], site=1, user=1)
    with connect(transaction_pool) as a, connect(transaction_pool) as b:
        with a.transaction():
            a.execute("SELECT rls.set_context_signed(%s)", (token,))
            assert a.execute("SELECT DISTINCT site_id FROM testapp_note").fetchall() == [(1,)]
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
            with b.transaction():
                b.execute("SELECT rls.set_context_signed(%s)", (token,))


@library_only("uses of reusable tokens (the SQL-only mode accepts single-use tokens)")
def test_uses_and_replay_through_transaction_pooling(unbound_app_role, transaction_pool, signing_keys):
    token = sign_reusable(signing_keys[0], site=2, user=1)
    with connect(transaction_pool) as a, connect(transaction_pool) as b:
        spent = token.use()
        for client, use in ((a, spent), (b, token.use()), (a, token.use())):
            with client.transaction():
                client.execute("SELECT rls.set_context_signed(%s)", (use,))
                assert client.execute("SELECT DISTINCT site_id FROM testapp_note").fetchall() == [(2,)]
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
            with b.transaction():
                b.execute("SELECT rls.set_context_signed(%s)", (spent,))


def test_session_pooling_discards_a_session_context(unbound_app_role, session_pool):
    dsn = bouncer_dsn(session_pool)
    with psycopg.connect(dsn, autocommit=True) as first:
        first.execute("SELECT rls.set_context('2', NULL, NULL, false)")
        pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert first.execute("SELECT DISTINCT site_id FROM testapp_note").fetchall() == [(2,)]
    # The next client gets the same server connection after DISCARD ALL: no context.
    with psycopg.connect(dsn, autocommit=True) as second:
        assert second.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
        assert second.execute("SELECT DISTINCT site_id FROM testapp_note").fetchall() == []
