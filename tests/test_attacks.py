"""SQL injection against a request of site 1: no attack shows or changes site 2's data, or the audit trail.

The view runs the attacker's statement inside the request (as the app role), then
reads the notes table again; both the attack's own output and the later read
must stay within site 1. Every attack runs in both configurations that close
injection: statement-bound with no key (what rls_roles sets up, the quickstart),
and signed with require_signature; through Django's default client-side binding
(where the simple protocol lets an attacker stack statements) and through
server-side binding. The route both close, calling the setter functions, is also
shown open on a role that is neither: what rls.problems reports.

In the SQL-only mode (tests/modes.py) there is no statement-bound configuration:
every attack runs in signed mode, and the unsigned configuration is the open one.
"""

from __future__ import annotations

import pytest
from django.db import connections

from tests.conftest import require_signature
from tests.modes import SQL_MODE, library_only
from tests.roles import APP_ROLE

H1 = "megacorp1.test"
SITE2_NOTE = "megacorp2 note"

ATTACKS = [
    "SET django_rls.site = '2'",
    "SET LOCAL django_rls.site = '2'",
    "SELECT set_config('django_rls.site', '2', false)",
    "SELECT set_config('django_rls.site', '2', true)",
    "UPDATE pg_settings SET setting = '2' WHERE name = 'django_rls.site'",
    "RESET django_rls.site",
    "RESET ALL",
    "DISCARD ALL",
    "ALTER ROLE CURRENT_USER SET django_rls.site = '2'",
    "ALTER DATABASE django_rls_pytest SET django_rls.site = '2'",
    "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql SET django_rls.site = '2' AS 'SELECT 1'",
    "PREPARE p AS SELECT set_config('django_rls.site', $1, false)",
    "DO $$ BEGIN PERFORM set_config('django_rls.site', '2', true); END $$",
    "SET ROLE rls_test_owner",
    "SET SESSION AUTHORIZATION rls_test_owner",
    "SELECT body FROM testapp_note WHERE site_id = 2",
    "SELECT body FROM testapp_note WHERE site_id = 2 UNION ALL SELECT body FROM ONLY testapp_note",
    "COPY (SELECT body FROM testapp_note) TO STDOUT",
    "ALTER TABLE testapp_note DISABLE ROW LEVEL SECURITY",
    "ALTER TABLE testapp_note NO FORCE ROW LEVEL SECURITY",
    "DROP POLICY rls_site_select ON testapp_note",
    "CREATE POLICY open ON testapp_note USING (true)",
    "TRUNCATE testapp_note",
    "CREATE VIEW everything AS SELECT * FROM testapp_note",
    "CREATE FUNCTION public.leak() RETURNS SETOF text SECURITY DEFINER LANGUAGE sql AS 'SELECT body FROM testapp_note'",
    "SELECT rls.set_context_signed('v1.eyJzaXRlIjoyfQ.AAAA')",
    "SELECT * FROM rls_audit.log WHERE site_id = 2",
    "DELETE FROM rls_audit.log",
    "UPDATE rls_audit.log SET site_id = 1",
    "TRUNCATE rls_audit.log",
    "SET session_replication_role = replica",
    "ALTER TABLE testapp_note DISABLE TRIGGER rls_audit_insert",
    "SELECT rls_audit.disable('testapp_note')",
    "DELETE FROM testapp_note WHERE site_id = 2 RETURNING body",
    "UPDATE testapp_note SET body = 'pwned' WHERE site_id = 2 RETURNING body",
    "INSERT INTO testapp_note (site_id, body) VALUES (2, 'planted') RETURNING id",
    # The setter functions, alone, stacked behind a statement that does not carry the context
    # (so the view sends the text through the simple protocol), or inside a function.
    "SELECT rls.set_context('2', NULL)",
    "SELECT rls.set_context('2', NULL, NULL, false)",
    "SELECT rls.set_context('2', '2', '{\"admin\": true}')",
    "SELECT rls.set_context_signed('v1.eyJzaXRlIjoyfQ.AAAA', false)",
    "SELECT rls.clear_context(); SELECT rls.set_context('2', NULL); SELECT body FROM testapp_note",
    "SET statement_timeout = '1min'; SELECT rls.set_context('2', NULL); SELECT body FROM testapp_note",
    "SET statement_timeout = '1min'; SELECT rls.set_context('2', NULL, NULL, false); SELECT body FROM testapp_note",
    "DO $$ BEGIN PERFORM rls.set_context('2', NULL); END $$; SELECT body FROM testapp_note",
    "SELECT body FROM testapp_note WHERE rls.set_context('2', NULL) IS NULL",
    "SELECT rls.clear_context()",
    "SET django_rls.statement_bound = off",
    "SELECT set_config('django_rls.statement_bound', 'off', false)",
    "RESET django_rls.statement_bound",
    "ALTER ROLE CURRENT_USER SET django_rls.statement_bound = off",
    # A statement-carried context needs a bound $1; stacked text cannot bind one.
    "/*django_rls:$1*/ SELECT body FROM testapp_note WHERE site_id = 2",
    """/*django_rls:$1*/ SELECT body FROM testapp_note; /*django_rls:$1*/ SELECT body FROM testapp_note""",
]


