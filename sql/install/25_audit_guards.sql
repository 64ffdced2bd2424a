-------------------------------------------------------------------------------
-- Guard: audit triggers change only through rls_audit.enable() / disable()
-------------------------------------------------------------------------------

-- DDL that touched a table or trigger: its audit triggers must still be enabled
-- ALWAYS and call rls_audit.capture().  Missing triggers are not checked here,
-- because pg_restore creates triggers after the registrations.
CREATE FUNCTION rls_audit._guard_ddl()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad record;
BEGIN
    SELECT g.tgrelid::regclass AS tbl, g.tgname INTO bad
      FROM pg_event_trigger_ddl_commands() c
      JOIN pg_trigger g ON (c.classid = 'pg_class'::regclass AND g.tgrelid = c.objid)
                        OR (c.classid = 'pg_trigger'::regclass AND g.oid = c.objid)
      JOIN rls_audit.audited_tables a ON a.table_oid = g.tgrelid
     WHERE g.tgname LIKE 'rls\_audit\_%'
       AND (g.tgfoid <> 'rls_audit.capture'::regproc
            -- a new trigger starts as ENABLE ORIGIN; pg_restore makes it ALWAYS right after
            OR (g.tgenabled <> 'A' AND c.command_tag = 'ALTER TABLE'))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audit trigger % of % must stay as rls_audit.enable() made it', bad.tgname, bad.tbl
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Audit triggers change only through rls_audit.enable() and rls_audit.disable(), which the table owner may call.';
    END IF;
END
$$;
COMMENT ON FUNCTION rls_audit._guard_ddl() IS
'Internal: refuse DDL that disables an audit trigger or points it at another function.';

-- Anything dropped: an audited table that still exists must keep every audit trigger.
CREATE FUNCTION rls_audit._guard_drop()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad record;
BEGIN
    -- A dropped table takes its registration with it.
    DELETE FROM rls_audit.audited_tables t WHERE NOT EXISTS (SELECT FROM pg_class WHERE oid = t.table_oid);
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
'Internal: refuse to drop the audit triggers of a table that is still audited.';

CREATE EVENT TRIGGER rls_audit_guard ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TRIGGER')
    EXECUTE FUNCTION rls_audit._guard_ddl();
CREATE EVENT TRIGGER rls_audit_guard_drop ON sql_drop
    EXECUTE FUNCTION rls_audit._guard_drop();

CREATE VIEW rls_audit.status AS
SELECT t.table_oid::regclass AS table_name, t.operations, t.excluded_columns, t.masked_columns,
       ARRAY(SELECT op FROM unnest(t.operations) op
              WHERE NOT EXISTS (SELECT FROM pg_trigger g WHERE g.tgrelid = t.table_oid
                                   AND g.tgname = 'rls_audit_' || lower(op) AND g.tgenabled = 'A'
                                   AND g.tgfoid = 'rls_audit.capture'::regproc)) AS missing_triggers
  FROM rls_audit.audited_tables t;
COMMENT ON VIEW rls_audit.status IS 'Every audited table, its options, and any operation whose trigger is missing.';
GRANT SELECT ON rls_audit.status TO PUBLIC;
