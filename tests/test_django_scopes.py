"""DJANGO_RLS["DJANGO_SCOPES_SITE"]: the site comes from the active django-scopes scope (issue 14, item 12)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, JsonResponse
from django.test import RequestFactory, override_settings
from django_scopes import scope, scopes_disabled

import django_rls
from django_rls.conf import validate
from django_rls.middleware import RlsMiddleware
from tests import settings as test_settings
from tests.testapp.models import Note


@pytest.fixture
def scoped() -> Iterator[None]:
    with override_settings(DJANGO_RLS={**test_settings.DJANGO_RLS, "DJANGO_SCOPES_SITE": "space"}):
        yield


def sites_seen() -> set[int]:
    return set(Note.objects.values_list("site_id", flat=True))


def test_code_in_a_scope_sees_that_sites_rows(live_db, scoped):
    with scope(space=1):
        assert sites_seen() == {1}
        with scope(space=2):
            assert sites_seen() == {2}
    assert sites_seen() == set()  # outside a scope: no site, no rows


def test_a_thread_that_enters_a_scope_itself_gets_its_site(live_db, scoped):
    seen: dict[str, set[int]] = {}

    def worker(name: str, site: int) -> None:
        with scope(space=site):
            seen[name] = sites_seen()
        seen[f"{name} after"] = sites_seen()

    threads = [threading.Thread(target=worker, args=(f"t{s}", s)) for s in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"t1": {1}, "t1 after": set(), "t2": {2}, "t2 after": set()}


def test_a_scope_entered_half_way_through_a_request_counts_from_then_on(live_db, scoped):
    def view(request: HttpRequest) -> JsonResponse:
        before = sorted(sites_seen())
        with scope(space=2):
            during = sorted(sites_seen())
        return JsonResponse({"before": before, "during": during})

    response = RlsMiddleware(view)(RequestFactory().get("/"))
    assert response.status_code == 200
    assert json.loads(response.content) == {"before": [], "during": [2]}


def test_context_and_no_context_win_over_the_scope(live_db, scoped):
    with scope(space=1):
        with django_rls.context(site=2):
            assert sites_seen() == {2}
        with django_rls.no_context():
            assert sites_seen() == set()


def test_scopes_disabled_does_not_widen_what_the_database_returns(live_db, scoped):
    with scope(space=1), scopes_disabled():
        assert sites_seen() == {1}


def test_a_scope_of_several_sites_is_refused(live_db, scoped):
    with scope(space=[1, 2]), pytest.raises(ImproperlyConfigured, match="holds 2 values for 'space'"):
        sites_seen()


def test_without_the_setting_a_scope_changes_nothing(live_db):
    with scope(space=1):
        assert sites_seen() == set()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"DJANGO_SCOPES_SITE": "not a keyword"}, "must be the keyword"),
        ({"DJANGO_SCOPES_SITE": "space", "SITE_RESOLVER": "django_rls.resolvers.current_site"}, "remove one of them"),
    ],
)
def test_bad_settings_say_what_to_do(extra, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        validate(extra)


def test_a_missing_django_scopes_is_reported(scoped, monkeypatch):
    import sys

    from django_rls.checks import check_django_scopes

    assert check_django_scopes() == []
    monkeypatch.setitem(sys.modules, "django_scopes", None)  # as if not installed
    (error,) = check_django_scopes()
    assert error.id == "django_rls.E021" and "pip install django-scopes" in error.hint
