"""Write path: bulk INSERT / UPDATE / DELETE with auditing, against PL/pgSQL reference designs, in one run.

    python tests/harness/cluster.py run -- .venv/bin/python bench/write_path.py

Each variant gets the same fresh 8-column table and the same statements:
- none:          no trigger (the baseline every ratio divides by);
- ours:          rls_audit.enable() (C statement-level trigger over transition tables);
- row_jsonb:     a PL/pgSQL AFTER ROW trigger in the style of 2ndQuadrant's audit-trigger
                 "91plus" (jsonb fork): full old row, changed fields, txid, timestamps, client,
                 into one log table with the three indexes that design creates;
- row_event:     a PL/pgSQL AFTER ROW trigger in the style of django-pghistory's default
                 tracker: a typed copy of the row into an event table with its two indexes,
                 plus the context read from settings;
- stmt_jsonb:    a PL/pgSQL statement-level trigger with transition tables writing the same
                 record as ours (the fastest PL/pgSQL design measured in the research);
- ours_chain:    ours with django_rls.audit_chain = on (every statement sealed into its site's
                 hash chain), to show what the chain costs;
- sqlonly:       the SQL-only mode's capture (rls_audit.enable() of sql/sqlonly/: a generated
                 PL/pgSQL statement-level trigger per table, SECURITY DEFINER), in a second
                 database of the same server where that mode is installed (the same table and
                 statements; its ratios divide by the same "none");
- ours_checks:   ours with the two CHECK constraints (operation, read_rule) the log had before
                 (docs/audit.md, design notes), to show what they cost; only when BENCH_VARIANTS
                 names it.
These are written here from the published designs, not copied.

Three measurements per variant: the bulk statements above; single-row statements in autocommit
(BENCH_SINGLE of each: INSERT, UPDATE and DELETE of one row by key, what a web request does),
as latency per statement; and the bytes the log's tables (heap, TOAST, indexes; the chain's
tables for ours_chain) hold per recorded row after the bulk statements.
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
SINGLE = int(os.environ.get("BENCH_SINGLE", "2000"))
# A comma-separated subset of the variants, for iterating on one of them ("none" is always run).
ONLY = [v for v in os.environ.get("BENCH_VARIANTS", "").split(",") if v]
DB = "django_rls_write_bench"
SQL_DB = "django_rls_write_bench_sql"  # the SQL-only variant's database
COLUMNS = (
    "id bigint PRIMARY KEY, site_id int, qty int, name text, note text, price numeric(12,2), "
    "created_at timestamptz, active boolean"
)
SINGLE_STATEMENTS = {
    "insert": "INSERT INTO {t} VALUES (%s, 7, 1, 'single', 'note', 1.50, now(), true)",
    "update": "UPDATE {t} SET qty = qty + 1 WHERE id = %s",
    "delete": "DELETE FROM {t} WHERE id = %s",
}
TARGETS = {"insert": 1.5, "update": 1.5, "delete": 3.0}
SINGLE_TARGET = 1.10
LOG_TABLES = {
    "ours": ("rls_audit.statements",),
    "ours_chain": ("rls_audit.statements", "rls_audit.seals", "rls_audit.chain_heads"),
    "ours_checks": ("rls_audit.statements",),
    "sqlonly": ("rls_audit.statements",),
    "row_jsonb": ("ref.logged_actions",),
    "row_event": ("ref.events",),
    "stmt_jsonb": ("ref.stmt_log",),
}
STATEMENTS = {
    "insert": (
        "INSERT INTO {t} SELECT g, g % 50, g % 1000, 'name ' || g, md5(g::text), (g % 10000) / 100.0, "
        "'2024-01-01'::timestamptz + g * interval '1 second', g % 2 = 0 FROM generate_series(1, {rows}) g"
    ),
    "update": "UPDATE {t} SET qty = qty + 1, note = note || 'x'",
    "delete": "DELETE FROM {t}",
}

CHECKS = (
    ("bench_operation", "operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')"),
    ("bench_read_rule", "read_rule IN ('site', 'owner', 'site_owner')"),
)

REFERENCES = """
CREATE SCHEMA ref;
CREATE TABLE ref.logged_actions (
    event_id bigserial PRIMARY KEY, table_oid oid, table_name text, session_user_name text,
    action_tstamp_tx timestamptz, action_tstamp_stm timestamptz, action_tstamp_clk timestamptz,
    transaction_id bigint, application_name text, client_addr inet, client_port int,
    client_query text, action text, row_data jsonb, changed_fields jsonb, statement_only boolean);
