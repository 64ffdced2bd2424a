-------------------------------------------------------------------------------
-- Administration: which tables are audited, and reading one row's history
--
-- A statement-level trigger fires only on the table the statement names: a
-- write through a partitioned or inheritance parent fires the parent's
-- triggers, never those of the partition or child whose rows it changes.  So
-- auditing is per tree: every ancestor of an audited table is audited too
-- (enable() refuses a table whose parent is not), and every descendant of an
-- audited table is audited with its parent's options (enable() and the guard
-- event trigger in 25_audit_guards.sql place them).  A write is recorded once,
-- by the triggers of the table the statement named.
--
-- Every function here that runs DDL builds it from catalog names quoted with
-- %I, never from caller text, and runs nothing the table owner can define:
-- CREATE/DROP TRIGGER and ALTER TABLE ... ENABLE ALWAYS TRIGGER evaluate no
-- expression of the table and fire only event triggers, which only superusers
-- create.
-------------------------------------------------------------------------------

-- The trigger rls_audit.enable() makes for an operation, as it must stay.
CREATE FUNCTION rls_audit._trigger_problem(trigger_oid oid, any_enabled_state boolean DEFAULT false)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN op IS NULL THEN format('it is not one of rls_audit_insert, rls_audit_update, rls_audit_delete, rls_audit_truncate')
        WHEN t.tgfoid <> 'rls_audit.capture()'::regprocedure THEN format('it calls %s instead of rls_audit.capture()', t.tgfoid::regprocedure)
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
'Internal: NULL when an audit trigger is exactly as rls_audit.enable() makes it (function, timing, events, level, WHEN, columns, transition tables, ENABLE ALWAYS unless any_enabled_state), else what differs.';

-- The checks a table must pass to be audited, for enable() and for the
-- partitions and children the guard audits on its own.
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
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = CASE rel.relkind WHEN 'f' THEN 'Triggers on foreign tables cannot have the transition tables the audit trail reads.'
                                            ELSE 'Only ordinary and partitioned tables can be audited.' END,
                  HINT = 'Audit the tables that hold the rows (a view''s base tables, the partitioned table).';
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
'Internal: refuse what cannot be audited: tables of Citus, other relation kinds, temporary tables, tables without a primary key.';
REVOKE ALL ON FUNCTION rls_audit._check_auditable(regclass) FROM PUBLIC;

-- Create the triggers of the registered operations that are missing (or
-- replace one a superuser changed), make them ENABLE ALWAYS, and drop those of
-- operations no longer registered.
CREATE FUNCTION rls_audit._place_triggers(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target text := (SELECT format('%I.%I', n.nspname, c.relname)
                      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl);
    ops text[] := (SELECT operations FROM rls_audit.audited_tables WHERE table_oid = tbl);
    op text;
    trig name;
    changed boolean := false;
BEGIN
    FOREACH op IN ARRAY coalesce(ops, '{}') LOOP
        trig := 'rls_audit_' || lower(op);
        -- Missing, or changed by a superuser: (re)create it as it must be.
        IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = trig
                                                AND rls_audit._trigger_problem(oid, true) IS NULL) THEN
            EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()',
                           trig, op, target,
                           CASE op WHEN 'INSERT' THEN 'REFERENCING NEW TABLE AS new_rows'
                                   WHEN 'UPDATE' THEN 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows'
                                   WHEN 'DELETE' THEN 'REFERENCING OLD TABLE AS old_rows'
                                   ELSE '' END);
            changed := true;
        END IF;
        -- ALWAYS: the trigger fires even with session_replication_role = replica.
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
'Internal: make a table''s audit triggers match its registration in rls_audit.audited_tables.';
REVOKE ALL ON FUNCTION rls_audit._place_triggers(regclass) FROM PUBLIC;

-- Register a table with these options (sorted, without duplicates); true if that changed anything.
CREATE FUNCTION rls_audit._register(tbl regclass, excluded_columns text[], masked_columns text[], operations text[])
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted rls_audit.audited_tables;
    existing rls_audit.audited_tables;
