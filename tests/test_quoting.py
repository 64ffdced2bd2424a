"""Names that need quoting cross between Python and SQL intact: a role "App-Role", a model with
db_table = "MyTable" (and a mixed-case column), and models in another schema (db_table =
'"other"."thing"', the way Django puts a table in a schema), through rls_roles, rls_apply,
rls_apply --check, the system checks and rls_verify, as the application role."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
from django.core import checks
from django.core.management import call_command
from django.db import connections

from django_rls.declarations import all_declarations
from tests.roles import APP_ROLE

ROLE = "App-Role"


def run(command: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command(command, *args, stdout=out)
    except SystemExit as exc:
        return int(exc.code), out.getvalue()
    return 0, out.getvalue()


@pytest.fixture
def superuser_alias(extra_alias) -> str:
    server = urlparse(os.environ["DATABASE_URL"])
    return extra_alias("quoting_admin", user=server.username or "postgres", password=server.password or "")


@pytest.fixture
def app_role_alias(superuser_alias, extra_alias, settings) -> Iterator[str]:
    """The application connects as "App-Role", created by rls_roles and protected for by rls_apply."""
    code, out = run("rls_roles", "--database", superuser_alias, "--app-role", ROLE)
    assert code == 0, out
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "APP_ROLE": ROLE}
    alias = extra_alias("quoted_app", user=ROLE, password="")
    yield alias
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "APP_ROLE": APP_ROLE}
    call_command("rls_apply", "--prune", verbosity=0, stdout=io.StringIO())
    connections[alias].close()
    with connections[superuser_alias].cursor() as cursor:
        cursor.execute('DROP OWNED BY "App-Role"')
        cursor.execute('DROP ROLE "App-Role"')


def test_rls_roles_creates_and_pins_a_role_that_needs_quoting(app_role_alias, superuser_alias):
    with connections[superuser_alias].cursor() as cursor:
        cursor.execute(
            "SELECT has_database_privilege(%s, current_database(), 'TEMPORARY'), "
            "(SELECT setconfig FROM pg_db_role_setting WHERE setrole = %s::regrole AND setdatabase <> 0), "
            "(SELECT setconfig FROM pg_db_role_setting WHERE setrole = %s::regrole AND setdatabase = 0)",
            [ROLE, '"App-Role"', '"App-Role"'],
        )
        assert cursor.fetchone() == (False, ["search_path=public, pg_temp"], ["django_rls.statement_bound=on"])
    code, out = run("rls_roles", "--database", superuser_alias, "--app-role", ROLE)
    assert code == 0 and out.startswith("Nothing to do: rls_test_owner, App-Role, rls_test_bypass"), out


def test_apply_check_checks_and_verify_with_quoted_names(app_role_alias):
    code, out = run("rls_apply")
    assert code == 0, out
    assert "protect \"MyTable\": policy group 'site' for App-Role" in out
    assert "protect other.thing: policy group 'site' for App-Role" in out
    assert 'grant USAGE on schema "other" to App-Role' in out  # a table elsewhere needs USAGE on its schema
    tables = len(all_declarations())
    assert run("rls_apply", "--check") == (0, f"In sync: {tables} protected tables, nothing to change.\n")

    with connections["owner"].cursor() as cursor:
        cursor.execute(
            """
            SELECT c.oid::regclass::text, array_agg(DISTINCT r::regrole::text)
              FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid, unnest(p.polroles) AS r
             WHERE c.oid IN ('"MyTable"'::regclass, 'other.thing'::regclass, 'other."Child"'::regclass)
             GROUP BY 1 ORDER BY 1
            """
        )
        assert cursor.fetchall() == [
            ('"MyTable"', ['"App-Role"']),
            ('other."Child"', ['"App-Role"']),
            ("other.thing", ['"App-Role"']),
        ]

    messages = checks.run_checks(databases=[app_role_alias, "owner"])
    assert [m.id for m in messages if m.id.startswith("django_rls.") and m.id != "django_rls.W005"] == []

    code, out = run("rls_verify", "--database", app_role_alias)
    assert code == 0, out
    assert "ok    MyTable: another site or user cannot read, change or delete its rows" in out
    assert 'ok    "other"."thing": another site or user cannot read, change or delete its rows' in out


def test_rows_of_quoted_tables_stay_within_their_site(app_role_alias):
    from django_rls import bypass, context
    from tests.quoting.models import Elsewhere, ElsewhereChild, MixedCase

    run("rls_apply")
    with bypass("test: seed rows of two sites"):
        for site in (1, 2):
            MixedCase.objects.create(site_id=site, body=f"mixed {site}")
            parent = Elsewhere.objects.create(site_id=site, body=f"elsewhere {site}")
            ElsewhereChild.objects.create(parent=parent, label=f"child {site}")
    try:
        with context(site=1):
            assert list(MixedCase.objects.using(app_role_alias).values_list("body", flat=True)) == ["mixed 1"]
            assert list(Elsewhere.objects.using(app_role_alias).values_list("body", flat=True)) == ["elsewhere 1"]
            assert list(ElsewhereChild.objects.using(app_role_alias).values_list("label", flat=True)) == ["child 1"]
    finally:
        with bypass("test: remove them"):
            ElsewhereChild.objects.all().delete()
            Elsewhere.objects.all().delete()
            MixedCase.objects.all().delete()
