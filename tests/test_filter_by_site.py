"""DJANGO_RLS["FILTER_BY_SITE"] (issue 17 item 3): the explicit site conjunct on queries of BySite models.

As the app role on the test cluster: the conjunct is in the SQL of every query kind
Django builds on a BySite (or BySiteAndOwner) model, only when the context has a site
and the setting is on; results are the same with it and without it; a context that
changes between queries (nested context(), switch_context() in a view) is followed
query by query; bypass() and models whose policies admit other rows get none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.sites.models import Site
from django.db import connections
from django.db.models import Count, F, Prefetch
from django.test.utils import CaptureQueriesContext

import django_rls
from django_rls.router import site_attname
from tests.testapp.models import Article, Category, Folder, Note, Tag, Task

# The note table under its own name or a subquery's alias (U0; Django 6.1 quotes it): only note queries are captured.
NOTE_SITE = re.compile(r'(?:"testapp_note"|"?U\d+"?)\."site_id" = (\d+)')


@pytest.fixture
def filtering(settings: Any) -> Iterator[None]:
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "FILTER_BY_SITE": True}
    yield


def captured(run: Callable[[], Any]) -> tuple[Any, list[str]]:
    with CaptureQueriesContext(connections["default"]) as queries:
        result = run()
    return result, [query["sql"] for query in queries.captured_queries]


def _read_kinds() -> dict[str, Callable[[], Any]]:
    return {
        "select": lambda: sorted(Note.objects.values_list("id", "site_id")),
        "get": lambda: Note.objects.order_by("id").first().body,
        "related lookup": lambda: sorted(Note.objects.filter(site__domain__contains=".").values_list("id", flat=True)),
        "related manager": lambda: sorted(Site.objects.get(pk=1).note_set.values_list("id", flat=True)),
        "subquery": lambda: sorted(Note.objects.filter(id__in=Note.objects.values("id")).values_list("id", flat=True)),
        "prefetch": lambda: sorted(
            (site.pk, len(site.notes)) for site in Site.objects.prefetch_related(Prefetch("note_set", to_attr="notes"))
        ),
        "aggregate": lambda: Note.objects.aggregate(n=Count("id")),
        "count": lambda: Note.objects.count(),
        "grouped count": lambda: Note.objects.values("site").annotate(n=Count("id")).count(),
        "exists": lambda: Note.objects.filter(body__contains="note").exists(),
        "union": lambda: sorted(Note.objects.values_list("id").union(Note.objects.values_list("id"))),
    }


@pytest.mark.parametrize("kind", list(_read_kinds()))
def test_each_read_carries_the_site_and_returns_what_it_returns_without(live_db, settings, kind):
    run = _read_kinds()[kind]
    with django_rls.context(site=1):
        plain, plain_sql = captured(run)
        settings.DJANGO_RLS = {**settings.DJANGO_RLS, "FILTER_BY_SITE": True}
        result, sql = captured(run)
    assert result == plain
    plain_notes = [query for query in plain_sql if '"testapp_note"' in query]
    note_queries = [query for query in sql if '"testapp_note"' in query]
    assert note_queries and len(note_queries) == len(plain_notes)
    for before, after in zip(plain_notes, note_queries, strict=True):
        # One conjunct more for each query on the table (a subquery or a union's part is a query of its own).
        added = len(NOTE_SITE.findall(after)) - len(NOTE_SITE.findall(before))
        assert added == (2 if kind in ("subquery", "union") else 1), (before, after)
        assert set(NOTE_SITE.findall(after)) == {"1"}, after


def test_update_save_and_delete_carry_the_site(live_db, filtering):
    with django_rls.context(site=2):
        changed, update_sql = captured(lambda: Note.objects.filter(body__contains="note").update(body=F("body")))
        note = Note.objects.create(site_id=2, body="filter by site")
        note.body = "filter by site, saved"
        _, save_sql = captured(note.save)
        deleted, delete_sql = captured(lambda: Note.objects.filter(pk=note.pk).delete())
    assert changed == 3
    assert deleted[0] == 1
    for sql, statement in ((update_sql, "UPDATE"), (save_sql, "UPDATE"), (delete_sql, "DELETE")):
        written = [query for query in sql if f"{statement} " in query]
        assert written, sql
        assert all(NOTE_SITE.findall(query) == ["2"] for query in written), written


def test_explain_shows_the_conjunct_in_the_plan(live_db, filtering):
    with django_rls.context(site=2):
        plan = Note.objects.filter(body__contains="note").explain()
    assert re.search(r"site_id = 2\b", plan), plan


def test_no_site_no_setting_or_a_bypass_adds_nothing(live_db, settings):
    def kinds() -> list[str]:
        return captured(lambda: (list(Note.objects.all()), Note.objects.filter(pk=0).update(body="x")))[1]

    with django_rls.context(site=1):
        assert not any(NOTE_SITE.search(query) for query in kinds())  # the setting is off
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "FILTER_BY_SITE": True}
    with django_rls.context(site=None, user=1):
        assert not any(NOTE_SITE.search(query) for query in kinds())
    assert not any(NOTE_SITE.search(query) for query in kinds())  # no context at all
    with django_rls.bypass("test: no site filter in a bypass"):
        with CaptureQueriesContext(connections["bypass"]) as queries:
            assert Note.objects.count() == 6
    assert not any(NOTE_SITE.search(query["sql"]) for query in queries.captured_queries)


def test_the_site_is_read_when_the_query_runs(live_db, filtering):
    """A queryset built under one context and evaluated under another gets the other's site."""
    with django_rls.context(site=1):
        notes = Note.objects.values_list("site_id", flat=True)
        with django_rls.context(site=2):
            inner, inner_sql = captured(lambda: set(notes))
        outer, outer_sql = captured(lambda: set(notes.all()))
    assert (inner, outer) == ({2}, {1})
    assert NOTE_SITE.findall(inner_sql[0]) == ["2"]
    assert NOTE_SITE.findall(outer_sql[0]) == ["1"]