CREATE INDEX ON ref.logged_actions (table_oid);
CREATE INDEX ON ref.logged_actions (action_tstamp_stm);
CREATE INDEX ON ref.logged_actions (action);
CREATE FUNCTION ref.row_jsonb() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public AS $$
DECLARE
    old_data jsonb;
    changed jsonb;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        old_data := to_jsonb(OLD);
        SELECT jsonb_object_agg(n.key, n.value) INTO changed
          FROM jsonb_each(to_jsonb(NEW)) n JOIN jsonb_each(old_data) o USING (key)
         WHERE n.value IS DISTINCT FROM o.value;
        IF changed IS NULL THEN RETURN NULL; END IF;
    ELSIF TG_OP = 'DELETE' THEN
        old_data := to_jsonb(OLD);
    ELSE
        old_data := to_jsonb(NEW);
    END IF;
    INSERT INTO ref.logged_actions (table_oid, table_name, session_user_name, action_tstamp_tx,
        action_tstamp_stm, action_tstamp_clk, transaction_id, application_name, client_addr, client_port,
        client_query, action, row_data, changed_fields, statement_only)
    VALUES (TG_RELID, TG_TABLE_NAME, session_user, transaction_timestamp(), statement_timestamp(),
        clock_timestamp(), txid_current(), current_setting('application_name'), inet_client_addr(),
        inet_client_port(), current_query(), substring(TG_OP, 1, 1), old_data, changed, false);
    RETURN NULL;
END $$;

CREATE TABLE ref.events (
    pgh_id bigserial PRIMARY KEY, pgh_created_at timestamptz NOT NULL DEFAULT now(), pgh_label text,
    pgh_obj_id bigint, pgh_context jsonb,
    id bigint, site_id int, qty int, name text, note text, price numeric(12,2), created_at timestamptz, active boolean);
CREATE INDEX ON ref.events (pgh_obj_id);
CREATE INDEX ON ref.events (pgh_context);
CREATE FUNCTION ref.row_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    INSERT INTO ref.events (pgh_label, pgh_obj_id, pgh_context, id, site_id, qty, name, note, price, created_at, active)
    VALUES (lower(TG_OP), r.id,
            jsonb_build_object('site', current_setting('app.site', true), 'user', current_setting('app.user', true)),
            r.id, r.site_id, r.qty, r.name, r.note, r.price, r.created_at, r.active);
    RETURN NULL;
END $$;

-- One row per changed row, with the columns of rls_audit.log (the log django_rls stored before its
-- statement rows).
CREATE TABLE ref.stmt_log (
    id bigint GENERATED ALWAYS AS IDENTITY,
    logged_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    xact_started_at timestamptz NOT NULL DEFAULT transaction_timestamp(),
    xact_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_oid oid NOT NULL,
    table_name text NOT NULL,
    operation text NOT NULL,
    row_key text,
    old_values jsonb,
    new_values jsonb,
    changed_columns text[],
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
    trail_id uuid
);
CREATE INDEX ON ref.stmt_log (table_name, row_key);
CREATE INDEX ON ref.stmt_log (site_id, logged_at) WHERE site_id IS NOT NULL;
CREATE INDEX ON ref.stmt_log (user_id, logged_at) WHERE user_id IS NOT NULL;
CREATE INDEX ON ref.stmt_log USING brin (logged_at);
CREATE FUNCTION ref.stmt_jsonb() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO ref.stmt_log (table_oid, table_name, operation, row_key, new_values, site_id, user_id, db_role)
        SELECT TG_RELID, TG_TABLE_NAME, TG_OP, r.id::text, to_jsonb(r),
               nullif(current_setting('app.site', true), '')::bigint,
               nullif(current_setting('app.user', true), '')::bigint, current_user
          FROM new_rows r;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO ref.stmt_log (table_oid, table_name, operation, row_key, old_values, site_id, user_id, db_role)
        SELECT TG_RELID, TG_TABLE_NAME, TG_OP, r.id::text, to_jsonb(r),
               nullif(current_setting('app.site', true), '')::bigint,
               nullif(current_setting('app.user', true), '')::bigint, current_user
          FROM old_rows r;
    ELSE
        INSERT INTO ref.stmt_log (table_oid, table_name, operation, row_key, old_values, new_values, site_id, user_id, db_role)
        SELECT TG_RELID, TG_TABLE_NAME, TG_OP, n.id::text, to_jsonb(o), to_jsonb(n),
               nullif(current_setting('app.site', true), '')::bigint,
               nullif(current_setting('app.user', true), '')::bigint, current_user
          FROM new_rows n JOIN old_rows o USING (id)
         WHERE o IS DISTINCT FROM n;
    END IF;
    RETURN NULL;
