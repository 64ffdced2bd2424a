/*
 * sql/sqlonly/23_audit_admin.sql
 *     rls_audit.enable(), disable(), set_read_rule() and rls_audit.status in
 *     the SQL-only mode.
 *
 * enable(), disable() and set_read_rule() run as the role calling (as the C
 * functions check it: inside another role's SECURITY DEFINER function, that
 * role): they check that it has the privileges of the table's owner, insert
 * the change as a request (rls_audit._requests, whose policy, checked as the
 * role inserting, admits requests for the owner's own tables only) and create
 * or drop the triggers (as the owner may).  The registrations themselves are
 * written by django_rls_audit only, in rls_audit._apply_requests(): no other
 * role holds UPDATE or DELETE on them, which would let it LOCK them against
 * every audited write.  The capture function is made by django_rls_audit too,
 * in rls_audit._build_capture().  Anyone may call either: they carry out the
 * requests and the registration, which only a table's owner can write, and
 * read the catalogs, so calling them does nothing the owner did not ask for.
 *
 * Not in this mode: partitioned tables and inheritance trees (the C mode
 * audits new partitions and children as they arrive, by an event trigger,
 * which only a superuser can create), and the guard that refuses dropping or
 * disabling an audit trigger behind disable()'s back: rls_audit.status and
 * rls.problems report such a trigger instead.
 */

-- The trigger rls_audit.enable() makes for an operation, as it must stay.
CREATE FUNCTION rls_audit._trigger_problem(trigger_oid oid, any_enabled_state boolean DEFAULT false)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN op IS NULL THEN format('it is not one of rls_audit_insert, rls_audit_update, rls_audit_delete, rls_audit_truncate')
        WHEN t.tgfoid IS DISTINCT FROM (SELECT c.function FROM rls_audit.captures c WHERE c.table_oid = t.tgrelid)
            THEN format('it calls %s instead of the table''s capture function', t.tgfoid::regprocedure)
        WHEN t.tgtype <> CASE op WHEN 'INSERT' THEN 4 WHEN 'DELETE' THEN 8 WHEN 'UPDATE' THEN 16 ELSE 32 END
            THEN format('it no longer fires AFTER %s FOR EACH STATEMENT', op)
        WHEN t.tgqual IS NOT NULL THEN 'it has a WHEN condition'
        WHEN cardinality(t.tgattr::int2[]) > 0 THEN 'it fires only for some columns'
        WHEN t.tgoldtable IS DISTINCT FROM CASE WHEN op IN ('UPDATE', 'DELETE') THEN 'old_rows' END
          OR t.tgnewtable IS DISTINCT FROM CASE WHEN op IN ('INSERT', 'UPDATE') THEN 'new_rows' END
            THEN 'its transition tables are not the ones rls_audit.enable() names'
        WHEN t.tgnargs <> 0 OR t.tgconstraint <> 0 OR t.tgdeferrable OR t.tginitdeferred OR t.tgisinternal
          OR t.tgparentid <> 0
            THEN 'it is not a plain trigger as rls_audit.enable() makes it'
        WHEN t.tgenabled <> 'A' AND NOT any_enabled_state THEN format('it is not ENABLE ALWAYS (tgenabled = %s)', t.tgenabled)
    END
      FROM pg_trigger t,
           LATERAL (SELECT CASE WHEN t.tgname IN ('rls_audit_insert', 'rls_audit_update', 'rls_audit_delete', 'rls_audit_truncate')
                                THEN upper(substr(t.tgname, 11)) END AS op) o
     WHERE t.oid = trigger_oid
$$;
COMMENT ON FUNCTION rls_audit._trigger_problem(oid, boolean) IS
'Internal: NULL when an audit trigger is exactly as rls_audit.enable() makes it (the table''s capture function, timing, events, level, WHEN, columns, transition tables, ENABLE ALWAYS unless any_enabled_state), else what differs.';

