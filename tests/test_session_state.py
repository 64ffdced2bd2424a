"""What one request can leave on a database connection does not change what the next one reads or writes.

Every kind of session state an injected statement can leave behind (docs/security.md, "What a
request can leave on a connection") is left by a request of site 1 through the deliberately
injectable view, as the application role, on a connection that Django keeps (CONN_MAX_AGE = None)
or that PgBouncer hands to the next client (transaction pooling over one server connection). The
next requests, of site 1, site 2, an unknown host (no site, no user) and a request that runs no
query, must each read exactly their own rows, and a write must land in the real table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import psycopg
import pytest
from django.db import DatabaseError, connections
from django.test import Client
from psycopg import sql

from tests.harness.pgbouncer import PGBOUNCER, PgBouncer
from tests.roles import APP_ROLE, OWNER_ROLE, PASSWORD, TEST_DB

H1, H2, NOSITE = "megacorp1.test", "megacorp2.test", "nosite.test"
EXPECTED = {H1: [1], H2: [2], NOSITE: []}
BOUND = "disabled because django_rls.statement_bound is on"


@dataclass(frozen=True)
class State:
    name: str
    sql: str
    refused: str | None = None  # the error the injected statement gets, when it is refused
    next_read: str = "rows"  # "rows": later requests read their own rows; "error": they fail closed
    next_write: str = "rows"


STATES = [
    # Temporary objects: the application role has no TEMPORARY right (rls_roles).
    State(
        "temp table",
        "CREATE TEMP TABLE testapp_note (LIKE public.testapp_note INCLUDING DEFAULTS)",
        refused="permission denied to create temporary tables",
    ),
    State(
        "temp view",
        "CREATE TEMP VIEW testapp_note AS SELECT * FROM public.testapp_note WHERE false",
        refused="permission denied to create temporary tables",
    ),
    State(
        "temp function",
        "CREATE FUNCTION pg_temp.site_id() RETURNS bigint LANGUAGE sql AS 'SELECT 2::bigint'",
        refused="permission denied to create temporary tables",
    ),
    # Settings: none of them can choose a context, a role or a table the next request reads.
    State("search_path, pg_temp first", "SET search_path = pg_temp, public"),
    State("search_path by set_config", "SELECT set_config('search_path', 'pg_temp, public', false)"),
    State("search_path without public", "SET search_path = pg_catalog", next_read="error", next_write="error"),
    State("role", f"SET ROLE {OWNER_ROLE}", refused="permission denied to set role"),
    State("session authorization", f"SET SESSION AUTHORIZATION {OWNER_ROLE}", refused="permission denied"),
    State("read only", "SET default_transaction_read_only = on", next_write="error"),
    State("statement timeout", "SET statement_timeout = '10min'"),
    State("row security off", "SET row_security = off", next_read="error", next_write="error"),
    State("the context's own settings", "SET django_rls.site = '2'", refused="permission denied"),
    State("strict mode", "SET django_rls.strict = on", next_read="strict"),
    # Settings that change what later requests read or record, without crossing a site: see the
    # dedicated tests below and docs/security.md.
    State("extra_float_digits", "SET extra_float_digits = -15"),
    State("application_name", "SET application_name = 'forged by site 1'"),
    State("synchronous_commit off", "SET synchronous_commit = off"),
    # A session-scoped context: the statement-bound application role cannot set one at all
    # (test_session_context_left_by_a_role_that_is_not_statement_bound covers the other case).
    State("session context", "SELECT rls.set_context('2', NULL, NULL, false)", refused=BOUND),
    State(
        "session context with user and claims",
        """SELECT rls.set_context('2', '2', '{"admin": true}', false)""",
        refused=BOUND,
    ),
    # Objects Django never names: prepared statements, held cursors, locks, listeners.
    State("prepared statement", "PREPARE leftover AS SELECT site_id FROM testapp_note"),
    State("psycopg's prepared statement name", "PREPARE _pg3_0 AS SELECT 2::bigint AS site_id"),
    State("WITH HOLD cursor", "DECLARE leftover CURSOR WITH HOLD FOR SELECT site_id FROM testapp_note"),
    State("advisory lock", "SELECT pg_advisory_lock(4242)"),
    State("LISTEN", "LISTEN leftover"),
]
UNBOUND_SESSION_CONTEXT = State("session context", """SELECT rls.set_context('2', '2', '{"admin": true}', false)""")


def inject(client: Client, alias: str, sql: str, host: str = H1) -> dict:
    return client.get("/inject/", {"sql": sql, "alias": alias}, HTTP_HOST=host).json()


def backend_pid(client: Client, alias: str, host: str) -> int:
    result = inject(client, alias, "SELECT pg_backend_pid()", host)
    return int(result["outcome"].strip("[]"))


def read_sites(client: Client, alias: str, host: str) -> list[int]:
    return client.get(f"/notes/on/{alias}/", HTTP_HOST=host).json()["sites"]


def write_probe(client: Client, alias: str, host: str, admin: psycopg.Connection) -> str:
    """Insert a note for the host's site through the view; it must be in the real table afterwards."""
    site = EXPECTED[host][0]
    result = inject(
        client, alias, f"INSERT INTO testapp_note (site_id, body) VALUES ({site}, 'state probe') RETURNING id", host
    )
    if result["outcome"].startswith("error"):
        return result["outcome"]
    (note_id,) = [int(x) for x in result["outcome"].strip("[]").split(",")]
    found = admin.execute("SELECT site_id FROM public.testapp_note WHERE id = %s", (note_id,)).fetchone()
    admin.execute("DELETE FROM public.testapp_note WHERE body = 'state probe'")
    assert found == (site,), "the write did not land in the real table"
    return "rows"


