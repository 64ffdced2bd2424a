"""Request every demo page through the real middleware and fail if any page shows another company's rows."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.test import Client

import django_rls
from django_rls.models import AuditEntry
from shop.management.commands.demo_seed import COMPANIES
from shop.models import Invoice


class Command(BaseCommand):
    help = "Check that each company's pages show only its own rows."

    def handle(self, *args: Any, **options: Any) -> None:
        for company, data in COMPANIES.items():
            others = [c for other, d in COMPANIES.items() if other != company for c in d["customers"]]
            client = Client()
            pages = {
                "invoices": client.get(f"/{company}/").content.decode(),
                "unfiltered": client.get(f"/{company}/unfiltered/").content.decode(),
                "forge": client.get(f"/{company}/forge/").content.decode(),
            }
            for page in ("invoices", "unfiltered"):
                html = pages[page]
                self._expect(company, page, all(c in html for c in data["customers"]), "misses its own rows")
                self._expect(company, page, not any(c in html for c in others), "shows another company's rows")
            self._expect(company, "forge", "refused" in pages["forge"] or "denied" in pages["forge"], "forging")
            total = sum(len(d["customers"]) for d in COMPANIES.values())
            self._expect(company, "unfiltered", f'<strong id="total">{total}</strong>' in pages["unfiltered"], "total")
            self._expect(company, "forge", f'<strong id="seen">{company}</strong>' in pages["forge"], "forge result")

            me, colleague = data["users"]
            client.post(f"/{company}/login/{me}/")
            notes = client.get(f"/{company}/notes/").content.decode()
            self._expect(company, "notes", f"private note of {me}" in notes, "misses the user's own note")
            self._expect(company, "notes", f"private note of {colleague}" not in notes, "shows a colleague's note")
            self._expect(company, "notes", 'id="why-nothing"' in notes, "does not say why others see nothing")

            audit = client.get(f"/{company}/audit/").content.decode()
            self._expect(company, "audit", all(f"→ {c}" in audit for c in data["customers"]), "misses its entries")
            self._expect(company, "audit", not any(c in audit for c in others), "shows another company's entries")
            self._check_admin(company, data, others)
            self.stdout.write(f"{company}: every page shows only {company}'s rows")
            self.stdout.write(f"{company}: the admin and the audit trail show only {company}'s rows and entries")

    def _check_admin(self, company: str, data: dict[str, Any], others: list[str]) -> None:
        """The company's admin logs in to /admin/ and sees its invoices and their audit entries, nothing else."""
        with django_rls.bypass("demo check: which audit entries are whose"):
            invoices = {
                site: [str(pk) for pk in Invoice.objects.filter(site__name=site).values_list("pk", flat=True)]
                for site in COMPANIES
            }
            entries = {
                site: set(AuditEntry.objects.for_model(Invoice).filter(row_key__in=keys).values_list("pk", flat=True))
                for site, keys in invoices.items()
            }
        mine = entries.pop(company)
        theirs = set().union(*entries.values())
        self._expect(company, "admin", bool(mine) and bool(theirs), "has no audit entries to show")
        client = Client()
        self._expect(company, "admin", client.get("/admin/").status_code == 302, "does not ask to log in")
        # Through the login form, as a browser does (its page asks django.contrib.sites for the current site).
        self._expect(company, "admin", client.get("/admin/login/").status_code == 200, "login page does not open")
        login = client.post("/admin/login/", {"username": data["admin"], "password": "demo", "next": "/admin/"})
        self._expect(company, "admin", login.status_code == 302 and login.url == "/admin/", "login")
        listed = client.get("/admin/shop/invoice/").content.decode()
        self._expect(company, "admin invoices", all(c in listed for c in data["customers"]), "misses its rows")
        self._expect(company, "admin invoices", not any(c in listed for c in others), "shows another company's rows")
        trail = client.get("/admin/django_rls/auditentry/").content.decode()
        link = "/admin/django_rls/auditentry/{}/change/"
        self._expect(company, "admin audit", all(link.format(pk) in trail for pk in mine), "misses its entries")
        self._expect(company, "admin audit", not any(link.format(pk) in trail for pk in theirs), "shows others'")
        for pk in theirs:  # not even by its URL
            status = client.get(link.format(pk)).status_code
            self._expect(company, "admin audit", status in (302, 404), f"opens another company's entry ({status})")

    def _expect(self, company: str, page: str, ok: bool, problem: str) -> None:
        if not ok:
            raise CommandError(f"demo check failed: {company} {page} page {problem}")
