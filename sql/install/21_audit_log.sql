-------------------------------------------------------------------------------
-- The audit trail
--
-- rls_audit.log holds one row per changed table row, written by a C
-- statement-level trigger (rls_audit.capture) that reads the statement's
-- transition tables, builds the row images in C and inserts the rows as the
-- log's owner, running only built-in code (see ext/audit.c).
--
-- Only the extension owner (a superuser) owns and writes the log.  Each entry
-- records the table's trail id (rls_audit.trails: the table's identity in the
-- trail, which follows it through renames and dump and restore, and dies with
-- it), which rule lets the application role read it and the row's own site and
-- owner values (read_rule, read_keys); the policy rls_audit._may_read shows an
-- entry to every role with the privileges of the table's owner, and to a role
-- that the table's row level security constrains like the roles its policies
-- name, with SELECT on the table, USAGE on its schema and a context that
-- matches.  An event trigger refuses to disable or drop an audit trigger
-- behind rls_audit.disable()'s back.
-------------------------------------------------------------------------------

CREATE SCHEMA rls_audit;
COMMENT ON SCHEMA rls_audit IS 'django_rls: the audit trail of row changes, with the request context that made them';
GRANT USAGE ON SCHEMA rls_audit TO PUBLIC;

CREATE TABLE rls_audit.log (
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
) PARTITION BY RANGE (logged_at);
-- No CHECK constraints on operation and read_rule: only the log's owner writes
-- it, through rls_audit.capture(), which writes those columns from constants
-- (ext/audit.c), and a CHECK constraint is read back from its stored form and
-- planned again by every statement that writes the log: about a fifth of what
-- auditing adds to a single-row statement (docs/audit.md, "Cost").
COMMENT ON TABLE rls_audit.log IS
'One row per changed row of an audited table (or per TRUNCATE), with the django_rls context that changed it. Partitioned by month.';
COMMENT ON COLUMN rls_audit.log.row_key IS 'The primary key of the changed row as text; a JSON object of the columns for a composite key.';
COMMENT ON COLUMN rls_audit.log.old_values IS 'DELETE: the row; UPDATE: the changed columns before; without excluded and masked columns.';
COMMENT ON COLUMN rls_audit.log.new_values IS 'INSERT: the row; UPDATE: the changed columns after; without excluded and masked columns.';
COMMENT ON COLUMN rls_audit.log.changed_columns IS 'UPDATE: every changed column, masked ones included.';
COMMENT ON COLUMN rls_audit.log.table_name IS 'The schema-qualified table name when the entry was written; it survives a dump and restore, the oid does not.';
COMMENT ON COLUMN rls_audit.log.trail_id IS
'The table''s trail id (rls_audit.trails) when the entry was written: which table the entry is about, whatever it is called or whatever oid it has now. Readers are decided by it, never by table_name.';
COMMENT ON COLUMN rls_audit.log.db_role IS 'The database role that ran the statement (outside any SECURITY DEFINER function).';
COMMENT ON COLUMN rls_audit.log.operation IS 'INSERT, UPDATE, DELETE or TRUNCATE.';
COMMENT ON COLUMN rls_audit.log.read_rule IS
'Which of the row''s values a reader''s context must match (site, owner, site_owner); NULL: only the table''s owner and roles that bypass row level security read the entry.';
COMMENT ON COLUMN rls_audit.log.read_keys IS
'The row''s own site and/or owner values (canonical text, "site owner" for site_owner) before and after the change; "*" when the row is shared with everyone.';

CREATE TABLE rls_audit.log_default PARTITION OF rls_audit.log DEFAULT;
COMMENT ON TABLE rls_audit.log_default IS 'Catches rows for months without a partition; rls_audit.ensure_partitions() creates those ahead of time.';