END $$;
"""


def create_variant(conn: psycopg.Connection, variant: str) -> str:
    table = f"bench_{variant}"
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} ({COLUMNS})")
    if variant in ("ours", "ours_chain", "ours_checks", "sqlonly"):
        conn.execute("SELECT rls_audit.enable(%s)", [table])
    if variant == "ours_checks":
        for name, check in CHECKS:
            conn.execute(f"ALTER TABLE rls_audit.statements ADD CONSTRAINT {name} CHECK ({check})")
    elif variant in ("row_jsonb", "row_event"):
        conn.execute(
            f"CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION ref.{variant}()"
        )
    elif variant == "stmt_jsonb":
        for op, refs in (
            ("INSERT", "NEW TABLE AS new_rows"),
            ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
            ("DELETE", "OLD TABLE AS old_rows"),
        ):
            conn.execute(
                f"CREATE TRIGGER audit_{op.lower()} AFTER {op} ON {table} REFERENCING {refs} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ref.stmt_jsonb()"
            )
    return table


def log_bytes(conn: psycopg.Connection, variant: str) -> int:
    """Heap, TOAST and indexes of the variant's log tables, partitions included."""
    total = 0
    for log in LOG_TABLES.get(variant, ()):
        total += conn.execute(
            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%(t)s::regclass)), "
            "pg_total_relation_size(%(t)s::regclass))",
            {"t": log},
        ).fetchone()[0]
    return int(total)


def run_variant(conn: psycopg.Connection, variant: str) -> dict[str, float]:
    table = create_variant(conn, variant)
    conn.execute("SELECT rls.set_context('7', '42', NULL, false)")
    conn.execute("SELECT set_config('app.site', '7', false), set_config('app.user', '42', false)")
    conn.execute(f"SET django_rls.audit_chain = {'on' if variant == 'ours_chain' else 'off'}")
    times: dict[str, float] = {}
    for op, statement in STATEMENTS.items():
        conn.execute("CHECKPOINT")
        started = time.perf_counter()
        conn.execute(statement.format(t=table, rows=ROWS))
        times[op] = time.perf_counter() - started
        conn.execute(f"VACUUM ANALYZE {table}")
    # INSERT, UPDATE and DELETE each record ROWS rows.
    times["bytes"] = log_bytes(conn, variant) / (3 * ROWS)
    conn.execute("CHECKPOINT")
    for op, statement in SINGLE_STATEMENTS.items():
        query = statement.format(t=table)
        started = time.perf_counter()
        for key in range(1, SINGLE + 1):
            conn.execute(query, [key], prepare=True)
        times[f"single {op}"] = (time.perf_counter() - started) / SINGLE
    conn.execute("RESET django_rls.audit_chain")
    conn.execute(f"DROP TABLE {table}")
    for name, _ in CHECKS:
        conn.execute(f"ALTER TABLE rls_audit.statements DROP CONSTRAINT IF EXISTS {name}")
    for log in (
        "rls_audit.statements",
        "rls_audit.seals",
        "rls_audit.chain_heads",
        "ref.logged_actions",
        "ref.events",
        "ref.stmt_log",
    ):
        if conn.execute("SELECT to_regclass(%s)", [log]).fetchone()[0] is not None:
            conn.execute(f"TRUNCATE {log}")
    return times


