"""What one protected query costs the server, step by step, side by side in one run.

    python tests/harness/cluster.py run -- .venv/bin/python bench/statement_cost.py

The request path's one-query view (bench/request_path.py) sends one primary-key lookup per
request. This script sends that lookup as the application role, each variant on a connection
of its own, and reads the backend's CPU time per statement (Linux schedstat: other load on the
machine does not count), so the gap between the floor and ours splits into its steps:

- floor: an unprotected copy of the table, sent as Django's default client-side binding sends
  it (simple query protocol);
- extended protocol: the same, through Parse/Bind/Execute with one unused text parameter;
- + marker: the same with the context carried in that parameter (``/*django_rls:$1*/``), on the
  unprotected table: the marker read and the context applied;
- + policy (ours): the protected table, as the middleware sends it;
- policy, context set once: the protected table read by an unbound role whose session context
  was set once, through the simple protocol (RLS without the marker).

BENCH_STATEMENTS (3,000) statements per sample, BENCH_ROUNDS (7) samples per variant in rotated
order; the table shows medians and the samples' range.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from django_rls.wire import ContextParameter, ContextParameterDumper

DB = "django_rls_statement_bench"
BOUND = "bench_bound"
UNBOUND = "bench_unbound"
STATEMENTS = int(os.environ.get("BENCH_STATEMENTS", "3000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
CONTEXT = '{"site":"42","user":"7","claims":null}'
LOOKUP = "SELECT id, site_id, name, price FROM {} WHERE id = 4241"  # a row of site 42: every variant returns it


def setup(server: str) -> None:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        for role in (BOUND, UNBOUND):
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("ALTER ROLE {} SET django_rls.statement_bound = on").format(sql.Identifier(BOUND)))
    with psycopg.connect(make_conninfo(server, dbname=DB), autocommit=True) as owner:
        owner.execute("CREATE EXTENSION django_rls")
        for table in ("items", "plain"):
            owner.execute(
                sql.SQL(
                    "CREATE TABLE {} (id int PRIMARY KEY, site_id int NOT NULL, name text, price int);"
                    "INSERT INTO {} SELECT g, g % 100 + 1, 'item ' || g, g FROM generate_series(1, 100000) g;"
                    "CREATE INDEX ON {} (site_id);"
                    "GRANT SELECT ON {} TO {}, {}"
                ).format(*[sql.Identifier(table)] * 4, sql.Identifier(BOUND), sql.Identifier(UNBOUND))
            )
        owner.execute("SELECT rls.protect_by_site('items', 'site_id')")
        owner.execute("VACUUM (FREEZE, ANALYZE)")


def backend_cpu_seconds(pid: int) -> float:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def variants(server: str) -> dict[str, tuple[psycopg.Cursor, str, tuple | None]]:
    def connect(role: str) -> psycopg.Connection:
        conn = psycopg.connect(make_conninfo(server, dbname=DB, user=role), autocommit=True, prepare_threshold=None)
        conn.adapters.register_dumper(ContextParameter, ContextParameterDumper)
        return conn

    marker = "/*django_rls:%s*/ "
    carried = (ContextParameter(CONTEXT),)
    session = connect(UNBOUND)
    session.execute("SELECT rls.set_context('42', '7', NULL, false)")
    return {
        "floor (simple protocol, no policy)": (psycopg.ClientCursor(connect(BOUND)), LOOKUP.format("plain"), None),
        "extended protocol": (connect(BOUND).cursor(), LOOKUP.format("plain") + " AND %s IS NOT NULL", carried),
        "+ marker": (connect(BOUND).cursor(), marker + LOOKUP.format("plain"), carried),
        "+ policy: ours": (connect(BOUND).cursor(), marker + LOOKUP.format("items"), carried),
        "policy, context set once (simple)": (psycopg.ClientCursor(session), LOOKUP.format("items"), None),
    }


def main() -> int:
    server = os.environ["DATABASE_URL"]
    setup(server)
    cursors = variants(server)
    for name, (cursor, query, params) in cursors.items():
        assert len(cursor.execute(query, params).fetchall()) == 1, f"{name}: site 42 must read its row 4241"
    samples: dict[str, list[float]] = {name: [] for name in cursors}
    names = list(cursors)
    for round_ in range(ROUNDS):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            cursor, query, params = cursors[name]
            pid = cursor.connection.info.backend_pid
            for _ in range(200):
                cursor.execute(query, params).fetchall()
            before = backend_cpu_seconds(pid)
            for _ in range(STATEMENTS):
                cursor.execute(query, params).fetchall()
            samples[name].append((backend_cpu_seconds(pid) - before) / STATEMENTS * 1e6)
    floor = statistics.median(samples[names[0]])
    print(f"backend CPU µs per primary-key lookup as the application role; {STATEMENTS} statements a sample,")
    print(f"median of {ROUNDS} samples in rotated order (range in brackets)")
    print(f"{'variant':38s} {'µs':>7s} {'x floor':>8s}  range")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:38s} {median:7.1f} {median / floor:8.2f}  [{min(values):.1f}-{max(values):.1f}]")
    for cursor, _, _ in cursors.values():
        cursor.connection.close()
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DB)))
        for role in (BOUND, UNBOUND):
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
