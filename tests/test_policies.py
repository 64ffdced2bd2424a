"""Declarations compile to the policy groups rls.protect() takes, or fail with a message naming the fix."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models import Q

from django_rls.expressions import CurrentSite, CurrentUser
from django_rls.policies import (
    BySite,
    BySiteAndOwner,
    Custom,
    Declaration,
    DeclarationError,
    Group,
    Membership,
    OwnerOrShared,
    Shared,
    ThroughParent,
)
from tests.testapp.models import ArticleTag, Bookmark, Category, Note, OrderLine, Project, TenantDoc


def groups(model, *policies):
    return Declaration(model._meta.label, policies).groups(connection)


def test_site_and_owner_pick_the_accessor_from_the_key_type():
    assert groups(Note, BySite("site")) == [Group("site", '"site_id" = rls.site_id()')]
    assert groups(TenantDoc, BySiteAndOwner("tenant", "owner_uuid")) == [
        Group("site", '"tenant_id" = rls.site_uuid()'),
        Group("owner", '"owner_uuid" = rls.user_uuid()'),
    ]


def test_shared_rows_are_read_everywhere_and_written_nowhere():
    assert groups(Category, Shared("site")) == [
        Group("site", '"site_id" = rls.site_id() OR "site_id" IS NULL', '"site_id" = rls.site_id()')
    ]
    assert groups(Bookmark, OwnerOrShared("owner", shared_field="is_public")) == [
        Group("owner", '"owner_id" = rls.user_id() OR "is_public" IS TRUE', '"owner_id" = rls.user_id()')
    ]


def test_membership_and_parents():
    assert groups(Project, Membership("testapp.SiteMembership")) == [
        Group(
            "membership",
            '"site_id" IN (SELECT m."site_id" FROM "testapp_sitemembership" m WHERE m."user_id" = rls.user_id())',
        )
    ]
    (group,) = groups(ArticleTag, ThroughParent("article", "tag"))
    assert group.using == (
        'EXISTS (SELECT 1 FROM "testapp_article" p WHERE p."id" = "testapp_articletag"."article_id") AND '
        'EXISTS (SELECT 1 FROM "testapp_tag" p WHERE p."id" = "testapp_articletag"."tag_id")'
    )


def test_custom_q_and_sql():
    (group,) = groups(
        Note, Custom(Q(site=CurrentSite()) | Q(author=CurrentUser(), body__startswith="50%"), commands=["select"])
    )
    assert group.commands == ("select",)
    assert "rls.site_id()" in group.using and "rls.user_id()" in group.using
    assert "LIKE  E'50\\\\%%'" in group.using  # the parameter is inlined as an escaped literal
    assert groups(Note, Custom("body <> ''", name="nonempty")) == [Group("nonempty", "body <> ''")]


@pytest.mark.parametrize(
    ("model", "policies", "message"),
    [
        (Note, (BySite("tenant"),), "has no field 'tenant'"),
        (Note, (BySite("body"),), "must be integers or UUIDs"),
        (OrderLine, (BySite("order__site"),), "has no field"),
        (Note, (Custom(Q(site__domain="x")),), "follows a relation"),
        (Note, (BySite("site"), Shared("site")), "both define the 'site' group"),
        (Bookmark, (OwnerOrShared("owner", shared_field="url"),), "must be a BooleanField"),
        (Project, (Membership("testapp.Nope"),), "is not installed"),
        (Note, (ThroughParent("body"),), "must be a ForeignKey"),
    ],
)
def test_bad_declarations_say_what_to_fix(model, policies, message):
    with pytest.raises(DeclarationError, match=message):
        groups(model, *policies)


def test_commands_are_validated():
    with pytest.raises(DeclarationError, match="subset"):
        BySite("site", commands=["truncate"])
