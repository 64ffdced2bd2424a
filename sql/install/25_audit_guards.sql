-------------------------------------------------------------------------------
-- Guard: audit triggers change only through rls_audit.enable() / disable()
-------------------------------------------------------------------------------

-- DDL that touched a table or a trigger.  For every table it touched, and the
-- partitions and children of those:
--  * a renamed excluded or masked column keeps its place in the registration;
--  * a new or attached partition or child of an audited table is audited with
--    its parent's options, and an audited table may not sit under a parent
--    that is not audited (rls_audit._sync_tree);
--  * every trigger that calls rls_audit.capture() or bears an audit trigger's
--    name is exactly the one rls_audit.enable() makes for a registered
--    operation (rls_audit._trigger_problem): same function, AFTER, FOR EACH
--    STATEMENT, same event, no WHEN, no columns, same transition tables,
--    ENABLE ALWAYS.  CREATE TRIGGER leaves a trigger ENABLE ORIGIN, also when
--    pg_restore or CREATE OR REPLACE makes an otherwise identical one: the
--    guard makes it ALWAYS at once;
--  * after ALTER TRIGGER (a rename), every registered operation still has its
--    trigger.  Missing triggers are not checked after other commands: pg_restore
--    creates the triggers one by one after the registrations, and the one
--    command that can remove a trigger, DROP, has its own guard below.
CREATE FUNCTION rls_audit._guard_ddl()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rels oid[];
    renamed record;
    dangling text[];
    trig record;
    missing record;
