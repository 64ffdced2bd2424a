from __future__ import annotations

from django.apps import AppConfig


class DjangoRlsConfig(AppConfig):
    name = "django_rls"
    verbose_name = "Row-level security"
    default_auto_field = "django.db.models.BigAutoField"
