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
BEGIN
    IF NOT rls_audit._store_read_rule(tbl, site_column, owner_column, null_is_shared) THEN
        RETURN false;
    END IF;
    PERFORM rls_audit._invalidate(tbl);
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls_audit._set_read_rule(regclass, name, name, boolean) IS
'Internal: the work of rls_audit.set_read_rule(), reached only through it.';
REVOKE ALL ON FUNCTION rls_audit._set_read_rule(regclass, name, name, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION rls_audit._store_read_rule(regclass, name, name, boolean) FROM PUBLIC;

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
