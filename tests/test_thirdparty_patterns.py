"""Patterns met running third-party apps' own test suites with django_rls on (docs/testing.md).

Each test reproduces, with this project's own models and settings, what broke in one of
those suites, so that it stays fixed without the third-party package as a dependency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from tests.roles import APP_ROLE
from tests.test_pytest_plugin import APP, CONFTEST, SETTINGS, plugin_roles  # noqa: F401 (a fixture)
from tests.test_rls_roles import run, superuser_alias  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent


def test_checks_run_without_django_contrib_auth():
    """django-model-utils' test settings install no django.contrib.auth: the middleware checks ran into it.

    Importing AuthenticationMiddleware imports the auth models, which raise RuntimeError (not
    ImportError) when the app is not installed, so `manage.py check` (and every command that runs
    the checks, rls_roles first) crashed instead of reporting E002/E003.
    """
    script = textwrap.dedent(
        """
        import django
        from django.conf import settings
        from django.core import checks

        settings.configure(
            INSTALLED_APPS=["django_rls"],
            MIDDLEWARE=MIDDLEWARE,
            DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "unused"}},
            SITE_ID=1,
        )
        django.setup()
        print(sorted(m.id for m in checks.run_checks() if m.id and m.id.startswith("django_rls.")))
        """
    )
    for middleware, expected in (
        (["django_rls.middleware.RlsMiddleware"], "[]"),
        ([], "['django_rls.E002']"),
    ):
        result = subprocess.run(
            [sys.executable, "-c", f"MIDDLEWARE = {middleware!r}\n" + script],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected


def test_rls_roles_lets_a_new_owner_role_migrate(superuser_alias, database):  # noqa: F811 (the fixture)
    """getting-started's steps, followed to run a suite against a development database, stopped at rls_migrate.

    The database is created by a superuser before the owner role exists; since PostgreSQL 15
    its public schema lets only the database's owner create in it (and rls_roles takes
    CREATE from PUBLIC where PUBLIC had it), so the owner's first migration failed with
    ``permission denied for schema public``. rls_roles now grants the owner that right.
    """
    import psycopg
    from django.db import connections

    with connections[superuser_alias].cursor() as cursor:
        cursor.execute("SELECT has_schema_privilege('public', 'public', 'CREATE')")
        public_had_create = cursor.fetchone()[0]
    try:
        assert "let the owner role rls_t_owner create tables in schema public" in run(superuser_alias)
        assert run(superuser_alias).startswith("Nothing to do")
        with connections[superuser_alias].cursor() as cursor:
            cursor.execute("ALTER ROLE rls_t_owner PASSWORD 'x'")
        dsn = psycopg.conninfo.make_conninfo(database.admin, user="rls_t_owner", password="x")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.rls_t_owner_migrates (id int)")
            conn.execute("DROP TABLE public.rls_t_owner_migrates")
    finally:
        if public_had_create:
            with connections[superuser_alias].cursor() as cursor:
                cursor.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")


FIXTURE_TESTS = f"""

import pytest
from django.contrib.sites.models import Site
from django.core.management.color import no_style
from django.db import connection
from django.test import TestCase

import django_rls
from django_rls.hidden_rows import SequenceResetRefused
from django_rls.test_runner import BypassFixtures
from tests.testapp.models import Note


def current_user():
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        return cursor.fetchone()[0]


class ThirdPartyFixtures(TestCase):  # a third-party app's own test case: no mixin
    fixtures = ["sites.json"]

    def test_loaded_as_the_app_role_and_the_sequence_set_past_them(self):
        assert current_user() == "{APP}"
        assert Site.objects.filter(pk=50).exists()
        assert Site.objects.create(domain="next.test", name="next").pk == 52


class ProtectedFixtures(BypassFixtures, TestCase):
    fixtures = ["sites.json", "notes.json"]

    def test_every_sites_rows_loaded_and_the_sequence_set_past_all_of_them(self):
        assert current_user() == "{APP}"
        assert Note.objects.count() == 0  # no context
        with django_rls.context(site=50):
            assert list(Note.objects.values_list("pk", flat=True)) == [70]
            # 71 is site 51's, invisible here: the reset counted it all the same.
            assert Note.objects.create(site_id=50, body="new").pk == 72


