"""The monitoring project of issue 15 (tests/monitor), tested as its users would: Django's own runner,
``manage.py test --parallel 2``, with django_rls's TEST_RUNNER and nothing but the documented API."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from psycopg import sql

from django_rls.roles import plan as hardening_plan
from django_rls.roles import specs as role_specs
from tests.roles import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "tests" / "monitor"
OWNER, APP, BYPASS, TEST_BYPASS = "rls_mon_owner", "rls_mon_app", "rls_mon_bypass", "rls_mon_test_bypass"
TEMPLATE = "rls_mon_template"
TEST_DATABASES = ("test_monitor", "test_monitor_1", "test_monitor_2")


def _identifiers(*names: str) -> list[sql.Identifier]:
    return [sql.Identifier(name) for name in names]


@pytest.fixture
def monitor_server(admin_conn: psycopg.Connection) -> Iterator[dict[str, str]]:
    def drop() -> None:
        for name in (*TEST_DATABASES, TEMPLATE):
            admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        for role in (TEST_BYPASS, BYPASS, APP, OWNER):
            admin_conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    drop()
    password = sql.Literal(PASSWORD)
    # The roles rls_roles sets up (the owner with --owner-createdb), and the test bypass role of docs/testing.md.
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(sql.Identifier(OWNER), password))
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(APP), password))
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS PASSWORD {}").format(sql.Identifier(BYPASS), password))
    admin_conn.execute(sql.SQL("GRANT {} TO {}").format(*_identifiers(OWNER, BYPASS)))
    admin_conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(*_identifiers(TEMPLATE, OWNER)))
    template = psycopg.conninfo.make_conninfo(admin_conn.info.dsn, dbname=TEMPLATE)
    with psycopg.connect(template, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(OWNER)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(APP)))
        with conn.transaction(), conn.cursor() as cursor:  # statement-bound application role, as rls_roles makes it
            for _, statement in hardening_plan(cursor, role_specs(APP, OWNER, BYPASS, None, {})):
                cursor.execute(statement)
    admin_conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN BYPASSRLS").format(sql.Identifier(TEST_BYPASS)))
    admin_conn.execute(sql.SQL("GRANT {} TO {}").format(*_identifiers(TEST_BYPASS, APP)))  # test servers only
    server = urlparse(os.environ["DATABASE_URL"])
    try:
        yield {
            "MONITOR_HOST": server.hostname or "127.0.0.1",
            "MONITOR_PORT": str(server.port or 5432),
            "MONITOR_PASSWORD": PASSWORD,
            "MONITOR_TEMPLATE": TEMPLATE,
            "MONITOR_APP": APP,
            "MONITOR_OWNER": OWNER,
            "MONITOR_BYPASS": BYPASS,
            "MONITOR_TEST_BYPASS": TEST_BYPASS,
        }
    finally:
        drop()


def test_manage_py_test_parallel(monitor_server: dict[str, str], admin_conn: psycopg.Connection):
    env = {**os.environ, **monitor_server, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "monitor.settings"}
    result = subprocess.run(
        [sys.executable, "manage.py", "test", "--parallel", "2", "--noinput", "-v", "2"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "Cloning test database for alias 'default'" in output
    assert "Ran 16 tests" in output and "\nOK" in output, output[-3000:]
    # The owner destroyed the clones and the test database.
    placeholders = sql.SQL(", ").join(sql.Literal(name) for name in TEST_DATABASES)
    query = sql.SQL("SELECT datname FROM pg_database WHERE datname IN ({})").format(placeholders)
    assert admin_conn.execute(query).fetchall() == []
