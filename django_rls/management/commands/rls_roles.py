"""manage.py rls_roles: create or fix the database roles django_rls expects."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections, transaction

from django_rls.conf import app_role, rls_settings
from django_rls.ddl import LockWaitExhausted, Runner, add_lock_options, bounds_from
from django_rls.roles import RolesError, owned_relations, owned_relations_warning, plan, specs


def _user(alias: str | None) -> str | None:
    return connections.settings[alias]["USER"] if alias and alias in connections.settings else None


def _cannot_connect(alias: str, owner: str | None, exc: Exception) -> str:
    user = _user(alias)
    message = f"cannot connect through database alias {alias!r} as {user}: {str(exc).strip().splitlines()[0]}"
    if user and user == owner:
        return (
            f"{message}. rls_roles connects as the owner role by default, which does not exist yet on a first "
            "setup (rls_roles creates it). Run it, or rls_roles --dry-run, through an administrator's connection: a "
            'superuser or a role with CREATEROLE, for example an "admin" entry in DATABASES with the same NAME, then '
            "manage.py rls_roles --database admin"
        )
    return f"{message}. Check the alias's USER, PASSWORD, HOST and NAME, or pass --database with another alias"


class Command(BaseCommand):
    help = (
        "Create or fix the application, owner, maintenance and backup roles: attributes, memberships, "
        "schema privileges, the database's TEMPORARY right (revoked from PUBLIC and the application role) and the "
        "application role's search_path (pg_temp last). Needs a connection with CREATEROLE that owns the database "
        "(BYPASSRLS roles need a superuser)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--database", default=None, help="Alias to connect as (default: the owner database).")
        parser.add_argument("--dry-run", action="store_true", help="Print the SQL, change nothing.")
        parser.add_argument("--app-role", help='Default: DJANGO_RLS["APP_ROLE"] or the USER of "default".')
        parser.add_argument("--owner-role", help='Default: the USER of DJANGO_RLS["OWNER_DATABASE"].')
        parser.add_argument("--maintenance-role", help='Default: the USER of DJANGO_RLS["BYPASS_DATABASE"].')
        parser.add_argument("--backup-role", help="Also create a BYPASSRLS role with pg_read_all_data for pg_dump.")
        parser.add_argument(
            "--owner-createdb",
            action="store_true",
            help="Give the owner role CREATEDB, which the test runner (pytest-django, manage.py test) needs to create "
            "the test database as the owner; on development and CI servers. Without it the owner's CREATEDB is left "
            "as it is.",
        )
        add_lock_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"] or rls_settings.OWNER_DATABASE or "default"
        if alias not in connections.settings:
            raise CommandError(f"unknown database alias {alias!r}")
        app = options["app_role"] or app_role()
        if not app:
            raise CommandError('cannot tell the application role: pass --app-role or set DJANGO_RLS["APP_ROLE"]')
        owner = options["owner_role"] or _user(rls_settings.OWNER_DATABASE)
        maintenance = options["maintenance_role"] or _user(rls_settings.BYPASS_DATABASE)
        passwords = {
            db["USER"]: db["PASSWORD"] for db in connections.settings.values() if db.get("USER") and db.get("PASSWORD")
        }
        wanted = specs(
            app, owner, maintenance, options["backup_role"], passwords, owner_createdb=options["owner_createdb"] or None
        )

        connection = connections[alias]
        try:
            connection.ensure_connection()
        except DatabaseError as exc:
            raise CommandError(_cannot_connect(alias, owner, exc)) from exc

        owned: list[str] = []

        def work(cursor: Any) -> list[Any]:
            steps = plan(cursor, wanted)
            owned[:] = owned_relations(cursor, app)
            if options["dry_run"]:
                transaction.set_rollback(True, using=alias)
            else:
                for _, statement in steps:
                    cursor.execute(statement.as_string(connection.connection))
            return steps

        try:
            # Role and grant changes wait for concurrent changes of the same catalog rows: bounded
            # like rls_apply's, all or nothing per attempt.
            runner = Runner(connection, bounds_from(options["lock_timeout"], options["lock_budget"]))
            steps = runner.run("the role changes", [], work)
        except LockWaitExhausted as exc:
            raise CommandError(f"rls_roles {exc}; nothing was changed") from exc
        except RolesError as exc:
            raise CommandError(str(exc)) from exc
        except DatabaseError as exc:
            raise CommandError(
                f"{str(exc).splitlines()[0]}; rls_roles needs a role with CREATEROLE that owns the database (and a "
                "superuser for BYPASSRLS roles): run it with --database pointing at such a connection, or run "
                "--dry-run and hand the SQL to your database administrator"
            ) from exc
        for summary, statement in steps:
            self.stdout.write(
                f"{statement.as_string(connection.connection)};" if options["dry_run"] else f"  {summary}"
            )
        if not steps:
            self.stdout.write(f"Nothing to do: {', '.join(s.name for s in wanted)} are as django_rls expects.")
        elif not options["dry_run"]:
            self.stdout.write(self.style.SUCCESS(f"Applied {len(steps)} change(s)."))
        if owned:
            self.stderr.write(self.style.WARNING(f"Warning: {owned_relations_warning(app, owner, owned)}"))