def print_targets(ratios: dict[str, dict[str, float]], references: tuple[str, ...]) -> None:
    print("\ntargets for ours:")
    for op in STATEMENTS:
        mine = ratios["ours"][op]
        line = f"  bulk {op:7s} {mine:.2f}x (target <= {TARGETS[op]}x: {'yes' if mine <= TARGETS[op] else 'NO'})"
        if references:
            best = min(ratios[v][op] for v in references)
            line += f"; best reference {best:.2f}x, ahead: {'yes' if mine < best else 'NO'}"
        print(line)
    for op in SINGLE_STATEMENTS:
        mine = ratios["ours"][f"single {op}"]
        print(f"  single {op:7s} {mine:.2f}x (target <= {SINGLE_TARGET}x: {'yes' if mine <= SINGLE_TARGET else 'NO'})")
    if "sqlonly" in ratios:
        print("\nthe SQL-only mode's capture against the C one (sqlonly / ours):")
        for key in (*STATEMENTS, *(f"single {op}" for op in SINGLE_STATEMENTS)):
            print(f"  {key:14s} {ratios['sqlonly'][key] / ratios['ours'][key]:.2f}x")
    if "ours_chain" in ratios:
        print("\nthe chain's cost (ours_chain / ours):")
        for key in (*STATEMENTS, *(f"single {op}" for op in SINGLE_STATEMENTS)):
            print(f"  {key:14s} {ratios['ours_chain'][key] / ratios['ours'][key]:.2f}x")


def main() -> int:
    server = os.environ["DATABASE_URL"]
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SQL_DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SQL_DB)))
    variants = ["none", "ours", "ours_chain", "row_jsonb", "row_event", "stmt_jsonb", "sqlonly"]
    if ONLY:
        variants = ["none", *(v for v in (*variants, "ours_checks") if v in ONLY and v != "none")]
    references = tuple(v for v in ("row_jsonb", "row_event", "stmt_jsonb") if v in variants)
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    started = time.monotonic()
    with (
        psycopg.connect(make_conninfo(server, dbname=DB), autocommit=True) as conn,
        psycopg.connect(make_conninfo(server, dbname=SQL_DB), autocommit=True) as sql_conn,
    ):
        if "sqlonly" in variants:
            sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
            from django_rls import sqlonly

            with sql_conn.cursor() as cursor:
                sqlonly.install(cursor, [])
        conn.execute("CREATE EXTENSION django_rls")
        # This connection is a superuser's, which the server refuses a context unless allowed
        # (docs/security.md); the audit capture it measures records that context.
        conn.execute("SET django_rls.allow_bypassing_roles = on")
        conn.execute(REFERENCES)
        for repetition in range(REPEAT):
            order = variants[repetition % len(variants) :] + variants[: repetition % len(variants)]
            for variant in order:
                results[variant].append(run_variant(sql_conn if variant == "sqlonly" else conn, variant))

    def median_ratio(variant: str, key: str) -> float:
        pairs = zip(results[variant], results["none"], strict=True)
        return statistics.median(r[key] / b[key] for r, b in pairs)

    print(f"write path: {ROWS:,} rows, 8 columns; median of {REPEAT} rotated repetitions; ratio = variant / none")
    print(f"{'variant':12s} " + " ".join(f"{op + ' ms':>10s} {op + ' x':>9s}" for op in STATEMENTS) + "  bytes/row")
    ratios: dict[str, dict[str, float]] = {}
    for variant in variants:
        cells = []
        ratios[variant] = {}
        for op in STATEMENTS:
            ms = statistics.median(r[op] for r in results[variant]) * 1000
            ratios[variant][op] = median_ratio(variant, op)
            cells.append(f"{ms:10.0f} {ratios[variant][op]:9.2f}")
        stored = statistics.median(r["bytes"] for r in results[variant])
        print(f"{variant:12s} " + " ".join(cells) + (f"  {stored:9.0f}" if variant != "none" else "          -"))
    print(f"\nsingle-row statements in autocommit ({SINGLE} of each), latency per statement")
    print(f"{'variant':12s} " + " ".join(f"{op + ' us':>10s} {op + ' x':>9s}" for op in SINGLE_STATEMENTS))
    for variant in variants:
        cells = []
        for op in SINGLE_STATEMENTS:
            us = statistics.median(r[f"single {op}"] for r in results[variant]) * 1e6
            ratios[variant][f"single {op}"] = median_ratio(variant, f"single {op}")
            cells.append(f"{us:10.0f} {ratios[variant][f'single {op}']:9.2f}")
        print(f"{variant:12s} " + " ".join(cells))
    if "ours" in ratios:
        print_targets(ratios, references)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(DB)))
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(SQL_DB)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
