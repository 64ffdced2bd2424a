"""The statement-row audit layout (issue 18's candidate), measured as a prototype before it is built.

    python tests/harness/cluster.py run -- .venv/bin/python bench/audit_layout.py

Not the capture: the prototype log rows are written by SQL from prebuilt row images, as the C
capture would write them, so that the layout's own cost is measured. The layout: one log row per
statement chunk (at most BENCH_CHUNK changed rows of one statement), holding the chunk's row keys
and row images as lz4-compressed text[], with a GIN index on the row keys and the site, user and
time indexes of today's log, partitioned by month, read through a policy calling today's
rls_audit._may_read() on the statement's read keys.

Write: BENCH_ROWS rows INSERTed into an unaudited table (none, the baseline) against the same
rows' keys and images written as statement rows, chunk sizes BENCH_CHUNKS; median of
BENCH_REPEAT rotated repetitions, ratio to none, and bytes stored per recorded row.

Read: BENCH_LOG_ROWS recorded changes (OBJECTS objects, 10 changes each, 100 sites, half of them
single-row statements and half in statements of BENCH_CHUNK rows), then, as a non-superuser
application role with a site context, through the policy: one object's history (unnest of the
statement rows the GIN index finds) and a site's latest 50 changes (the statement rows the
(site_id, logged_at) index gives, unnested). Median of BENCH_READS warm runs.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

ROWS = int(os.environ.get("BENCH_ROWS", "200000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
CHUNKS = [int(c) for c in os.environ.get("BENCH_CHUNKS", "1000,200000").split(",")]
CHUNK = int(os.environ.get("BENCH_CHUNK", "1000"))
LOG_ROWS = int(os.environ.get("BENCH_LOG_ROWS", "10000000"))
READS = int(os.environ.get("BENCH_READS", "20"))
OBJECTS = max(LOG_ROWS // 10, 1)
DB = "django_rls_audit_layout_bench"
ROLE = "bench_layout_app"

LAYOUT = """
CREATE SCHEMA proto;
GRANT USAGE ON SCHEMA proto TO PUBLIC;
CREATE TABLE proto.stmt (
    id bigint GENERATED ALWAYS AS IDENTITY,
    logged_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    xact_started_at timestamptz NOT NULL DEFAULT transaction_timestamp(),
    xact_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_oid oid NOT NULL,
    table_name text NOT NULL,
    trail_id uuid,
    operation text NOT NULL,
    site_id bigint,
    site_uuid uuid,
    user_id bigint,
    user_uuid uuid,
    claims jsonb,
    db_role name NOT NULL,
    application_name text,
    client_addr inet,
    read_rule text,
    read_keys text[],
    row_keys text[] COMPRESSION lz4 NOT NULL,
    old_values text[] COMPRESSION lz4,
    new_values text[] COMPRESSION lz4
) PARTITION BY RANGE (logged_at);
CREATE TABLE proto.stmt_now PARTITION OF proto.stmt
    FOR VALUES FROM (date_trunc('month', now()) - interval '1 month') TO (date_trunc('month', now()) + interval '1 month');
-- Under row level security a reader's condition reaches an index only if its operator is
-- leakproof, and the built-in text[] @> is not: so a leakproof @> on text[] (the built-in
-- arraycontains, which raises no error on text[]) and a GIN operator class with it.
CREATE FUNCTION proto.keys_contain(text[], text[]) RETURNS boolean
    LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF AS 'arraycontains';
CREATE OPERATOR proto.@> (LEFTARG = text[], RIGHTARG = text[], FUNCTION = proto.keys_contain,
                          RESTRICT = contsel, JOIN = contjoinsel);
CREATE OPERATOR CLASS proto.key_ops FOR TYPE text[] USING gin AS
    OPERATOR 2 proto.@> (text[], text[]),
    FUNCTION 1 bttextcmp(text, text),
    FUNCTION 2 ginarrayextract(anyarray, internal, internal),
    FUNCTION 3 ginqueryarrayextract(anyarray, internal, int2, internal, internal, internal, internal),
    FUNCTION 4 ginarrayconsistent(internal, int2, anyarray, int4, internal, internal, internal, internal),
    FUNCTION 6 ginarraytriconsistent(internal, int2, anyarray, int4, internal, internal, internal),
    STORAGE text;
