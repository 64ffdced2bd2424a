"""manage.py rls_migrate: ``migrate`` as the owner role, with "default" using the owner's connection too."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.core.management.commands.migrate import Command as MigrateCommand
from django.db import DEFAULT_DB_ALIAS, connections

from django_rls.conf import rls_settings


class Command(MigrateCommand):
    help = (
        'migrate as the owner role (DJANGO_RLS["OWNER_DATABASE"], or --database). For this process only, "default" '
        "is the owner's connection too, so data migrations that query through the default alias (as some third-party "
        "apps' do) run as the owner instead of failing with permission denied as the application role. Takes "
        "every option of migrate."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.set_defaults(database=None)

    def execute(self, *args: Any, **options: Any) -> Any:
        # Before migrate's system checks, which run on the alias given.
        options["database"] = _owner_alias(options.get("database"))
        return super().execute(*args, **options)

    def handle(self, *args: Any, **options: Any) -> None:
        owner = options["database"]
        default = connections[DEFAULT_DB_ALIAS]
        owner_settings = connections[owner].settings_dict
        for key in ("NAME", "HOST", "PORT"):
            if default.settings_dict.get(key) != owner_settings.get(key):
                raise CommandError(
                    f"rls_migrate points default at the owner role, but {owner!r} and default differ in {key} "
                    f"({owner_settings.get(key)!r} and {default.settings_dict.get(key)!r}): they must reach the "
                    "same database; run migrate --database for another one"
                )
        # The very connection migrate uses, so a data migration writing through "default" also
        # sees what the migration's own transaction has done so far. connections.settings is
        # left alone: rls_apply (APPLY_AFTER_MIGRATE) still finds the application role there.
        connections[DEFAULT_DB_ALIAS] = connections[owner]
        try:
            super().handle(*args, **options)
        finally:
            connections[DEFAULT_DB_ALIAS] = default


def _owner_alias(given: str | None) -> str:
    owner = given or rls_settings.OWNER_DATABASE
    if not owner or owner == DEFAULT_DB_ALIAS:
        raise CommandError(
            'rls_migrate needs the owner role\'s alias: set DJANGO_RLS["OWNER_DATABASE"] or pass --database '
            "(an alias other than default, which connects as the application role)"
        )
    if owner not in connections.settings:
        raise CommandError(f"unknown database alias {owner!r}")
    return str(owner)
