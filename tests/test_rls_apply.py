"""manage.py rls_apply: fresh apply, no-op rerun, changes, drift, prune, grants and refusals."""

from __future__ import annotations

import io
from collections.abc import Iterator

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from psycopg import sql

from django_rls import declarations
from django_rls.policies import Declaration, Shared
from tests.roles import APP_ROLE, OWNER_ROLE, PASSWORD

PROTECTED = [
    "testapp_note",
    "testapp_task",
    "testapp_tenantdoc",
    "testapp_category",
    "testapp_project",
    "testapp_sitemembership",
    "testapp_order",
    "testapp_orderline",
    "testapp_tag",
    "testapp_article",
    "testapp_articletag",
    "testapp_bookmark",
    "testapp_team",
    "testapp_teammember",
    "testapp_space",
    "testapp_monitor",
    "testapp_ping",
    "testapp_folder",
    "thirdparty_gadget",
    "thirdparty_widget",
    '"MyTable"',  # names that need quoting: a mixed-case table and tables in another schema
    "other.thing",
    'other."Child"',
]


def run(*args: str, **options: object) -> str:
    out = io.StringIO()
    call_command("rls_apply", *args, stdout=out, **options)
    return out.getvalue()


def owner_sql(statement: str, params: tuple = ()) -> None:
    with connections["owner"].cursor() as cursor:
        cursor.execute(statement, params or None)


@pytest.fixture
def restore(live_db: None) -> Iterator[None]:
    """Whatever a test breaks, the declared state is back afterwards."""
    yield
    run("--prune")
    assert "In sync" in run("--check")


