-------------------------------------------------------------------------------
-- The audit trail's tables, as both modes make them
--
-- Shared: the extension's install script includes this file (the Makefile
-- joins sql/install/*.sql in name order) and so does the SQL-only mode
-- (django_rls/sqlonly.py, SCRIPTS), so that both store the trail in the same
-- tables.  What differs between the modes comes next, in each mode's own
-- 21_audit_log.sql: the indexes, the read policy, the lookups, who owns and
-- writes the tables, and the comments on rls_audit.trails; the per-row view
-- rls_audit.log, the same in both, follows in 21_audit_view.sql.
-------------------------------------------------------------------------------

CREATE SCHEMA rls_audit;
COMMENT ON SCHEMA rls_audit IS 'django_rls: the audit trail of row changes, with the request context that made them';
GRANT USAGE ON SCHEMA rls_audit TO PUBLIC;

-- The log is stored one row per statement chunk: at most 1,000 changed rows of
-- one statement on one table, with the statement's columns once and its rows
-- as parallel lz4-compressed arrays (position n of each array is the n-th
-- row).  Each index then costs one entry per chunk, not per changed row, which
-- is most of what a per-row log costs a bulk write (docs/audit.md, "Cost").
-- Readers read rls_audit.log, a per-row view over it (21_audit_view.sql).
CREATE TABLE rls_audit.statements (
    id bigint GENERATED ALWAYS AS IDENTITY,
    logged_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    xact_started_at timestamptz NOT NULL DEFAULT transaction_timestamp(),
    xact_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_oid oid NOT NULL,
    table_name text NOT NULL,
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
    trail_id uuid,
    row_keys text[] COMPRESSION lz4 NOT NULL,
    old_values jsonb[] COMPRESSION lz4,
    new_values jsonb[] COMPRESSION lz4,
    changed_columns text[] COMPRESSION lz4,
    row_read_keys text[] COMPRESSION lz4
) PARTITION BY RANGE (logged_at);
-- No CHECK constraints on operation and read_rule: only the log's owner writes
-- it, through the capture, which writes those columns from constants
-- (ext/audit.c in the C mode), and a CHECK constraint is read back from its
-- stored form and planned again by every statement that writes the log: about
-- a fifth of what auditing adds to a single-row statement (docs/audit.md,
-- "Cost").
COMMENT ON TABLE rls_audit.statements IS
'The audit log as stored: one row per chunk of at most 1,000 changed rows of one statement on one table (or per TRUNCATE), the rows as parallel arrays. Partitioned by month. Read it through the per-row view rls_audit.log.';
COMMENT ON COLUMN rls_audit.statements.read_keys IS
'Every read key of the chunk''s rows (the union of row_read_keys): who may read the statement row itself.';
COMMENT ON COLUMN rls_audit.statements.row_keys IS 'Each row''s primary key as text (NULL for TRUNCATE).';
COMMENT ON COLUMN rls_audit.statements.old_values IS 'Each row''s image before (see rls_audit.log.old_values); NULL when no row has one.';
COMMENT ON COLUMN rls_audit.statements.new_values IS 'Each row''s image after (see rls_audit.log.new_values); NULL when no row has one.';
COMMENT ON COLUMN rls_audit.statements.changed_columns IS 'UPDATE: each row''s changed columns, as the text of a text[].';
COMMENT ON COLUMN rls_audit.statements.row_read_keys IS 'Each row''s read keys, as the text of a text[] (NULL: none).';

CREATE TABLE rls_audit.statements_default PARTITION OF rls_audit.statements DEFAULT;
COMMENT ON TABLE rls_audit.statements_default IS 'Catches rows for months without a partition; rls_audit.ensure_partitions() creates those ahead of time.';

-- The statement rows are granted to nobody: a chunk's arrays hold the rows of
-- many sites or owners.  Readers read the per-row view.
ALTER TABLE rls_audit.statements ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON rls_audit.statements FROM PUBLIC;

-- The registrations: which tables are audited and how, each table's identity
-- in the trail (rls_audit.trails: made when a table is first audited; the log
-- records it with every entry and the read policy finds the table through it,
-- so an entry stays with its table when that is renamed, and a restore binds
-- it to the restored table by name), and the read rules.  Read by everyone;
-- who writes them differs between the modes.
CREATE TABLE rls_audit.audited_tables (
    table_oid regclass PRIMARY KEY,  -- regclass, not oid: a dump stores the name, so a restore finds the table
    excluded_columns text[] NOT NULL DEFAULT '{}',
    masked_columns text[] NOT NULL DEFAULT '{}',
    operations text[] NOT NULL DEFAULT '{INSERT,UPDATE,DELETE,TRUNCATE}'
);
COMMENT ON TABLE rls_audit.audited_tables IS 'Which tables are audited, and how (rls_audit.enable()).';
REVOKE ALL ON rls_audit.audited_tables FROM PUBLIC;
GRANT SELECT ON rls_audit.audited_tables TO PUBLIC;

CREATE TABLE rls_audit.trails (
    table_oid regclass PRIMARY KEY,  -- regclass, not oid: a dump stores the name, so a restore finds the table
    trail_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid()
);
REVOKE ALL ON rls_audit.trails FROM PUBLIC;
GRANT SELECT ON rls_audit.trails TO PUBLIC;

CREATE TABLE rls_audit.read_rules (
    table_oid regclass PRIMARY KEY,  -- regclass, not oid: a dump stores the name, so a restore finds the table
    site_column name,
    owner_column name,
    null_is_shared boolean NOT NULL DEFAULT false,
    CHECK (site_column IS NOT NULL OR owner_column IS NOT NULL),
    CHECK (NOT null_is_shared OR site_column IS NULL OR owner_column IS NULL)
);
COMMENT ON TABLE rls_audit.read_rules IS
'Which column of an audited table holds the site and which the owner, so that the log shows the application role only the entries of rows it may read (rls_audit.set_read_rule()). A table without a rule: only its owner reads its entries.';
REVOKE ALL ON rls_audit.read_rules FROM PUBLIC;
GRANT SELECT ON rls_audit.read_rules TO PUBLIC;

-- The hash chain's tables (sql/install/26_audit_chain.sql seals into them
-- with django_rls.audit_chain on; the SQL-only mode seals nothing, and they
-- stay empty there), which retention (24_audit_retention.sql) reads in both
-- modes.  Granted to nobody.
CREATE TABLE rls_audit.chain_heads (
    month date NOT NULL,
    chain text NOT NULL,
    seq bigint NOT NULL,
    seal bytea NOT NULL,
    PRIMARY KEY (month, chain)
);
CREATE TABLE rls_audit.seals (
    month date NOT NULL,
    chain text NOT NULL,
    seq bigint NOT NULL,
    statement_ids bigint[] NOT NULL,
    digests bytea NOT NULL,
    seal bytea NOT NULL,
    PRIMARY KEY (month, chain, seq)
);
REVOKE ALL ON rls_audit.chain_heads, rls_audit.seals FROM PUBLIC;
