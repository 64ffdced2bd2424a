"""The default site resolver, which runs before every query of a request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.contrib.sites import shortcuts
from django.core.signals import setting_changed
from django.test import RequestFactory

from django_rls import resolvers


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """apps.is_installed() answering as ``state["sites"]`` says for django.contrib.sites, and counting its questions."""
    state: dict[str, Any] = {"sites": False, "asked": 0}
    real = apps.is_installed

    def is_installed(name: str) -> bool:
        if name != "django.contrib.sites":
            return real(name)
        state["asked"] += 1
        return state["sites"]

    monkeypatch.setattr(apps, "is_installed", is_installed)
    monkeypatch.setattr(shortcuts, "get_current_site", lambda request: "the request's site")
    resolvers._sites_framework.cache_clear()
    yield state
    resolvers._sites_framework.cache_clear()


def test_current_site_asks_the_app_registry_once_until_installed_apps_change(registry, settings):
    request = RequestFactory().get("/")
    settings.SITE_ID = 3
    assert [resolvers.current_site(request) for _ in range(5)] == [3] * 5
    assert registry["asked"] == 1

    settings.SITE_ID = 4  # settings other than INSTALLED_APPS are read on every call
    assert resolvers.current_site(request) == 4
    assert registry["asked"] == 1

    # What override_settings(INSTALLED_APPS=...) sends once it has replaced the app registry.
    registry["sites"] = True
    setting_changed.send(sender=type(settings), setting="INSTALLED_APPS", value=[], enter=True)
    assert [resolvers.current_site(request) for _ in range(3)] == ["the request's site"] * 3
    assert registry["asked"] == 2

    registry["sites"] = False
    setting_changed.send(sender=type(settings), setting="INSTALLED_APPS", value=[], enter=False)
    assert resolvers.current_site(request) == 4
    assert registry["asked"] == 3