CREATE FUNCTION rls_audit._check_auditable(tbl regclass)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel pg_class;
BEGIN
    SELECT * INTO rel FROM pg_class WHERE oid = tbl;
    PERFORM rls._citus_refuse_audit(tbl);
    IF rel.relkind = 'p' OR EXISTS (SELECT FROM pg_inherits WHERE inhrelid = tbl OR inhparent = tbl) THEN
        RAISE EXCEPTION '% is a partitioned table, a partition or part of an inheritance tree, which the SQL-only mode of django_rls does not audit', tbl
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Auditing a tree needs the event trigger that audits partitions and children as they arrive; only a superuser can create one.',
                  HINT = 'Audit plain tables, or use the django_rls extension (the C library).';
    END IF;
    IF rel.relkind <> 'r' THEN
        RAISE EXCEPTION '% is not a table', tbl
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = CASE rel.relkind WHEN 'f' THEN 'Triggers on foreign tables cannot have the transition tables the audit trail reads.'
                                            ELSE 'Only ordinary tables can be audited.' END,
                  HINT = 'Audit the tables that hold the rows (a view''s base tables).';
    END IF;
    IF rel.relpersistence = 't' THEN
        RAISE EXCEPTION '% is a temporary table', tbl
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'A temporary table lives in one session only, and its owner controls every object around it.',
                  HINT = 'Audit permanent tables only.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_index WHERE indrelid = tbl AND indisprimary) THEN
        RAISE EXCEPTION '% has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'The audit trail identifies rows by primary key; add one first.';
    END IF;
END
$$;
COMMENT ON FUNCTION rls_audit._check_auditable(regclass) IS
'Internal: refuse what cannot be audited in the SQL-only mode: tables of Citus, other relation kinds, partitions and inheritance trees, temporary tables, tables without a primary key.';

-- Make the table's capture function match its registration: generate it (as
-- django_rls_audit, which owns it), or drop it when the table is no longer
-- audited.  Also forgets the registrations of tables that were dropped.
CREATE FUNCTION rls_audit._build_capture(tbl regclass)
RETURNS regprocedure
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    reg rls_audit.audited_tables;
    rule rls_audit.read_rules;
    fn text := format('rls_audit.%I', 'capture_' || tbl::oid);
    col name;
    typ oid;
    unknown text[];
BEGIN
    -- Dropped tables: no event trigger removes their rows in this mode.
    DELETE FROM rls_audit.audited_tables a WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = a.table_oid);
    DELETE FROM rls_audit.read_rules r WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = r.table_oid);
    DELETE FROM rls_audit.trails t WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = t.table_oid);
    DELETE FROM rls_audit.captures k WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = k.table_oid);

    SELECT * INTO reg FROM rls_audit.audited_tables a WHERE a.table_oid = tbl;
    IF NOT FOUND THEN
        DELETE FROM rls_audit.captures k WHERE k.table_oid = tbl;
        EXECUTE format('DROP FUNCTION IF EXISTS %s()', fn);
        RETURN NULL;
    END IF;

    -- The registration was written by the table's owner: check all of it here.
    PERFORM rls_audit._check_auditable(tbl);
    unknown := ARRAY(SELECT c FROM unnest(reg.excluded_columns || reg.masked_columns) c
                      WHERE NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = c
                                                                   AND attnum > 0 AND NOT attisdropped));
    IF cardinality(unknown) > 0 THEN
        RAISE EXCEPTION '% has no column(s) %', tbl, unknown
            USING ERRCODE = 'undefined_column', HINT = 'Name existing columns in excluded_columns and masked_columns.';
    END IF;
    IF EXISTS (SELECT FROM unnest(reg.excluded_columns || reg.masked_columns) c
                WHERE c IN (SELECT a.attname FROM pg_index i JOIN pg_attribute a
                              ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                             WHERE i.indrelid = tbl AND i.indisprimary)) THEN
        RAISE EXCEPTION 'the primary key of % cannot be excluded or masked', tbl
            USING ERRCODE = 'invalid_parameter_value', HINT = 'The trail needs the key to tell rows apart.';
    END IF;
    IF reg.operations IS NULL OR cardinality(reg.operations) = 0
       OR EXISTS (SELECT FROM unnest(reg.operations) o WHERE o IS NULL OR o NOT IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')) THEN
        RAISE EXCEPTION 'invalid audit operations %', reg.operations
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a subset of INSERT, UPDATE, DELETE, TRUNCATE.';
    END IF;
    SELECT * INTO rule FROM rls_audit.read_rules r WHERE r.table_oid = tbl;
    FOREACH col IN ARRAY ARRAY[rule.site_column, rule.owner_column] LOOP
        CONTINUE WHEN col IS NULL;
        SELECT atttypid INTO typ FROM pg_attribute
         WHERE attrelid = tbl AND attname = col AND attnum > 0 AND NOT attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'column "%" of % does not exist', col, tbl
                USING ERRCODE = 'undefined_column', HINT = 'Name the column that holds the site or owner id.';
        END IF;
        IF typ NOT IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'uuid'::regtype) THEN
            RAISE EXCEPTION 'column "%" of % has type %, not an integer or uuid', col, tbl, typ::regtype
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'Only site and owner keys the context can hold can be mirrored; leave the rule unset.';
        END IF;
    END LOOP;

    INSERT INTO rls_audit.trails (table_oid) VALUES (tbl) ON CONFLICT (table_oid) DO NOTHING;
    EXECUTE rls_audit._capture_text(tbl);
    -- CREATE TRIGGER needs EXECUTE; called other than as this table's audit trigger, it refuses to run.
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s() TO PUBLIC', fn);
    INSERT INTO rls_audit.captures VALUES (tbl, format('%s()', fn)::regprocedure, rls_audit._capture_signature(tbl))
        ON CONFLICT (table_oid) DO UPDATE SET function = EXCLUDED.function, signature = EXCLUDED.signature;
    RETURN format('%s()', fn)::regprocedure;