BEGIN
    wanted := ROW(tbl, ARRAY(SELECT DISTINCT unnest(excluded_columns) ORDER BY 1),
                  ARRAY(SELECT DISTINCT unnest(masked_columns) ORDER BY 1),
                  ARRAY(SELECT DISTINCT unnest(operations) ORDER BY 1));
    SELECT * INTO existing FROM rls_audit.audited_tables WHERE table_oid = tbl;
    IF FOUND AND existing IS NOT DISTINCT FROM wanted THEN
        RETURN false;
    END IF;
    INSERT INTO rls_audit.audited_tables VALUES (wanted.*)
        ON CONFLICT (table_oid) DO UPDATE
        SET excluded_columns = EXCLUDED.excluded_columns, masked_columns = EXCLUDED.masked_columns,
            operations = EXCLUDED.operations;
    -- The table's identity in the trail, made once and kept while it exists.
    INSERT INTO rls_audit.trails (table_oid) VALUES (tbl) ON CONFLICT (table_oid) DO NOTHING;
    PERFORM rls_audit._invalidate(tbl);
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls_audit._register(regclass, text[], text[], text[]) IS
'Internal: record a table''s audit options; true if they changed.';
REVOKE ALL ON FUNCTION rls_audit._register(regclass, text[], text[], text[]) FROM PUBLIC;

-- Audit each of the given tables that has an audited parent, and every
-- partition and inheritance child below them, with the options of its audited
-- parents (the union of them all, should it have several), and refuse an
-- audited table among them with a parent that is not audited.  Called by enable() and by the guard after DDL that can
-- change a tree (CREATE TABLE ... PARTITION OF / INHERITS, ATTACH PARTITION,
-- INHERIT).  A child already registered with the right options is left alone
-- even if triggers are missing: pg_restore creates them after the
-- registrations, and the guards check the triggers themselves.
CREATE FUNCTION rls_audit._sync_tree(rels oid[])
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    member record;
    wanted record;
    bad record;
    changed boolean := false;
BEGIN
    FOR member IN
        WITH RECURSIVE down(relid, depth) AS (
            SELECT unnest(rels), 0
            UNION ALL
            SELECT i.inhrelid, down.depth + 1 FROM pg_inherits i JOIN down ON i.inhparent = down.relid
             WHERE down.depth < 1000
        )
        SELECT relid, max(depth) AS depth FROM down GROUP BY relid ORDER BY max(depth), relid
    LOOP
        -- Parents come first, so a parent's options are final when its children are read.
        IF NOT EXISTS (SELECT FROM pg_inherits i JOIN rls_audit.audited_tables a ON a.table_oid = i.inhparent
                        WHERE i.inhrelid = member.relid) THEN
            CONTINUE;
        END IF;
        SELECT ARRAY(SELECT DISTINCT x FROM rls_audit.audited_tables a JOIN pg_inherits i ON a.table_oid = i.inhparent,
                                          unnest(a.excluded_columns) x WHERE i.inhrelid = member.relid ORDER BY 1) AS excluded,
               ARRAY(SELECT DISTINCT x FROM rls_audit.audited_tables a JOIN pg_inherits i ON a.table_oid = i.inhparent,
                                          unnest(a.masked_columns) x WHERE i.inhrelid = member.relid ORDER BY 1) AS masked,
               ARRAY(SELECT DISTINCT x FROM rls_audit.audited_tables a JOIN pg_inherits i ON a.table_oid = i.inhparent,
                                          unnest(a.operations) x WHERE i.inhrelid = member.relid ORDER BY 1) AS operations
          INTO wanted;
        IF NOT EXISTS (SELECT FROM rls_audit.audited_tables a WHERE a.table_oid = member.relid
                          AND a.excluded_columns = wanted.excluded AND a.masked_columns = wanted.masked
                          AND a.operations = wanted.operations) THEN
            PERFORM rls_audit._check_auditable(member.relid::regclass);
            PERFORM rls_audit._register(member.relid::regclass, wanted.excluded, wanted.masked, wanted.operations);
            PERFORM rls_audit._place_triggers(member.relid::regclass);
            changed := true;
        END IF;
    END LOOP;

    WITH RECURSIVE down(relid) AS (
        SELECT unnest(rels)
        UNION
        SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.relid
    )
    SELECT i.inhrelid::regclass AS child, i.inhparent::regclass AS parent INTO bad
      FROM down JOIN pg_inherits i ON i.inhrelid = down.relid
     WHERE EXISTS (SELECT FROM rls_audit.audited_tables a WHERE a.table_oid = i.inhrelid)
       AND NOT EXISTS (SELECT FROM rls_audit.audited_tables a WHERE a.table_oid = i.inhparent)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audited table % cannot be a partition or child of % unless % is audited too', bad.child, bad.parent, bad.parent
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Writes through a parent fire only the parent''s triggers, so they would go unrecorded.',
                  HINT = format('Audit the parent first: SELECT rls_audit.enable(%L); it audits its partitions and children too.', bad.parent);
    END IF;
    RETURN changed;
