"""The policy set's cost: rls_base_<command> (the groups' conjunction) against the single rls_base USING (true).

    python tests/harness/cluster.py run -- .venv/bin/python bench/policy_set.py

rls.protect_by_site() gives a table the restrictive group rls_site_<command> and, beside it, one
permissive policy per command that carries the same expression (so that a copy which loses
AS RESTRICTIVE, as Citus's shards do, cannot open the table). Until issue 17 the permissive side
was one rls_base FOR ALL USING (true) WITH CHECK (true). This compares the two sets side by side in
one run, as the application role, in the C library's mode and in the SQL-only mode (a database of
its own): the same tables twice, "conj" protected as rls.protect_by_site() does now, "true" with
its rls_base_<command> policies replaced by the former rls_base. It prints the read paths of
bench/read_path.py, a bulk INSERT (where every row is checked against both policies), and the
estimates each set gets on a skewed table.

Times are EXPLAIN ANALYZE's execution times with TIMING OFF; absolute times drift on a shared
machine, the ratios within one run are what counts.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from django_rls import sqlonly

ROWS = int(os.environ.get("BENCH_ROWS", "1000000"))
SITES = 100
SITE = 42
REPEAT = int(os.environ.get("BENCH_REPEAT", "7"))
INSERT_ROWS = 20_000
DB = "django_rls_bench_policy_set"
SQL_DB = "django_rls_bench_policy_set_sqlonly"
SETS = ("conj", "true")

INDEX_PATH = ["SET LOCAL enable_seqscan = off"]
INDEX_ONLY_PATH = ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_bitmapscan = off"]
SEQ_PATH = [
    "SET LOCAL enable_indexscan = off",
    "SET LOCAL enable_bitmapscan = off",
    "SET LOCAL parallel_setup_cost = 0",
    "SET LOCAL parallel_tuple_cost = 0",
    "SET LOCAL max_parallel_workers_per_gather = 2",
]
CASES = {
    "index path": (INDEX_PATH, "SELECT count(*), sum(amount) FROM orders_{s}", 1),
    "parallel seq scan": (SEQ_PATH, "SELECT count(*), sum(amount) FROM orders_{s}", 1),
    "app filter + policy, index-only": (INDEX_ONLY_PATH, "SELECT count(*) FROM orders_{s} WHERE site_id = 42", 10),
    "join of two protected tables": (
        [],
        "SELECT count(*), sum(l.amount) FROM orders_{s} o JOIN lines_{s} l ON l.order_id = o.id",
        1,
    ),
    f"insert {INSERT_ROWS:,} rows": (
        [],
        f"INSERT INTO orders_{{s}} SELECT {ROWS} + g, 42, 1, '' FROM generate_series(1, {INSERT_ROWS}) g",
        1,
    ),
}


def _to_main_set(conn: psycopg.Connection, table: str) -> None:
    """Replace rls_base_<command> by main's rls_base FOR ALL USING (true) WITH CHECK (true)."""
    for command in ("select", "insert", "update", "delete"):
        conn.execute(
            sql.SQL("DROP POLICY {} ON {}").format(sql.Identifier(f"rls_base_{command}"), sql.Identifier(table))
        )
    conn.execute(
        sql.SQL(
            "CREATE POLICY rls_base ON {} AS PERMISSIVE FOR ALL TO bench_app USING (true) WITH CHECK (true)"
        ).format(sql.Identifier(table))
    )


def _tables(conn: psycopg.Connection) -> None:
    for policy_set in SETS:
        for kind in ("orders", "lines"):
            table = f"{kind}_{policy_set}"
            key = "order_id bigint NOT NULL," if kind == "lines" else ""
            conn.execute(
                f"CREATE TABLE {table} (id bigint PRIMARY KEY, {key} site_id int NOT NULL, amount int, payload text)"
            )
            order_id = "g / 10, " if kind == "lines" else ""
            conn.execute(
                f"INSERT INTO {table} SELECT g, {order_id}g % {SITES}, g % 1000, md5(g::text) "
                f"FROM generate_series(1, {ROWS}) g"
            )
            conn.execute(f"CREATE INDEX ON {table} (site_id)")
            if kind == "lines":
                conn.execute(f"CREATE INDEX ON {table} (site_id, order_id)")
            conn.execute(f"GRANT SELECT, INSERT ON {table} TO bench_app")
            conn.execute("SELECT rls.protect_by_site(%s, 'site_id', to_role => 'bench_app')", [table])
            if policy_set == "true":
                _to_main_set(conn, table)
        skew = f"skew_{policy_set}"
        conn.execute(f"CREATE TABLE {skew} (id bigint PRIMARY KEY, site_id int NOT NULL, amount int)")
        conn.execute(
            f"INSERT INTO {skew} SELECT g, CASE WHEN g % 2 = 0 THEN 1 ELSE g % {SITES} END, g % 1000 "
            f"FROM generate_series(1, {ROWS}) g"
        )
        conn.execute(f"CREATE INDEX ON {skew} (site_id)")
        conn.execute(f"GRANT SELECT ON {skew} TO bench_app")
        conn.execute("SELECT rls.protect_by_site(%s, 'site_id', to_role => 'bench_app')", [skew])
        if policy_set == "true":
            _to_main_set(conn, skew)
    # Once every table exists: frozen and all-visible, so that an index-only scan fetches no heap page in
    # either set (a table vacuumed while a later one was still being loaded may not be).
    for policy_set in SETS:
        for kind in ("orders", "lines", "skew"):
            conn.execute(f"VACUUM (FREEZE, ANALYZE) {kind}_{policy_set}")


