"""Patterns met running third-party apps' own test suites with django_rls on (docs/testing.md).

Each test reproduces, with this project's own models and settings, what broke in one of
those suites, so that it stays fixed without the third-party package as a dependency.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

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
