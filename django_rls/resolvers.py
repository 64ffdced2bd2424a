"""Ways to find a request's site and user; pick them with DJANGO_RLS["SITE_RESOLVER"] / ["USER_RESOLVER"].

A resolver is any callable ``(request) -> value`` where value is a model
instance, a primary key or None (no site / anonymous user: the request then
sees no rows of tables protected by that value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest


def current_site(request: HttpRequest) -> Any:
    """The site of ``django.contrib.sites`` for this request (by domain, or SITE_ID)."""
    if apps.is_installed("django.contrib.sites"):
        from django.contrib.sites.models import Site
        from django.contrib.sites.shortcuts import get_current_site

        try:
            return get_current_site(request)
        except Site.DoesNotExist:
            return None  # an unknown host has no site: it sees no site's rows
    return getattr(settings, "SITE_ID", None)


def authenticated_user(request: HttpRequest) -> Any:
    """``request.user`` when authenticated (including users DRF authenticates in the view), else None."""
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return user


def from_attribute(name: str) -> Callable[[HttpRequest], Any]:
    """A resolver that reads an attribute your own middleware sets, e.g. ``from_attribute("space")``."""

    def resolve(request: HttpRequest) -> Any:
        return getattr(request, name, None)

    resolve.__name__ = f"from_attribute_{name}"
    resolve.__qualname__ = resolve.__name__
    return resolve


def scoped_site(request: HttpRequest | None = None) -> Any:
    """The site of the active django-scopes scope, under the keyword DJANGO_RLS["DJANGO_SCOPES_SITE"] names.

    Read before every query, so a scope entered half-way through a request counts from
    its first query on. The site resolver when that setting is on; None outside a scope.
    """
    from django_rls.conf import rls_settings

    keyword = rls_settings.DJANGO_SCOPES_SITE
    if keyword is None:
        return None
    try:
        from django_scopes import get_scope
    except ImportError as exc:
        raise ImproperlyConfigured(
            'DJANGO_RLS["DJANGO_SCOPES_SITE"] is set but django-scopes is not installed: pip install django-scopes'
        ) from exc
    site = get_scope().get(keyword)
    if isinstance(site, list | tuple | set | frozenset):
        raise ImproperlyConfigured(
            f"the active django-scopes scope holds {len(site)} values for {keyword!r}; django_rls runs each query "
            f"as one site: enter scope({keyword}=one_site) around code that queries protected tables"
        )
    return site
