"""Audit read path: one object's history and a site's latest changes on a large log, as the application role.

    python tests/harness/cluster.py run -- .venv/bin/python bench/audit_read.py

Fills the log with BENCH_LOG_ROWS recorded row changes (default 10M: 1M objects of an
audited, site-protected table, 10 changes each, 100 sites, one change every 100 µs up to now)
straight into its statement rows, rls_audit.statements (no trigger: the write path is
bench/write_path.py's): half of them as single-row statements, half as statements of
BENCH_CHUNK rows of one site (one statement row each, as the capture writes them). Then times, as
a non-superuser application role reading through the per-row view rls_audit.log with a site
context:
- one object's history: rls_audit.history('item', key) (what the admin history page and
  instance.audit_history() read), target under 10 ms;
- a site's latest 50 changes: the log filtered by site, newest first, as the admin lists it
  (AuditEntryQuerySet.newest(): narrowed by rls_audit.newest_statements()), target under 50 ms;
  also page 20 of that list, one user's in the site, the latest 50 without a site filter (the
  context alone decides), the plain ORDER BY/LIMIT the admin read before;
- what else an admin page of the site's list reads: its paginator's count (count(*) through the
  view, as before; rls_audit.count_entries() capped at 1,001 as AuditPaginator asks it, target
  under 50 ms; and exact), the date hierarchy's min and max of logged_at (through the view;
  rls_audit.entry_times(), target under 50 ms);
- a list filtered by user and table: one user's latest 50 changes of one table and their
  capped count, targets under 50 ms.
Median of BENCH_READS runs each, warm cache; also the log's bytes per recorded row.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

LOG_ROWS = int(os.environ.get("BENCH_LOG_ROWS", "10000000"))
READS = int(os.environ.get("BENCH_READS", "20"))
KEEP = os.environ.get("BENCH_KEEP") == "1"  # leave the filled database (and its role) for EXPLAIN
BATCH = 500_000
CHUNK = int(os.environ.get("BENCH_CHUNK", "1000"))
OBJECTS = min(1_000_000, max(LOG_ROWS // 10, 1))
DB = "django_rls_audit_read_bench"
ROLE = "bench_audit_app"
QUERIES = {
    "one object's history": ("SELECT * FROM rls_audit.history('item', %(key)s)", 10.0),
    # The admin's audit trail list filtered by site, newest first, as AuditEntryQuerySet.newest()
    # (and so the admin) reads it: the statement rows holding the newest entries come from
    # rls_audit.newest_statements(), walking the (site_id, logged_at) index newest first.
    "a site's latest 50 changes": (
        "SELECT * FROM rls_audit.log WHERE statement_id = ANY (rls_audit.newest_statements(50, site_id => %(site)s)) "
        "AND site_id = %(site)s ORDER BY logged_at DESC, id DESC LIMIT 50",
        50.0,
    ),
    # The same, page 20 of the admin's list (OFFSET 950).
    "… page 20 of them": (
        "SELECT * FROM rls_audit.log WHERE statement_id = ANY (rls_audit.newest_statements(1000, site_id => %(site)s)) "
        "AND site_id = %(site)s ORDER BY logged_at DESC, id DESC LIMIT 50 OFFSET 950",
        50.0,
    ),
    # The same filtered by user too (one user's single-row changes in the site).
    "… of one user": (
        "SELECT * FROM rls_audit.log WHERE statement_id = ANY "
        "(rls_audit.newest_statements(50, site_id => %(site)s, user_id => %(user)s)) "
        "AND site_id = %(site)s AND user_id = %(user)s ORDER BY logged_at DESC, id DESC LIMIT 50",
        50.0,
    ),
    # The app role's latest 50 without a site filter (its context reads one site of 100).
    "… without a site filter": (
        "SELECT * FROM rls_audit.log WHERE statement_id = ANY (rls_audit.newest_statements(50)) "
        "ORDER BY logged_at DESC, id DESC LIMIT 50",
        50.0,
    ),
    # The plain query, as the admin read it before newest_statements() (for comparison).
    "… plain ORDER BY/LIMIT": (
        "SELECT * FROM rls_audit.log WHERE site_id = %(site)s ORDER BY logged_at DESC, id DESC LIMIT 50",
        50.0,
    ),
    # The admin paginator's count of the site's entries as it ran before rls_audit.count_entries()
    # (show_full_result_count is off, this one it ran): the view unnests and sorts them all.
    "… count(*) of the site's entries": ("SELECT count(*) FROM rls_audit.log WHERE site_id = %(site)s", None),
    # The admin's paginator now (AuditPaginator): counts at most its limit + 1, then says "more than".
    "… count, as the admin pages": ("SELECT rls_audit.count_entries(1001, site_id => %(site)s)", 50.0),
    # The exact count (QuerySet.count() of a filter on statement columns), without the images or a sort.
    "… exact count_entries()": ("SELECT rls_audit.count_entries(NULL, site_id => %(site)s)", None),
    # The date hierarchy's first question (min and max of logged_at), through the view as before …
    "… min/max(logged_at), the view": (
        "SELECT min(logged_at), max(logged_at) FROM rls_audit.log WHERE site_id = %(site)s",
        None,
    ),
    # … and as AuditEntryQuerySet.aggregate() asks it now, from either end of the site's index.
    "… min/max(logged_at), entry_times()": ("SELECT * FROM rls_audit.entry_times(site_id => %(site)s)", 50.0),
    # A filtered list: one user's latest 50 changes of one table (the admin's user and table filters).
    "a user's latest 50 in one table": (
        "SELECT * FROM rls_audit.log WHERE statement_id = ANY "
        "(rls_audit.newest_statements(50, user_id => %(user)s, table_name => 'public.item')) "
        "AND user_id = %(user)s AND table_name = 'public.item' ORDER BY logged_at DESC, id DESC LIMIT 50",
        50.0,
    ),
    # … and its count as the admin pages it.
    "… its count, as the admin pages": (
        "SELECT rls_audit.count_entries(1001, user_id => %(user)s, table_name => 'public.item')",
        50.0,
    ),
}
# The rows that answer with a count of entries (shown as that number).
COUNTS = {
    "… count(*) of the site's entries",
    "… count, as the admin pages",
    "… exact count_entries()",
    "… its count, as the admin pages",
}


def fill(conn: psycopg.Connection) -> None:
    conn.execute("CREATE EXTENSION django_rls")
    conn.execute("SELECT rls_audit.ensure_partitions(1)")
    conn.execute("CREATE TABLE item (id bigint PRIMARY KEY, site_id bigint NOT NULL, body text)")
    conn.execute(sql.SQL("GRANT SELECT ON item TO {}").format(sql.Identifier(ROLE)))
    conn.execute("SELECT rls.protect_by_site('item', 'site_id', to_role => %s)", [ROLE])
    conn.execute("SELECT rls_audit.enable('item')")
    conn.execute("SELECT rls_audit.set_read_rule('item', site_column => 'site_id')")
    trail = conn.execute("SELECT trail_id FROM rls_audit.trails WHERE table_oid = 'item'::regclass").fetchone()[0]
    columns = (
        "logged_at, table_oid, table_name, operation, site_id, user_id, db_role, read_rule, read_keys, trail_id, "
        "row_keys, old_values, new_values, changed_columns, row_read_keys"
    )
    half = LOG_ROWS // 2
    for start in range(0, half, BATCH):
        # Single-row statements: change g is of object g % OBJECTS, whose site is object % 100.
        conn.execute(
            f"INSERT INTO rls_audit.statements ({columns}) "
            "SELECT now() - (%(rows)s - g) * interval '100 microseconds', 'item'::regclass, 'public.item', 'UPDATE', "
            "g %% %(objects)s %% 100, g %% 5000, 'bench', 'site', ARRAY[(g %% %(objects)s %% 100)::text], %(trail)s, "
            "ARRAY[(g %% %(objects)s)::text], ARRAY[jsonb_build_object('body', md5((g - 1)::text))], "
            "ARRAY[jsonb_build_object('body', md5(g::text))], ARRAY['{body}'], "
            "ARRAY['{' || (g %% %(objects)s %% 100) || '}'] "
            "FROM generate_series(%(lo)s, %(hi)s) g",
            {"rows": LOG_ROWS, "objects": OBJECTS, "trail": trail, "lo": start + 1, "hi": min(start + BATCH, half)},
        )
    for start in range(half, LOG_ROWS, BATCH):
        # Bulk statements of CHUNK rows of one site each (the objects of a site are 100 apart).
        conn.execute(
            f"INSERT INTO rls_audit.statements ({columns}) "
            "SELECT now() - (%(rows)s - min(g)) * interval '100 microseconds', 'item'::regclass, 'public.item', "
            "'UPDATE', g %% 100, 0, 'bench', 'site', ARRAY[(g %% 100)::text], %(trail)s, "
            "array_agg((g %% %(objects)s)::text ORDER BY g), "
            "array_agg(jsonb_build_object('body', md5((g - 1)::text)) ORDER BY g), "
            "array_agg(jsonb_build_object('body', md5(g::text)) ORDER BY g), "
            "array_agg('{body}'::text ORDER BY g), array_agg('{' || (g %% 100) || '}' ORDER BY g) "
            "FROM generate_series(%(lo)s, %(hi)s) g GROUP BY g %% 100, (g - %(lo)s) / (100 * %(chunk)s)",
            {
                "rows": LOG_ROWS,
                "objects": OBJECTS,
                "trail": trail,
                "lo": start + 1,
                "hi": min(start + BATCH, LOG_ROWS),
                "chunk": CHUNK,
            },
        )
    conn.execute("VACUUM ANALYZE rls_audit.statements")


def main() -> int:
    server = os.environ["DATABASE_URL"]
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    try:
        started = time.monotonic()
        with psycopg.connect(make_conninfo(server, dbname=DB), autocommit=True) as conn:
            fill(conn)
            stored = conn.execute(
                "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('rls_audit.statements')"
            ).fetchone()[0]
        filled = time.monotonic() - started
        with psycopg.connect(make_conninfo(server, dbname=DB, user=ROLE), autocommit=True) as app:
            site, key = 7, str(OBJECTS // 2 + 7 - (OBJECTS // 2) % 100)
            app.execute("SELECT rls.set_context(%s, NULL, NULL, false)", [str(site)])
            print(
                f"audit read path: {LOG_ROWS:,} recorded rows in the log ({OBJECTS:,} objects, 100 sites), "
                f"filled in {filled:.0f} s; {stored / LOG_ROWS:.0f} bytes per recorded row"
            )
            print(
                f"as {ROLE} (site {site} context, through the log's policy), median of {READS} warm runs "
                f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):"
            )
            arguments = {"key": key, "site": site, "user": 7 * 100 + site}
            for name, (query, target) in QUERIES.items():
                rows = app.execute(query, arguments).fetchall()
                times = []
                for _ in range(READS if target is not None else max(3, READS // 5)):
                    begun = time.perf_counter()
                    app.execute(query, arguments).fetchall()
                    times.append((time.perf_counter() - begun) * 1000)
                ms = statistics.median(times)
                shown = f"{rows[0][0]:,} entries" if name in COUNTS else f"{len(rows)} rows"
                if name.startswith("… min/max"):
                    shown = f"{rows[0][0]:%H:%M:%S} to {rows[0][1]:%H:%M:%S}"
                verdict = "" if target is None else f"; target < {target:.0f} ms: {'yes' if ms < target else 'NO'}"
                print(f"  {name:36s} {ms:8.2f} ms  ({shown}{verdict})")
            print(f"(load average {os.getloadavg()[0]:.1f} at the end)")
    finally:
        if KEEP:
            print(f"kept database {DB} and role {ROLE} (BENCH_KEEP=1)")
        else:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
