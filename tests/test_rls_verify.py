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
    assert "ok    thirdparty_gadget:" in out  # a plain integer site column, from register()
    # Owner and Custom, from settings.DJANGO_RLS["MODELS"]
    assert "skip  thirdparty_widget: not probed: Custom policies are checked in the catalog only" in out
    assert "ok    testapp_sitemembership:" in out  # Members
    assert "skip  testapp_orderline: not probed: ThroughParent policies are checked in the catalog only" in out
    import django_rls

    with django_rls.bypass("test: probe rows are rolled back"):
        assert not Note.objects.filter(body__startswith="rls-verify").exists()


def test_superuser_or_bypassrls_connection(live_db, extra_alias):
    """An application alias that connects as a BYPASSRLS role, and the maintenance alias itself."""
    alias = extra_alias("bypass_copy", user="rls_test_bypass")
    code, out = verify(alias)
    assert code == 1 and "the connection's role rls_test_bypass has BYPASSRLS: every policy is bypassed" in out
    code, out = verify("bypass")
    assert code == 1
    assert "rls_verify is connected as rls_test_bypass, the maintenance role (alias 'bypass')" in out


def test_owner_connection_names_the_command_to_run(live_db):
    """Connected as the owner, rls_verify says to run it as the application, not to run rls_apply."""
    code, out = verify("owner")
    assert code == 1
    assert "rls_verify is connected as rls_test_owner, the owner role (alias 'owner')" in out
    assert "manage.py rls_verify --database default" in out
    assert "run rls_apply" not in out


def test_missing_force(restore):
    owner_sql("ALTER TABLE testapp_note NO FORCE ROW LEVEL SECURITY")
    code, out = verify()
    assert code == 1 and "testapp_note: FORCE ROW LEVEL SECURITY is off" in out


def test_weakened_policy_is_caught_in_the_catalog_and_by_the_probe(restore, monkeypatch):
    owner_sql("ALTER POLICY rls_site_select ON testapp_note USING (true)")
    code, out = verify()
    assert code == 1 and "testapp_note: policy group 'site' is missing or differs" in out
    # Without the catalog step, the probe itself sees the leak; rls_base_select carries the group's
    # expression too, so the leak needs both policies weakened.
    owner_sql("ALTER POLICY rls_base_select ON testapp_note USING (true)")
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


@pytest.fixture
def raising_handlers():
    """post_save handlers that raise, on a protected model and on the parent rows probes need."""
    from django.contrib.sites.models import Site
    from django.db.models.signals import post_save, pre_save

    from tests.testapp.models import Note

    def boom(sender, **kwargs):
        raise RuntimeError(f"the application's handler for {sender.__name__} ran")

    receivers = [(post_save, Note), (post_save, Site), (pre_save, Note)]
    for signal, sender in receivers:
        signal.connect(boom, sender=sender, weak=False, dispatch_uid=f"test_verify_{signal}_{sender}")
    yield
    for signal, sender in receivers:
        signal.disconnect(sender=sender, dispatch_uid=f"test_verify_{signal}_{sender}")


def test_probes_go_in_without_signals(live_db, raising_handlers):
    """An application's save handlers neither run for probe rows nor stop the report."""
    code, out = verify()
    assert code == 0, out
    assert "ok    testapp_note: another site or user cannot read, change or delete its rows" in out


def test_the_leak_matrix_writes_without_signals(live_db, raising_handlers):
    from django.contrib.auth.models import User

    from django_rls.testing import leak_matrix

    users = {u.username: u.pk for u in User.objects.all()}
    contexts = [{"site": 1, "user": users["alice"]}, {"site": 2, "user": users["bob"]}]
    assert leak_matrix(contexts, ["testapp.Note"]) == []


def test_an_unexpected_error_is_a_fail_line_naming_the_model(live_db):
    from django.db.models.signals import pre_init

    from tests.testapp.models import Task

    def boom(sender, **kwargs):
        raise ValueError("a model __init__ hook refused")

    pre_init.connect(boom, sender=Task, weak=False, dispatch_uid="test_verify_pre_init")
    try:
        code, out = verify()
    finally:
        pre_init.disconnect(sender=Task, dispatch_uid="test_verify_pre_init")
    assert code == 1
    assert "FAIL  testapp_task (testapp.Task): the probe failed: ValueError: a model __init__ hook refused" in out
    assert "ok    testapp_note:" in out  # the other models are still probed


def test_signatures_required_without_a_key_is_a_fail_line(live_db, signing_keys, admin_conn, settings):
    from psycopg import sql

    from tests.roles import APP_ROLE

    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": None}
    admin_conn.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(sql.Identifier(APP_ROLE)))
    try:
        connections["default"].close()
        code, out = verify()
    finally:
        admin_conn.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(sql.Identifier(APP_ROLE)))
        connections["default"].close()
    assert code == 1
    assert "requires signed contexts from rls_test_app (django_rls.require_signature = on)" in out
    assert 'DJANGO_RLS["SIGNING_KEY"] is not set' in out


def test_an_app_role_that_can_set_role_to_a_bypassing_role_fails(live_db, database):
    import psycopg

    from tests.roles import APP_ROLE

    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS rls_t_verify_bypasser")
        admin.execute("CREATE ROLE rls_t_verify_bypasser NOLOGIN BYPASSRLS")
        admin.execute(f"GRANT rls_t_verify_bypasser TO {APP_ROLE}")
    try:
        connections["default"].close()
        code, out = verify()
    finally:
        connections["default"].close()
        with psycopg.connect(database.admin, autocommit=True) as admin:
            admin.execute("DROP ROLE rls_t_verify_bypasser")
    assert code == 1
    assert "the connection's role rls_test_app can SET ROLE to rls_t_verify_bypasser (has BYPASSRLS)" in out


def test_an_application_alias_that_owns_the_tables(live_db, extra_alias):
    """The application connecting as the tables' owner: ownership is the fix, not rls_apply."""
    alias = extra_alias("app_as_owner", user="rls_test_owner")
    code, out = verify(alias)
    assert code == 1
    assert "testapp_note: the connection's role owns the table and can switch row level security off" in out
    assert "transfer the table to it" in out
    assert "run rls_apply" not in out


def test_an_unreachable_database_is_a_fail_line(live_db, extra_alias):
    alias = extra_alias("nowhere", "django_rls_no_such_database")
    code, out = verify(alias)
    assert code == 1
    assert "FAIL  could not inspect database 'nowhere': OperationalError:" in out
