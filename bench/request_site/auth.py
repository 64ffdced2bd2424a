"""Who the request is, without a query: every variant gets the same signed-in user and tenant.

A site that authenticates with a stateless token works this way; sessions and user lookups
would add the same queries to every variant and hide what the RLS middleware itself costs.
The user satisfies what each package reads: ``request.user.id`` (django-rls), the
``TenantUser`` protocol (django-rls-tenants: ``is_tenant_admin``, ``rls_tenant_id``), and
``request.tenant.id`` (django-rls's tenant). Ours reads the user's id through USER_RESOLVER.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

SITE = 42  # the site (tenant) every variant runs as


class BenchUser:
    id = pk = 7
    is_active = True
    is_authenticated = True
    is_anonymous = False
    is_tenant_admin = False
    rls_tenant_id = SITE


class BenchTenant:
    id = pk = SITE


USER = BenchUser()
TENANT = BenchTenant()


def user_id(request: HttpRequest) -> Any:
    """Ours' USER_RESOLVER: the id of the signed-in user."""
    return request.user.id  # type: ignore[union-attr]


class BenchAuthMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.user = USER  # type: ignore[assignment]
        request.tenant = TENANT  # type: ignore[attr-defined]
        return self.get_response(request)
