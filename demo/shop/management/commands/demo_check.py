"""Request every demo page through the real middleware and fail if any page shows another company's rows."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.test import Client

from shop.management.commands.demo_seed import COMPANIES


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
            self.stdout.write(f"{company}: every page shows only {company}'s rows")

    def _expect(self, company: str, page: str, ok: bool, problem: str) -> None:
        if not ok:
            raise CommandError(f"demo check failed: {company} {page} page {problem}")