END
$$;
COMMENT ON FUNCTION rls_audit._build_capture(regclass) IS
'Internal (SQL-only mode): generate the table''s capture function from its registration (or drop it when the table is not audited); returns it.';

-- As the role calling: the privileges of the table's owner, or an error.
CREATE FUNCTION rls_audit._check_owner(tbl regclass, what text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF tbl IS NULL THEN
        RAISE EXCEPTION 'the table passed to rls_audit.%() must not be NULL', what
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Name an existing table.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_class WHERE oid = tbl) THEN
        RAISE EXCEPTION 'relation with OID % does not exist', tbl::oid
            USING ERRCODE = 'undefined_table', HINT = 'Name an existing table.';
    END IF;
    IF NOT rls_audit._owns(tbl) THEN
        RAISE EXCEPTION '%', CASE WHEN what = 'set_read_rule' THEN format('permission denied to set the audit read rule of %s', tbl)
                                  ELSE format('permission denied to audit %s', tbl) END
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('The role calling is %s; inside a SECURITY DEFINER function that is the function''s owner.', current_user),
                  HINT = 'Only the table''s owner can change its auditing.';
    END IF;
END
$$;
COMMENT ON FUNCTION rls_audit._check_owner(regclass, text) IS
'Internal: refuse a role calling without the privileges of the table''s owner.';

