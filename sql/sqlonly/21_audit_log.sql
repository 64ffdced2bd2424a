/*
 * sql/sqlonly/21_audit_log.sql
 *     The audit log of the SQL-only mode: the same rls_audit.statements,
 *     rls_audit.log, registrations and read rule as the C library's
 *     (sql/install/21_audit_log.sql, docs/audit.md), without C.  The tables
 *     and the view are the C library's own files, run before and after this
 *     one: sql/install/21_audit_base.sql and sql/install/21_audit_view.sql
 *     (django_rls/sqlonly.py, SCRIPTS); rls_audit.history(), which returns
 *     the view's rows, is in 23_audit_admin.sql.
 *
 * What differs, and why:
 *   - The log, the registrations and the trail ids belong to the NOLOGIN role
 *     django_rls_audit (90_privileges.sql), which writes the log through the
 *     per-table capture functions of 22_audit_capture.sql.  The installing
 *     role is a member of it (it created it), as a superuser is of
 *     everything in the C mode.
 *   - rls_audit._may_read() is SQL: the same decision as the C function,
 *     made per entry from the catalogs (the C function caches it per trail).
 *   - The row key index uses the built-in GIN operator class: the leakproof
 *     rls_audit.@> of the C mode can only be declared by a superuser.  So
 *     rls_audit.statements_of() is not LEAKPROOF here and reads through the
 *     view; the log's statement rows are found by their table's trail id
 *     (an index of this mode) instead of the row key (docs/audit.md).
 *   - The registrations are written by the table's owner under row level
 *     security (the policy: the writing role has the privileges of the
 *     table's owner), since no function can both run as the caller, for the
 *     ownership check, and write a table the caller may not.  The trail ids
 *     are written only by django_rls_audit: a trail id decides who reads an
 *     entry, so a table's owner must not choose one.
 */

-- The indexes of every partition: those of the C mode, with the built-in GIN
-- operator class for the row keys, and one on the trail id, by which this
-- mode finds a table's statement rows (rls_audit.statements_of()).
CREATE FUNCTION rls_audit._index_partition(part regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- (fastupdate off, as in the C mode: a pending list makes every lookup
    -- read all the keys waiting in it)
    EXECUTE format('CREATE INDEX ON %s USING gin (row_keys) WITH (fastupdate = off)', part);
    EXECUTE format('CREATE INDEX ON %s (id)', part);
    EXECUTE format('CREATE INDEX ON %s (trail_id, logged_at)', part);
    EXECUTE format('CREATE INDEX ON %s (site_id, logged_at) WHERE site_id IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (site_uuid, logged_at) WHERE site_uuid IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (user_id, logged_at) WHERE user_id IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (user_uuid, logged_at) WHERE user_uuid IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s USING brin (logged_at)', part);
END
$$;
COMMENT ON FUNCTION rls_audit._index_partition(regclass) IS
'Internal: the indexes every partition of rls_audit.statements carries.';
REVOKE ALL ON FUNCTION rls_audit._index_partition(regclass) FROM PUBLIC;
-- (Once: the upgrade of an installation runs this file again, sqlonly._upgrade_text.)
SELECT rls_audit._index_partition('rls_audit.statements_default')
 WHERE NOT EXISTS (SELECT FROM pg_index WHERE indrelid = 'rls_audit.statements_default'::regclass);

COMMENT ON TABLE rls_audit.trails IS
'The trail id of every table that is or was audited: rls_audit.log entries carry it, and are read as entries of the table it names.';

-- SQL-only mode: the capture function rls_audit.enable() generated for each
-- audited table, and what it was generated from (rls_audit._capture_signature).
CREATE TABLE rls_audit.captures (
    table_oid regclass PRIMARY KEY,
    function regprocedure NOT NULL,
    signature text NOT NULL
);
COMMENT ON TABLE rls_audit.captures IS
'SQL-only mode: the capture function of each audited table and the columns, key, options and read rule it was generated for; a table whose signature changed since has its audited writes refused until rls_audit.enable() runs again.';

-- The registrations are read by everyone and written by django_rls_audit only
-- (rls_audit._apply_requests): UPDATE or DELETE on them would let any role LOCK
-- them in ACCESS EXCLUSIVE mode, and every audited write of every site reads
-- them (rls_audit._capture_signature).  A table's owner asks for a change by
-- inserting a request (below) through rls_audit.enable(), disable() and
-- set_read_rule(), which run as the caller.
REVOKE ALL ON rls_audit.captures FROM PUBLIC;
GRANT SELECT ON rls_audit.captures TO PUBLIC;

-- SQL-only mode: the registration changes asked for and not yet applied.  Every
-- role may INSERT (which lets LOCK take ROW EXCLUSIVE at most, a mode that
-- blocks no reader and no writer), and only a request for a table whose owner's
-- privileges it has: the policy is checked as the role inserting, so a request
-- row is the owner's word, which rls_audit._apply_requests() (as
-- django_rls_audit) then carries out in the same transaction: a request of an
-- earlier one (its role may no longer own the table) is discarded.  Nobody
-- else reads it.
CREATE TABLE rls_audit._requests (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    made_in xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_oid regclass NOT NULL,
    action text NOT NULL CHECK (action IN ('enable', 'disable', 'set_read_rule')),
    excluded_columns text[],
    masked_columns text[],
    operations text[],
    site_column name,
    owner_column name,
    null_is_shared boolean
);
COMMENT ON TABLE rls_audit._requests IS
'Internal (SQL-only mode): registration changes a table''s owner asked for through rls_audit.enable(), disable() or set_read_rule(), applied and removed in the same call.';
REVOKE ALL ON rls_audit._requests FROM PUBLIC;
GRANT INSERT ON rls_audit._requests TO PUBLIC;

