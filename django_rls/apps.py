from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.signals import request_finished
from django.db import close_old_connections, connections
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate, pre_migrate
from django.utils.module_loading import autodiscover_modules


class DjangoRlsConfig(AppConfig):
    name = "django_rls"
    verbose_name = "Row-level security"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_rls import checks as rls_checks
        from django_rls import conf, database

        # The application role is the configured USER of "default", read now: a test runner may
        # later connect "default" as the owner while it builds the test database.
        conf.app_role()

        # Declarations for models you cannot edit live in each app's rls.py.
        autodiscover_modules("rls")

        connection_created.connect(database.on_connection_created, dispatch_uid="django_rls.install")
        # Before Django's close_old_connections: a connection it closes goes back to the pool
        # (OPTIONS["pool"]) with its session as it is, out of reach of a later clear.
        request_finished.disconnect(close_old_connections)
        request_finished.connect(_clear_session_context, dispatch_uid="django_rls.clear_session")
        request_finished.connect(close_old_connections)
        post_migrate.connect(_apply_after_migrate, dispatch_uid="django_rls.apply_after_migrate")
        pre_migrate.connect(_migrate_as_application, dispatch_uid="django_rls.migrate_as_application")
        for alias in connections:
            database.install(connections[alias])

        checks.register(rls_checks.check_settings)
        checks.register(rls_checks.check_middleware)
        checks.register(rls_checks.check_site_resolver)
        checks.register(rls_checks.check_django_scopes)
        checks.register(rls_checks.check_lookups)
        checks.register(rls_checks.check_declarations)
        checks.register(rls_checks.check_scope)
        checks.register(rls_checks.check_binding)
        checks.register(rls_checks.check_database, checks.Tags.database)


def _clear_session_context(**kwargs: Any) -> None:
    from django_rls.conf import rls_settings

    if rls_settings.SCOPE == "session":
        from django_rls.database import clear_session_context

        clear_session_context()


def _apply_after_migrate(sender: AppConfig, using: str, **kwargs: Any) -> None:
    """post_migrate fires once per app with models; act on the last one, when every table exists."""
    from django.apps import apps
    from django.core.management import call_command

    from django_rls.conf import rls_settings

    if not rls_settings.APPLY_AFTER_MIGRATE or using != (rls_settings.OWNER_DATABASE or "default"):
        return
    with_models = [config for config in apps.get_app_configs() if config.models_module is not None]
    if with_models and sender is with_models[-1]:
        options = {"stdout": kwargs["stdout"]} if kwargs.get("stdout") else {}
        call_command("rls_apply", database=using, verbosity=kwargs.get("verbosity", 1), **options)


def _migrate_as_application(sender: AppConfig, using: str, plan: Any = None, **kwargs: Any) -> None:
    """Plain ``migrate`` runs through "default", the application's role, which may not create tables.

    It would fail half-way with "permission denied for schema public"; stop it
    before the first migration and name the command that works. Only when it
    would fail: a role that may create tables is left to migrate.
    """
    from django.core.management.base import CommandError

    from django_rls.conf import rls_settings
    from django_rls.database import protected_aliases

    owner = rls_settings.OWNER_DATABASE
    if not plan or not owner or using == owner or using not in protected_aliases():
        return
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT has_schema_privilege(coalesce(current_schema(), 'public'), 'CREATE'), "
            "coalesce(current_schema(), 'public'), current_user"
        )
        can_create, schema, role = cursor.fetchone()
    if not can_create:
        raise CommandError(
            f"migrate --database {using} connects as {role}, the application role, which may not create or change "
            f"tables (no CREATE on schema {schema}, as django_rls wants it): run manage.py rls_migrate, which "
            f"migrates through {owner!r}, the owner role, and points default at the owner for data migrations that "
            "use it"
        )
