from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse

from .auth import SITE
from .models import Item

ITEM = 4200 + SITE  # a row of the site every variant runs as (row g belongs to site g % 100)
ITEMS = [ITEM + 100 * n for n in range(10)]  # ten rows of that site


@transaction.non_atomic_requests
def one_query(request: HttpRequest) -> JsonResponse:
    item = Item.objects.get(pk=ITEM)
    return JsonResponse({"id": item.pk, "name": item.name, "price": item.price})


def ten_queries(request: HttpRequest) -> JsonResponse:
    """Ten queries in the request's transaction (ATOMIC_REQUESTS)."""
    return JsonResponse({"prices": [Item.objects.get(pk=pk).price for pk in ITEMS]})


@transaction.non_atomic_requests
def no_query(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})