-- Indexes live on each partition, not on the partitioned parent: a parent index
-- would make ATTACH PARTITION create same-named partition indexes while
-- pg_restore replays a dump, and the restore would fail on the duplicates.
CREATE FUNCTION rls_audit._index_partition(part regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- history of a row (by the table's trail id, which follows renames); what a
    -- site did when; what a user did when; time ranges
    EXECUTE format('CREATE INDEX ON %s (trail_id, row_key)', part);
    EXECUTE format('CREATE INDEX ON %s (site_id, logged_at) WHERE site_id IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (site_uuid, logged_at) WHERE site_uuid IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (user_id, logged_at) WHERE user_id IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (user_uuid, logged_at) WHERE user_uuid IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s USING brin (logged_at)', part);
END
$$;
COMMENT ON FUNCTION rls_audit._index_partition(regclass) IS
'Internal: the indexes every partition of rls_audit.log carries.';
REVOKE ALL ON FUNCTION rls_audit._index_partition(regclass) FROM PUBLIC;
SELECT rls_audit._index_partition('rls_audit.log_default');

-- Readers see only the entries of rows their policies would let them read;
-- nobody but the owner writes.
CREATE FUNCTION rls_audit._may_read(trail_id uuid, read_rule text, read_keys text[])
RETURNS boolean
AS 'MODULE_PATHNAME', 'rls_audit_may_read'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls_audit._may_read(uuid, text, text[]) IS
'Internal: the read policy of rls_audit.log. The entry is about the table rls_audit.trails names for trail_id (none once it is dropped). True for roles with the privileges of the table''s owner; otherwise the reader needs USAGE on the table''s schema, SELECT on the table, row level security on it whose every SELECT policy applies to the reader (one of them permissive; or no row level security at all), and a context matching one of read_keys under read_rule.';

ALTER TABLE rls_audit.log ENABLE ROW LEVEL SECURITY;
CREATE POLICY log_read ON rls_audit.log FOR SELECT TO PUBLIC
    USING (rls_audit._may_read(trail_id, read_rule, read_keys));
REVOKE ALL ON rls_audit.log FROM PUBLIC;
GRANT SELECT ON rls_audit.log TO PUBLIC;

-- The partitioned parent holds no rows of its own and is not marked (pg_dump
-- 14 crashes on that); the monthly partitions are no members of the extension,
-- so pg_dump dumps them whole; the default partition is marked.  The id
-- sequence is dumped as well, so that ids go on from where they were after a
-- restore.
--
-- Not on PostgreSQL 14: pg_dump 14 leaves a member table out of its plan when
-- its privileges are still the ones the install script gave it, so it never
-- looks up the default partition's parent, and crashes when it dumps the
-- partition's rows; no dump of the database would succeed.  There,
-- rls.problems reports rows waiting in the default partition, and
-- rls_audit.ensure_partitions() moves them into monthly partitions.
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('rls_audit.log', 'id')::regclass, '');
DO $$
BEGIN
    IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN
        PERFORM pg_catalog.pg_extension_config_dump('rls_audit.log_default', '');
    END IF;
END
$$;

CREATE TABLE rls_audit.audited_tables (
    table_oid regclass PRIMARY KEY,  -- regclass, not oid: a dump stores the name, so a restore finds the table
    excluded_columns text[] NOT NULL DEFAULT '{}',
    masked_columns text[] NOT NULL DEFAULT '{}',
    operations text[] NOT NULL DEFAULT '{INSERT,UPDATE,DELETE,TRUNCATE}'
);
COMMENT ON TABLE rls_audit.audited_tables IS 'Which tables are audited, and how (rls_audit.enable()).';
REVOKE ALL ON rls_audit.audited_tables FROM PUBLIC;
GRANT SELECT ON rls_audit.audited_tables TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('rls_audit.audited_tables', '');

-- A table's identity in the trail.  The log records it with every entry, and
-- the read policy finds the table through it: an entry stays with its table
-- when that is renamed or moved to another schema, a table that later takes
-- the old name reads none of it, and a restore (which gives tables new oids)
-- binds it to the restored table by name.  Made when a table is first
-- audited, kept when auditing stops (so the owner still reads the entries),
-- removed with the table (the entries are then read only by roles that bypass
-- row level security).
CREATE TABLE rls_audit.trails (
    table_oid regclass PRIMARY KEY,  -- regclass, not oid: a dump stores the name, so a restore finds the table
    trail_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid()
);
COMMENT ON TABLE rls_audit.trails IS
'The trail id of every table that is or was audited and still exists: rls_audit.log entries carry it, and are read as entries of the table it names.';
REVOKE ALL ON rls_audit.trails FROM PUBLIC;
GRANT SELECT ON rls_audit.trails TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('rls_audit.trails', '');

