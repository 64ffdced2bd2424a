"""The app's own tenant middleware, placed after RlsMiddleware: the company by host, as a django-scopes scope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseNotFound
from django_scopes import scope

from tests.tenantproject.shop.models import Company


class CompanyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        if request.path.startswith("/accounts/"):
            return self.get_response(request)  # logging in needs no company
        company = Company.objects.filter(domain=request.get_host().split(":")[0]).first()
        if company is None:
            return HttpResponseNotFound("no such company")
        request.company = company
        with scope(company=company):
            return self.get_response(request)