END
$$;
COMMENT ON FUNCTION rls_audit._sync_tree(oid[]) IS
'Internal: audit the partitions and children of audited tables with their parents'' options; refuse an audited table under a parent that is not audited.';
REVOKE ALL ON FUNCTION rls_audit._sync_tree(oid[]) FROM PUBLIC;

-- rls_audit.enable(), disable() and set_read_rule() are C functions, not
-- SECURITY DEFINER: they check that the role calling them owns the table --
-- GetUserId() at the point of call, which inside another role's SECURITY
-- DEFINER function (or trigger function) is that function's owner, never the
-- session's role -- and then run the SECURITY DEFINER function of the same
-- name with a leading underscore.  Those are revoked from PUBLIC, so that SQL
-- cannot reach them around the check (ext/audit.c, rls_audit_admin).
CREATE FUNCTION rls_audit._enable(tbl regclass, excluded_columns text[], masked_columns text[], operations text[])
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    unknown text[];
    parents text;
    current rls_audit.audited_tables;
    changed boolean;
BEGIN
    PERFORM rls_audit._check_auditable(tbl);
    unknown := ARRAY(SELECT c FROM unnest(excluded_columns || masked_columns) c
                      WHERE NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = tbl AND attname = c
                                                                   AND attnum > 0 AND NOT attisdropped));
    IF cardinality(unknown) > 0 THEN
        RAISE EXCEPTION '% has no column(s) %', tbl, unknown
            USING ERRCODE = 'undefined_column', HINT = 'Name existing columns in excluded_columns and masked_columns.';
    END IF;
    IF EXISTS (SELECT FROM unnest(excluded_columns || masked_columns) c
                WHERE c IN (SELECT a.attname FROM pg_index i JOIN pg_attribute a
                              ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                             WHERE i.indrelid = tbl AND i.indisprimary)) THEN
        RAISE EXCEPTION 'the primary key of % cannot be excluded or masked', tbl
            USING ERRCODE = 'invalid_parameter_value', HINT = 'The trail needs the key to tell rows apart.';
    END IF;
    IF operations IS NULL OR cardinality(operations) = 0
       OR EXISTS (SELECT FROM unnest(operations) o WHERE o IS NULL OR o NOT IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')) THEN
        RAISE EXCEPTION 'invalid audit operations %', operations
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a subset of INSERT, UPDATE, DELETE, TRUNCATE.';
    END IF;

    -- A partition or inheritance child is audited through its parents, with their options.
    parents := (SELECT string_agg(inhparent::regclass::text, ', ' ORDER BY inhseqno) FROM pg_inherits WHERE inhrelid = tbl);
    IF parents IS NOT NULL THEN
        IF EXISTS (SELECT FROM pg_inherits i WHERE i.inhrelid = tbl
                      AND NOT EXISTS (SELECT FROM rls_audit.audited_tables a WHERE a.table_oid = i.inhparent)) THEN
            RAISE EXCEPTION '% is a partition or child of %, which is not audited', tbl, parents
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'Writes through a parent fire only the parent''s triggers, so they would go unrecorded.',
                      HINT = 'Audit the topmost parent instead; it audits its partitions and children too.';
        END IF;
        SELECT * INTO current FROM rls_audit.audited_tables WHERE table_oid = tbl;
        IF NOT FOUND
           OR current.excluded_columns <> ARRAY(SELECT DISTINCT unnest(excluded_columns) ORDER BY 1)
           OR current.masked_columns <> ARRAY(SELECT DISTINCT unnest(masked_columns) ORDER BY 1)
           OR current.operations <> ARRAY(SELECT DISTINCT unnest(operations) ORDER BY 1) THEN
            RAISE EXCEPTION '% is audited with the options of its parent %', tbl, parents
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Change the options on the topmost parent; its partitions and children follow.';
        END IF;
        -- Same options: only put back triggers that are missing.
        RETURN rls_audit._place_triggers(tbl);
    END IF;

    -- Registration first, so the guard sees the new triggers as expected, then
    -- the triggers (stale ones dropped last), then the partitions and children.
    changed := rls_audit._register(tbl, excluded_columns, masked_columns, operations);
    changed := rls_audit._place_triggers(tbl) OR changed;
    changed := rls_audit._sync_tree(ARRAY[tbl::oid]) OR changed;
    RETURN changed;
END
$$;
COMMENT ON FUNCTION rls_audit._enable(regclass, text[], text[], text[]) IS
'Internal: the work of rls_audit.enable(), reached only through it.';
REVOKE ALL ON FUNCTION rls_audit._enable(regclass, text[], text[], text[]) FROM PUBLIC;

CREATE FUNCTION rls_audit.enable(tbl regclass,
                                 excluded_columns text[] DEFAULT '{}',
                                 masked_columns text[] DEFAULT '{}',
                                 operations text[] DEFAULT '{INSERT,UPDATE,DELETE,TRUNCATE}')
RETURNS boolean
AS 'MODULE_PATHNAME', 'rls_audit_admin'
LANGUAGE C;
COMMENT ON FUNCTION rls_audit.enable(regclass, text[], text[], text[]) IS
'Audit a table, and every partition and inheritance child of it (idempotent; call again to change the options). Excluded columns never reach the log; masked ones are logged as changed, without values. Only the table''s owner may call it.';

CREATE FUNCTION rls_audit._disable(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    member record;
    parents text;
BEGIN
    IF NOT EXISTS (SELECT FROM rls_audit.audited_tables WHERE table_oid = tbl) THEN
        RETURN false;
    END IF;
    parents := (SELECT string_agg(a.table_oid::text, ', ') FROM pg_inherits i
                  JOIN rls_audit.audited_tables a ON a.table_oid = i.inhparent WHERE i.inhrelid = tbl);
    IF parents IS NOT NULL THEN
        RAISE EXCEPTION '% is audited because its parent % is', tbl, parents
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Stop auditing the topmost parent, or detach the table from its parent first.';
    END IF;
    -- The table, then each partition or child none of whose parents is audited any more.
    FOR member IN
        WITH RECURSIVE down(relid, depth) AS (
            SELECT tbl::oid, 0
            UNION ALL
            SELECT i.inhrelid, down.depth + 1 FROM pg_inherits i JOIN down ON i.inhparent = down.relid
             WHERE down.depth < 1000
        )
        SELECT relid FROM down GROUP BY relid ORDER BY max(depth), relid
    LOOP
        IF member.relid = tbl
           OR NOT EXISTS (SELECT FROM pg_inherits i JOIN rls_audit.audited_tables a ON a.table_oid = i.inhparent
                           WHERE i.inhrelid = member.relid) THEN
            DELETE FROM rls_audit.audited_tables WHERE table_oid = member.relid;
            PERFORM rls_audit._place_triggers(member.relid::regclass);
            PERFORM rls_audit._invalidate(member.relid::regclass);
        END IF;
    END LOOP;
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls_audit._disable(regclass) IS
'Internal: the work of rls_audit.disable(), reached only through it.';
REVOKE ALL ON FUNCTION rls_audit._disable(regclass) FROM PUBLIC;

CREATE FUNCTION rls_audit.disable(tbl regclass)
RETURNS boolean
AS 'MODULE_PATHNAME', 'rls_audit_admin'
LANGUAGE C;
COMMENT ON FUNCTION rls_audit.disable(regclass) IS
'Stop auditing a table and the partitions and children audited through it; the trail stays. Only the table''s owner may call it.';

-- How an entry names its table (rls_audit.log, 21_audit_view.sql): by name
-- when written, and by trail id for good.
COMMENT ON COLUMN rls_audit.log.table_name IS 'The schema-qualified table name when the entry was written; it survives a dump and restore, the oid does not.';
COMMENT ON COLUMN rls_audit.log.trail_id IS
'The table''s trail id (rls_audit.trails) when the entry was written: which table the entry is about, whatever it is called or whatever oid it has now. Readers are decided by it, never by table_name.';

CREATE FUNCTION rls_audit.history(tbl regclass, row_key text)
RETURNS SETOF rls_audit.log
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- A primary key is unique across a partition tree, and a write is recorded
    -- under the table its statement named: read the whole tree.  Entries are
    -- found by the tables' trail ids, so they follow a renamed table.
    -- The statement rows holding the key are found by the row key index
    -- (rls_audit.statements_of(), over the whole partition tree and by trail
    -- id), then only their entries are unnested.
    SELECT * FROM rls_audit.log l
     WHERE l.statement_id = ANY (rls_audit.statements_of(history.tbl, history.row_key))
       AND l.row_key = history.row_key
     ORDER BY l.id
$$;
COMMENT ON FUNCTION rls_audit.history(regclass, text) IS
'Every logged change of one row, oldest first, as far as the caller''s row level security lets it see; for a partitioned table, whichever table of its partition tree the writes named; under whatever name the table had when they were written.';
