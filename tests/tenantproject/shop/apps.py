from __future__ import annotations

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "tests.tenantproject.shop"
    label = "shop"

    def ready(self) -> None:
        from tests.tenantproject.shop import signals  # noqa: F401