BEGIN
    -- Commands that create, change or comment on a policy, or grant, touch no trigger, no
    -- inheritance and no column's name (rls.protect() runs them by the dozen): nothing to look at.
    IF tg_tag IN ('CREATE POLICY', 'ALTER POLICY', 'COMMENT', 'GRANT', 'REVOKE') THEN
        RETURN;
    END IF;
    rels := ARRAY(SELECT DISTINCT r.relid
                    FROM pg_event_trigger_ddl_commands() c,
                         LATERAL (SELECT CASE WHEN c.classid = 'pg_class'::regclass THEN c.objid
                                              ELSE (SELECT tgrelid FROM pg_trigger WHERE oid = c.objid) END AS relid) r
                   WHERE c.classid IN ('pg_class'::regclass, 'pg_trigger'::regclass)
                     AND EXISTS (SELECT FROM pg_class WHERE oid = r.relid AND relkind IN ('r', 'p', 'f')));
    IF cardinality(rels) = 0 THEN
        RETURN;
    END IF;

    -- ALTER TABLE ... RENAME COLUMN reports the column: carry its old name's
    -- place in excluded_columns / masked_columns over to the new name.
    FOR renamed IN
        SELECT a.table_oid, att.attname::text AS new_name, a.excluded_columns, a.masked_columns
          FROM pg_event_trigger_ddl_commands() c
          JOIN rls_audit.audited_tables a ON a.table_oid = c.objid
          JOIN pg_attribute att ON att.attrelid = c.objid AND att.attnum = c.objsubid
         WHERE c.classid = 'pg_class'::regclass AND c.objsubid > 0 AND c.object_type = 'table column'
           AND att.attname::text <> ALL (a.excluded_columns || a.masked_columns)
    LOOP
        dangling := ARRAY(SELECT x FROM unnest(renamed.excluded_columns || renamed.masked_columns) x
                           WHERE NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = renamed.table_oid AND attname = x
                                                                        AND attnum > 0 AND NOT attisdropped));
        IF cardinality(dangling) = 1 THEN
            PERFORM rls_audit._register(renamed.table_oid,
                                        array_replace(renamed.excluded_columns, dangling[1], renamed.new_name),
                                        array_replace(renamed.masked_columns, dangling[1], renamed.new_name),
                                        (SELECT operations FROM rls_audit.audited_tables WHERE table_oid = renamed.table_oid));
        END IF;
    END LOOP;

    -- A table with no parent, no child and no trigger (rls_apply's ENABLE ROW LEVEL SECURITY
    -- and GRANT on a plain table) has no tree to sync and no trigger to check: both steps
    -- would find nothing, so they are not run (nor planned).
    IF EXISTS (SELECT FROM pg_inherits WHERE inhrelid = ANY (rels) OR inhparent = ANY (rels))
       OR EXISTS (SELECT FROM pg_trigger WHERE tgrelid = ANY (rels)) THEN
        PERFORM rls_audit._sync_tree(rels);

        FOR trig IN
            WITH RECURSIVE down(relid) AS (
                SELECT unnest(rels)
                UNION
                SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.relid
            )
            SELECT t.oid, t.tgrelid::regclass AS tbl, t.tgname, t.tgenabled, a.operations,
                   t.tgfoid = 'rls_audit.capture()'::regprocedure AS calls_capture,
                   upper(substr(t.tgname, 11)) AS op,
                   rls_audit._trigger_problem(t.oid) AS problem,
                   rls_audit._trigger_problem(t.oid, true) AS problem_but_enabled_state
              FROM down JOIN pg_trigger t ON t.tgrelid = down.relid
              LEFT JOIN rls_audit.audited_tables a ON a.table_oid = t.tgrelid
             WHERE t.tgfoid = 'rls_audit.capture()'::regprocedure
                OR (a.table_oid IS NOT NULL
                    AND t.tgname IN ('rls_audit_insert', 'rls_audit_update', 'rls_audit_delete', 'rls_audit_truncate'))
        LOOP
            IF trig.operations IS NULL AND rls._citus_shard_trigger(trig.tgname, trig.tbl) THEN
                -- Citus copies a table's triggers to its shards: the table is audited and being distributed.
                RAISE EXCEPTION '% is a shard of an audited table, and django_rls cannot audit a table of Citus', trig.tbl
                    USING ERRCODE = 'feature_not_supported',
                          DETAIL = format('Citus copied the audit trigger %s to the shard; writes there would be captured apart from the audit log of the coordinator.', trig.tgname),
                          HINT = 'Stop auditing the table (rls_audit.disable(), Django: audit=False) before Citus distributes it, or keep it out of Citus (docs/scale-out.md).';
            ELSIF trig.operations IS NULL THEN
                RAISE EXCEPTION 'trigger % of % calls rls_audit.capture(), but % is not audited', trig.tgname, trig.tbl, trig.tbl
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'Audit tables with rls_audit.enable(), which creates their triggers.';
            ELSIF trig.tgname NOT IN ('rls_audit_insert', 'rls_audit_update', 'rls_audit_delete', 'rls_audit_truncate')
                  OR trig.op <> ALL (trig.operations) THEN
                RAISE EXCEPTION 'trigger % of % is not an audit trigger rls_audit.enable() made', trig.tgname, trig.tbl
                    USING ERRCODE = 'insufficient_privilege',
                          DETAIL = format('%s is audited for %s; rls_audit.capture() runs only from the triggers rls_audit_<operation> of those.',
                                          trig.tbl, array_to_string(trig.operations, ', ')),
                          HINT = 'Audit triggers change only through rls_audit.enable() and rls_audit.disable(), which the table owner may call.';
            ELSIF trig.problem_but_enabled_state IS NULL AND trig.tgenabled = 'O' AND tg_tag = 'CREATE TRIGGER' THEN
                EXECUTE format('ALTER TABLE %I.%I ENABLE ALWAYS TRIGGER %I',
                               (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = trig.tbl),
                               (SELECT relname FROM pg_class WHERE oid = trig.tbl), trig.tgname);
            ELSIF trig.problem IS NOT NULL THEN
                RAISE EXCEPTION 'audit trigger % of % must stay as rls_audit.enable() made it', trig.tgname, trig.tbl
                    USING ERRCODE = 'insufficient_privilege',
                          DETAIL = format('After this command %s.', trig.problem),
                          HINT = 'Audit triggers change only through rls_audit.enable() and rls_audit.disable(), which the table owner may call.';
            END IF;
        END LOOP;
    END IF;

    IF tg_tag = 'ALTER TRIGGER' THEN
        SELECT a.table_oid AS tbl, op INTO missing
          FROM rls_audit.audited_tables a, unnest(a.operations) op
         WHERE a.table_oid = ANY (rels)
           AND NOT EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = a.table_oid AND g.tgname = 'rls_audit_' || lower(op))
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'the % audit trigger of % cannot be renamed while the table is audited', missing.op, missing.tbl
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Call rls_audit.disable() (as the table owner) to stop auditing the table.';
        END IF;
    END IF;
END
$$;
COMMENT ON FUNCTION rls_audit._guard_ddl() IS
'Internal: refuse DDL that changes an audit trigger in any way or hides a table under an unaudited parent; audit new partitions and children of audited tables; keep renamed excluded/masked columns registered.';