def exit_code(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("rls_apply", *args, stdout=out)
    except SystemExit as exc:
        return int(exc.code), out.getvalue()
    return 0, out.getvalue()


def test_rerun_is_a_no_op(restore):
    assert run() == f"Nothing to do: {len(PROTECTED)} protected tables already match the declarations.\n"
    assert exit_code("--check") == (0, f"In sync: {len(PROTECTED)} protected tables, nothing to change.\n")
    assert run("--sql") == "-- nothing to do\n"


def test_fresh_apply_protects_every_declared_table(restore):
    for table in PROTECTED:
        owner_sql("SELECT rls.unprotect(%s::regclass)", (table,))
    code, diff = exit_code("--check")
    assert code == 1
    assert all(f"protect {table}:" in diff for table in PROTECTED)
    output = run()
    # Task, TenantDoc, Article, SiteMembership, Category, Bookmark, Team, Ping and Widget (two policies from
    # settings): two groups; TeamMember (Members with parent=True) and Folder (BySite with movable_to): three
    assert f"Applied {len(PROTECTED) + 13} change(s)" in output
    with connections["owner"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_class WHERE oid = ANY(%s::regclass[]) AND relrowsecurity AND relforcerowsecurity",
            [PROTECTED],
        )
        assert cursor.fetchone()[0] == len(PROTECTED)


def test_sql_mode_prints_what_would_run_and_changes_nothing(restore):
    owner_sql("SELECT rls.unprotect('testapp_note'::regclass)")
    printed = run("--sql", lock_timeout=1.5)
    assert printed.startswith("SELECT pg_advisory_lock(hashtext('django_rls.rls_apply'));\n")
    # One transaction for the table: a bounded lock wait, the lock, then its steps.
    assert (
        '-- "public"."testapp_note"\nBEGIN;\nSET LOCAL lock_timeout = \'1500ms\';\n'
        'LOCK TABLE ONLY "public"."testapp_note" IN ACCESS EXCLUSIVE MODE;\n'
        "SELECT rls.protect('\"public\".\"testapp_note\"'::regclass, 'site', '\"site_id\" = rls.site_id()'"
    ) in printed
    assert printed.endswith("COMMIT;\nSELECT pg_advisory_unlock(hashtext('django_rls.rls_apply'));\n")
    assert exit_code("--check")[0] == 1  # nothing was applied


def test_changed_declaration_replaces_the_policy(restore, monkeypatch):
    monkeypatch.setitem(declarations._registry, "testapp.Note", Declaration("testapp.Note", (Shared("site"),)))
    code, diff = exit_code("--check")
    assert code == 1
    assert "replace testapp_note: policy group 'site'" in diff
    assert "now:  rls_site_delete: (site_id = rls.site_id())" in diff
    assert 'want: insert, update, delete rows where "site_id" = rls.site_id()' in diff
    assert "protect testapp_note: policy group 'shared'" in diff
    assert "Applied 2 change(s)" in run()
    assert exit_code("--check")[0] == 0
    monkeypatch.undo()


def test_drift_is_reported_and_repaired(restore):
    owner_sql("ALTER POLICY rls_site_select ON testapp_note USING (true)")
    code, diff = exit_code("--check")
    assert code == 1 and "replace testapp_note: policy group 'site'" in diff
    assert (
        "now:  rls_site_delete: (site_id = rls.site_id()); rls_site_insert: (site_id = rls.site_id()); rls_site_select: true"
        in diff
    )
    run()
    assert exit_code("--check")[0] == 0


def test_stale_groups_are_kept_unless_pruned(restore):
    owner_sql("SELECT rls.protect('testapp_note', 'legacy', 'true', to_role => %s)", (APP_ROLE,))
    output = run()
    assert "kept testapp_note: policy group 'legacy' (use --prune to remove it)" in output
    assert exit_code("--check")[0] == 0  # a stale group alone is no drift, only a note
    assert "remove testapp_note: policy group 'legacy'" in run("--prune")
    with connections["owner"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_policy WHERE polname LIKE 'rls_legacy_%'")
        assert cursor.fetchone()[0] == 0


def test_grants_are_exactly_what_the_app_needs(restore):
    owner_sql(f"REVOKE UPDATE ON testapp_note FROM {APP_ROLE}")
    owner_sql(f"GRANT TRUNCATE, TRIGGER, REFERENCES ON testapp_task TO {APP_ROLE}")
    owner_sql(f"REVOKE USAGE ON SEQUENCE testapp_order_id_seq FROM {APP_ROLE}")
    code, diff = exit_code("--check")
    assert code == 1
    assert f"grant UPDATE on testapp_note to {APP_ROLE}" in diff
    assert f"revoke TRUNCATE, REFERENCES, TRIGGER on testapp_task from {APP_ROLE}" in diff
    assert f"grant USAGE on sequence testapp_order_id_seq to {APP_ROLE}" in diff
    run()
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT has_table_privilege('testapp_note', 'UPDATE'), has_table_privilege('testapp_task', 'TRUNCATE'),"
            " has_table_privilege('testapp_task', 'TRIGGER'), has_sequence_privilege('testapp_order_id_seq', 'USAGE')"
        )
        assert cursor.fetchone() == (True, False, False, True)


def test_refuses_to_run_as_the_app_role(live_db):
    with pytest.raises(CommandError, match="connected as the application role"):
        run("--database", "default")


def test_refuses_without_ownership(database, extra_alias):
    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS rls_test_stranger")
        admin.execute(sql.SQL("CREATE ROLE rls_test_stranger LOGIN PASSWORD {}").format(sql.Literal(PASSWORD)))
    try:
        alias = extra_alias("stranger", database.name, "rls_test_stranger")
        with pytest.raises(CommandError, match=r"does not own .*testapp_note.* run rls_apply as the owner role"):
            run("--database", alias)
    finally:
        with psycopg.connect(database.admin, autocommit=True) as admin:
            admin.execute("DROP ROLE rls_test_stranger")


def test_refuses_when_the_extension_is_missing(database, extra_alias):
    with psycopg.connect(database.admin, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS django_rls_noext")
        admin.execute(sql.SQL("CREATE DATABASE django_rls_noext OWNER {}").format(sql.Identifier(OWNER_ROLE)))
    try:
        alias = extra_alias("noext", "django_rls_noext", OWNER_ROLE)
        with pytest.raises(
            CommandError, match=r"extension is not installed in database 'django_rls_noext'.*CREATE EXTENSION"
        ):
            run("--database", alias)
    finally:
        with psycopg.connect(database.admin, autocommit=True) as admin:
            admin.execute("DROP DATABASE django_rls_noext WITH (FORCE)")


def test_runs_after_migrate_when_asked(restore, settings):
    owner_sql("SELECT rls.unprotect('testapp_note'::regclass)")
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "APPLY_AFTER_MIGRATE": True}
    out = io.StringIO()
    call_command("migrate", database="owner", stdout=out, verbosity=1)
    assert "protect testapp_note: policy group 'site'" in out.getvalue()
    assert exit_code("--check")[0] == 0
