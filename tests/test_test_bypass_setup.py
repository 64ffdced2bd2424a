"""A TEST_BYPASS_ROLE that cannot work is refused before the first test, with the SQL that sets it up."""

from __future__ import annotations

import psycopg
import pytest

from django_rls.testing import TestBypassRefused as BypassRefused
from django_rls.testing import grant_like_application
from django_rls.testing import test_bypass as bypass_in_test
from tests.roles import APP_ROLE

ROLE = "rls_t_half_made_bypass"


@pytest.fixture
def half_made(admin_conn: psycopg.Connection):
    admin_conn.execute(f"CREATE ROLE {ROLE} NOLOGIN")
    yield
    admin_conn.execute(f"DROP ROLE {ROLE}")


def refusal(conn: psycopg.Connection, role: str) -> str:
    with conn.cursor() as cursor, pytest.raises(BypassRefused) as refused:
        grant_like_application(cursor, APP_ROLE, role)
    return str(refused.value)


def test_a_missing_role_is_refused_with_its_setup(admin_conn):
    message = refusal(admin_conn, "rls_t_no_such_role")
    assert "TEST_BYPASS_ROLE\"] = 'rls_t_no_such_role' does not exist" in message
    assert f'CREATE ROLE "rls_t_no_such_role" NOLOGIN BYPASSRLS; GRANT "rls_t_no_such_role" TO "{APP_ROLE}";' in message
    assert "docs/testing.md" in message


def test_a_role_without_bypassrls_or_membership_is_refused(admin_conn, half_made):
    assert f"{ROLE!r} has no BYPASSRLS" in refusal(admin_conn, ROLE)
    admin_conn.execute(f"ALTER ROLE {ROLE} BYPASSRLS")
    assert f"{ROLE!r} is not a role {APP_ROLE} is a member of" in refusal(admin_conn, ROLE)
    admin_conn.execute(f"GRANT {ROLE} TO {APP_ROLE}")
    try:
        with admin_conn.cursor() as cursor:
            grant_like_application(cursor, APP_ROLE, ROLE)  # set up: no refusal
    finally:
        admin_conn.execute(f"REVOKE {ROLE} FROM {APP_ROLE}")
        admin_conn.execute(f"DROP OWNED BY {ROLE}")


def test_without_the_setting_the_refusal_says_what_to_make(settings):
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "TEST_BYPASS_ROLE": None}
    with pytest.raises(BypassRefused) as refused, bypass_in_test():
        pass
    assert "a NOLOGIN BYPASSRLS role the application role is a member of" in str(refused.value)
    assert 'CREATE ROLE "app_test_bypass" NOLOGIN BYPASSRLS' in str(refused.value)
