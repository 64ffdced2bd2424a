-------------------------------------------------------------------------------
-- Capture: the C trigger, and the read rules it records with every entry
-------------------------------------------------------------------------------

-- Not SECURITY DEFINER: it reads the rows and builds their images with the
-- writer's rights, and switches to the log's owner only around its INSERT
-- into rls_audit.log, which runs nothing but built-in code (ext/audit.c).
-- While it runs, it also pins every setting that changes what a built-in
-- output function prints (extra_float_digits, DateStyle, IntervalStyle,
-- TimeZone, bytea_output, lc_monetary, xmlbinary, xmloption,
-- quote_all_identifiers), so that the row images and the UPDATE diff do not
-- depend on the writer's session.  It pins them in C, and only those that
-- differ: SET clauses for all of them would cost every audited statement
-- about ten microseconds.  It has no SET clause at all: it pins search_path
-- in C too, wherever a name could be resolved through it (ext/audit.c,
-- PinSearchPath()), since the clause alone cost an audited single-row
-- statement about 10,000 instructions.
CREATE FUNCTION rls_audit.capture()
RETURNS trigger
AS 'MODULE_PATHNAME', 'rls_audit_capture'
LANGUAGE C;
COMMENT ON FUNCTION rls_audit.capture() IS
'The audit trigger: records a statement''s changed rows with the context the statement started with. Only the insert into the log runs as the log''s owner.';
-- rls_audit.enable() creates the triggers; nobody else attaches this function.
REVOKE ALL ON FUNCTION rls_audit.capture() FROM PUBLIC;

-- The read rules (rls_audit.read_rules, made by 21_audit_base.sql) are dumped
-- with the database.
SELECT pg_catalog.pg_extension_config_dump('rls_audit.read_rules', '');

-- The work of rls_audit.set_read_rule(), which checks that the role calling
-- owns the table and is the only way here (see rls_audit.enable()).
CREATE FUNCTION rls_audit._set_read_rule(tbl regclass, site_column name, owner_column name, null_is_shared boolean)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
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

    SELECT * INTO existing FROM rls_audit.read_rules r WHERE r.table_oid = tbl;
    IF site_column IS NULL AND owner_column IS NULL THEN
        IF existing IS NULL THEN
            RETURN false;
        END IF;
        DELETE FROM rls_audit.read_rules r WHERE r.table_oid = tbl;
    ELSIF existing IS NOT NULL AND existing.site_column IS NOT DISTINCT FROM _set_read_rule.site_column
          AND existing.owner_column IS NOT DISTINCT FROM _set_read_rule.owner_column
          AND existing.null_is_shared = coalesce(_set_read_rule.null_is_shared, false) THEN
        RETURN false;
    ELSE
        INSERT INTO rls_audit.read_rules VALUES (tbl, site_column, owner_column, coalesce(null_is_shared, false))
            ON CONFLICT (table_oid) DO UPDATE
            SET site_column = EXCLUDED.site_column, owner_column = EXCLUDED.owner_column,
                null_is_shared = EXCLUDED.null_is_shared;
    END IF;
    PERFORM rls_audit._invalidate(tbl);
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls_audit._set_read_rule(regclass, name, name, boolean) IS
'Internal: the work of rls_audit.set_read_rule(), reached only through it.';
REVOKE ALL ON FUNCTION rls_audit._set_read_rule(regclass, name, name, boolean) FROM PUBLIC;

-- Not SECURITY DEFINER: the C function checks that the role calling it (in
-- another role's SECURITY DEFINER function, that role) owns the table, then
-- runs rls_audit._set_read_rule() (ext/audit.c, rls_audit_admin).
CREATE FUNCTION rls_audit.set_read_rule(tbl regclass, site_column name DEFAULT NULL,
                                        owner_column name DEFAULT NULL,
                                        null_is_shared boolean DEFAULT false)
RETURNS boolean
AS 'MODULE_PATHNAME', 'rls_audit_admin'
LANGUAGE C;
COMMENT ON FUNCTION rls_audit.set_read_rule(regclass, name, name, boolean) IS
'Which log entries of a table the application role reads: those of rows whose site_column and/or owner_column match its context (and, with null_is_shared, those of rows where that column is NULL). Without columns, none (the default). Entries keep the rule they were written with. Only the table''s owner may call it.';

CREATE FUNCTION rls_audit._invalidate(tbl regclass)
RETURNS void
AS 'MODULE_PATHNAME', 'rls_audit_invalidate'
LANGUAGE C STRICT;
COMMENT ON FUNCTION rls_audit._invalidate(regclass) IS
'Internal: make every backend reload its description of an audited table (after its options changed).';
REVOKE ALL ON FUNCTION rls_audit._invalidate(regclass) FROM PUBLIC;
