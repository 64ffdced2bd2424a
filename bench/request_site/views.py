from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from .models import Item

ITEM = 4242  # a row of site 42, the site every variant runs as


def one_query(request: HttpRequest) -> JsonResponse:
    item = Item.objects.get(pk=ITEM)
    return JsonResponse({"id": item.pk, "name": item.name, "price": item.price})


def no_query(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})
