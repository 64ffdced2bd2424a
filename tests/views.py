"""Views the middleware tests call: deliberately unfiltered, as a buggy view would be."""

from __future__ import annotations

import json

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse

from tests.testapp.models import Note


def nodb(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def notes(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"sites": sorted({n.site_id for n in Note.objects.all()}), "count": Note.objects.count()})


def notes_raw(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT site_id FROM testapp_note ORDER BY 1")
        return JsonResponse({"sites": [row[0] for row in cursor.fetchall()]})


async def notes_async(request: HttpRequest) -> JsonResponse:
    sites = sorted({n.site_id async for n in Note.objects.all()})
    return JsonResponse({"sites": sites})


def notes_stream(request: HttpRequest) -> StreamingHttpResponse:
    def rows():
        for note in Note.objects.order_by("id").iterator(chunk_size=2):
            yield json.dumps(note.site_id) + "\n"

    return StreamingHttpResponse(rows())


def boom(request: HttpRequest) -> HttpResponse:
    Note.objects.count()
    raise RuntimeError("boom")


def whoami(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT rls.context()")
        return JsonResponse(cursor.fetchone()[0])
