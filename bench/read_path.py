"""Read path: the cost of a policy on queries, side by side in one run, as the application role.

    python tests/harness/cluster.py run -- .venv/bin/python bench/read_path.py

Compares, on the same data (2M rows, 100 sites), what the application role pays under
each kind of policy against the floor: the same query with an explicit `WHERE site_id = 42`
run as a superuser, with no policy at all.

- ours:    site_id = rls.site_id()                              (django_rls, the C library)
- calls:   the same policy with django_rls.accessor_initplans = off, so the plan calls
           rls.site_id() wherever the planner put it (once per row on a filter) instead
           of reading a parameter its initplan set once
- sql:     site_id = (SELECT rls.site_id())                     (django_rls's SQL-only mode, in a database
                                                                 of its own without the extension; its
                                                                 floor is the same query in that database)
- classic: site_id = current_setting('app.site')::int            (the tutorial policy)
- wrapped: site_id = (SELECT current_setting('app.site')::int)   (the usual fix)

It also prints what one accessor call costs in each mode (what a policy that calls it per
row pays), and the estimates each mode's plans get on a skewed table.

Times are EXPLAIN ANALYZE's execution times with TIMING OFF: with per-node timing on, every
row that passes through a plan node costs two clock readings (pg_test_timing measured about
76 ns each on this machine), so a plan with one node more than the floor's (the one-time
check on the app's path) would look slower by what EXPLAIN itself spends, not the query.

Absolute times drift on a shared machine; the ratios within one run are what counts.

BENCH_PATHS (labels of the table's first column, separated by semicolons) runs only those paths;
with BENCH_KEEP=1 the databases are kept after the run and reused by the next one that finds
them (to compare two builds of the library on the same data: restart the server between).
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

ROWS = int(os.environ.get("BENCH_ROWS", "2000000"))
SITES = 100
SITE = 42
REPEAT = int(os.environ.get("BENCH_REPEAT", "7"))
TARGET = 1.03
KEEP = os.environ.get("BENCH_KEEP") == "1"
DB = "django_rls_bench"
SQL_DB = "django_rls_bench_sqlonly"

POLICIES = {
    "ours": None,  # rls.protect_by_site()
    "calls": None,  # the same table as ours, read by a role with django_rls.accessor_initplans = off
    "sql": None,  # rls.protect_by_site() in the SQL-only mode's database
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


def _tables(conn: psycopg.Connection, names: dict[str, str | None]) -> None:
    for name, policy in names.items():
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


def setup(server: str) -> tuple[str, str]:
    dsn, sql_dsn = make_conninfo(server, dbname=DB), make_conninfo(server, dbname=SQL_DB)
    with psycopg.connect(server, autocommit=True) as admin:
        kept = admin.execute("SELECT count(*) FROM pg_database WHERE datname IN (%s, %s)", [DB, SQL_DB]).fetchone()[0]
    if KEEP and kept == 2:
        print("reusing the databases of an earlier run (BENCH_KEEP=1)", flush=True)
        return dsn, sql_dsn
    with psycopg.connect(server, autocommit=True) as admin:
        for name in (DB, SQL_DB):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        admin.execute("DROP ROLE IF EXISTS bench_app_calls")
        admin.execute("DROP ROLE IF EXISTS bench_app")
        admin.execute("CREATE ROLE bench_app LOGIN")
        # A member of bench_app, so the same policies apply, with the calls left in the plans.
        admin.execute("CREATE ROLE bench_app_calls LOGIN IN ROLE bench_app")
        admin.execute("ALTER ROLE bench_app_calls SET django_rls.accessor_initplans = off")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION django_rls")
        _tables(conn, {name: policy for name, policy in POLICIES.items() if name not in ("sql", "calls")})
    with psycopg.connect(sql_dsn) as conn:
        with conn.cursor() as cursor:
            sqlonly.install(cursor, [])
        conn.commit()
        conn.autocommit = True
        _tables(conn, {"sql": None})
    # Once more when everything is loaded: a table vacuumed while autovacuum analysed another one
    # may not be all-visible yet, and its index-only scans would then visit the heap.
    for each in (dsn, sql_dsn):
        with psycopg.connect(each, autocommit=True) as conn:
            conn.execute("VACUUM (FREEZE, ANALYZE)")
    return dsn, sql_dsn


def accessor_call_us(conn: psycopg.Connection, accessor: str, calls: int = 20_000) -> float:
    """Microseconds per call of an accessor written so that the planner cannot fold or hoist it."""
    with conn.transaction():
        conn.execute("SELECT rls.set_context(%s, NULL)", [str(SITE)])
        plan = conn.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM generate_series(1, {calls}) g "
            f"WHERE g::bigint + {accessor} > 0"
        ).fetchone()[0]
        empty = conn.execute(
            f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT count(*) FROM generate_series(1, {calls}) g WHERE g::bigint + 42 > 0"
        ).fetchone()[0]
    return (plan[0]["Execution Time"] - empty[0]["Execution Time"]) * 1000 / calls


def timed(
    conn: psycopg.Connection, settings: list[str], context: str | None, query: str, runs: int
) -> tuple[float, str]:
    """Execution time in ms (the fastest of `runs` back-to-back runs), and the scan node that read the first table."""
    with conn.transaction():
        for statement in settings:
            conn.execute(statement.replace("SET ", "SET LOCAL ", 1))
        if context in ("ours", "calls", "sql"):
            conn.execute("SELECT rls.set_context(%s, NULL)", [str(SITE)])
        elif context in ("classic", "wrapped"):
            conn.execute("SELECT set_config('app.site', %s, true)", [str(SITE)])
        plans = [conn.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + query).fetchone()[0] for _ in range(runs)]
    plan = min(plans, key=lambda p: p[0]["Execution Time"])
    node = plan[0]["Plan"]
    while children := _scan_children(node):
        node = children[0]
    return plan[0]["Execution Time"], node["Node Type"]


def _scan_children(node: dict) -> list[dict]:
    """A plan node's children but the InitPlans (both modes read their context in one)."""
    return [child for child in node.get("Plans", []) if child.get("Parent Relationship") != "InitPlan"]


