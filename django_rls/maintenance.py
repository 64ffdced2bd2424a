"""Run code outside any site, as a separate database role — never a flag SQL could flip.

    with django_rls.bypass("nightly cleanup of expired invoices"):
        Invoice.objects.filter(expires__lt=now()).delete()

Inside the block, ``BypassRouter`` sends ORM queries to
``DJANGO_RLS["BYPASS_DATABASE"]``: an alias that connects as a role with
BYPASSRLS (or as the table owner), so the database, not a setting, decides
what that role may do. Queries that still reach a protected alias run with an
empty context and see nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from django_rls.conf import rls_settings
from django_rls.state import BypassFrame, current_frame, enter_frame, reset_frame

logger = logging.getLogger("django_rls.bypass")


class bypass:
    """Context manager (and decorator-free by design: each use states its reason)."""

    def __init__(self, reason: str) -> None:
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("django_rls.bypass() needs a reason, e.g. bypass('data migration 0042')")
        self.reason = reason

    def __enter__(self) -> str:
        alias = rls_settings.BYPASS_DATABASE
        if alias is None:
            raise ImproperlyConfigured(
                'django_rls.bypass() needs DJANGO_RLS["BYPASS_DATABASE"]: the alias of a database connection '
                "whose role has BYPASSRLS (and DATABASE_ROUTERS including django_rls.maintenance.BypassRouter)"
            )
        logger.info("django_rls bypass entered: %s", self.reason)
        self._entry = enter_frame(BypassFrame(self.reason))
        return alias

    def __exit__(self, *exc_info: object) -> None:
        reset_frame(self._entry)


class BypassRouter:
    """Send the ORM's queries to the bypass alias while a bypass() block is active."""

    def _route(self, model: Any, **hints: Any) -> str | None:
        frame = current_frame()
        if frame is not None and frame.bypass_reason is not None:
            return rls_settings.BYPASS_DATABASE
        return None

    db_for_read = _route
    db_for_write = _route
