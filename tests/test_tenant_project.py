"""The second test project (tests/tenantproject, issue 14): its own suite, run as its users would.

Its roles and template database are made here as docs/testing.md says; its tests run in a
subprocess through the documented pytest plugin, as the application role. Then
``manage.py rls_migrate`` migrates a fresh database of it as the owner, where a plain
``migrate --database owner`` stops at its data migration that writes through the default alias.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ROOT / "tests" / "tenantproject"
OWNER, APP, TEST_BYPASS = "rls_tp_owner", "rls_tp_app", "rls_tp_test_bypass"
TEMPLATE, NAME, FRESH = "rls_tp_template", "rls_tp", "rls_tp_fresh"
PASSWORD = "x"


def _env(database: str = NAME) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.tenantproject.settings",
        "TENANTPROJECT_DB": database,
        "TENANTPROJECT_TEMPLATE": TEMPLATE,
        "TENANTPROJECT_OWNER": OWNER,
        "TENANTPROJECT_APP": APP,
        "TENANTPROJECT_TEST_BYPASS": TEST_BYPASS,
        "TENANTPROJECT_PASSWORD": PASSWORD,
    }


@pytest.fixture
def project_roles(admin_conn: psycopg.Connection) -> Iterator[None]:
    def drop() -> None:
        for name in (f"test_{NAME}", NAME, FRESH, TEMPLATE):
            admin_conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        for role in (TEST_BYPASS, APP, OWNER):
            admin_conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    drop()
    admin_conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(sql.Identifier(OWNER), sql.Literal(PASSWORD))
    )
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(APP), sql.Literal(PASSWORD)))
    admin_conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN BYPASSRLS").format(sql.Identifier(TEST_BYPASS)))
    admin_conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(TEST_BYPASS), sql.Identifier(APP)))
    for database in (TEMPLATE, NAME, FRESH):
        admin_conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(OWNER))
        )
        dsn = psycopg.conninfo.make_conninfo(admin_conn.info.dsn, dbname=database)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION django_rls")
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(OWNER)))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(APP)))
            conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
    try:
        yield
    finally:
        drop()


def test_the_projects_own_suite_passes_as_the_app_role(project_roles: None):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(PROJECT), "--confcutdir", str(PROJECT),
         str(PROJECT / "test_shop.py")],
        cwd=PROJECT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "8 passed" in result.stdout


def _manage(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args], cwd=ROOT, env=_env(database), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_rls_migrate_runs_data_migrations_that_use_the_default_alias_as_the_owner(
    project_roles: None, admin_conn: psycopg.Connection
):
    plain = _manage(NAME, "migrate", "--database", "owner")
    assert plain.returncode != 0
    assert "permission denied for table shop_label" in plain.stderr
    migrated = _manage(FRESH, "rls_migrate")
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    assert "Applying account.0006_emailaddress_lower... OK" in migrated.stdout  # allauth's data migrations
    assert "Applying shop.0002_shared_labels... OK" in migrated.stdout
    with psycopg.connect(psycopg.conninfo.make_conninfo(admin_conn.info.dsn, dbname=FRESH)) as conn:
        assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'shop_label'").fetchone() == (OWNER,)
        assert conn.execute("SELECT count(*) FROM shop_label WHERE company_id IS NULL").fetchone() == (2,)
        # APPLY_AFTER_MIGRATE ran rls_apply, for the application role, not the owner.
        assert conn.execute(
            "SELECT DISTINCT polroles::regrole[]::text FROM pg_policy WHERE polrelid = 'shop_article'::regclass"
        ).fetchall() == [(f"{{{APP}}}",)]
    in_sync = _manage(FRESH, "rls_apply", "--check")
    assert in_sync.returncode == 0, in_sync.stdout[-3000:] + in_sync.stderr[-3000:]