-- Whether the role calling has the privileges of the table's owner.
CREATE FUNCTION rls_audit._owns(tbl oid)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce((SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = tbl), false) $$;
COMMENT ON FUNCTION rls_audit._owns(oid) IS
'Internal: whether the role calling has the privileges of the table''s owner (false for a table that does not exist).';

-- (Earlier installations had each table's owner write the registrations itself, under
-- row level security; an upgrade drops those policies.)
ALTER TABLE rls_audit.audited_tables DISABLE ROW LEVEL SECURITY;
ALTER TABLE rls_audit.read_rules DISABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS readable ON rls_audit.audited_tables;
DROP POLICY IF EXISTS own_tables ON rls_audit.audited_tables;
DROP POLICY IF EXISTS readable ON rls_audit.read_rules;
DROP POLICY IF EXISTS own_tables ON rls_audit.read_rules;

ALTER TABLE rls_audit._requests ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own_tables ON rls_audit._requests;
CREATE POLICY own_tables ON rls_audit._requests FOR INSERT
    WITH CHECK (rls_audit._owns(table_oid) AND made_in = pg_current_xact_id());

-- Whether the table's row level security constrains the role calling as it
-- constrains the roles its policies name (the C mode's PoliciesConstrainReader).
CREATE FUNCTION rls_audit._policies_constrain(tbl oid, rowsecurity boolean)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NOT rowsecurity
        OR (NOT EXISTS (SELECT FROM pg_policy p
                         WHERE p.polrelid = tbl AND p.polcmd IN ('r', '*')
                           AND NOT EXISTS (SELECT FROM unnest(p.polroles) r WHERE r = 0 OR pg_has_role(r, 'USAGE')))
            AND EXISTS (SELECT FROM pg_policy p
                         WHERE p.polrelid = tbl AND p.polcmd IN ('r', '*') AND p.polpermissive
                           AND EXISTS (SELECT FROM unnest(p.polroles) r WHERE r = 0 OR pg_has_role(r, 'USAGE'))))
$$;
COMMENT ON FUNCTION rls_audit._policies_constrain(oid, boolean) IS
'Internal: true when the table has no row level security, or every SELECT policy of it applies to the role calling and one of them is permissive.';

-- The policy of rls_audit.log, as the C function decides it (docs/audit.md,
-- "Who reads which entries"), by the role calling.
CREATE FUNCTION rls_audit._may_read(trail_id uuid, read_rule text, read_keys text[])
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN (SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user) THEN true
        WHEN _may_read.trail_id IS NULL THEN false
        ELSE coalesce((
            SELECT CASE
                WHEN pg_has_role(c.relowner, 'USAGE') THEN true
                WHEN NOT (has_schema_privilege(c.relnamespace, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')
                          AND rls_audit._policies_constrain(c.oid, c.relrowsecurity)) THEN false
                WHEN _may_read.read_rule IS NULL OR _may_read.read_keys IS NULL THEN false
                ELSE EXISTS (
                    SELECT FROM unnest(_may_read.read_keys) k, rls._held() h
                     WHERE k = '*'
                        OR k = CASE _may_read.read_rule
                                   WHEN 'site' THEN nullif(h.site, '')
                                   WHEN 'owner' THEN nullif(h."user", '')
                                   WHEN 'site_owner' THEN CASE WHEN h.site <> '' AND h."user" <> '' THEN h.site || ' ' || h."user" END
                               END)
            END
              FROM rls_audit.trails t JOIN pg_class c ON c.oid = t.table_oid
             WHERE t.trail_id = _may_read.trail_id), false)
    END
$$;
COMMENT ON FUNCTION rls_audit._may_read(uuid, text, text[]) IS
'Internal: the read policy of rls_audit.log. The entry is about the table rls_audit.trails names for trail_id (none once it is dropped). True for roles with the privileges of the table''s owner; otherwise the reader needs USAGE on the table''s schema, SELECT on the table, row level security on it whose every SELECT policy applies to the reader (one of them permissive; or no row level security at all), and a context matching one of read_keys under read_rule.';

-- The trail ids of a table and every table below it in its partition tree
-- (SQL-only mode audits no trees; kept for the same answers as the C mode).
CREATE FUNCTION rls_audit._tree_trails(tbl regclass)
RETURNS uuid[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE down(relid) AS (
        SELECT tbl::oid
        UNION
        SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.relid
    )
    SELECT coalesce(array_agg(t.trail_id), '{}') FROM rls_audit.trails t JOIN down ON down.relid = t.table_oid
$$;
COMMENT ON FUNCTION rls_audit._tree_trails(regclass) IS
'Internal: the trail ids of a table and of the tables below it.';

-- The statement rows holding a row's entries that the caller may read.  Not
-- LEAKPROOF (only a superuser can declare it), so it reads through the view:
-- the table's statement rows are found by their trail id (a leakproof
-- equality, which reaches the index behind the view's barrier), and their
-- entries are unnested and checked.
CREATE FUNCTION rls_audit.statements_of(tbl regclass, row_key text)
RETURNS bigint[]
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trails uuid[] := rls_audit._tree_trails(tbl);
    key text := row_key;
BEGIN
    RETURN coalesce((SELECT array_agg(DISTINCT l.statement_id ORDER BY l.statement_id)
                       FROM rls_audit.log l WHERE l.trail_id = ANY (trails) AND l.row_key = key), '{}');
END
$$;
COMMENT ON FUNCTION rls_audit.statements_of(regclass, text) IS
'The ids of the statement rows (rls_audit.log.statement_id) holding entries of the row row_key of tbl (or of any table of its partition tree, under any name it had) that the caller may read. Use: WHERE statement_id = ANY (rls_audit.statements_of(tbl, key)) AND row_key = key.';

-- The C mode walks the statement rows newest first as their owner and checks
-- each entry as the caller (ext/audit_lookup.c); here the caller's own query
-- of the view finds them: the same statement rows, with no time saved (the
-- view sorts every entry that matches), so that readers written for the C mode
-- (AuditEntryQuerySet.newest(), the admin's list) run unchanged.
CREATE FUNCTION rls_audit.newest_statements(
    entries integer,
    site_id bigint DEFAULT NULL, site_uuid uuid DEFAULT NULL,
    user_id bigint DEFAULT NULL, user_uuid uuid DEFAULT NULL,
    table_name text DEFAULT NULL, operation text DEFAULT NULL, db_role name DEFAULT NULL,
    logged_from timestamptz DEFAULT NULL, logged_before timestamptz DEFAULT NULL)
RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted integer := entries;
    site bigint := site_id;
    site_u uuid := site_uuid;
    usr bigint := user_id;
    usr_u uuid := user_uuid;
    tbl text := table_name;
    op text := operation;
    role name := db_role;
    since timestamptz := logged_from;
    until timestamptz := logged_before;
BEGIN
    IF wanted IS NULL OR wanted < 0 THEN
        RAISE EXCEPTION 'rls_audit.newest_statements() needs a count of entries of 0 or more'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass how many of the newest entries the query reads: its OFFSET plus its LIMIT.';
    END IF;
    RETURN coalesce((
        SELECT array_agg(n.statement_id ORDER BY n.newest DESC)
          FROM (SELECT l.statement_id, max(l.logged_at) AS newest
                  FROM (SELECT l.statement_id, l.logged_at
                          FROM rls_audit.log l
                         WHERE (site IS NULL OR l.site_id = site)
                           AND (site_u IS NULL OR l.site_uuid = site_u)
                           AND (usr IS NULL OR l.user_id = usr)
                           AND (usr_u IS NULL OR l.user_uuid = usr_u)
                           AND (tbl IS NULL OR l.table_name = tbl)
                           AND (op IS NULL OR l.operation = op)
                           AND (role IS NULL OR l.db_role = role)
                           AND (since IS NULL OR l.logged_at >= since)
                           AND (until IS NULL OR l.logged_at < until)
                         ORDER BY l.logged_at DESC, l.id DESC
                         LIMIT wanted) l
                 GROUP BY l.statement_id) n), '{}');
END
$$;
COMMENT ON FUNCTION rls_audit.newest_statements(integer, bigint, uuid, bigint, uuid, text, text, name, timestamptz, timestamptz) IS
'The ids of the statement rows (rls_audit.log.statement_id), newest first, holding the caller''s newest readable entries (at least entries of them, or all there are) among those whose statement columns match every condition given (logged_from inclusive, logged_before exclusive). In the SQL-only mode it reads the view as the caller, no faster than the ordered query. Use: WHERE statement_id = ANY (rls_audit.newest_statements(50, site_id => 7)) AND site_id = 7 ORDER BY logged_at DESC, id DESC LIMIT 50.';

-- The C mode's count_entries() and entry_times() walk the statement rows as
-- their owner (ext/audit_lookup.c); here the caller's own query of the view
-- answers, with the same results and no time saved (the view unnests and
-- sorts every entry that matches), so that readers written for the C mode (the
-- admin's paginator and date hierarchy) run unchanged.
CREATE FUNCTION rls_audit.count_entries(
    up_to bigint,
    site_id bigint DEFAULT NULL, site_uuid uuid DEFAULT NULL,
    user_id bigint DEFAULT NULL, user_uuid uuid DEFAULT NULL,
    table_name text DEFAULT NULL, operation text DEFAULT NULL, db_role name DEFAULT NULL,
    logged_from timestamptz DEFAULT NULL, logged_before timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted bigint := up_to;
    site bigint := site_id;
    site_u uuid := site_uuid;
    usr bigint := user_id;
    usr_u uuid := user_uuid;
    tbl text := table_name;
    op text := operation;
    role name := db_role;
    since timestamptz := logged_from;
    until timestamptz := logged_before;
BEGIN
    IF wanted < 0 THEN
        RAISE EXCEPTION 'rls_audit.count_entries() needs a limit of 0 or more, or NULL'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass how many entries are worth counting (a paginator''s limit plus one), or NULL to count them all.';
    END IF;
    RETURN (SELECT count(*)
              FROM (SELECT
                      FROM rls_audit.log l
                     WHERE (site IS NULL OR l.site_id = site)
                       AND (site_u IS NULL OR l.site_uuid = site_u)
                       AND (usr IS NULL OR l.user_id = usr)
                       AND (usr_u IS NULL OR l.user_uuid = usr_u)
                       AND (tbl IS NULL OR l.table_name = tbl)
                       AND (op IS NULL OR l.operation = op)
                       AND (role IS NULL OR l.db_role = role)
                       AND (since IS NULL OR l.logged_at >= since)
                       AND (until IS NULL OR l.logged_at < until)
                     LIMIT wanted) l);
END
$$;
COMMENT ON FUNCTION rls_audit.count_entries(bigint, bigint, uuid, bigint, uuid, text, text, name, timestamptz, timestamptz) IS
'How many entries of rls_audit.log the caller may read among those whose statement columns match every condition given (logged_from inclusive, logged_before exclusive), counting at most up_to (NULL: all): count(*) of the view with those conditions, or up_to if that is more. In the SQL-only mode it counts through the view, no faster than count(*).';

CREATE FUNCTION rls_audit.entry_times(
    site_id bigint DEFAULT NULL, site_uuid uuid DEFAULT NULL,
    user_id bigint DEFAULT NULL, user_uuid uuid DEFAULT NULL,
    table_name text DEFAULT NULL, operation text DEFAULT NULL, db_role name DEFAULT NULL,
    logged_from timestamptz DEFAULT NULL, logged_before timestamptz DEFAULT NULL,
    OUT oldest timestamptz, OUT newest timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    site bigint := site_id;
    site_u uuid := site_uuid;
    usr bigint := user_id;
    usr_u uuid := user_uuid;
    tbl text := table_name;
    op text := operation;
    role name := db_role;
    since timestamptz := logged_from;
    until timestamptz := logged_before;
BEGIN
    SELECT min(l.logged_at), max(l.logged_at) INTO oldest, newest
      FROM rls_audit.log l
     WHERE (site IS NULL OR l.site_id = site)
       AND (site_u IS NULL OR l.site_uuid = site_u)
       AND (usr IS NULL OR l.user_id = usr)
       AND (usr_u IS NULL OR l.user_uuid = usr_u)
       AND (tbl IS NULL OR l.table_name = tbl)
       AND (op IS NULL OR l.operation = op)
       AND (role IS NULL OR l.db_role = role)
       AND (since IS NULL OR l.logged_at >= since)
       AND (until IS NULL OR l.logged_at < until);
END
$$;
COMMENT ON FUNCTION rls_audit.entry_times(bigint, uuid, bigint, uuid, text, text, name, timestamptz, timestamptz) IS
'min(logged_at) and max(logged_at) of the entries of rls_audit.log the caller may read among those whose statement columns match every condition given (logged_from inclusive, logged_before exclusive); both NULL if there are none. In the SQL-only mode it reads through the view.';

-- The hash chain's tables (sql/install/21_audit_base.sql), so that retention
-- (sql/install/24_audit_retention.sql) is the C mode's: the SQL-only mode
-- seals nothing, and they stay empty.
COMMENT ON TABLE rls_audit.chain_heads IS 'SQL-only mode: always empty (the hash chain needs the C library).';
COMMENT ON TABLE rls_audit.seals IS 'SQL-only mode: always empty (the hash chain needs the C library).';

CREATE FUNCTION rls_audit.verify(since date DEFAULT NULL)
RETURNS TABLE (month date, chain text, seals bigint, entries bigint, problem text,
               entry_id bigint, seal_seq bigint, detail text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail''s hash chain is not available in the SQL-only mode of django_rls'
        USING ERRCODE = 'feature_not_supported',
              DETAIL = 'The SQL-only mode records no seals, so there is no chain to verify.',
              HINT = 'Use the django_rls extension (the C library) with django_rls.audit_chain = on for a tamper-evident trail.';
END
$$;
COMMENT ON FUNCTION rls_audit.verify(date) IS
'SQL-only mode: refused (feature_not_supported): the hash chain needs the C library.';
REVOKE ALL ON FUNCTION rls_audit.verify(date) FROM PUBLIC;
