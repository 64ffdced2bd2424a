"""Demo pages. None of them filters by company: the database does."""

from __future__ import annotations

from django.contrib.auth import login
from django.contrib.auth.models import User
from django.contrib.sites.models import Site
from django.db import DatabaseError, connection, transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

import django_rls
from django_rls.models import AuditEntry

from .models import Invoice, Note


def _require_site(request: HttpRequest) -> None:
    if request.site is None:
        raise Http404("no such company")


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "shop/home.html", {"companies": Site.objects.order_by("name")})


def invoices(request: HttpRequest, company: str) -> HttpResponse:
    _require_site(request)
    return render(request, "shop/invoices.html", {"company": company, "invoices": Invoice.objects.order_by("id")})


def unfiltered(request: HttpRequest, company: str) -> HttpResponse:
    """A deliberately careless view: no filter, and raw SQL over the whole table."""
    _require_site(request)
    orm_rows = list(Invoice.objects.all())  # the bug a view could have
    with connection.cursor() as cursor:
        cursor.execute("SELECT s.name, i.customer FROM shop_invoice i JOIN django_site s ON s.id = i.site_id")
        raw_rows = cursor.fetchall()
    with django_rls.bypass("demo: show how many invoices exist in total"):
        total = Invoice.objects.count()
    return render(
        request,
        "shop/unfiltered.html",
        {"company": company, "orm_rows": orm_rows, "raw_rows": raw_rows, "total": total},
    )


def forge(request: HttpRequest, company: str) -> HttpResponse:
    """What injected SQL would try: switch to the other company's context."""
    _require_site(request)
    attempts = []
    for statement in (
        "SET django_rls.site = '2'",
        "SELECT set_config('django_rls.site', '2', false)",
        "RESET ALL",
        "SELECT rls.set_context('2', NULL)",
    ):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(statement)
            outcome = "accepted"
        except DatabaseError as exc:
            outcome = str(exc).splitlines()[0]
        attempts.append((statement, outcome))
    seen = sorted({i.site.name for i in Invoice.objects.select_related("site")})
    return render(request, "shop/forge.html", {"company": company, "attempts": attempts, "seen": seen})


def login_as(request: HttpRequest, company: str, username: str) -> HttpResponse:
    if request.method != "POST":
        return redirect(f"/{company}/notes/")
    login(request, User.objects.get(username=username))
    return redirect(f"/{company}/notes/")


def my_notes(request: HttpRequest, company: str) -> HttpResponse:
    _require_site(request)
    return render(
        request,
        "shop/notes.html",
        {"company": company, "notes": Note.objects.order_by("id"), "users": User.objects.order_by("username")},
    )


def audit(request: HttpRequest, company: str) -> HttpResponse:
    """The audit trail as the application role: only entries of rows this context may read."""
    _require_site(request)
    entries = [(entry, entry.changes()) for entry in AuditEntry.objects.order_by("id")]
    return render(request, "shop/audit.html", {"company": company, "entries": entries})
