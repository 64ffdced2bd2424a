"""SQL injection against a request of site 1: no attack shows or changes site 2's data, or the audit trail.

The view runs the attacker's statement inside the request (as the app role), then
reads the notes table again; both the attack's own output and the later read
must stay within site 1. Signed mode with require_signature is the hardened
configuration; the one route it closes that unsigned mode leaves open
(calling rls.set_context() directly) is tested in both modes.
"""

from __future__ import annotations

import pytest
from django.db import connections
from psycopg import sql

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
    # A statement-carried context needs a bound $1; stacked text cannot bind one.
    "/*django_rls:$1*/ SELECT body FROM testapp_note WHERE site_id = 2",
    """/*django_rls:$1*/ SELECT body FROM testapp_note; /*django_rls:$1*/ SELECT body FROM testapp_note""",
]


@pytest.fixture
def hardened(live_db, settings, signing_keys, admin_conn):
    """Signed contexts, and signatures required of the app role."""
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": signing_keys[0]}
    admin_conn.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(sql.Identifier(APP_ROLE)))
    connections.close_all()
    yield
    admin_conn.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(sql.Identifier(APP_ROLE)))
    connections.close_all()


def site2_state(admin_conn) -> tuple:
    return (
        admin_conn.execute(
            "SELECT count(*), string_agg(body, ',' ORDER BY id) FROM testapp_note WHERE site_id = 2"
        ).fetchone()
        + admin_conn.execute("SELECT count(*) FROM rls_audit.log").fetchone()
    )


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_stays_inside_site_1(hardened, client, admin_conn, attack):
    before = site2_state(admin_conn)
    result = client.get("/inject/", {"sql": attack}, HTTP_HOST=H1).json()
    assert result["sites"] in ([1], []), result
    assert SITE2_NOTE not in result["outcome"], result
    after = site2_state(admin_conn)
    assert after[:2] == before[:2], "site 2's notes changed"
    assert after[2] >= before[2], "audit rows disappeared"


def test_calling_the_setter_is_refused_when_signatures_are_required(hardened, client):
    result = client.get("/inject/", {"sql": "SELECT rls.set_context('2', NULL)"}, HTTP_HOST=H1).json()
    assert "require_signature is on" in result["outcome"]
    assert result["sites"] == [1]


def test_unsigned_mode_does_not_stop_a_direct_setter_call(live_db, client):
    """The documented limit of unsigned mode: injected SQL may call rls.set_context() itself."""
    attack = "SELECT rls.set_context('2', NULL); SELECT DISTINCT site_id FROM testapp_note"
    result = client.get("/inject/", {"sql": attack}, HTTP_HOST=H1).json()
    assert result["outcome"] == "[[2]]"  # inside its own transaction the attacker reached site 2
    assert result["sites"] == [1]  # the request's next transaction has its own context again
