"""manage.py rls_audit_verify: check the audit log's hash chains and name the first bad entry of each broken one."""

from __future__ import annotations

import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections

from django_rls.conf import rls_settings


def _month(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value if len(value) > 7 else f"{value}-01")
    except ValueError as exc:
        raise CommandError(f"--since expects a month (2026-11) or a date, not {value!r}") from exc


class Command(BaseCommand):
    help = (
        "Check the audit log's hash chains (rls_audit.verify(); django_rls.audit_chain must have been on while "
        "the entries were written) and report, per chain, the first entry that was edited, deleted, inserted or "
        "reordered, or the seal that was. Fails when any chain is broken. Run it through an alias whose role was "
        "granted rls_audit.verify()."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default=None,
            help='Alias to connect as (default: DJANGO_RLS["OWNER_DATABASE"], else "default").',
        )
        parser.add_argument(
            "--since", type=_month, default=None, metavar="MONTH", help="Check only the chains of this month and later."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"] or rls_settings.OWNER_DATABASE or "default"
        if alias not in connections.settings:
            raise CommandError(f"unknown database alias {alias!r}")
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute(
                    "SELECT month, chain, seals, entries, problem, entry_id, seal_seq, detail "
                    "FROM rls_audit.verify(%s) ORDER BY month, chain",
                    [options["since"]],
                )
                rows = cursor.fetchall()
        except DatabaseError as exc:
            raise CommandError(
                f"{str(exc).strip().splitlines()[0]}: a superuser grants EXECUTE on rls_audit.verify(date) to the "
                f"role of --database {alias} (docs/audit.md, Tamper evidence)"
            ) from exc
        broken = []
        for month, chain, seals, entries, problem, entry_id, seal_seq, detail in rows:
            name = f"chain {chain or '(no site)'} of {month:%Y-%m}"
            if problem is None:
                self.stdout.write(f"{name}: {seals} seal(s), {entries} entries, intact")
                continue
            where = f"entry {entry_id}" if entry_id is not None else f"seal {seal_seq}"
            broken.append(f"{name}: {problem} {where} ({detail})")
        if broken:
            raise CommandError("\n".join(broken))
        self.stdout.write(f"{len(rows)} chain(s) verified, no problem.")
