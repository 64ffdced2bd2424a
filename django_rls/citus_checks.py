"""E032: a Citus coordinator whose protected distributed tables an alias reaches outside a transaction.

On a Citus coordinator the context reaches the workers only from a transaction block (ext/citus.c,
docs/scale-out.md): a statement the application sends in autocommit reads and writes none of the
rows of a protected table whose rows live on the workers, without an error. Django sends a
request's queries in autocommit unless the alias sets ``ATOMIC_REQUESTS``, so every page of such
an alias would be silently empty. Called from ``checks._check_alias`` with the alias's cursor.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error
from django.db import connections

# Distributed tables, and reference tables (a placement on every worker, which an autocommit write reaches
# without the context); not Citus local tables, whose one placement is the coordinator's own.
_WORKER_TABLES = """
SELECT c.relname
  FROM pg_dist_partition d JOIN pg_class c ON c.oid = d.logicalrelid
 WHERE (d.partmethod <> 'n' OR d.repmodel = 't') AND c.relrowsecurity AND pg_table_is_visible(c.oid)
   AND EXISTS (SELECT 1 FROM pg_dist_local_group WHERE groupid = 0)
"""


def check_atomic_requests(alias: str, cursor: Any) -> list[CheckMessage]:
    """E032: ``alias`` lacks ATOMIC_REQUESTS, and its database is a Citus coordinator with protected tables of
    declared models whose rows live on the workers."""
    from django_rls.declarations import all_declarations

    if connections.settings[alias].get("ATOMIC_REQUESTS"):
        return []
    cursor.execute("SELECT to_regclass('pg_catalog.pg_dist_local_group') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return []
    cursor.execute(_WORKER_TABLES)
    on_workers = {name for (name,) in cursor.fetchall()}
    if not on_workers:
        return []
    tables = []
    for declaration in all_declarations().values():
        try:
            table = declaration.model_class()._meta.db_table
        except LookupError:
            continue  # reported by E005
        if table in on_workers:
            tables.append(table)
    if not tables:
        return []
    return [
        Error(
            f"database {alias!r} is a Citus coordinator whose protected tables {', '.join(sorted(tables))} keep "
            "their rows on the workers, and the alias does not set ATOMIC_REQUESTS: the context reaches the "
            "workers only from a transaction block, so every query a request sends in autocommit reads and "
            "writes none of their rows, without an error.",
            hint=f'Set DATABASES[{alias!r}]["ATOMIC_REQUESTS"] = True, and run work outside requests (management '
            "commands, tasks) inside transaction.atomic() (docs/scale-out.md).",
            id="django_rls.E032",
        )
    ]