def test_switch_context_in_a_view_is_followed(live_db, filtering, client):
    with CaptureQueriesContext(connections["default"]) as queries:
        body = client.get("/switch/", HTTP_HOST="megacorp1.test").json()
    assert (body["before"], body["after"], body["written_before_visible"]) == ([1], [2], False)
    sites = [NOTE_SITE.findall(query["sql"]) for query in queries.captured_queries if "testapp_note" in query["sql"]]
    assert [found for found in sites if found] == [["1"], ["2"], ["2"]]
    with django_rls.bypass("test cleanup"):
        Note.objects.filter(pk=body["note"]).delete()


def test_only_models_whose_rows_all_carry_the_site(live_db, filtering):
    """Shared (NULL sites), movable_to (a second site), BySite short of every command: no conjunct."""
    assert site_attname((django_rls.policies.BySite("site"),), Note) == "site_id"
    with django_rls.context(site=1, user=1):
        for model, filtered in ((Task, True), (Tag, True), (Category, False), (Folder, False), (Article, False)):
            _, sql = captured(lambda model=model: list(model.objects.all()))
            table = model._meta.db_table
            assert bool(re.search(rf'"{table}"\."site_id" = 1', sql[0])) is filtered, (model, sql)


def test_a_declaration_of_a_missing_model_leaves_the_others_filtered(live_db, settings):
    """The checks report such a declaration (E005); the queries of every other model still run, filtered."""
    models = {**settings.DJANGO_RLS["MODELS"], "testapp.Missing": {"policy": "site"}}
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "FILTER_BY_SITE": True, "MODELS": models}
    with django_rls.context(site=1):
        _, sql = captured(lambda: list(Note.objects.all()))
    assert NOTE_SITE.findall(sql[0]) == ["1"]
