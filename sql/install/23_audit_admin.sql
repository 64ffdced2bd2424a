-------------------------------------------------------------------------------
-- Administration: which tables are audited, and reading one row's history
-------------------------------------------------------------------------------

CREATE FUNCTION rls_audit.enable(tbl regclass,
                                 excluded_columns text[] DEFAULT '{}',
                                 masked_columns text[] DEFAULT '{}',
                                 operations text[] DEFAULT '{INSERT,UPDATE,DELETE,TRUNCATE}')
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    caller name := rls_audit._invoking_role();
    wanted rls_audit.audited_tables;
    existing rls_audit.audited_tables;
    unknown text[];
    op text;
    changed boolean := false;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_class WHERE oid = tbl AND relkind = 'r') THEN
        RAISE EXCEPTION '% is not an ordinary table', tbl
            USING ERRCODE = 'wrong_object_type', HINT = 'Audit the tables themselves, not views or partitioned parents.';
    END IF;
    IF NOT pg_has_role(caller, (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'permission denied to audit %', tbl
            USING ERRCODE = 'insufficient_privilege', HINT = 'Only the table''s owner can change its auditing.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_index WHERE indrelid = tbl AND indisprimary) THEN
        RAISE EXCEPTION '% has no primary key', tbl
            USING ERRCODE = 'invalid_table_definition',
                  HINT = 'The audit trail identifies rows by primary key; add one first.';
    END IF;
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
       OR EXISTS (SELECT FROM unnest(operations) o WHERE o NOT IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')) THEN
        RAISE EXCEPTION 'invalid audit operations %', operations
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a subset of INSERT, UPDATE, DELETE, TRUNCATE.';
    END IF;

    wanted := ROW(tbl, ARRAY(SELECT DISTINCT unnest(excluded_columns) ORDER BY 1),
                  ARRAY(SELECT DISTINCT unnest(masked_columns) ORDER BY 1),
                  ARRAY(SELECT DISTINCT unnest(operations) ORDER BY 1));

    -- New triggers first, the registration next, stale triggers last: the guard
    -- event trigger checks that every registered operation has its trigger.
    FOREACH op IN ARRAY wanted.operations LOOP
        IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'rls_audit_' || lower(op)) THEN
            EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()',
                           'rls_audit_' || lower(op), op, tbl,
                           CASE op WHEN 'INSERT' THEN 'REFERENCING NEW TABLE AS new_rows'
                                   WHEN 'UPDATE' THEN 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows'
                                   WHEN 'DELETE' THEN 'REFERENCING OLD TABLE AS old_rows'
                                   ELSE '' END);
            -- ALWAYS: the trigger fires even with session_replication_role = replica.
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', tbl, 'rls_audit_' || lower(op));
            changed := true;
        END IF;
    END LOOP;

    SELECT * INTO existing FROM rls_audit.audited_tables WHERE table_oid = tbl;
    IF NOT FOUND OR existing IS DISTINCT FROM wanted THEN
        INSERT INTO rls_audit.audited_tables VALUES (wanted.*)
            ON CONFLICT (table_oid) DO UPDATE
            SET excluded_columns = EXCLUDED.excluded_columns, masked_columns = EXCLUDED.masked_columns,
                operations = EXCLUDED.operations;
        PERFORM rls_audit._invalidate(tbl);
        changed := true;
    END IF;

    FOREACH op IN ARRAY ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'] LOOP
        IF op <> ALL (wanted.operations)
           AND EXISTS (SELECT FROM pg_trigger WHERE tgrelid = tbl AND tgname = 'rls_audit_' || lower(op)) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', 'rls_audit_' || lower(op), tbl);
            changed := true;
        END IF;
    END LOOP;
    RETURN changed;
END
$$;
COMMENT ON FUNCTION rls_audit.enable(regclass, text[], text[], text[]) IS
'Audit a table (idempotent; call again to change the options). Excluded columns never reach the log; masked ones are logged as changed, without values. Only the table''s owner may call it.';

CREATE FUNCTION rls_audit.disable(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    trig name;
BEGIN
    IF NOT pg_has_role(rls_audit._invoking_role(), (SELECT relowner FROM pg_class WHERE oid = tbl), 'USAGE') THEN
        RAISE EXCEPTION 'permission denied to audit %', tbl
            USING ERRCODE = 'insufficient_privilege', HINT = 'Only the table''s owner can change its auditing.';
    END IF;
    DELETE FROM rls_audit.audited_tables WHERE table_oid = tbl;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    FOR trig IN SELECT tgname FROM pg_trigger WHERE tgrelid = tbl AND tgname LIKE 'rls\_audit\_%' LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trig, tbl);
    END LOOP;
    PERFORM rls_audit._invalidate(tbl);
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls_audit.disable(regclass) IS
'Stop auditing a table; its trail stays. Only the table''s owner may call it.';

CREATE FUNCTION rls_audit.table_name(tbl regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT tbl::text $$;
COMMENT ON FUNCTION rls_audit.table_name(regclass) IS
'A table''s name as rls_audit.log.table_name records it (always schema-qualified).';

CREATE FUNCTION rls_audit.history(tbl regclass, row_key text)
RETURNS SETOF rls_audit.log
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM rls_audit.log l
     WHERE l.table_name = tbl::text AND l.row_key = history.row_key
     ORDER BY l.id
$$;
COMMENT ON FUNCTION rls_audit.history(regclass, text) IS
'Every logged change of one row, oldest first, as far as the caller''s row level security lets it see.';

