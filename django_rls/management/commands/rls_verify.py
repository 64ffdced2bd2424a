"""manage.py rls_verify: prove, live and as the application role, that sites and users are kept apart."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from django_rls.verify import verify

MODES = {
    "c": "the django_rls extension (C library)",
    "sql": "the SQL-only mode (no library; weaker where docs/security.md says)",
}


class Command(BaseCommand):
    help = (
        "Check the catalog for every known way rows could leak, then write throwaway probe rows (rolled back) "
        "and prove another site or user cannot read, change or delete them. Exits 1 on any failure."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database", default="default", help="Alias the application connects as (default: default)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"]
        if alias not in connections.settings:
            raise CommandError(f"unknown database alias {alias!r}")
        report = verify(alias)
        if report.mode is not None:
            self.stdout.write(f"  mode  {MODES[report.mode]}")
        for line in report.passed:
            self.stdout.write(f"  ok    {line}")
        for line in report.skipped:
            self.stdout.write(f"  skip  {line}")
        for line in report.failures:
            self.stdout.write(self.style.ERROR(f"  FAIL  {line}"))
        if not report.ok:
            raise SystemExit(1)
        self.stdout.write(self.style.SUCCESS(f"Verified: {len(report.passed)} tables probed, no leak found."))
