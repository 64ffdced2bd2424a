"""E032: a Citus coordinator whose protected distributed tables a session-scoped context misses in autocommit.

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

from typing import Any

from django.core.checks import CheckMessage, Error
from django.db import connections

from django_rls.conf import rls_settings

# Distributed tables, and reference tables (a placement on every worker, which an autocommit write reaches
# without the context); not Citus local tables, whose one placement is the coordinator's own.
_WORKER_TABLES = """
SELECT c.relname
  FROM pg_dist_partition d JOIN pg_class c ON c.oid = d.logicalrelid
 WHERE (d.partmethod <> 'n' OR d.repmodel = 't') AND c.relrowsecurity AND pg_table_is_visible(c.oid)
   AND EXISTS (SELECT 1 FROM pg_dist_local_group WHERE groupid = 0)
"""


def check_session_scope(alias: str, cursor: Any) -> list[CheckMessage]:
    """E032: ``SCOPE`` is "session", ``alias`` lacks ATOMIC_REQUESTS, and its database is a Citus coordinator
    with protected tables of declared models whose rows live on the workers."""
    from django_rls.declarations import all_declarations

    if rls_settings.SCOPE != "session" or connections.settings[alias].get("ATOMIC_REQUESTS"):
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
            'their rows on the workers, DJANGO_RLS["SCOPE"] is "session" and the alias does not set '
            "ATOMIC_REQUESTS: a session-scoped context set in autocommit reaches no worker, so every query a "
            "request sends in autocommit reads and writes none of their rows, without an error.",
            hint='Leave DJANGO_RLS["SCOPE"] at "transaction" (the default), whose autocommit queries reach the '
            f'workers, or set DATABASES[{alias!r}]["ATOMIC_REQUESTS"] = True and run work outside requests inside '
            "transaction.atomic() (docs/scale-out.md).",
            id="django_rls.E032",
        )
    ]
