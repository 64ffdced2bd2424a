"""The application role is read once at startup (issue 15 item 8), and rls_apply honours --verbosity 0."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.db import connections

from django_rls.conf import app_role
from django_rls.planner import make_plan
from tests.roles import APP_ROLE, OWNER_ROLE


@pytest.fixture
def default_as_owner(live_db: None):
    """What a test runner does while it builds the test database: "default" connects as the owner."""
    settings_dict = connections["default"].settings_dict
    saved = settings_dict["USER"]
    connections["default"].close()
    settings_dict["USER"] = OWNER_ROLE
    try:
        yield
    finally:
        connections["default"].close()
        settings_dict["USER"] = saved


def test_the_application_role_does_not_follow_default_to_the_owner(default_as_owner):
    assert connections["default"].settings_dict["USER"] == OWNER_ROLE
    assert app_role() == APP_ROLE
    # rls_apply through "default" (now the owner) still grants to and protects for the application role.
    assert make_plan(connections["default"]).app_role == APP_ROLE
    assert "already match" in _apply(database="default", verbosity=1)


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_override_settings_of_databases_is_read_again(settings):
    databases = {alias: dict(value) for alias, value in settings.DATABASES.items()}
    databases["default"]["USER"] = "someone_else"
    settings.DATABASES = databases
    assert app_role() == "someone_else"
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "APP_ROLE": "explicit"}
    assert app_role() == "explicit"


def _apply(*args: str, **options: object) -> str:
    out = io.StringIO()
    call_command("rls_apply", *args, stdout=out, **options)
    return out.getvalue()


def test_rls_apply_verbosity_0_prints_nothing(live_db: None):
    assert _apply(verbosity=0) == ""
    assert _apply("--check", verbosity=0) == ""
    assert "already match" in _apply(verbosity=1)
    assert _apply("--sql", verbosity=0) == "-- nothing to do\n"  # the SQL asked for is the output