-- As django_rls_audit: carry out the transaction's requests for tbl, oldest
-- first, and remove them (and any left by an earlier transaction); whether the
-- registration changed.  A request row is the owner's word: the policy of
-- rls_audit._requests checked it as the role that inserted it.
CREATE FUNCTION rls_audit._apply_requests(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    req rls_audit._requests;
    wanted rls_audit.audited_tables;
    existing rls_audit.audited_tables;
    changed boolean := false;
BEGIN
    DELETE FROM rls_audit._requests r WHERE r.table_oid = tbl AND r.made_in <> pg_current_xact_id();
    FOR req IN SELECT * FROM rls_audit._requests r WHERE r.table_oid = tbl ORDER BY r.id LOOP
        DELETE FROM rls_audit._requests r WHERE r.id = req.id;
        IF req.action = 'enable' THEN
            wanted := ROW(tbl, req.excluded_columns, req.masked_columns, req.operations);
            SELECT * INTO existing FROM rls_audit.audited_tables a WHERE a.table_oid = tbl;
            IF NOT FOUND OR existing IS DISTINCT FROM wanted THEN
                INSERT INTO rls_audit.audited_tables VALUES (wanted.*)
                    ON CONFLICT (table_oid) DO UPDATE
                    SET excluded_columns = EXCLUDED.excluded_columns, masked_columns = EXCLUDED.masked_columns,
                        operations = EXCLUDED.operations;
                changed := true;
            END IF;
        ELSIF req.action = 'disable' THEN
            DELETE FROM rls_audit.audited_tables a WHERE a.table_oid = tbl;
            changed := changed OR FOUND;
        ELSE
            changed := rls_audit._store_read_rule(tbl, req.site_column, req.owner_column, req.null_is_shared) OR changed;
        END IF;
    END LOOP;
    RETURN changed;
END
$$;
COMMENT ON FUNCTION rls_audit._apply_requests(regclass) IS
'Internal (SQL-only mode): write the registration changes a table''s owner asked for (rls_audit._requests), as the registrations'' owner; whether anything changed.';

-- As the role calling (the owner): the triggers of the registered operations, calling the capture function.
CREATE FUNCTION rls_audit._place_triggers(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target text := (SELECT format('%I.%I', n.nspname, c.relname)
                      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl);
    ops text[] := (SELECT operations FROM rls_audit.audited_tables WHERE table_oid = tbl);
    fn regprocedure := (SELECT function FROM rls_audit.captures WHERE table_oid = tbl);
    op text;
    trig name;
    changed boolean := false;
BEGIN
    FOREACH op IN ARRAY coalesce(ops, '{}') LOOP
        trig := 'rls_audit_' || lower(op);
        IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = trig
                                                AND rls_audit._trigger_problem(oid, true) IS NULL) THEN
            EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION %s',
                           trig, op, target,
                           CASE op WHEN 'INSERT' THEN 'REFERENCING NEW TABLE AS new_rows'
                                   WHEN 'UPDATE' THEN 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows'
                                   WHEN 'DELETE' THEN 'REFERENCING OLD TABLE AS old_rows'
                                   ELSE '' END, fn);
            changed := true;
        END IF;
        IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = trig AND tgenabled <> 'A') THEN
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', target, trig);
        END IF;
    END LOOP;
    FOREACH op IN ARRAY ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'] LOOP
        trig := 'rls_audit_' || lower(op);
        IF op <> ALL (coalesce(ops, '{}')) AND EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = trig) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', trig, target);
            changed := true;
        END IF;
    END LOOP;
    RETURN changed;
END
$$;
COMMENT ON FUNCTION rls_audit._place_triggers(regclass) IS
'Internal: make a table''s audit triggers match its registration (run as the table''s owner).';

CREATE FUNCTION rls_audit.enable(tbl regclass,
                                 excluded_columns text[] DEFAULT '{}',
                                 masked_columns text[] DEFAULT '{}',
                                 operations text[] DEFAULT '{INSERT,UPDATE,DELETE,TRUNCATE}')
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changed boolean;
BEGIN
    PERFORM rls_audit._check_owner(tbl, 'enable');
    PERFORM rls_audit._check_auditable(tbl);
    INSERT INTO rls_audit._requests (table_oid, action, excluded_columns, masked_columns, operations)
    VALUES (tbl, 'enable', ARRAY(SELECT DISTINCT unnest(excluded_columns) ORDER BY 1),
            ARRAY(SELECT DISTINCT unnest(masked_columns) ORDER BY 1),
            ARRAY(SELECT DISTINCT unnest(operations) ORDER BY 1));
    changed := rls_audit._apply_requests(tbl);
    -- Generated again whenever the table changed since (rls_audit.status shows it as missing triggers).
    IF changed OR NOT EXISTS (SELECT FROM rls_audit.captures k WHERE k.table_oid = tbl
                                 AND k.signature = rls_audit._capture_signature(tbl)) THEN
        PERFORM rls_audit._build_capture(tbl);
        changed := true;
    END IF;
    RETURN rls_audit._place_triggers(tbl) OR changed;
END
$$;
COMMENT ON FUNCTION rls_audit.enable(regclass, text[], text[], text[]) IS
'Audit a table (idempotent; call again to change the options, or after its columns changed). Excluded columns never reach the log; masked ones are logged as changed, without values. Only the table''s owner may call it.';

