"""Declared lookups compile to SELECT groups that let one exact key through (issue 15 item 2); their mistakes are
refused with what to fix. Lookups at work, as the app role, are in tests/monitor (test_monitor_project.py)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import RequestFactory
from django.urls import path

import django_rls
from django_rls.declarations import _from_settings
from django_rls.lookups import Lookup, find
from django_rls.middleware import RequestFrame
from django_rls.policies import BySite, Custom, Declaration, DeclarationError
from django_rls.resolvers import first_of, from_url_kwarg


def groups(*policies):
    return {g.name: g for g in Declaration("testapp.Note", policies).groups(connection)}


def test_a_lookup_splits_off_each_groups_select_and_widens_it():
    found = groups(BySite("site"), Lookup("id", site="site"))
    assert found["site"].commands == ("insert", "update", "delete")
    assert found["site"].using == '"site_id" = rls.site_id()'
    lookup = found["site_lookup"]
    assert lookup.commands == ("select",)
    assert lookup.using == '("site_id" = rls.site_id()) OR "id" = rls.claim(\'lookup:testapp_note.id\')::bigint'
    # A group limited to SELECT is widened in place of being split.
    found = groups(BySite("site", commands=["insert"]), Custom("true", commands=["select"], name="open"))
    assert set(found) == {"site", "open"}
    found = groups(Custom("body <> ''", commands=["select"], name="live"), Lookup("id", site="site"))
    assert set(found) == {"live_lookup"}


def test_lookup_mistakes_are_refused_with_what_to_fix():
    with pytest.raises(DeclarationError, match="not unique"):
        groups(BySite("site"), Lookup("body", site="site"))
    assert Declaration("testapp.Tenant", (Custom("true"), Lookup("id", site="id"))).groups(connection)  # a UUID
    with pytest.raises(DeclarationError, match="cannot be a lookup key"):
        Declaration("testapp.Bookmark", (Custom("true"), Lookup("is_public", site="owner"))).groups(connection)
    with pytest.raises(DeclarationError, match="only lookups"):
        groups(Lookup("id", site="site"))
    with pytest.raises(DeclarationError, match="site and user keys must be integers or UUIDs"):
        groups(BySite("site"), Lookup("id", site="body"))
    with pytest.raises(DeclarationError, match=r"declares no Lookup\('id'\)"):
        find("testapp.Note", "id", 1)


def test_lookup_from_settings():
    declaration = _from_settings(
        "testapp.Note", {"policies": [{"policy": "site"}, {"policy": "lookup", "field": "id", "site": "site"}]}
    )
    assert {g.name for g in declaration.groups(connection)} == {"site", "site_lookup"}


def test_the_lookup_claims_are_reserved(settings):
    with pytest.raises(ValueError, match="lookup:"):
        django_rls.context(claims={"lookup:testapp_note.id": "1"})
    settings.DJANGO_RLS = {
        **settings.DJANGO_RLS,
        "SITE_RESOLVER": None,
        "CLAIMS_RESOLVER": lambda request: {"lookup:testapp_note.id": "1"},
    }
    with pytest.raises(ValueError, match="lookup:"):
        RequestFrame(RequestFactory().get("/")).values()


urlpatterns = [path("projects/<uuid:project>/", lambda request, project: None)]


@pytest.mark.urls(__name__)
def test_url_kwarg_and_first_of():
    from_url = from_url_kwarg("project")
    fixed = first_of(lambda request: None, from_url, lambda request: "never asked")
    request = RequestFactory().get("/projects/7c4f1c1e-54a4-4c3e-9b1c-0c6b1c1e54a4/")
    # Before Django resolves the URL (a middleware's query), the resolver resolves it itself.
    assert str(from_url(request)) == "7c4f1c1e-54a4-4c3e-9b1c-0c6b1c1e54a4"
    assert str(fixed(request)) == "7c4f1c1e-54a4-4c3e-9b1c-0c6b1c1e54a4"
    assert from_url(RequestFactory().get("/elsewhere/")) is None


def test_e025_a_lookup_resolver_without_its_lookup(settings):
    from django_rls.checks import check_lookups
    from django_rls.resolvers import by_lookup

    assert check_lookups() == []  # the test settings resolve by django.contrib.sites
    settings.DJANGO_RLS = {
        **settings.DJANGO_RLS,
        "SITE_RESOLVER": first_of(
            from_url_kwarg("site"),
            by_lookup("testapp.Note", "id", header="X-Key"),
            first_of(by_lookup("testapp.Nothing", "id", header="X-Key")),
        ),
    }
    note, nothing = check_lookups()
    assert note.id == nothing.id == "django_rls.E025"
    assert "by_lookup_testapp_Note_id finds nothing" in note.msg
    assert "declares no Lookup('id')" in note.hint
    assert "'testapp.Nothing', which is not installed" in nothing.msg
