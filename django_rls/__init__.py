"""Database-enforced row-level security for Django, backed by the django_rls PostgreSQL extension.

Public API::

    from django_rls import context, no_context, bypass, protect, register, propagate, switch_context
    from django_rls.policies import BySite, ByOwner, BySiteAndOwner, Shared, OwnerOrShared, Membership, Members,
        OwnerOrMember, ThroughParent, Custom
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
# The package and the extension share one version; the Makefile reads it from this file.
EXTENSION_VERSION = __version__

__all__ = [
    "EXTENSION_VERSION",
    "bypass",
    "context",
    "no_context",
    "propagate",
    "protect",
    "register",
    "switch_context",
]

if TYPE_CHECKING:
    from django_rls.declarations import protect, register
    from django_rls.maintenance import bypass
    from django_rls.middleware import switch_context
    from django_rls.state import context, no_context, propagate


def __getattr__(name: str) -> Any:
    # Imported lazily so that settings.py can import django_rls.resolvers without loading Django models.
    if name in ("context", "no_context", "propagate"):
        from django_rls import state

        return getattr(state, name)
    if name in ("protect", "register"):
        from django_rls import declarations

        return getattr(declarations, name)
    if name == "switch_context":
        from django_rls.middleware import switch_context

        return switch_context
    if name == "bypass":
        from django_rls.maintenance import bypass

        return bypass
    raise AttributeError(f"module 'django_rls' has no attribute {name!r}")