CREATE FUNCTION rls_audit.disable(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM rls_audit._check_owner(tbl, 'disable');
    IF NOT EXISTS (SELECT FROM rls_audit.audited_tables WHERE table_oid = tbl) THEN
        RETURN false;
    END IF;
    INSERT INTO rls_audit._requests (table_oid, action) VALUES (tbl, 'disable');
    PERFORM rls_audit._apply_requests(tbl);
    PERFORM rls_audit._place_triggers(tbl);
    PERFORM rls_audit._build_capture(tbl);
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls_audit.disable(regclass) IS
'Stop auditing a table; the trail stays. Only the table''s owner may call it.';

CREATE FUNCTION rls_audit.set_read_rule(tbl regclass, site_column name DEFAULT NULL,
                                        owner_column name DEFAULT NULL,
                                        null_is_shared boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM rls_audit._check_owner(tbl, 'set_read_rule');
    INSERT INTO rls_audit._requests (table_oid, action, site_column, owner_column, null_is_shared)
    VALUES (tbl, 'set_read_rule', set_read_rule.site_column, set_read_rule.owner_column, set_read_rule.null_is_shared);
    IF NOT rls_audit._apply_requests(tbl) THEN
        RETURN false;
    END IF;
    -- The rule is part of the capture's text.
    IF EXISTS (SELECT FROM rls_audit.audited_tables WHERE table_oid = tbl) THEN
        PERFORM rls_audit._build_capture(tbl);
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls_audit.set_read_rule(regclass, name, name, boolean) IS
'Which log entries of a table the application role reads: those of rows whose site_column and/or owner_column match its context (and, with null_is_shared, those of rows where that column is NULL). Without columns, none (the default). Entries keep the rule they were written with. Only the table''s owner may call it.';

-- How an entry names its table (rls_audit.log, sql/install/21_audit_view.sql):
-- by name when written, and by trail id for good.
COMMENT ON COLUMN rls_audit.log.table_name IS 'The schema-qualified table name when the entry was written.';
COMMENT ON COLUMN rls_audit.log.trail_id IS
'The table''s trail id (rls_audit.trails) when the entry was written: which table the entry is about, whatever it is called now. Readers are decided by it, never by table_name.';

CREATE FUNCTION rls_audit.history(tbl regclass, row_key text)
RETURNS SETOF rls_audit.log
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trails uuid[] := rls_audit._tree_trails(tbl);
    key text := row_key;
BEGIN
    -- The trail ids are a parameter here: a leakproof equality that reaches
    -- the (trail_id, logged_at) index behind the view's barrier.
    RETURN QUERY SELECT * FROM rls_audit.log l WHERE l.trail_id = ANY (trails) AND l.row_key = key ORDER BY l.id;
END
$$;
COMMENT ON FUNCTION rls_audit.history(regclass, text) IS
'Every logged change of one row, oldest first, as far as the caller''s row level security lets it see; under whatever name the table had when they were written.';

-- As in the C mode; a table whose capture was generated for other columns,
-- key, options or read rule has every operation listed as missing: its
-- audited writes are refused until rls_audit.enable() runs again.
CREATE VIEW rls_audit.status AS
SELECT t.table_oid::regclass AS table_name, t.operations, t.excluded_columns, t.masked_columns,
       ARRAY(SELECT op FROM unnest(t.operations) op
              WHERE NOT EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = t.table_oid
                                   AND g.tgname = 'rls_audit_' || lower(op)
                                   AND rls_audit._trigger_problem(g.oid) IS NULL)
                 OR NOT EXISTS (SELECT FROM rls_audit.captures k WHERE k.table_oid = t.table_oid
                                   AND k.signature = rls_audit._capture_signature(t.table_oid))) AS missing_triggers,
       ARRAY(SELECT i.inhparent::regclass FROM pg_inherits i WHERE i.inhrelid = t.table_oid
              ORDER BY i.inhseqno) AS audited_through,
       ARRAY(SELECT i.inhrelid::regclass FROM pg_inherits i WHERE i.inhparent = t.table_oid
                AND NOT EXISTS (SELECT FROM rls_audit.audited_tables a WHERE a.table_oid = i.inhrelid)
              ORDER BY i.inhrelid::regclass::text) AS unaudited_children
  FROM rls_audit.audited_tables t
 WHERE EXISTS (SELECT FROM pg_class c WHERE c.oid = t.table_oid);
COMMENT ON VIEW rls_audit.status IS
'Every audited table, its options, and any operation whose trigger is missing or not as rls_audit.enable() makes it; in the SQL-only mode also every operation of a table that changed since its capture was generated (its audited writes are refused until rls_audit.enable() runs again).';
GRANT SELECT ON rls_audit.status TO PUBLIC;
