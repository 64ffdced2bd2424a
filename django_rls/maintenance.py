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
from django_rls.state import BypassFrame, current_frame, enter_frame, inside_context, reset_frame

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
    """Send the ORM's queries to the bypass alias while a bypass() block is active, and only then.

    Django routes a query about an instance (its related managers, ``refresh_from_db()``,
    ``save()``, ``delete()``) to the database the instance was loaded from when no router
    answers. An object loaded inside ``bypass()`` would so take those queries back to the
    bypass role after the block ended, past every policy (all owners' tasks of the site,
    another site's row saved). Inside a request, ``context()`` or ``no_context()``, such queries
    go where the routers after this one send them, else to the default alias, under the
    context. Code outside all of them (a seed script, a command that uses
    ``.using(BYPASS_DATABASE)`` itself) keeps Django's rule.
    """

    def _route(self, method: str, model: Any, hints: dict[str, Any]) -> str | None:
        frame = current_frame()
        alias = rls_settings.BYPASS_DATABASE
        if frame is not None and frame.bypass_reason is not None:
            return alias
        instance = hints.get("instance")
        state = getattr(instance, "_state", None)
        if alias is None or state is None or state.db != alias or not inside_context():
            return None
        from django.db import DEFAULT_DB_ALIAS, router

        others = {key: value for key, value in hints.items() if key != "instance"}
        routers = router.routers
        for later in routers[routers.index(self) + 1 :] if self in routers else []:
            chosen = getattr(later, method, None)
            answer = chosen(model, **others) if chosen is not None else None
            if answer is not None:
                return answer
        return DEFAULT_DB_ALIAS

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return self._route("db_for_read", model, hints)

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return self._route("db_for_write", model, hints)
