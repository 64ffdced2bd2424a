"""Read path: the cost of a policy on queries, side by side in one run, as the application role.

    python tests/harness/cluster.py run -- .venv/bin/python bench/read_path.py

Compares, on the same data (2M rows, 100 sites), what the application role pays under
each kind of policy against the floor: the same query with an explicit `WHERE site_id = 42`
run as a superuser, with no policy at all.

- ours:    site_id = rls.site_id()                              (django_rls)
- calls:   the same policy with django_rls.accessor_initplans = off, so the plan calls
           rls.site_id() wherever the planner put it (once per row on a filter) instead
           of reading a parameter its initplan set once
- classic: site_id = current_setting('app.site')::int            (the tutorial policy)
- wrapped: site_id = (SELECT current_setting('app.site')::int)   (the usual fix)

Times are EXPLAIN ANALYZE's execution times with TIMING OFF: with per-node timing on, every
row that passes through a plan node costs two clock readings (pg_test_timing measured about
76 ns each on this machine), so a plan with one node more than the floor's (the one-time
check on the app's path) would look slower by what EXPLAIN itself spends, not the query.
Absolute times drift on a shared machine; the ratios within one run are what counts.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROWS = int(os.environ.get("BENCH_ROWS", "2000000"))
SITES = 100
SITE = 42
REPEAT = int(os.environ.get("BENCH_REPEAT", "7"))
TARGET = 1.03
DB = "django_rls_bench"

POLICIES = {
    "ours": None,  # rls.protect_by_site()
    "calls": None,  # the same table as ours, read by a role with django_rls.accessor_initplans = off
    "classic": "site_id = current_setting('app.site')::int",
    "wrapped": "site_id = (SELECT current_setting('app.site')::int)",
}
INDEX_PATH = ["SET enable_seqscan = off"]
INDEX_ONLY_PATH = ["SET enable_seqscan = off", "SET enable_bitmapscan = off"]
SEQ_PATH = [
    "SET enable_indexscan = off",
    "SET enable_bitmapscan = off",
    "SET parallel_setup_cost = 0",
    "SET parallel_tuple_cost = 0",
    "SET max_parallel_workers_per_gather = 2",
]


def setup(server: str) -> str:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        admin.execute("DROP ROLE IF EXISTS bench_app_calls")
        admin.execute("DROP ROLE IF EXISTS bench_app")
        admin.execute("CREATE ROLE bench_app LOGIN")
        # A member of bench_app, so the same policies apply, with the calls left in the plans.
        admin.execute("CREATE ROLE bench_app_calls LOGIN IN ROLE bench_app")
        admin.execute("ALTER ROLE bench_app_calls SET django_rls.accessor_initplans = off")
    dsn = make_conninfo(server, dbname=DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
        for name, policy in POLICIES.items():
            if name == "calls":
                continue
            for kind in ("orders", "lines"):
                table = f"{kind}_{name}"
                key = "order_id bigint NOT NULL," if kind == "lines" else ""
                conn.execute(
                    f"CREATE TABLE {table} (id bigint PRIMARY KEY, {key} site_id int NOT NULL, amount int, payload text)"
                )
                order_id = "g / 10, " if kind == "lines" else ""  # ten lines per order
                conn.execute(
                    f"INSERT INTO {table} SELECT g, {order_id}g % {SITES}, g % 1000, md5(g::text) "
                    f"FROM generate_series(1, {ROWS}) g"
                )
                conn.execute(f"CREATE INDEX ON {table} (site_id)")
                if kind == "lines":
                    conn.execute(f"CREATE INDEX ON {table} (site_id, order_id)")
                conn.execute(f"GRANT SELECT ON {table} TO bench_app")
                if policy is None:
                    conn.execute("SELECT rls.protect_by_site(%s, 'site_id', to_role => 'bench_app')", [table])
                else:
                    conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
                    conn.execute(f"CREATE POLICY p ON {table} TO bench_app USING ({policy})")
                conn.execute(f"VACUUM ANALYZE {table}")
        # A skewed table: site 1 holds half of the rows.
        conn.execute("CREATE TABLE skew (id bigint PRIMARY KEY, site_id int NOT NULL, amount int)")
        conn.execute(
            f"INSERT INTO skew SELECT g, CASE WHEN g % 2 = 0 THEN 1 ELSE g % {SITES} END, g % 1000 "
            f"FROM generate_series(1, {ROWS}) g"
        )
        conn.execute("CREATE INDEX ON skew (site_id)")
        conn.execute("GRANT SELECT ON skew TO bench_app")
        conn.execute("SELECT rls.protect_by_site('skew', 'site_id', to_role => 'bench_app')")
        conn.execute("VACUUM ANALYZE skew")
    return dsn


def timed(
    conn: psycopg.Connection, settings: list[str], context: str | None, query: str, runs: int
) -> tuple[float, str]:
    """Execution time in ms (the fastest of `runs` back-to-back runs), and the scan node that read the first table."""
    with conn.transaction():
        for statement in settings:
            conn.execute(statement.replace("SET ", "SET LOCAL ", 1))
        if context in ("ours", "calls"):
            conn.execute("SELECT rls.set_context(%s, NULL)", [str(SITE)])
        elif context in ("classic", "wrapped"):
            conn.execute("SELECT set_config('app.site', %s, true)", [str(SITE)])
        plans = [conn.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + query).fetchone()[0] for _ in range(runs)]
    plan = min(plans, key=lambda p: p[0]["Execution Time"])
    node = plan[0]["Plan"]
    while node.get("Plans"):
        node = next((p for p in node["Plans"] if p.get("Parent Relationship") != "InitPlan"), node["Plans"][0])
    return plan[0]["Execution Time"], node["Node Type"]


def plan_shape(conn: psycopg.Connection, site: int, query: str) -> str:
    with conn.transaction():
        conn.execute("SELECT rls.set_context(%s, NULL)", [str(site)])
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + query).fetchone()[0][0]["Plan"]
    while plan.get("Plans") and plan["Node Type"] in ("Aggregate", "Gather", "Finalize Aggregate", "Partial Aggregate"):
        plan = next(p for p in plan["Plans"] if p.get("Parent Relationship") != "InitPlan")
    return f"{plan['Node Type']} (estimated {plan['Plan Rows']} rows)"


def main() -> int:
    server = os.environ["DATABASE_URL"]
    print(f"read path: {ROWS:,} rows per table, {SITES} sites, site {SITE}; median of {REPEAT}", flush=True)
    started = time.monotonic()
    dsn = setup(server)
    print(f"setup took {time.monotonic() - started:.0f} s\n", flush=True)
    admin = psycopg.connect(dsn, autocommit=True)
    app = psycopg.connect(make_conninfo(dsn, user="bench_app"), autocommit=True)
    app_calls = psycopg.connect(make_conninfo(dsn, user="bench_app_calls"), autocommit=True)

    # what: (settings, query under the policy, floor query, back-to-back runs per sample); a query of a
    # few milliseconds takes the fastest of several runs, so that one stall of a shared machine does
    # not decide a sample.
    cases = {
        "index path": (
            INDEX_PATH,
            "SELECT count(*), sum(amount) FROM orders_{t}",
            "SELECT count(*), sum(amount) FROM orders_{t} WHERE site_id = 42",
            1,
        ),
        "parallel seq scan": (
            SEQ_PATH,
            "SELECT count(*), sum(amount) FROM orders_{t}",
            "SELECT count(*), sum(amount) FROM orders_{t} WHERE site_id = 42",
            1,
        ),
        "app filter + policy, index-only": (
            INDEX_ONLY_PATH,
            "SELECT count(*) FROM orders_{t} WHERE site_id = 42",
            "SELECT count(*) FROM orders_{t} WHERE site_id = 42",
            10,
        ),
        "join of two protected tables": (
            [],
            "SELECT count(*), sum(l.amount) FROM orders_{t} o JOIN lines_{t} l ON l.order_id = o.id",
            "SELECT count(*), sum(l.amount) FROM orders_{t} o JOIN lines_{t} l ON l.order_id = o.id "
            "WHERE o.site_id = 42 AND l.site_id = 42",
            1,
        ),
    }
    rows = []
    names = ["floor", *POLICIES]
    for label, (settings, protected_query, floor_query, runs) in cases.items():
        samples: dict[str, list[float]] = {name: [] for name in names}
        nodes: dict[str, str] = {}
        for round_number in range(REPEAT + 1):  # the first round warms the caches and is not counted
            # Each round starts with another variant, so that none always runs first.
            for name in names[round_number % len(names) :] + names[: round_number % len(names)]:
                conn, context = {"floor": (admin, None), "calls": (app_calls, name)}.get(name, (app, name))
                table = {"floor": "ours", "calls": "ours"}.get(name, name)
                query = (floor_query if name == "floor" else protected_query).format(t=table)
                ms, nodes[name] = timed(conn, settings, context, query, runs)
                samples[name].append(ms)
        medians = {name: statistics.median(values[1:]) for name, values in samples.items()}
        rows.append((label, medians, nodes))

    print(
        f"{'what':32s} {'floor ms':>9s} {'ours ms':>9s} {'ours x':>7s} {'calls x':>8s} {'classic x':>10s} {'wrapped x':>10s}"
        f"  target <= {TARGET}x"
    )
    met_all = True
    for label, medians, _ in rows:
        ratio = medians["ours"] / medians["floor"]
        met = ratio <= TARGET
        met_all &= met
        print(
            f"{label:32s} {medians['floor']:9.2f} {medians['ours']:9.2f} {ratio:7.3f} {medians['calls'] / medians['floor']:8.3f} "
            f"{medians['classic'] / medians['floor']:10.3f} {medians['wrapped'] / medians['floor']:10.3f}  {'yes' if met else 'NO'}"
        )
    print("\nscan nodes (floor / ours / calls / classic / wrapped):")
    for label, _, nodes in rows:
        print(f"  {label}: {' / '.join(nodes[name] for name in ('floor', *POLICIES))}")
    print("\nplans on the skewed table (site 1 holds half of the rows):")
    for site in (1, 51):
        print(f"  site {site:2d}: {plan_shape(app, site, 'SELECT count(*), sum(amount) FROM skew')}")
    app.close()
    app_calls.close()
    admin.close()
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DB)))
        conn.execute("DROP ROLE bench_app_calls")
        conn.execute("DROP ROLE bench_app")
    print(f"\ntotal {time.monotonic() - started:.0f} s; all targets met: {'yes' if met_all else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