def leave_and_check(client: Client, alias: str, state: State, admin: psycopg.Connection, same_backend: bool) -> None:
    pid = backend_pid(client, alias, H1)
    if state.next_read == "error":
        # The injecting request's own read after the attack already fails, and so do all that follow.
        with pytest.raises(DatabaseError):
            inject(client, alias, state.sql, H1)
        left = {"outcome": "ok", "sites": [1]}
    else:
        left = inject(client, alias, state.sql, H1)
    if state.refused:
        assert left["outcome"].startswith("error") and state.refused in left["outcome"], left
    else:
        assert not left["outcome"].startswith("error"), left
    assert left["sites"] in ([1], []), left  # within the injecting request, only site 1 (or nothing)

    assert client.get("/nodb/", HTTP_HOST=H2).status_code == 200  # a request that runs no query
    for host in (H2, NOSITE, H1):
        if state.next_read == "error":
            with pytest.raises(DatabaseError):
                read_sites(client, alias, host)
        elif state.next_read == "strict" and host == NOSITE:
            with pytest.raises(DatabaseError, match="no site is set"):
                read_sites(client, alias, host)
        else:
            assert read_sites(client, alias, host) == EXPECTED[host], (state.name, host)
    for host in (H2, H1):
        if state.next_read == "error":  # the view's write fails, and so does its read after it
            with pytest.raises(DatabaseError):
                write_probe(client, alias, host, admin)
            assert admin.execute("SELECT count(*) FROM testapp_note WHERE body = 'state probe'").fetchone() == (0,)
            continue
        outcome = write_probe(client, alias, host, admin)
        if state.next_write == "error":
            assert outcome.startswith("error"), outcome
        else:
            assert outcome == "rows", outcome
    if same_backend and state.next_read == "rows":
        assert backend_pid(client, alias, H2) == pid  # the state really was on the connection the next requests used


@pytest.fixture
def reused(request, live_db, monkeypatch) -> Iterator[str]:
    """A Django alias of the application role whose connection outlives requests (CONN_MAX_AGE = None)."""
    alias = request.param
    connections.close_all()
    monkeypatch.setitem(connections.settings[alias], "CONN_MAX_AGE", None)
    yield alias
    connections[alias].close()


@pytest.mark.parametrize("state", STATES, ids=[s.name for s in STATES])
@pytest.mark.parametrize(
    "reused", ["default", "replica"], indirect=True, ids=["client-side binding", "server-side binding"]
)
def test_state_left_on_a_reused_connection(reused, state, client, admin_conn):
    leave_and_check(client, reused, state, admin_conn, same_backend=True)


@pytest.mark.parametrize("state", [UNBOUND_SESSION_CONTEXT], ids=["session context"])
@pytest.mark.parametrize(
    "reused", ["default", "replica"], indirect=True, ids=["client-side binding", "server-side binding"]
)
def test_session_context_left_by_a_role_that_is_not_statement_bound(
    unbound_app_role, reused, state, client, admin_conn
):
    """Without statement_bound injected SQL can leave a session context; every later query sends its own."""
    leave_and_check(client, reused, state, admin_conn, same_backend=True)


@pytest.fixture
def single_server_bouncer(request, live_db, extra_alias) -> Iterator[str]:
    """A Django alias through PgBouncer transaction pooling over one server connection: every client shares it."""
    if not Path(PGBOUNCER).exists():
        pytest.skip("pgbouncer is not installed")
    server = urlparse(os.environ["DATABASE_URL"])
    bouncer = PgBouncer(TEST_DB, server.hostname or "127.0.0.1", server.port or 5432, [APP_ROLE], "transaction", 1)
    bouncer.start()
    try:
        alias = extra_alias("bouncer", user=APP_ROLE, password=PASSWORD)
        connections.settings[alias].update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(bouncer.port),
                "DISABLE_SERVER_SIDE_CURSORS": True,
                "OPTIONS": {"prepare_threshold": None, "server_side_binding": request.param},
            }
        )
        yield alias
    finally:
        connections.close_all()
        bouncer.stop()