-- Anything dropped: an audited table that still exists must keep every audit trigger.
CREATE FUNCTION rls_audit._guard_drop()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad record;
BEGIN
    -- A dropped table takes its registration, its read rule and its trail id
    -- with it: none of them may stay behind as a bare oid that a restore, or
    -- the oid's reuse, would hand to another table.  Its entries stay in the
    -- log, read only by roles that bypass row level security.
    DELETE FROM rls_audit.audited_tables t WHERE NOT EXISTS (SELECT FROM pg_class WHERE oid = t.table_oid);
    DELETE FROM rls_audit.read_rules t WHERE NOT EXISTS (SELECT FROM pg_class WHERE oid = t.table_oid);
    DELETE FROM rls_audit.trails t WHERE NOT EXISTS (SELECT FROM pg_class WHERE oid = t.table_oid);
    -- A dropped column leaves excluded_columns and masked_columns, so that a new
    -- column of the same name later is not hidden by a stale entry.
    UPDATE rls_audit.audited_tables t
       SET excluded_columns = ARRAY(SELECT x FROM unnest(t.excluded_columns) x WHERE x <> ALL (d.names)),
           masked_columns = ARRAY(SELECT x FROM unnest(t.masked_columns) x WHERE x <> ALL (d.names))
      FROM (SELECT o.objid, array_agg(o.address_names[3]) AS names
              FROM pg_event_trigger_dropped_objects() o
             WHERE o.classid = 'pg_class'::regclass AND o.object_type = 'table column'
             GROUP BY o.objid) d
     WHERE t.table_oid = d.objid AND (t.excluded_columns && d.names OR t.masked_columns && d.names);
    SELECT t.table_oid AS tbl, op INTO bad
      FROM rls_audit.audited_tables t, unnest(t.operations) op
     WHERE NOT EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = t.table_oid AND g.tgname = 'rls_audit_' || lower(op))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the % audit trigger of % cannot be dropped while the table is audited', bad.op, bad.tbl
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Call rls_audit.disable() (as the table owner) to stop auditing the table.';
    END IF;
END
$$;
COMMENT ON FUNCTION rls_audit._guard_drop() IS
'Internal: refuse to drop the audit triggers of a table that is still audited; forget dropped tables (registration, read rule, trail id) and columns.';

-- Every command, not a list of tags: a relation can be created or attached
-- under many tags (CREATE SCHEMA ... CREATE TABLE ... PARTITION OF / INHERITS
-- reports CREATE SCHEMA; CREATE TABLE AS, SELECT INTO, IMPORT FOREIGN SCHEMA,
-- ALTER TABLE ... ATTACH PARTITION / INHERIT, ...).  The guard looks at the
-- tables and triggers each command reports, whatever its tag, and returns at
-- once when there are none.
CREATE EVENT TRIGGER rls_audit_guard ON ddl_command_end
    EXECUTE FUNCTION rls_audit._guard_ddl();
CREATE EVENT TRIGGER rls_audit_guard_drop ON sql_drop
    EXECUTE FUNCTION rls_audit._guard_drop();
-- ALWAYS, like the audit triggers: a role that was granted SET on
-- session_replication_role must not switch the guards off with replica mode.
ALTER EVENT TRIGGER rls_audit_guard ENABLE ALWAYS;
ALTER EVENT TRIGGER rls_audit_guard_drop ENABLE ALWAYS;

CREATE VIEW rls_audit.status AS
SELECT t.table_oid::regclass AS table_name, t.operations, t.excluded_columns, t.masked_columns,
       ARRAY(SELECT op FROM unnest(t.operations) op
              WHERE NOT EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = t.table_oid
                                   AND g.tgname = 'rls_audit_' || lower(op)
                                   AND rls_audit._trigger_problem(g.oid) IS NULL)) AS missing_triggers,
       ARRAY(SELECT i.inhparent::regclass FROM pg_inherits i WHERE i.inhrelid = t.table_oid
              ORDER BY i.inhseqno) AS audited_through,
       ARRAY(SELECT i.inhrelid::regclass FROM pg_inherits i WHERE i.inhparent = t.table_oid
                AND NOT EXISTS (SELECT FROM rls_audit.audited_tables a WHERE a.table_oid = i.inhrelid)
              ORDER BY i.inhrelid::regclass::text) AS unaudited_children
  FROM rls_audit.audited_tables t;
COMMENT ON VIEW rls_audit.status IS
'Every audited table, its options, any operation whose trigger is missing or not as rls_audit.enable() makes it, the parents whose auditing it follows (a partition or inheritance child), and any partition or child of it that is not audited (writes naming that child go unrecorded; the guard should never let one arise).';
GRANT SELECT ON rls_audit.status TO PUBLIC;
