"""What Citus holds, for every Citus check; and E032: a session-scoped context in autocommit on a coordinator.

On a Citus coordinator the context reaches the workers only from a transaction block (ext/citus.c,
docs/scale-out.md). The bridge (database.py) sends each autocommit query that needs a context there in a
transaction of its own, so Django's queries reach the workers' rows with or without ``ATOMIC_REQUESTS``.
Not with ``DJANGO_RLS["SCOPE"] = "session"``: the context is then set once for the session by a setter
sent on its own, which in autocommit reaches no worker, so the queries after it read and write none of
the rows of a protected table whose rows live on the workers, without an error. In transaction blocks
(``ATOMIC_REQUESTS``) the setter is sent again in each, and forwarded. Called from
``checks._check_alias`` with the alias's cursor.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.checks import CheckMessage, Error
from django.db import connections

from django_rls.conf import rls_settings

if TYPE_CHECKING:
    from django.db.models import Model

    from django_rls.policies import Declaration

# Every table Citus holds, with its kind: "distributed" (hash or range), "reference" (a placement on every
# node) or "local" (a Citus local table, its one placement the coordinator's own).
_CITUS_TABLES = """
SELECT c.relname,
       CASE WHEN d.partmethod <> 'n' THEN 'distributed' WHEN d.repmodel = 't' THEN 'reference' ELSE 'local' END,
       c.relrowsecurity,
       EXISTS (SELECT 1 FROM pg_dist_local_group WHERE groupid = 0)
  FROM pg_dist_partition d JOIN pg_class c ON c.oid = d.logicalrelid
 WHERE pg_table_is_visible(c.oid)
"""

# The kinds whose rows live on the workers: what an autocommit statement on the coordinator reaches without
# the context, and where Citus copies triggers to shard placements on the workers.
ON_WORKERS = frozenset({"distributed", "reference"})


@dataclass(frozen=True)
class CitusTables:
    """The tables Citus holds in a database, visible on the search_path; empty without Citus."""

    kinds: Mapping[str, str] = field(default_factory=dict)  # table name -> "distributed", "reference", "local"
    protected: frozenset[str] = frozenset()  # those with row level security enabled
    coordinator: bool = False  # the database is a Citus coordinator (group 0)

    def __bool__(self) -> bool:
        return bool(self.kinds)

    def __contains__(self, table: object) -> bool:
        return table in self.kinds


def citus_tables(cursor: Any) -> CitusTables:
    """What Citus holds in the cursor's database: one catalog check without Citus, one query more with it."""
    cursor.execute("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return CitusTables()
    cursor.execute(_CITUS_TABLES)
    rows = cursor.fetchall()
    return CitusTables(
        kinds={name: kind for name, kind, _, _ in rows},
        protected=frozenset(name for name, _, protected, _ in rows if protected),
        coordinator=any(coordinator for *_, coordinator in rows),
    )


def declared_citus_tables(tables: CitusTables) -> Iterator[tuple[str, Declaration, type[Model], str, str]]:
    """(label, declaration, model, table, kind) of every declaration whose table Citus holds, by label."""
    from django_rls.declarations import all_declarations

    if not tables:
        return
    for label, declaration in sorted(all_declarations().items()):
        try:
            model = declaration.model_class()
        except LookupError:
            continue  # reported by E005
        table = model._meta.db_table
        if table in tables:
            yield label, declaration, model, table, tables.kinds[table]


def check_session_scope(alias: str, tables: CitusTables) -> list[CheckMessage]:
    """E032: ``SCOPE`` is "session", ``alias`` lacks ATOMIC_REQUESTS, and its database is a Citus coordinator
    with protected tables of declared models whose rows live on the workers."""
    if rls_settings.SCOPE != "session" or connections.settings[alias].get("ATOMIC_REQUESTS"):
        return []
    if not tables.coordinator:
        return []
    names = sorted(
        table
        for _, _, _, table, kind in declared_citus_tables(tables)
        if kind in ON_WORKERS and table in tables.protected
    )
    if not names:
        return []
    return [
        Error(
            f"database {alias!r} is a Citus coordinator whose protected tables {', '.join(names)} keep "
            'their rows on the workers, DJANGO_RLS["SCOPE"] is "session" and the alias does not set '
            "ATOMIC_REQUESTS: a session-scoped context set in autocommit reaches no worker, so every query a "
            "request sends in autocommit reads and writes none of their rows, without an error.",
            hint='Leave DJANGO_RLS["SCOPE"] at "transaction" (the default), whose autocommit queries reach the '
            f'workers, or set DATABASES[{alias!r}]["ATOMIC_REQUESTS"] = True and run work outside requests inside '
            "transaction.atomic() (docs/scale-out.md).",
            id="django_rls.E032",
        )
    ]