def discard_all(alias: str) -> None:
    """Reset the one server connection behind PgBouncer between two states (DISCARD ALL, as session pooling does)."""
    connections.close_all()
    db = connections.settings[alias]
    dsn = f"host={db['HOST']} port={db['PORT']} dbname={db['NAME']} user={db['USER']} password={db['PASSWORD']}"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("DISCARD ALL")


@pytest.mark.parametrize(
    "single_server_bouncer", [True, False], indirect=True, ids=["server-side binding", "client-side binding"]
)
def test_state_left_behind_pgbouncer_transaction_pooling(single_server_bouncer, client, admin_conn):
    for state in STATES:
        # PgBouncer hands its one server connection to every client transaction, with whatever
        # the previous one left on it.
        leave_and_check(client, single_server_bouncer, state, admin_conn, same_backend=True)
        discard_all(single_server_bouncer)


@pytest.fixture
def preparing(live_db, monkeypatch) -> Iterator[str]:
    """The application alias asking for psycopg's automatic prepared statements (what W006 reports)."""
    connections.close_all()
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", None)
    monkeypatch.setitem(
        connections.settings["default"], "OPTIONS", {"server_side_binding": True, "prepare_threshold": 0}
    )
    yield "default"
    connections["default"].close()


def plant(client: Client, alias: str) -> list[str]:
    """From a site-1 request: replace every prepared COUNT over the notes with an INSERT; the names replaced."""
    listed = inject(
        client,
        alias,
        "SELECT name FROM pg_prepared_statements WHERE statement LIKE 'SELECT COUNT(*)%%testapp_note%%'",
        H1,
    )
    names = [name for (name,) in json.loads(listed["outcome"])]
    for name in names:
        inject(client, alias, f'DEALLOCATE "{name}"', H1)
        inject(
            client,
            alias,
            f"PREPARE \"{name}\" AS INSERT INTO testapp_note (site_id, body) VALUES (rls.site_id(), 'planted') "
            "RETURNING 3::bigint",
            H1,
        )
    return names


def test_prepared_statements_cannot_be_taken_over(preparing, client, admin_conn):
    """A planted statement under one of psycopg's names would run in the next request, with its context.

    The view reads the notes, then counts them, in one transaction: the count runs with the
    context the first query carried. Were the count prepared, a site-1 request could put an
    INSERT in its place, and a site-2 request would write into site 2. django_rls switches
    psycopg's prepared statements off on the application's connections, whatever the OPTIONS.
    """
    assert client.get("/notes/atomic/", HTTP_HOST=H2).json() == {"sites": [2], "count": 3}
    assert connections[preparing].connection.prepare_threshold is None
    assert plant(client, preparing) == []  # nothing of the application's is prepared
    assert client.get("/notes/atomic/", HTTP_HOST=H2).json() == {"sites": [2], "count": 3}
    assert admin_conn.execute("SELECT count(*) FROM testapp_note WHERE body = 'planted'").fetchone() == (0,)


def test_what_a_prepared_statement_would_allow(preparing, client, admin_conn):
    """The same attack with prepared statements forced back on: it works, which is why they stay off."""
    from django_rls import database

    connections.close_all()
    # Connect "default" (the site lookup of this request) with the switch-off skipped; the execute
    # wrapper stays installed on the alias from earlier requests.
    with mock.patch.object(database, "protected_aliases", lambda: []):
        client.get("/notes/on/replica/", HTTP_HOST=H2)
    assert connections[preparing].connection.prepare_threshold == 0
    assert client.get("/notes/atomic/", HTTP_HOST=H2).json() == {"sites": [2], "count": 3}
    try:
        assert plant(client, preparing)
        client.get("/notes/atomic/", HTTP_HOST=H2)
        assert admin_conn.execute("SELECT site_id FROM testapp_note WHERE body = 'planted'").fetchall() == [(2,)]
    finally:
        admin_conn.execute("DELETE FROM testapp_note WHERE body = 'planted'")


@pytest.mark.parametrize("reused", ["default"], indirect=True)
def test_a_held_cursor_keeps_what_its_request_read(reused, client):
    """The documented limit: a WITH HOLD cursor keeps its rows, read with the context of the request that
    declared it, until the session ends; only SQL that names it (injected again) can fetch them."""
    inject(client, reused, "DECLARE leftover CURSOR WITH HOLD FOR SELECT site_id FROM testapp_note", H1)
    assert read_sites(client, reused, H2) == [2]  # Django's own queries are unaffected
    fetched = inject(client, reused, "FETCH ALL FROM leftover", H2)
    assert json.loads(fetched["outcome"]) == [[1], [1], [1]]  # site 1's rows, read when site 1 declared it
    assert fetched["sites"] == [2]


