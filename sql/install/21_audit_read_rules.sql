-------------------------------------------------------------------------------
-- The audit read rules, as both modes check and store them
--
-- Shared: the extension's install script includes this file and so does the
-- SQL-only mode (django_rls/sqlonly.py, SCRIPTS).  Each mode's
-- rls_audit.set_read_rule() calls it after its own ownership check and then
-- does what the changed rule needs in that mode: the C library's capture
-- rereads its cached rule (rls_audit._set_read_rule() in 22_audit_capture.sql),
-- the SQL-only mode generates the table's capture function again (its
-- 23_audit_admin.sql).
-------------------------------------------------------------------------------

-- Check a read rule for tbl and store it in rls_audit.read_rules (no columns:
-- remove it); false when the table already had that rule.  It runs as the
-- role calling, the owner of rls_audit.read_rules: the C mode's definer, and
-- django_rls_audit in the SQL-only mode (rls_audit._apply_requests(), carrying
-- out the request the table's owner made).
CREATE FUNCTION rls_audit._store_read_rule(tbl regclass, site_column name, owner_column name, null_is_shared boolean)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col name;
    typ oid;
    existing rls_audit.read_rules;
BEGIN
    -- A rule is a row of a dumped configuration table: only for tables a dump
    -- names as they are (never pg_temp_N) and that live on after the session.
    IF (SELECT relpersistence FROM pg_class WHERE oid = tbl) = 't' THEN
        RAISE EXCEPTION '% is a temporary table', tbl
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'A temporary table lives in one session only and is never audited.',
                  HINT = 'Set read rules on permanent tables only.';
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = tbl) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl
            USING ERRCODE = 'wrong_object_type', HINT = 'Set read rules on the audited tables.';
    END IF;
    FOREACH col IN ARRAY ARRAY[site_column, owner_column] LOOP
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
    IF null_is_shared AND site_column IS NOT NULL AND owner_column IS NOT NULL THEN
        RAISE EXCEPTION 'null_is_shared needs exactly one of site_column and owner_column'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Shared rows are those with no site, or with no owner.';
    END IF;

    -- Whether a rule is stored: FOUND, not `existing IS NOT NULL`, which is false for a
    -- rule with one column unset (a record is NOT NULL only when every field is).
    SELECT * INTO existing FROM rls_audit.read_rules r WHERE r.table_oid = tbl;
    IF site_column IS NULL AND owner_column IS NULL THEN
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        DELETE FROM rls_audit.read_rules r WHERE r.table_oid = tbl;
    ELSIF FOUND AND existing.site_column IS NOT DISTINCT FROM _store_read_rule.site_column
          AND existing.owner_column IS NOT DISTINCT FROM _store_read_rule.owner_column
          AND existing.null_is_shared = coalesce(_store_read_rule.null_is_shared, false) THEN
        RETURN false;
    ELSE
        INSERT INTO rls_audit.read_rules VALUES (tbl, site_column, owner_column, coalesce(null_is_shared, false))
            ON CONFLICT (table_oid) DO UPDATE
            SET site_column = EXCLUDED.site_column, owner_column = EXCLUDED.owner_column,
                null_is_shared = EXCLUDED.null_is_shared;
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls_audit._store_read_rule(regclass, name, name, boolean) IS
'Internal: check and store (or, without columns, remove) a table''s read rule; false when it was already so. Reached only through rls_audit.set_read_rule().';
