"""Views the middleware tests call: deliberately unfiltered, as a buggy view would be."""

from __future__ import annotations

import json

from django.contrib.auth.models import User
from django.db import connection, connections, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework.authentication import BasicAuthentication
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

import django_rls
from tests.testapp.models import Note, Task


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


def notes_stream_async(request: HttpRequest) -> StreamingHttpResponse:
    async def rows():
        async for note in Note.objects.order_by("id"):
            yield json.dumps(note.site_id) + "\n"

    return StreamingHttpResponse(rows())


def boom(request: HttpRequest) -> HttpResponse:
    Note.objects.count()
    raise RuntimeError("boom")


def whoami(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT rls.context()::text")
        return JsonResponse(json.loads(cursor.fetchone()[0]))


def note_count(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(Note.objects.count()))


def notes_search(request: HttpRequest) -> JsonResponse:
    """A query with a parameter of its own, the way an app filters on user input."""
    return JsonResponse(
        {"bodies": sorted(Note.objects.filter(body__contains=request.GET["q"]).values_list("body", flat=True))}
    )


def notes_atomic(request: HttpRequest) -> JsonResponse:
    with transaction.atomic():
        sites = sorted({n.site_id for n in Note.objects.all()})
        return JsonResponse({"sites": sites, "count": Note.objects.count()})


def notes_on(request: HttpRequest, alias: str) -> JsonResponse:
    return JsonResponse({"sites": sorted({n.site_id for n in Note.objects.using(alias).all()})})


def notes_query_by_query(request: HttpRequest, alias: str) -> JsonResponse:
    """``?n=`` small queries, each in its own autocommit transaction unless ATOMIC_REQUESTS: which sites show rows."""
    queries = int(request.GET.get("n", "10"))
    return JsonResponse(
        {"sites": [site for site in range(1, queries + 1) if Note.objects.using(alias).filter(site_id=site).exists()]}
    )


def user_then_tasks(request: HttpRequest) -> JsonResponse:
    """Queries, then authenticates the way DRF does (inside the view), then queries again."""
    before = list(Task.objects.values_list("title", flat=True))
    request.user = User.objects.get(username=request.GET["as"])
    after = sorted(Task.objects.values_list("title", flat=True))
    return JsonResponse({"before": before, "after": after})


class DrfTasks(APIView):
    authentication_classes = (BasicAuthentication,)
    permission_classes = (IsAuthenticated,)

    def get(self, request: Request) -> Response:
        return Response({"tasks": sorted(Task.objects.values_list("title", flat=True))})


def inject(request: HttpRequest) -> JsonResponse:
    """A deliberately injectable view: runs attacker-supplied SQL, then reads the notes table.

    It uses the "default" alias, with Django's default client-side binding: a query that
    does not carry the context (one that is no planned statement) goes through the simple
    query protocol, where an attacker can stack statements; ``?alias=replica`` injects
    through server-side binding instead.
    """
    outcome = "ok"
    alias = request.GET.get("alias", "default")
    replica = connections[alias]
    try:
        with transaction.atomic(using=alias), replica.cursor() as cursor:
            cursor.execute(request.GET["sql"])
            rows: list = []
            while True:  # stacked statements: the attacker gets the last result
                if cursor.description:
                    rows = cursor.fetchall()
                if not cursor.nextset():
                    break
            outcome = json.dumps(rows, default=str)
    except Exception as exc:  # the attacker sees the error text too
        outcome = f"error: {exc}"
    with replica.cursor() as cursor:
        cursor.execute("SELECT DISTINCT site_id FROM testapp_note ORDER BY 1")
        sites = [row[0] for row in cursor.fetchall()]
    return JsonResponse({"outcome": outcome, "sites": sites})


def switch_site(request: HttpRequest) -> JsonResponse:
    """Write a note as the host's site, then move the rest of the request to site 2 (issue 15 item 3)."""
    before = sorted(set(Note.objects.values_list("site_id", flat=True)))
    note = Note.objects.create(site_id=before[0], body="written before the switch")
    django_rls.switch_context(site=2)
    after = sorted(set(Note.objects.values_list("site_id", flat=True)))
    return JsonResponse(
        {
            "before": before,
            "after": after,
            "written_before_visible": Note.objects.filter(pk=note.pk).exists(),
            "note": note.pk,
            "in_transaction": connection.in_atomic_block,
        }
    )


async def switch_site_async(request: HttpRequest) -> JsonResponse:
    before = sorted({n.site_id async for n in Note.objects.all()})
    django_rls.switch_context(site=2)
    after = sorted({n.site_id async for n in Note.objects.all()})
    return JsonResponse({"before": before, "after": after})