@pytest.mark.parametrize("reused", ["default"], indirect=True)
def test_a_left_application_name_labels_the_next_requests_audit_entries(reused, client, admin_conn):
    """The documented limit: application_name is the client's own label, USERSET like any other,
    and the trail records what the session says; it is never evidence of who wrote."""
    inject(client, reused, "SET application_name = 'forged by site 1'", H1)
    assert write_probe(client, reused, H2, admin_conn) == "rows"
    recorded = admin_conn.execute(
        "SELECT site_id, application_name FROM rls_audit.log WHERE table_name = 'public.testapp_note' "
        "AND operation = 'INSERT' AND new_values->>'body' = 'state probe' ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert recorded == (2, "forged by site 1")


def test_synchronous_commit_off_left_behind_does_not_reach_an_audited_commit(live_db, database, admin_conn):
    """A session's own synchronous_commit = off would let a crash lose an acknowledged commit, its
    trail included. A transaction that writes audit rows commits with the configured value (what
    RESET restores; here the connection's); other transactions keep what the session set."""
    with database.connect("app_unbound", options="-c synchronous_commit=on") as conn:
        conn.execute("SET synchronous_commit = off")  # left by an earlier request
        with conn.transaction():
            conn.execute("SELECT rls.set_context('1', NULL)")
            conn.execute("SELECT count(*) FROM testapp_note")
            unaudited = conn.execute("SHOW synchronous_commit").fetchone()
            conn.execute("INSERT INTO testapp_note (site_id, body) VALUES (1, 'sync probe')")
            audited = conn.execute("SHOW synchronous_commit").fetchone()
        after = conn.execute("SHOW synchronous_commit").fetchone()
    admin_conn.execute("DELETE FROM testapp_note WHERE body = 'sync probe'")
    assert (unaudited, audited, after) == (("off",), ("on",), ("off",))


def test_an_operators_synchronous_commit_off_stays(live_db, database, admin_conn):
    """Where the connection (or role, database, server) is configured with off, an audited write keeps it."""
    with database.connect("app_unbound", options="-c synchronous_commit=off") as conn:
        with conn.transaction():
            conn.execute("SELECT rls.set_context('1', NULL)")
            conn.execute("INSERT INTO testapp_note (site_id, body) VALUES (1, 'sync probe')")
            audited = conn.execute("SHOW synchronous_commit").fetchone()
    admin_conn.execute("DELETE FROM testapp_note WHERE body = 'sync probe'")
    assert audited == ("off",)


@pytest.mark.parametrize("reused", ["default"], indirect=True)
def test_role_defaults_the_role_sets_for_itself_are_refused(reused, client, admin_conn, database):
    """PostgreSQL lets every role ALTER its own defaults for USERSET settings, which then apply to every
    later session of the role, whatever site it serves (a lowered extra_float_digits would round every
    site's floats as they are read). The library refuses that to a statement-bound or signing role
    (ext/own_role.c), SET and RESET, with or without IN DATABASE; its defaults are a superuser's to set."""
    attacks = [
        "ALTER ROLE CURRENT_USER SET extra_float_digits = -15",
        f"ALTER ROLE CURRENT_USER IN DATABASE {TEST_DB} SET statement_timeout = 1",
        f"ALTER ROLE CURRENT_USER IN DATABASE {TEST_DB} RESET search_path",
        "ALTER USER CURRENT_USER RESET ALL",
        "ALTER ROLE CURRENT_USER SET django_rls.site = '2'",
    ]
    before = admin_conn.execute(
        "SELECT setdatabase, setconfig FROM pg_db_role_setting WHERE setrole = %s::regrole ORDER BY 1", (APP_ROLE,)
    ).fetchall()
    try:
        for attack in attacks:
            refused = inject(client, reused, attack, H1)
            assert "cannot change its own role defaults" in refused["outcome"], (attack, refused)
        connections.close_all()
        for host in (H2, NOSITE, H1):
            assert read_sites(client, reused, host) == EXPECTED[host]
        with psycopg.connect(database.app) as later:
            assert later.execute("SHOW extra_float_digits").fetchone() == ("1",)
    finally:
        admin_conn.execute(sql.SQL("ALTER ROLE {} RESET extra_float_digits").format(sql.Identifier(APP_ROLE)))
    after = admin_conn.execute(
        "SELECT setdatabase, setconfig FROM pg_db_role_setting WHERE setrole = %s::regrole ORDER BY 1", (APP_ROLE,)
    ).fetchall()
    assert after == before