CREATE INDEX ON proto.stmt_now USING gin (row_keys proto.key_ops);
CREATE INDEX ON proto.stmt_now (site_id, logged_at) WHERE site_id IS NOT NULL;
CREATE INDEX ON proto.stmt_now (site_uuid, logged_at) WHERE site_uuid IS NOT NULL;
CREATE INDEX ON proto.stmt_now (user_id, logged_at) WHERE user_id IS NOT NULL;
CREATE INDEX ON proto.stmt_now (user_uuid, logged_at) WHERE user_uuid IS NOT NULL;
CREATE INDEX ON proto.stmt_now USING brin (logged_at);
ALTER TABLE proto.stmt ENABLE ROW LEVEL SECURITY;
CREATE POLICY stmt_read ON proto.stmt FOR SELECT TO PUBLIC USING (rls_audit._may_read(trail_id, read_rule, read_keys));
GRANT SELECT ON proto.stmt TO PUBLIC;
"""

# One object's history: the statement rows holding its key (the GIN index), and in each only the
# positions of its key (array_positions), not an unnest of the whole chunk.
HISTORY = (
    "SELECT s.id, p.n, s.logged_at, s.operation, s.row_keys[p.n], s.old_values[p.n], s.new_values[p.n] "
    "FROM proto.stmt s CROSS JOIN LATERAL unnest(array_positions(s.row_keys, %(key)s)) AS p(n) "
    "WHERE s.trail_id = %(trail)s AND s.row_keys OPERATOR(proto.@>) ARRAY[%(key)s] "
    "ORDER BY s.logged_at, s.id, p.n"
)
# A site's latest 50 changes, as the admin lists them: newest statement first, then by position.
LATEST = (
    "SELECT s.id, e.n, s.logged_at, s.operation, e.k, e.old, e.new FROM proto.stmt s "
    "CROSS JOIN LATERAL unnest(s.row_keys, s.old_values, s.new_values) WITH ORDINALITY AS e(k, old, new, n) "
    "WHERE s.site_id = %(site)s ORDER BY s.logged_at DESC, s.id DESC, e.n DESC LIMIT 50"
)


def stored_bytes(conn: psycopg.Connection) -> int:
    return int(
        conn.execute("SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('proto.stmt')").fetchone()[0]
    )


def write_once(conn: psycopg.Connection, trail: str) -> dict[str, float]:
    times: dict[str, float] = {}
    conn.execute("TRUNCATE item_w")
    conn.execute("CHECKPOINT")
    started = time.perf_counter()
    conn.execute(
        "INSERT INTO item_w SELECT g, g %% 50, g %% 1000, 'name ' || g, md5(g::text), (g %% 10000) / 100.0, "
        "'2024-01-01'::timestamptz + g * interval '1 second', g %% 2 = 0 FROM generate_series(1, %s) g",
        [ROWS],
    )
    times["none"] = time.perf_counter() - started
    for chunk in CHUNKS:
        conn.execute("TRUNCATE proto.stmt")
        conn.execute("CHECKPOINT")
        started = time.perf_counter()
        conn.execute(
            "INSERT INTO proto.stmt (table_oid, table_name, trail_id, operation, site_id, user_id, db_role, "
            "read_rule, read_keys, row_keys, new_values) "
            "SELECT 'item'::regclass, 'public.item', %(trail)s, 'INSERT', 7, 42, current_user, 'site', '{7}', "
            "array_agg(k ORDER BY n), array_agg(image ORDER BY n) FROM images GROUP BY (n - 1) / %(chunk)s",
            {"trail": trail, "chunk": chunk},
        )
        times[f"chunk {chunk}"] = time.perf_counter() - started
        times[f"bytes {chunk}"] = stored_bytes(conn) / ROWS
    return times


def fill_log(conn: psycopg.Connection, trail: str) -> None:
    """LOG_ROWS changes of OBJECTS objects: change g is of object g % OBJECTS, site object % 100."""
    half = LOG_ROWS // 2
    batch = 500_000
    columns = (
        "logged_at, table_oid, table_name, trail_id, operation, site_id, user_id, db_role, read_rule, read_keys, "
        "row_keys, old_values, new_values"
    )
    for start in range(0, half, batch):
        # Single-row statements: one log row each.
        conn.execute(
            f"INSERT INTO proto.stmt ({columns}) "
            "SELECT now() - (%(rows)s - g) * interval '100 microseconds', 'item'::regclass, 'public.item', "
            "%(trail)s, 'UPDATE', g %% %(objects)s %% 100, g %% 5000, 'bench', 'site', "
            "ARRAY[(g %% %(objects)s %% 100)::text], ARRAY[(g %% %(objects)s)::text], "
            "ARRAY[json_build_object('body', md5((g - 1)::text))::text], "
            "ARRAY[json_build_object('body', md5(g::text))::text] "
            "FROM generate_series(%(lo)s, %(hi)s) g",
            {"rows": LOG_ROWS, "objects": OBJECTS, "trail": trail, "lo": start + 1, "hi": min(start + batch, half)},
        )
    for start in range(half, LOG_ROWS, batch):
        # Bulk statements of CHUNK rows of one site each (the objects of a site are 100 apart).
        conn.execute(
            f"INSERT INTO proto.stmt ({columns}) "
            "SELECT now() - (%(rows)s - min(g)) * interval '100 microseconds', 'item'::regclass, 'public.item', "
            "%(trail)s, 'UPDATE', g %% 100, 0, 'bench', 'site', ARRAY[(g %% 100)::text], "
            "array_agg((g %% %(objects)s)::text ORDER BY g), "
            "array_agg(json_build_object('body', md5((g - 1)::text))::text ORDER BY g), "
            "array_agg(json_build_object('body', md5(g::text))::text ORDER BY g) "
            "FROM generate_series(%(lo)s, %(hi)s) g GROUP BY g %% 100, (g - %(lo)s) / (100 * %(chunk)s)",
            {
                "rows": LOG_ROWS,
                "objects": OBJECTS,
                "trail": trail,
                "lo": start + 1,
                "hi": min(start + batch, LOG_ROWS),
                "chunk": CHUNK,
            },
        )
    conn.execute("VACUUM ANALYZE proto.stmt")


def main() -> int:
    server = os.environ["DATABASE_URL"]
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    try:
        with psycopg.connect(make_conninfo(server, dbname=DB), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION django_rls")
            conn.execute("CREATE TABLE item (id bigint PRIMARY KEY, site_id bigint NOT NULL, body text)")
            conn.execute(sql.SQL("GRANT SELECT ON item TO {}").format(sql.Identifier(ROLE)))
            conn.execute("SELECT rls.protect_by_site('item', 'site_id', to_role => %s)", [ROLE])
            conn.execute("SELECT rls_audit.enable('item')")
            conn.execute("SELECT rls_audit.set_read_rule('item', site_column => 'site_id')")
            trail = str(
                conn.execute("SELECT trail_id FROM rls_audit.trails WHERE table_oid = 'item'::regclass").fetchone()[0]
            )
            conn.execute(LAYOUT)
            conn.execute(
                "CREATE TABLE item_w (id bigint PRIMARY KEY, site_id int, qty int, name text, note text, "
                "price numeric(12,2), created_at timestamptz, active boolean)"
            )
            # The images the capture would build (not timed: bench/write_path.py times the capture).
            conn.execute(
                "CREATE TABLE images AS SELECT g AS n, g::text AS k, json_build_object('id', g, 'site_id', g % 50, "
                "'qty', g % 1000, 'name', 'name ' || g, 'note', md5(g::text), 'price', (g % 10000) / 100.0, "
                "'created_at', '2024-01-01'::timestamptz + g * interval '1 second', 'active', g % 2 = 0)::text AS image "
                f"FROM generate_series(1, {ROWS:d}) g"
            )
            conn.execute("VACUUM ANALYZE images")
            runs = [write_once(conn, trail) for _ in range(REPEAT)]
            print(f"statement-row layout, write: {ROWS:,} rows, median of {REPEAT}; ratio = layout / unaudited INSERT")
            print(f"  none (unaudited INSERT)   {statistics.median(r['none'] for r in runs) * 1000:8.0f} ms")
            for chunk in CHUNKS:
                ms = statistics.median(r[f"chunk {chunk}"] for r in runs) * 1000
                ratio = statistics.median(r[f"chunk {chunk}"] / r["none"] for r in runs)
                stored = statistics.median(r[f"bytes {chunk}"] for r in runs)
                print(f"  chunks of {chunk:<8d}       {ms:8.0f} ms {ratio:6.2f}x  {stored:6.0f} bytes/row")
            conn.execute("TRUNCATE proto.stmt")
            started = time.monotonic()
            fill_log(conn, trail)
            filled = time.monotonic() - started
            statements = conn.execute("SELECT count(*) FROM proto.stmt").fetchone()[0]
            stored = stored_bytes(conn)
        with psycopg.connect(make_conninfo(server, dbname=DB, user=ROLE), autocommit=True) as app:
            site = 7
            key = str(OBJECTS // 2 + site - (OBJECTS // 2) % 100)
            app.execute("SELECT rls.set_context(%s, NULL, NULL, false)", [str(site)])
            print(
                f"\nread: {LOG_ROWS:,} recorded changes in {statements:,} statement rows ({OBJECTS:,} objects, "
                f"100 sites, bulk chunks of {CHUNK}), filled in {filled:.0f} s; {stored / LOG_ROWS:.0f} bytes per "
                f"recorded row"
            )
            print(f"as {ROLE} (site {site} context, through the policy), median of {READS} warm runs:")
            for name, query, params, target in (
                ("one object's history", HISTORY, {"trail": trail, "key": key}, 10.0),
                ("a site's latest 50 changes", LATEST, {"site": site}, 50.0),
            ):
                rows = len(app.execute(query, params).fetchall())
                times = []
                for _ in range(READS):
                    begun = time.perf_counter()
                    app.execute(query, params).fetchall()
                    times.append((time.perf_counter() - begun) * 1000)
                ms = statistics.median(times)
                print(
                    f"  {name:28s} {ms:8.2f} ms  ({rows} rows; target < {target:.0f} ms: {'yes' if ms < target else 'NO'})"
                )
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