@pytest.fixture(params=["default", "replica"], ids=["client-side binding", "server-side binding"])
def alias(request):
    return request.param


def site2_state(admin_conn) -> tuple:
    # The SQL-only mode has no audit trail (yet): nothing there to take rows from.
    audit = "SELECT 0" if SQL_MODE else "SELECT count(*) FROM rls_audit.log"
    return (
        admin_conn.execute(
            "SELECT count(*), string_agg(body, ',' ORDER BY id) FROM testapp_note WHERE site_id = 2"
        ).fetchone()
        + admin_conn.execute(audit).fetchone()
    )


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_stays_inside_site_1(injection_mode, alias, client, admin_conn, attack):
    before = site2_state(admin_conn)
    result = client.get("/inject/", {"sql": attack, "alias": alias}, HTTP_HOST=H1).json()
    assert result["sites"] in ([1], []), result
    assert SITE2_NOTE not in result["outcome"], result
    after = site2_state(admin_conn)
    assert after[:2] == before[:2], "site 2's notes changed"
    assert after[2] >= before[2], "audit rows disappeared"


@pytest.mark.parametrize(
    "attack",
    [
        "SELECT rls.set_context('2', NULL)",
        "SET statement_timeout = '1min'; SELECT rls.set_context('2', NULL); SELECT DISTINCT site_id FROM testapp_note",
        "SELECT rls.set_context_signed('v1.eyJzaXRlIjoyfQ.AAAA')",
    ],
)
def test_statement_bound_refuses_the_setters_without_a_key(injection_mode, alias, client, attack):
    result = client.get("/inject/", {"sql": attack, "alias": alias}, HTTP_HOST=H1).json()
    # Stacked statements reach the server behind a first one that does not carry the context (psycopg
    # sends a query without parameters through the simple protocol, whatever the binding).
    if not SQL_MODE:
        assert "disabled because django_rls.statement_bound is on" in result["outcome"], result
    elif "set_context_signed" in attack:  # the SQL-only mode has signed mode only: the forged token is refused
        assert "invalid django_rls context token" in result["outcome"], result
    else:
        assert "disabled because django_rls requires a signature of this role" in result["outcome"], result
    assert result["sites"] == [1]


@library_only("a statement that carries its context (the marker)")
def test_carried_query_cannot_stack_statements(injection_mode, client):
    """A query that carries its context goes through the extended protocol: one statement, nothing stacked."""
    attack = "SELECT 1; SELECT rls.set_context('2', NULL); SELECT DISTINCT site_id FROM testapp_note"
    result = client.get("/inject/", {"sql": attack}, HTTP_HOST=H1).json()
    assert "cannot insert multiple commands into a prepared statement" in result["outcome"], result
    assert result["sites"] == [1]


def test_calling_the_setter_is_refused_when_signatures_are_required(
    live_db, unbound_app_role, settings, signing_keys, database, client
):
    """Signed mode alone (a role that is not statement-bound) closes the same route."""
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": signing_keys[0]}
    require_signature(database, True)
    try:
        result = client.get("/inject/", {"sql": "SELECT rls.set_context('2', NULL)"}, HTTP_HOST=H1).json()
    finally:
        require_signature(database, False)
        connections.close_all()
    refusal = "requires a signature of this role" if SQL_MODE else "require_signature is on"
    assert refusal in result["outcome"]
    assert result["sites"] == [1]


def test_a_role_neither_bound_nor_signing_does_not_stop_a_direct_setter_call(
    live_db, unbound_app_role, client, admin_conn
):
    """The hole both modes close, and that rls.problems reports: injected SQL may call rls.set_context() itself.

    In the SQL-only mode, that is a role not required to sign (check W012).
    """
    attack = (
        "SET statement_timeout = '1min'; SELECT rls.set_context('2', NULL); SELECT DISTINCT site_id FROM testapp_note"
    )
    result = client.get("/inject/", {"sql": attack}, HTTP_HOST=H1).json()
    problems = admin_conn.execute("SELECT problem FROM rls.problems WHERE object_name = %s", (APP_ROLE,)).fetchall()
    assert result["outcome"] == "[[2]]"  # inside its own transaction the attacker reached site 2
    assert result["sites"] == [1]  # the request's next transaction has its own context again
    reported = (
        "the role is not required to sign"
        if SQL_MODE
        else "neither django_rls.statement_bound nor django_rls.require_signature"
    )
    assert any(reported in p for (p,) in problems)