def plan_shape(conn: psycopg.Connection, site: int, query: str) -> str:
    with conn.transaction():
        conn.execute("SELECT rls.set_context(%s, NULL)", [str(site)])
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + query).fetchone()[0][0]["Plan"]
    while _scan_children(plan) and plan["Node Type"] in (
        "Aggregate",
        "Gather",
        "Finalize Aggregate",
        "Partial Aggregate",
    ):
        plan = _scan_children(plan)[0]
    return f"{plan['Node Type']} (estimated {plan['Plan Rows']} rows)"


def main() -> int:
    server = os.environ["DATABASE_URL"]
    print(f"read path: {ROWS:,} rows per table, {SITES} sites, site {SITE}; median of {REPEAT}", flush=True)
    started = time.monotonic()
    dsn, sql_dsn = setup(server)
    print(f"setup took {time.monotonic() - started:.0f} s\n", flush=True)
    admin = psycopg.connect(dsn, autocommit=True)
    app = psycopg.connect(make_conninfo(dsn, user="bench_app"), autocommit=True)
    sql_app = psycopg.connect(make_conninfo(sql_dsn, user="bench_app"), autocommit=True)
    sql_admin = psycopg.connect(sql_dsn, autocommit=True)
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
    if paths := os.environ.get("BENCH_PATHS"):
        wanted = [label.strip() for label in paths.split(";")]
        if unknown := [label for label in wanted if label not in cases]:
            raise SystemExit(f"BENCH_PATHS: unknown {', '.join(unknown)}; choose from {', '.join(cases)}")
        cases = {label: case for label, case in cases.items() if label in wanted}
    rows = []
    for label, (settings, protected_query, floor_query, runs) in cases.items():
        # The SQL-only tables live in a database of their own: their floor is the same query there.
        names = ("floor", "sql floor", *POLICIES)
        samples: dict[str, list[float]] = {name: [] for name in names}
        nodes: dict[str, str] = {}
        for round_number in range(REPEAT + 1):  # the first round warms the caches and is not counted
            # Each round starts with another variant, so that none always runs first.
            for name in names[round_number % len(names) :] + names[: round_number % len(names)]:
                if name == "floor":
                    conn, context, query = admin, None, floor_query.format(t="ours")
                elif name == "sql floor":
                    conn, context, query = sql_admin, None, floor_query.format(t="sql")
                else:
                    conn = {"sql": sql_app, "calls": app_calls}.get(name, app)
                    context, query = name, protected_query.format(t="ours" if name == "calls" else name)
                ms, nodes[name] = timed(conn, settings, context, query, runs)
                samples[name].append(ms)
        medians = {name: statistics.median(values[1:]) for name, values in samples.items()}
        rows.append((label, medians, nodes))

    print(
        f"{'what':32s} {'floor ms':>9s} {'ours ms':>9s} {'ours x':>7s} {'calls x':>8s} {'sql-only x':>10s} {'classic x':>10s} "
        f"{'wrapped x':>10s}  target <= {TARGET}x (ours)"
    )
    met_all = True
    for label, medians, _ in rows:
        ratio = medians["ours"] / medians["floor"]
        met = ratio <= TARGET
        met_all &= met
        print(
            f"{label:32s} {medians['floor']:9.2f} {medians['ours']:9.2f} {ratio:7.3f} {medians['calls'] / medians['floor']:8.3f} "
            f"{medians['sql'] / medians['sql floor']:10.3f} {medians['classic'] / medians['floor']:10.3f} {medians['wrapped'] / medians['floor']:10.3f}  {'yes' if met else 'NO'}"
        )
    print("\nscan nodes (floor / ours / calls / sql-only / classic / wrapped):")
    for label, _, nodes in rows:
        print(f"  {label}: {nodes['floor']} / {' / '.join(nodes[name] for name in POLICIES)}")
    print("\nplans on the skewed table (site 1 holds half of the rows), C library / SQL-only mode:")
    for site in (1, 51):
        query = "SELECT count(*), sum(amount) FROM skew"
        print(f"  site {site:2d}: {plan_shape(app, site, query)} / {plan_shape(sql_app, site, query)}")
    print("\none accessor call (what a policy that calls it once per row pays per row), microseconds:")
    print(f"  C library rls.site_id(): {accessor_call_us(app, 'rls.site_id()'):.3f}")
    print(f"  SQL-only rls.site_id(): {accessor_call_us(sql_app, 'rls.site_id()'):.3f}")
    print(f"  SQL-only (SELECT rls.site_id()): {accessor_call_us(sql_app, '(SELECT rls.site_id())'):.3f}")
    app.close()
    app_calls.close()
    sql_app.close()
    sql_admin.close()
    admin.close()
    if not KEEP:
        with psycopg.connect(server, autocommit=True) as conn:
            for name in (DB, SQL_DB):
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute("DROP ROLE bench_app_calls")
            conn.execute("DROP ROLE bench_app")
    print(f"\ntotal {time.monotonic() - started:.0f} s; all targets met: {'yes' if met_all else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
