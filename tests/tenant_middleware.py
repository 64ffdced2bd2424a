"""Tenant middleware placed after RlsMiddleware, as apps with their own tenant model write them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.contrib.auth.models import User
from django.http import HttpRequest

from tests.testapp.models import Note

TENANTS = {"megacorp1.test": 1, "megacorp2.test": 2}


class _Both:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)


class LateTenantMiddleware(_Both):
    """Queries first (as a session or user lookup does), then sets ``request.tenant`` from the host."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        User.objects.filter(username="nobody").exists()
        request.tenant = TENANTS.get(request.get_host())  # type: ignore[attr-defined]
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        await User.objects.filter(username="nobody").aexists()
        request.tenant = TENANTS.get(request.get_host())  # type: ignore[attr-defined]
        return await self.get_response(request)


class SwitchingTenantMiddleware(_Both):
    """Reads protected rows as site 1, then sets the tenant to the host's: a wrong site would leak."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        request.tenant = 1  # type: ignore[attr-defined]
        Note.objects.exists()
        request.tenant = TENANTS.get(request.get_host())  # type: ignore[attr-defined]
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        request.tenant = 1  # type: ignore[attr-defined]
        await Note.objects.aexists()
        request.tenant = TENANTS.get(request.get_host())  # type: ignore[attr-defined]
        return await self.get_response(request)
