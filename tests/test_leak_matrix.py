"""The leak matrix over every protected model of the test app, as the app role, sync and async."""

from __future__ import annotations

import io

import pytest
from asgiref.sync import sync_to_async

from django_rls.testing import leak_matrix
from tests.modes import RLS_APPLY_OPTIONS
from tests.seed import OWNER_A, OWNER_B, TENANT_A, TENANT_B

INT_MODELS = [
    "testapp.Note",
    "testapp.Task",
    "testapp.Category",
    "testapp.Project",
    "testapp.SiteMembership",  # Members: the membership table itself
    "testapp.Order",
    "testapp.OrderLine",
    "testapp.Tag",
    "testapp.Article",
    "testapp.ArticleTag",
    "testapp.Bookmark",
    "testapp.Team",  # OwnerOrMember: membership read with rls.member_of()
    "testapp.TeamMember",  # Members(parent=True): reads the team, which does not read it back in SQL
    "testapp.Monitor",  # ThroughParent on a parent keyed by the site: compares its own key
    "testapp.Ping",  # ThroughParent with or_where and null_parent="read"
    "testapp.Folder",  # BySite with movable_to
    "thirdparty.Gadget",  # protected from tests/testapp/rls.py, without editing the model
    "thirdparty.Widget",  # protected from settings.DJANGO_RLS["MODELS"]
]


def _users():
    from django.contrib.auth.models import User

    return {u.username: u.pk for u in User.objects.all()}


@pytest.mark.django_db
def test_integer_keys_two_sites(rls_leak_matrix):
    users = _users()
    rls_leak_matrix([{"site": 1, "user": users["alice"]}, {"site": 2, "user": users["bob"]}], INT_MODELS)


@pytest.mark.django_db
def test_uuid_keys_two_tenants(rls_leak_matrix):
    rls_leak_matrix([{"site": TENANT_A, "user": OWNER_A}, {"site": TENANT_B, "user": OWNER_B}], ["testapp.TenantDoc"])


@pytest.mark.django_db
def test_two_users_of_one_site(rls_leak_matrix):
    users = _users()
    rls_leak_matrix([{"site": 1, "user": users["alice"]}, {"site": 1, "user": users["carol"]}], ["testapp.Task"])


@pytest.mark.django_db(transaction=False)
async def test_async_matrix():
    users = await sync_to_async(_users)()
    leaks = await sync_to_async(leak_matrix)(
        [{"site": 1, "user": users["alice"]}, {"site": 2, "user": users["bob"]}], INT_MODELS
    )
    assert leaks == []


def test_the_matrix_catches_a_real_leak(live_db):
    """Weaken one policy behind django_rls's back: the matrix must report exactly that hole."""
    from django.core.management import call_command
    from django.db import connections

    users = _users()
    with connections["owner"].cursor() as cursor:
        # Both policies that check an inserted row's site: the group's and rls_base_insert, which carries
        # the same expression so that no single policy opens the table.
        for policy in ("rls_site_insert", "rls_base_insert"):
            cursor.execute(f"ALTER POLICY {policy} ON testapp_note WITH CHECK (true)")
    try:
        leaks = leak_matrix([{"site": 1, "user": users["alice"]}, {"site": 2, "user": users["bob"]}], ["testapp.Note"])
    finally:
        call_command("rls_apply", database="owner", verbosity=0, stderr=io.StringIO(), **RLS_APPLY_OPTIONS)
    assert [leak.operation for leak in leaks] == ["insert", "insert"], leaks
