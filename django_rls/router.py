"""``DJANGO_RLS["FILTER_BY_SITE"]``: add ``<site column> = <the context's site>`` to every query Django builds.

The row-level security policy of a ``BySite`` model already keeps every other
site's rows out; the planner does not know that, because the site sits in a
function (``rls.site_id()``) it cannot fold at plan time. The same condition as an
explicit conjunct lets Citus route a query on a table distributed by the site
column to one shard (a router plan), and lets PostgreSQL prune partitions by site.

The hook is the SQL compiler of each protected alias: ``install()`` wraps
``connection.ops.compiler`` so that the compilers of SELECT, UPDATE and DELETE
queries (subqueries, related managers, prefetches, aggregation's inner
query, ``save()``'s UPDATE, ``QuerySet.explain()``) compile a copy of their query with
the conjunct added on its base table. No model, manager or queryset changes, and the
caller's query is never changed. INSERTs have no WHERE; the aggregate compiler's
outer query reads a subquery, whose own compiler adds it; a combined query
(``union()``) gets it in each part.

What is filtered, and when, never widens nor narrows what the policies return:

- Only models whose declaration has a ``BySite`` for every command without
  ``movable_to``, or a ``BySiteAndOwner``: there every row a query may see or change
  has exactly the context's site in that column (the policies are AND'd). ``Shared``
  (rows of no site), ``Membership`` (several sites), ``movable_to`` (a second site
  while the claim is set), ``commands=`` short of all, ``Custom`` and the rest are
  left alone.
- Only when the context the query is about to run with has a site: the site is read
  from the current frame when the query is compiled, which happens right before the
  execute wrapper (database.py) reads it again to send it, so ``switch_context()``
  and ``context()`` blocks are followed query by query. Inside ``bypass()``, while a
  resolver runs, without a site (``find()``'s lookups run without one), nothing is added.
- The policies still apply: this is an extra conjunct, not a replacement.
"""

from __future__ import annotations

import functools
from typing import Any

from django.core.signals import setting_changed
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q
from django.db.models.sql import compiler as sql_compiler
from django.dispatch import receiver

from django_rls.conf import rls_settings
from django_rls.policies import ALL_COMMANDS, BySite, BySiteAndOwner, DeclarationError, _field
from django_rls.state import current_frame

# Compilers whose query reads a table through its WHERE: SELECT (SQLCompiler), UPDATE, DELETE.
_SKIPPED = (sql_compiler.SQLInsertCompiler, sql_compiler.SQLAggregateCompiler)


def site_attname(policies: tuple[Any, ...], model: Any) -> str | None:
    """The attribute holding the site of every row these policies let a query see or change, or None."""
    for policy in policies:
        if isinstance(policy, BySite) and policy.movable_to is None and set(policy.commands) == set(ALL_COMMANDS):
            return _field(model, policy.field).attname
        if isinstance(policy, BySiteAndOwner):
            return _field(model, policy.site_field).attname
    return None


@functools.cache
def _site_attnames() -> dict[str, str]:
    """Model label -> site attribute, for every declared model that has one.

    A declaration naming a model or field that does not exist gets no conjunct (the checks report it).
    """
    from django_rls.declarations import all_declarations

    found = {}
    for label, declaration in all_declarations().items():
        try:
            attname = site_attname(declaration.policies, declaration.model_class())
        except (LookupError, DeclarationError):
            continue
        if attname is not None:
            found[label] = attname
    return found


@receiver(setting_changed)
def _forget(*, setting: str, **kwargs: Any) -> None:
    if setting == "DJANGO_RLS":
        _site_attnames.cache_clear()


def _context_site() -> str | None:
    """The site the next query runs with, or None (no context, a bypass, a resolver running)."""
    frame = current_frame()
    if frame is None or frame.resolving or frame.bypass_reason is not None:
        return None
    return frame.values().site


def filtered(query: Any) -> Any:
    """``query``, or a copy with ``<site column> = <site>`` added when the model and the context say so.

    A proxy model's query is filtered as its concrete model's (the same table and policies).
    """
    model = query.model
    if model is None or query.combinator:
        return query
    attname = _site_attnames().get(model._meta.concrete_model._meta.label)
    if attname is None:
        return query
    site = _context_site()
    if site is None:
        return query
    copy = query.clone()
    copy.add_q(Q(**{attname: site}))
    return copy


class _Filtering:
    def __init__(self, query: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(filtered(query), *args, **kwargs)  # type: ignore[call-arg]


@functools.cache
def _filtering_class(base: type) -> type:
    if not issubclass(base, sql_compiler.SQLCompiler) or issubclass(base, _SKIPPED):
        return base
    return type(base.__name__, (_Filtering, base), {"__module__": __name__})


def install(connection: BaseDatabaseWrapper) -> None:
    """Make this connection's compilers add the site conjunct while the setting is on (idempotent).

    The setting is read each time a compiler is chosen (``override_settings`` works); with it
    off the original compiler is used.
    """
    ops = connection.ops
    original = ops.compiler
    if getattr(original, "django_rls_filtering", False):
        return

    def compiler(compiler_name: str) -> type:
        base = original(compiler_name)
        return _filtering_class(base) if rls_settings.FILTER_BY_SITE else base

    compiler.django_rls_filtering = True  # type: ignore[attr-defined]
    ops.compiler = compiler  # type: ignore[method-assign]
