"""manage.py rls_audit_partitions: keep the audit log's monthly partitions ahead, drop old ones, without stalling writes."""

from __future__ import annotations

import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections
from django.utils.dateparse import parse_datetime

from django_rls.conf import rls_settings
from django_rls.ddl import ACCESS_EXCLUSIVE, LockRequest, LockWaitExhausted, Runner, add_lock_options, bounds_from

# Creating, attaching or dropping a partition locks rls_audit.statements (where the log is stored)
# ACCESS EXCLUSIVE: every audited write (its trigger inserts into it) waits behind it, so the wait for
# it is bounded.
AUDIT_LOG = LockRequest('"rls_audit"."statements"', "rls_audit.statements", ACCESS_EXCLUSIVE, only=False)


def _cutoff(value: str) -> datetime.datetime:
    parsed = parse_datetime(value) or parse_datetime(f"{value}T00:00:00+00:00")
    if parsed is None:
        raise CommandError(f"--drop-before expects a date or an ISO 8601 time, not {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


class Command(BaseCommand):
    help = (
        "Create the audit log's monthly partitions ahead (rls_audit.ensure_partitions) and, with --drop-before, drop "
        "those older than a cutoff (rls_audit.drop_partitions_before). Each runs in its own transaction, waits at "
        "most --lock-timeout for the log's lock and retries until --lock-budget is spent. Run it from a scheduled "
        "job through an alias whose role was granted both functions."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default=None,
            help='Alias to connect as (default: DJANGO_RLS["OWNER_DATABASE"], else "default").',
        )
        parser.add_argument("--ahead", type=int, default=3, help="Months of partitions to keep ahead (default 3).")
        parser.add_argument(
            "--drop-before",
            type=_cutoff,
            default=None,
            metavar="WHEN",
            help="Drop the partitions whose rows are all older than this date or time (UTC when no zone is given).",
        )
        add_lock_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"] or rls_settings.OWNER_DATABASE or "default"
        if alias not in connections.settings:
            raise CommandError(f"unknown database alias {alias!r}")
        connection = connections[alias]
        runner = Runner(connection, bounds_from(options["lock_timeout"], options["lock_budget"]))

        def call(statement: str, argument: Any) -> int:
            def work(cursor: Any) -> int:
                cursor.execute(statement, [argument])
                return int(cursor.fetchone()[0])

            return runner.run("the audit log's partitions", [], work, blocked_on=AUDIT_LOG)

        try:
            created = call("SELECT rls_audit.ensure_partitions(%s)", options["ahead"])
            self.stdout.write(f"Created {created} partition(s) of rls_audit.statements.")
            if options["drop_before"] is not None:
                dropped = call("SELECT rls_audit.drop_partitions_before(%s)", options["drop_before"])
                self.stdout.write(f"Dropped {dropped} partition(s) older than {options['drop_before'].isoformat()}.")
        except LockWaitExhausted as exc:
            raise CommandError(f"rls_audit_partitions {exc}; that step changed nothing") from exc
        except DatabaseError as exc:
            raise CommandError(
                f"{str(exc).strip().splitlines()[0]}: a superuser grants the functions to the role of "
                f"--database {alias} (docs/audit.md, Retention)"
            ) from exc
