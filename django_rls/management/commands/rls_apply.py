"""manage.py rls_apply: install the declared policies and grants, or show what would change."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, transaction

from django_rls.conf import rls_settings
from django_rls.ddl import add_lock_options, bounds_from, lock_statements
from django_rls.planner import APPLY_LOCK, Plan, PlanError, Unit, app_role, apply_plan, make_plan, units
from django_rls.policies import DeclarationError
from django_rls.sqlonly import InstallError
from django_rls.sqlonly import install as install_sqlonly


class Command(BaseCommand):
    help = (
        "Bring row level security policies and the application role's grants in line with the declarations. "
        "Idempotent; runs as the owner role, one transaction per table (up to 16 free tables together, their locks "
        "taken NOWAIT), each waiting at most --lock-timeout for its table lock and retrying until --lock-budget is "
        "spent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default=None,
            help='Database alias to connect as (default: DJANGO_RLS["OWNER_DATABASE"], else "default").',
        )
        parser.add_argument(
            "--check", action="store_true", help="Change nothing; exit 1 and show the differences if there are any."
        )
        parser.add_argument(
            "--dry-run",
            "--sql",
            dest="dry_run",
            action="store_true",
            help="Print the SQL that would run, change nothing.",
        )
        parser.add_argument(
            "--prune", action="store_true", help="Also remove policy groups that no declaration wants any more."
        )
        parser.add_argument(
            "--install",
            action="store_true",
            help="First install django_rls's SQL objects without the C library (the SQL-only mode, for hosted "
            'PostgreSQL), as this alias\'s role (CREATEROLE, owner of the database), and add DJANGO_RLS["SIGNING_KEY"] '
            "as a signing key. Does nothing where the same version is installed.",
        )
        parser.add_argument(
            "--without-audit",
            action="store_true",
            help="SQL-only mode: apply everything else and leave the models declared with audit=True unaudited "
            "(listed).",
        )
        add_lock_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        # --verbosity 0 prints nothing but --dry-run's SQL (the output asked for) and errors;
        # --check then answers with its exit status alone.
        self.quiet = options["verbosity"] == 0
        alias = options["database"] or rls_settings.OWNER_DATABASE or "default"
        if alias not in connections.settings:
            raise CommandError(f"unknown database alias {alias!r}")
        connection = connections[alias]
        bounds = bounds_from(options["lock_timeout"], options["lock_budget"])
        if options["install"]:
            if options["check"] or options["dry_run"]:
                raise CommandError("--install changes the database: it cannot be combined with --check or --dry-run")
            self._install(connection)
        try:
            if options["check"] or options["dry_run"]:
                plan = make_plan(connection, prune=options["prune"], without_audit=options["without_audit"])
            else:
                plan = apply_plan(
                    connection,
                    prune=options["prune"],
                    bounds=bounds,
                    progress=self._print_unit,
                    without_audit=options["without_audit"],
                )
        except (PlanError, DeclarationError) as exc:
            raise CommandError(str(exc)) from exc

        if plan.left_unaudited:
            self.stderr.write(self.style.WARNING(f"Not audited (--without-audit): {', '.join(plan.left_unaudited)}"))
        if options["dry_run"]:
            self._print_sql(connection, plan, bounds.timeout_setting())
        elif options["check"]:
            self._print_diff(plan)
            if not plan.in_sync:
                raise SystemExit(1)
        else:
            self._print_applied(plan)

    def _install(self, connection: Any) -> None:
        keys = [rls_settings.SIGNING_KEY] if rls_settings.SIGNING_KEY else []
        try:
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                done = install_sqlonly(cursor, keys, app_role())
        except InstallError as exc:
            raise CommandError(str(exc)) from exc
        for line in done:
            self.stdout.write(self.style.SUCCESS(line))

    def _print_sql(self, connection: Any, plan: Plan, lock_timeout: str) -> None:
        if plan.in_sync:
            self.stdout.write("-- nothing to do")
            return
        self.stdout.write(f"SELECT pg_advisory_lock(hashtext('{APPLY_LOCK}'));")
        for unit in units(plan):
            self.stdout.write(f"-- {unit.name}")
            self.stdout.write("BEGIN;")
            self.stdout.write(f"SET LOCAL lock_timeout = '{lock_timeout}';")
            for _, statement in lock_statements(unit.locks):
                self.stdout.write(f"{statement};")
            for step in unit.steps:
                self.stdout.write(f"{step.composed(connection)};")
            self.stdout.write("COMMIT;")
        self.stdout.write(f"SELECT pg_advisory_unlock(hashtext('{APPLY_LOCK}'));")

    def _print_unit(self, unit: Unit) -> None:
        if self.quiet:
            return
        for step in unit.steps:
            self.stdout.write(f"  {step.summary}")

    def _print_diff(self, plan: Plan) -> None:
        if self.quiet:
            return
        if plan.in_sync:
            self.stdout.write(self.style.SUCCESS(f"In sync: {plan.tables} protected tables, nothing to change."))
        else:
            self.stdout.write(self.style.WARNING(f"{len(plan.steps)} change(s) needed:"))
            for step in plan.steps:
                self.stdout.write(f"  {step.summary}")
                for line in step.details:
                    self.stdout.write(f"      {line}")
        for note in plan.left_alone:
            self.stdout.write(f"  kept {note}")

    def _print_applied(self, plan: Plan) -> None:
        if self.quiet:
            return
        if plan.in_sync:
            self.stdout.write(f"Nothing to do: {plan.tables} protected tables already match the declarations.")
        else:
            self.stdout.write(
                self.style.SUCCESS(f"Applied {len(plan.steps)} change(s) to {plan.tables} protected tables.")
            )
        for note in plan.left_alone:
            self.stdout.write(f"  kept {note}")
