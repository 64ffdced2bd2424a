"""The documented pytest setup (docs/testing.md) on a project of its own: pytest-django builds
the test database as the owner, rls_apply runs on it, and the tests connect as the app role."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
OWNER, APP, TEMPLATE = "rls_plug_owner", "rls_plug_app", "rls_plug_template"
TEST_BYPASS = "rls_plug_test_bypass"

SETTINGS = f"""
from tests.settings import *  # noqa: F403
from tests import settings as base

_test = {{"NAME": "test_rls_plug", "TEMPLATE": "{TEMPLATE}"}}
DATABASES = {{
    "default": {{**base.DATABASES["default"], "NAME": "rls_plug", "USER": "{APP}", "TEST": _test}},
    "owner": {{**base.DATABASES["default"], "NAME": "rls_plug", "USER": "{OWNER}", "TEST": _test}},
}}
DATABASE_ROUTERS = []
# Its tables in another schema are past Django's flush (which lists the search_path's), and they
# reference django_site: transactional tests could not empty the tables, whoever ran the flush.
INSTALLED_APPS = [app for app in base.INSTALLED_APPS if app != "tests.quoting"]
DJANGO_RLS = {{**base.DJANGO_RLS, "OWNER_DATABASE": "owner", "BYPASS_DATABASE": None, "TEST_BYPASS_ROLE": "{TEST_BYPASS}"}}
"""

# As docs/testing.md shows it.
CONFTEST = """
from django_rls.pytest_plugin import rls_django_db_modify_db_settings as django_db_modify_db_settings  # noqa: F401
from django_rls.pytest_plugin import rls_django_db_setup as django_db_setup  # noqa: F401
"""

TESTS = f"""
import psycopg
import pytest
from django.contrib.sites.models import Site
from django.db import connection

from django_rls.checks import _check_set_role
from django_rls.testing import TestBypassRefused
from tests.testapp.models import Note


@pytest.mark.django_db
def test_built_by_the_owner_served_as_the_app_role(rls_context):
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, current_database()")
        assert cursor.fetchone() == ("{APP}", "test_rls_plug")
        cursor.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'testapp_note'")
        assert cursor.fetchone() == ("{OWNER}",)
        # rls_apply ran: protected, FORCE, policies for the app role.
        cursor.execute(
            "SELECT c.relrowsecurity AND c.relforcerowsecurity, count(p.*) FROM pg_class c "
            "LEFT JOIN pg_policies p ON p.tablename = c.relname WHERE c.relname = 'testapp_note' GROUP BY 1"
        )
        forced, policies = cursor.fetchone()
        assert forced and policies > 0
    site = Site.objects.get()
    with rls_context(site=site.id):
        Note.objects.create(site=site, body="mine")
        assert Note.objects.count() == 1
    with rls_context(site=site.id + 1):
        assert Note.objects.count() == 0


@pytest.mark.django_db
def test_bypass_on_the_tests_own_connection(rls_bypass, rls_context, client):
    one = Site.objects.get()
    two = Site.objects.create(domain="two.test", name="two")
    with rls_bypass():
        # Fixture-style writes and reads across sites, uncommitted, in the test's transaction.
        Note.objects.create(site=one, body="one")
        Note.objects.create(site=two, body="two")
        assert Note.objects.count() == 2
        # A request inside runs as the app role with the middleware's context ...
        assert client.get("/count/", HTTP_HOST="two.test").content == b"1"
        # ... and the bypass resumes after it.
        assert Note.objects.count() == 2
        with rls_bypass():  # nested: the inner block leaves the bypass on
            pass
        assert Note.objects.count() == 2
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone() == ("{TEST_BYPASS}",)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == ("{APP}",)
    assert Note.objects.count() == 0  # no bypass, no context: nothing
    with rls_context(site=one.id):
        assert list(Note.objects.values_list("body", flat=True)) == ["one"]
        assert client.get("/count/", HTTP_HOST="two.test").content == b"1"
        # The request left the context as it found it.
        assert list(Note.objects.values_list("body", flat=True)) == ["one"]


@pytest.mark.django_db(transaction=True)
def test_transactional_tests_are_emptied_by_the_owner():
    # The application role may not TRUNCATE; the flush after this test must run as the owner.
    Site.objects.create(domain="flushed.example", name="flushed")
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone() == ("{APP}",)


@pytest.mark.django_db(transaction=True)
def test_the_last_transactional_test_left_nothing():
    assert not Site.objects.filter(domain="flushed.example").exists()


@pytest.mark.django_db
def test_bypass_needs_the_setting(rls_bypass, settings):
    settings.DJANGO_RLS = {{**settings.DJANGO_RLS, "TEST_BYPASS_ROLE": None}}
    with pytest.raises(TestBypassRefused, match="TEST_BYPASS_ROLE"):
        with rls_bypass():
            pass


@pytest.mark.django_db
def test_the_membership_is_refused_outside_test_databases():
    with connection.cursor() as cursor:
        assert _check_set_role("default", cursor) == []  # test_rls_plug: a test database
    dsn = psycopg.conninfo.make_conninfo(connection.connection.info.dsn, dbname="{TEMPLATE}")
    with psycopg.connect(dsn) as other, other.cursor() as cursor:
        (error,) = _check_set_role("default", cursor)
    assert error.id == "django_rls.E019" and "{TEST_BYPASS}" in error.msg
    assert "for test databases only" in error.hint
"""


@pytest.fixture
def plugin_roles(admin_conn: psycopg.Connection) -> Iterator[None]:
    def drop() -> None:
        for name in ("test_rls_plug", TEMPLATE):
            admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        for role in (TEST_BYPASS, APP, OWNER):
            admin_conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    drop()
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD 'x'").format(sql.Identifier(OWNER)))
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'x'").format(sql.Identifier(APP)))
    # As docs/testing.md sets it up, on a test server only.
    admin_conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN BYPASSRLS").format(sql.Identifier(TEST_BYPASS)))
    admin_conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(TEST_BYPASS), sql.Identifier(APP)))
    admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(TEMPLATE), sql.Identifier(OWNER)))
    template = psycopg.conninfo.make_conninfo(admin_conn.info.dsn, dbname=TEMPLATE)
    with psycopg.connect(template, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(OWNER)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(APP)))
    try:
        yield
    finally:
        drop()


def test_documented_conftest_builds_as_owner_and_tests_as_app(
    plugin_roles: None, admin_conn: psycopg.Connection, tmp_path: Path
):
    (tmp_path / "plug_settings.py").write_text(SETTINGS)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_plug.py").write_text(textwrap.dedent(TESTS))
    docs = (ROOT / "docs" / "testing.md").read_text()
    assert all(line in docs for line in CONFTEST.replace("  # noqa: F401", "").strip().splitlines())
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}", "DJANGO_SETTINGS_MODULE": "plug_settings"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(tmp_path),
         str(tmp_path / "test_plug.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "6 passed" in result.stdout
    assert "teardown test databases" not in result.stdout  # the owner dropped it, no session left on it
    assert admin_conn.execute("SELECT 1 FROM pg_database WHERE datname = 'test_rls_plug'").fetchone() is None