def setup(server: str) -> dict[str, str]:
    with psycopg.connect(server, autocommit=True) as admin:
        for name in (DB, SQL_DB):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        admin.execute("DROP ROLE IF EXISTS bench_app")
        admin.execute("CREATE ROLE bench_app LOGIN")
    dsn = make_conninfo(server, dbname=DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
        _tables(conn)
    sql_dsn = make_conninfo(server, dbname=SQL_DB)
    with psycopg.connect(sql_dsn) as conn:
        with conn.cursor() as cursor:
            sqlonly.install(cursor, [])
        conn.commit()
        conn.autocommit = True
        _tables(conn)
    return {"c": dsn, "sql": sql_dsn}


def timed(conn: psycopg.Connection, settings: list[str], query: str, runs: int) -> float:
    """The fastest of `runs` executions in ms, in a transaction that is rolled back (inserts leave nothing)."""
    times = []
    with conn.transaction(force_rollback=True):
        for statement in settings:
            conn.execute(statement)
        conn.execute("SELECT rls.set_context(%s, NULL)", [str(SITE)])
        for _ in range(runs):
            plan = conn.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + query).fetchone()[0]
            times.append(plan[0]["Execution Time"])
    return min(times)


def estimate(conn: psycopg.Connection, site: int, table: str) -> str:
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT rls.set_context(%s, NULL)", [str(site)])
        plan = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT count(*) FROM {table}").fetchone()[0][0]["Plan"]
    while plan.get("Plans") and plan["Node Type"] in ("Aggregate", "Gather", "Finalize Aggregate", "Partial Aggregate"):
        plan = next(p for p in plan["Plans"] if p.get("Parent Relationship") != "InitPlan")
    return f"{plan['Node Type']} ~{plan['Plan Rows']}"


def main() -> int:
    server = os.environ["DATABASE_URL"]
    print(f"policy set: {ROWS:,} rows per table, {SITES} sites, site {SITE}; median of {REPEAT}", flush=True)
    started = time.monotonic()
    dsns = setup(server)
    print(f"setup took {time.monotonic() - started:.0f} s\n", flush=True)
    apps = {mode: psycopg.connect(make_conninfo(dsn, user="bench_app"), autocommit=True) for mode, dsn in dsns.items()}
    variants = [(mode, policy_set) for mode in apps for policy_set in SETS]
    print(
        f"{'what':34s} {'C conj ms':>10s} {'C true ms':>10s} {'C ratio':>8s} {'sql conj ms':>12s} {'sql true ms':>12s} {'sql ratio':>10s}"
    )
    for label, (settings, query, runs) in CASES.items():
        samples: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
        for round_number in range(REPEAT + 1):  # the first round warms the caches and is not counted
            for mode, policy_set in variants[round_number % len(variants) :] + variants[: round_number % len(variants)]:
                samples[(mode, policy_set)].append(timed(apps[mode], settings, query.format(s=policy_set), runs))
        m = {v: statistics.median(values[1:]) for v, values in samples.items()}
        print(
            f"{label:34s} {m['c', 'conj']:10.2f} {m['c', 'true']:10.2f} {m['c', 'conj'] / m['c', 'true']:8.3f} "
            f"{m['sql', 'conj']:12.2f} {m['sql', 'true']:12.2f} {m['sql', 'conj'] / m['sql', 'true']:10.3f}"
        )
    print("\nestimated rows on the skewed table (site 1 holds half of the rows), conj / true:")
    for site in (1, 51):
        for mode, app in apps.items():
            print(
                f"  site {site:2d}, {mode:3s}: {estimate(app, site, 'skew_conj')} / {estimate(app, site, 'skew_true')}"
            )
    for app in apps.values():
        app.close()
    with psycopg.connect(server, autocommit=True) as conn:
        for name in (DB, SQL_DB):
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute("DROP ROLE bench_app")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
