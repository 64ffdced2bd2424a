"""manage.py rls_verify: passes on a correct setup, and names the reason when something would leak."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import connections


def verify(alias: str = "default") -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("rls_verify", "--database", alias, stdout=out)
    except SystemExit as exc:
        return int(exc.code), out.getvalue()
    return 0, out.getvalue()


def owner_sql(statement: str) -> None:
    with connections["owner"].cursor() as cursor:
        cursor.execute(statement)


@pytest.fixture
def restore(live_db):
    yield
    call_command("rls_apply", "--prune", verbosity=0)


def test_passes_and_leaves_no_probe_rows(live_db):
    from tests.testapp.models import Note

    code, out = verify()
    assert code == 0, out
    assert "ok    testapp_note: another site or user cannot read, change or delete its rows" in out
    assert "ok    testapp_tenantdoc:" in out  # UUID keys
    assert "ok    thirdparty_widget:" in out  # a plain integer owner column
    assert "skip  testapp_orderline: not probed: ThroughParent policies are checked in the catalog only" in out
    import django_rls

    with django_rls.bypass("test: probe rows are rolled back"):
        assert not Note.objects.filter(body__startswith="rls-verify").exists()


def test_superuser_or_bypassrls_connection(live_db):
    code, out = verify("bypass")
    assert code == 1 and "has BYPASSRLS: every policy is bypassed" in out


def test_owner_connection(live_db):
    code, out = verify("owner")
    assert code == 1 and "testapp_note: the connection's role owns the table" in out


def test_missing_force(restore):
    owner_sql("ALTER TABLE testapp_note NO FORCE ROW LEVEL SECURITY")
    code, out = verify()
    assert code == 1 and "testapp_note: FORCE ROW LEVEL SECURITY is off" in out


def test_weakened_policy_is_caught_in_the_catalog_and_by_the_probe(restore, monkeypatch):
    owner_sql("ALTER POLICY rls_site_select ON testapp_note USING (true)")
    code, out = verify()
    assert code == 1 and "testapp_note: policy group 'site' is missing or differs" in out
    # Without the catalog step, the probe itself sees the leak.
    from django_rls import verify as module

    monkeypatch.setattr(module, "_catalog_failures", lambda alias, declarations: [])
    code, out = verify()
    assert code == 1 and "testapp_note: another site or user can read the row" in out


def test_view_bypass(restore):
    owner_sql("CREATE VIEW note_view AS SELECT * FROM testapp_note")
    try:
        code, out = verify()
        assert code == 1 and "view note_view reads the table without security_invoker" in out
    finally:
        owner_sql("DROP VIEW note_view")


def test_missing_context_handling(live_db):
    """With nothing handing the context to the database (no wrapper), writes in a context fail."""
    from django_rls.database import wrapper

    connection = connections["default"]
    connection.ensure_connection()
    connection.execute_wrappers.remove(wrapper)
    try:
        code, out = verify()
    finally:
        connection.execute_wrappers.append(wrapper)
    assert code == 1 and "could not be written in its own context" in out


def test_a_role_that_can_leave_temporary_objects_fails(database, extra_alias, live_db):
    """A connection that may create temporary tables, or searches pg_temp first, fails the catalog part."""
    import psycopg

    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS rls_t_loose_verify")
        admin.execute("CREATE ROLE rls_t_loose_verify LOGIN IN ROLE rls_test_app")
        admin.execute(f"GRANT TEMPORARY ON DATABASE {database.name} TO rls_t_loose_verify")
    alias = extra_alias("loose_verify", user="rls_t_loose_verify", password="")
    try:
        code, out = verify(alias)
        assert code == 1
        assert "the connection's role rls_t_loose_verify may create temporary tables" in out
        assert 'the connection\'s search_path ("$user", public) does not end with pg_temp' in out
    finally:
        connections[alias].close()
        with psycopg.connect(database.admin, autocommit=True) as admin:
            admin.execute("DROP OWNED BY rls_t_loose_verify")
            admin.execute("DROP ROLE rls_t_loose_verify")
