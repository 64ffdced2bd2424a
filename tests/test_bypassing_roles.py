"""A site connected as a role the policies do not limit fails at its first query in a context (issue 14, item 15).

The statement marker path, through Django; tests/regress/sql/bypassing_roles.sql covers the
setter functions, role membership and the cache.
"""

from __future__ import annotations

import pytest
from django.db import ProgrammingError
from psycopg.conninfo import conninfo_to_dict

import django_rls
from tests.roles import BYPASS_ROLE, OWNER_ROLE, PASSWORD
from tests.testapp.models import Note


def _superuser(database) -> tuple[str, str | None]:
    admin = conninfo_to_dict(database.admin)
    return admin.get("user") or "postgres", admin.get("password")


@pytest.mark.parametrize(
    ("who", "reason"),
    [("superuser", "is a superuser"), ("bypassrls", "has BYPASSRLS"), ("owner", "a table django_rls protects")],
)
def test_a_site_connected_as_a_bypassing_role_fails_at_its_first_query_in_a_context(database, extra_alias, who, reason):
    user, password = {
        "superuser": _superuser(database),
        "bypassrls": (BYPASS_ROLE, PASSWORD),
        "owner": (OWNER_ROLE, PASSWORD),
    }[who]
    alias = extra_alias(f"as_{who}", user=user, password=password)
    with django_rls.context(site=1), pytest.raises(ProgrammingError) as raised:
        Note.objects.using(alias).count()
    cause = raised.value.__cause__
    assert cause.sqlstate == "42501"
    assert f'refuses to set a context for role "{user}"' in str(cause)
    assert reason in cause.diag.message_detail
    assert "NOSUPERUSER NOBYPASSRLS" in cause.diag.message_hint
    assert "django_rls.allow_bypassing_roles" in cause.diag.message_hint
    # Without a context nothing is refused: migrate, rls_apply and bypass() send none.
    assert Note.objects.using(alias).count() >= 0


def test_the_application_role_is_unaffected(live_db):
    with django_rls.context(site=1):
        assert set(Note.objects.values_list("site_id", flat=True)) == {1}


def test_a_superuser_may_allow_it_for_maintenance(database, extra_alias, admin_conn):
    user, password = _superuser(database)
    alias = extra_alias("as_allowed", user=user, password=password)
    from django.db import connections

    connections.settings[alias]["OPTIONS"] = {"options": "-c django_rls.allow_bypassing_roles=on"}
    with django_rls.context(site=1):
        assert (
            Note.objects.using(alias).count() == admin_conn.execute("SELECT count(*) FROM testapp_note").fetchone()[0]
        )