@pytest.mark.django_db
def test_setval_as_the_app_role_says_why_and_what_to_do():
    with pytest.raises(SequenceResetRefused, match="permission denied for sequence django_site_id_seq: .*OWNER_DATABASE"):
        with connection.cursor() as cursor:
            for statement in connection.ops.sequence_reset_sql(no_style(), [Site]):
                cursor.execute(statement)
"""

SITES = [
    {"model": "sites.site", "pk": 50, "fields": {"domain": "fifty.test", "name": "fifty"}},
    {"model": "sites.site", "pk": 51, "fields": {"domain": "fiftyone.test", "name": "fiftyone"}},
]
NOTES = [
    {"model": "testapp.note", "pk": 70, "fields": {"site": 50, "body": "fifty's"}},
    {"model": "testapp.note", "pk": 71, "fields": {"site": 51, "body": "fifty-one's"}},
]


def test_fixtures_reset_their_sequences_as_the_owner(plugin_roles, tmp_path):  # noqa: F811 (the fixture)
    """Django REST framework's suite stopped at `permission denied for sequence django_admin_log_id_seq`.

    Its conftest resets every sequence with the statements connection.ops.sequence_reset_sql()
    builds: setval(), which needs UPDATE on the sequence. loaddata ends with the same reset, so
    every test case with `fixtures` failed too, third-party ones and BypassFixtures alike: the
    application role has USAGE only. The pytest plugin and RlsDiscoverRunner now read the
    highest ids in test_bypass(), where every site's rows count, and have the owner set the
    sequences; the application role still may not, and setval() by it says why and what to run
    instead.
    """
    (tmp_path / "plug_settings.py").write_text(SETTINGS + f"\nFIXTURE_DIRS = [{str(tmp_path)!r}]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "sites.json").write_text(json.dumps(SITES))
    (tmp_path / "notes.json").write_text(json.dumps(NOTES))
    (tmp_path / "test_fixtures.py").write_text(FIXTURE_TESTS)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}", "DJANGO_SETTINGS_MODULE": "plug_settings"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(tmp_path),
         str(tmp_path / "test_fixtures.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout
    # The same test cases through Django's runner (the pytest-only test is no TestCase: not collected).
    runner = (
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "from django.test.utils import get_runner\n"
        "runner = get_runner(settings, 'django_rls.test_runner.RlsDiscoverRunner')(verbosity=2)\n"
        "raise SystemExit(runner.run_tests(['test_fixtures']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", runner], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Ran 2 tests" in result.stderr and "OK" in result.stderr


def test_a_row_written_but_not_readable_back_fails_djangos_insert(owner_conn, bound_app_conn):
    """django-axes' login log, declared writable by any request (`check` true) and readable by its user only:
    every login wrote its row with no user in the context, and failed. Django inserts with RETURNING (the
    new primary key), and PostgreSQL applies the table's SELECT policies to the rows RETURNING returns.
    docs/testing.md says so; this is the statement Django sends, against the policy shape."""
    table = "thirdparty_write_only_log"
    owner_conn.execute(f"DROP TABLE IF EXISTS {table}")
    owner_conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, username text NOT NULL)")
    owner_conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
    owner_conn.execute(f"GRANT SELECT, INSERT ON {table} TO {APP_ROLE}")
    owner_conn.execute(f"GRANT USAGE ON SEQUENCE {table}_id_seq TO {APP_ROLE}")
    owner_conn.execute(f"CREATE POLICY own_log ON {table} TO {APP_ROLE} USING (false) WITH CHECK (true)")
    owner_conn.commit()
    try:
        bound_app_conn.execute(f"INSERT INTO {table} (username) VALUES ('ann')")  # no RETURNING: allowed
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="violates row-level security"):
            bound_app_conn.execute(f"INSERT INTO {table} (username) VALUES ('ann') RETURNING id")
    finally:
        bound_app_conn.rollback()
        owner_conn.execute(f"DROP TABLE {table}")
        owner_conn.commit()
