"""Ways to find a request's site and user; pick them with DJANGO_RLS["SITE_RESOLVER"] / ["USER_RESOLVER"].

A resolver is any callable ``(request) -> value`` where value is a model
instance, a primary key or None (no site / anonymous user: the request then
sees no rows of tables protected by that value).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest


@functools.cache
def _sites_framework() -> tuple[type[Exception], Callable[[HttpRequest], Any]] | None:
    """``Site.DoesNotExist`` and ``get_current_site`` of ``django.contrib.sites``, or None when it is not installed.

    The site resolver runs before every query, so the app registry is asked once, not each
    time; the answer is forgotten whenever INSTALLED_APPS changes (``override_settings``).
    """
    if not apps.is_installed("django.contrib.sites"):
        return None
    from django.contrib.sites.models import Site
    from django.contrib.sites.shortcuts import get_current_site

    return Site.DoesNotExist, get_current_site


@receiver(setting_changed)
def _forget(*, setting: str, **kwargs: Any) -> None:
    if setting == "INSTALLED_APPS":
        _sites_framework.cache_clear()


def current_site(request: HttpRequest) -> Any:
    """The site of ``django.contrib.sites`` for this request (by domain, or SITE_ID)."""
    sites = _sites_framework()
    if sites is not None:
        does_not_exist, get_current_site = sites
        try:
            return get_current_site(request)
        except does_not_exist:
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


def by_lookup(
    model: str,
    field: str,
    *,
    url_kwarg: str | None = None,
    header: str | None = None,
    value: Callable[[HttpRequest], Any] | None = None,
) -> LookupResolver:
    """A site resolver that finds the request's row by a declared ``Lookup``, and hands the row to the view.

    The key comes from exactly one of: a keyword argument of the URL pattern
    (``url_kwarg="code"`` for ``/ping/<uuid:code>/``), a request header
    (``header="X-Api-Key"``), or ``value(request)``. The site is the row's Lookup
    ``site`` field. The row is looked up once per request (``django_rls.lookups.find``),
    at the request's first query or when the view asks ``resolver.row(request)``
    first, which returns it (None when no row has that key) without querying again.
    Combine several with ``first_of()``.
    """
    if sum(source is not None for source in (url_kwarg, header, value)) != 1:
        raise ValueError("by_lookup() takes exactly one of url_kwarg=, header= and value=")
    if value is not None:
        read = value
    elif url_kwarg is not None:
        read = _url_kwarg_reader(url_kwarg)
    else:
        read = _header_reader(str(header))
    return LookupResolver(model, field, read)


class LookupResolver:
    """What ``by_lookup()`` returns: call it for the request's site, ``row()`` for the row that gave it."""

    def __init__(self, model: str, field: str, read: Callable[[HttpRequest], Any]) -> None:
        self.model = model
        self.field = field
        self.read = read
        self.__name__ = self.__qualname__ = f"by_lookup_{model.replace('.', '_')}_{field}"
        self._cache_key = f"_django_rls_{self.__name__}"

    def row(self, request: HttpRequest) -> Any:
        """The row the request's key names, or None; looked up once per request."""
        return self._found(request)[0]

    def __call__(self, request: HttpRequest) -> Any:
        # Called before every query of the request: the answer is kept on the request.
        return self._found(request)[1]

    def _found(self, request: HttpRequest) -> tuple[Any, Any]:
        from django_rls.lookups import find, site_of

        found = request.__dict__.get(self._cache_key)
        if found is None:
            key = self.read(request)
            row = find(self.model, self.field, key) if key is not None else None
            found = (row, None if row is None else site_of(self.model, self.field, row))
            request.__dict__[self._cache_key] = found
        return found


def _header_reader(header: str) -> Callable[[HttpRequest], Any]:
    meta_key = "HTTP_" + header.upper().replace("-", "_")

    def read(request: HttpRequest) -> Any:
        return request.META.get(meta_key)

    return read


def _url_kwarg_reader(name: str) -> Callable[[HttpRequest], Any]:
    def read(request: HttpRequest) -> Any:
        from django.urls import Resolver404, resolve

        # Set by Django once the URL is resolved; a query made earlier (by a middleware) resolves it here.
        match = getattr(request, "resolver_match", None)
        if match is None:
            try:
                match = resolve(request.path_info, getattr(request, "urlconf", None))
            except Resolver404:
                return None
        return match.kwargs.get(name)

    return read


def first_of(*resolvers: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """A resolver that returns the first answer of these that is not None (a site from the URL, else from a key)."""

    def resolve(request: HttpRequest) -> Any:
        for resolver in resolvers:
            found = resolver(request)
            if found is not None:
                return found
        return None

    resolve.__name__ = resolve.__qualname__ = "first_of_" + "_".join(r.__name__ for r in resolvers)
    resolve.resolvers = resolvers  # type: ignore[attr-defined]  # what check E025 looks into
    return resolve


def from_url_kwarg(name: str) -> Callable[[HttpRequest], Any]:
    """A site resolver that reads a keyword argument of the URL pattern: ``/projects/<uuid:project>/``.

    No query: an id in a URL is not a secret, so it only says which site the request
    works in, and the policies decide what the request's user may see there (make the
    tenant's own policy require the user's membership). For a key that is itself the
    permission (an API key, a secret ping URL), use ``by_lookup()``.
    """
    read = _url_kwarg_reader(name)
    read.__name__ = read.__qualname__ = f"from_url_kwarg_{name}"
    return read
