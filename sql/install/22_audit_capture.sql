-------------------------------------------------------------------------------
-- Capture: the C trigger and the statement it runs per table and operation
-------------------------------------------------------------------------------

CREATE FUNCTION rls_audit.capture()
RETURNS trigger
AS 'MODULE_PATHNAME', 'rls_audit_capture'
LANGUAGE C SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION rls_audit.capture() IS
'The audit trigger: records a statement''s changed rows with the request context. Runs as the extension owner.';

-- The INSERT ... SELECT that records one statement's rows for a table and operation.
-- $1..$6 are bound by rls_audit.capture(): site_id, site_uuid, user_id, user_uuid, claims, db_role.
CREATE FUNCTION rls_audit._key_expr(pk text[], alias text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN cardinality(pk) = 1 THEN format('%I.%I::text', alias, pk[1])
                ELSE 'jsonb_build_object(' || (SELECT string_agg(format('%L, %I.%I', c, alias, c), ', ')
                                                 FROM unnest(pk) c) || ')::text' END
$$;
COMMENT ON FUNCTION rls_audit._key_expr(text[], text) IS
'Internal: a row''s primary key as text (a JSON object for composite keys).';

CREATE FUNCTION rls_audit._capture_sql(tbl regclass, op text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg rls_audit.audited_tables;
    pk text[];
    cols text[];
    logged text[];
    hidden text;
    head text;
    meta text;
    empty text := '''{}''::jsonb';
BEGIN
    SELECT * INTO cfg FROM rls_audit.audited_tables WHERE table_oid = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not audited', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Call rls_audit.enable() for the table, or drop the stray rls_audit trigger.';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY array_position(i.indkey, a.attnum)) INTO pk
      FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = tbl AND i.indisprimary;
    SELECT array_agg(attname::text ORDER BY attnum) INTO cols
      FROM pg_attribute WHERE attrelid = tbl AND attnum > 0 AND NOT attisdropped
       AND attname::text <> ALL (cfg.excluded_columns);
    logged := ARRAY(SELECT c FROM unnest(cols) c WHERE c <> ALL (cfg.masked_columns));
    -- Columns a row image leaves out: excluded and masked ones.
    hidden := CASE WHEN cardinality(cfg.excluded_columns || cfg.masked_columns) = 0 THEN ''
                   ELSE format(' - %L::text[]', cfg.excluded_columns || cfg.masked_columns) END;

    head := 'INSERT INTO rls_audit.log (table_oid, table_name, operation, row_key, old_values, new_values, '
            'changed_columns, site_id, site_uuid, user_id, user_uuid, claims, db_role, application_name, client_addr) ';
    meta := format('$1, $2, $3, $4, $5, $6, m.app, m.addr FROM (SELECT current_setting(%L, true) AS app, '
                   'inet_client_addr() AS addr) m', 'application_name');

    IF op = 'TRUNCATE' THEN
        RETURN head || format('SELECT %s, %L, %L, NULL, NULL, NULL, NULL, ', tbl::oid, tbl::text, op) || meta;
    END IF;
    IF op IN ('INSERT', 'DELETE') THEN
        RETURN head || format('SELECT %s, %L, %L, %s, %s, %s, NULL, ', tbl::oid, tbl::text, op,
                              rls_audit._key_expr(pk, 'r'),
                              CASE WHEN op = 'DELETE' THEN 'to_jsonb(r)' || hidden ELSE 'NULL' END,
                              CASE WHEN op = 'INSERT' THEN 'to_jsonb(r)' || hidden ELSE 'NULL' END)
               || meta || CASE WHEN op = 'INSERT' THEN ', new_rows r' ELSE ', old_rows r' END;
    END IF;

    -- UPDATE: pair old and new rows by primary key and keep only changed columns; a row whose
    -- key changed has no partner and is logged whole on each side.  Unchanged rows write nothing.
    RETURN head || format(
        'SELECT %s, %L, %L, CASE WHEN n.%I IS NULL THEN %s ELSE %s END, '
        'CASE WHEN o.%I IS NULL THEN NULL WHEN n.%I IS NULL THEN to_jsonb(o)%s ELSE d.old_values END, '
        'CASE WHEN n.%I IS NULL THEN NULL WHEN o.%I IS NULL THEN to_jsonb(n)%s ELSE d.new_values END, '
        'd.changed, ',
        tbl::oid, tbl::text, op, pk[1], rls_audit._key_expr(pk, 'o'), rls_audit._key_expr(pk, 'n'),
        pk[1], pk[1], hidden, pk[1], pk[1], hidden)
        || meta
        || ', new_rows n FULL JOIN old_rows o ON '
        || (SELECT string_agg(format('o.%1$I = n.%1$I', c), ' AND ') FROM unnest(pk) c)
        || ' CROSS JOIN LATERAL (SELECT '
        || coalesce((SELECT string_agg(format('CASE WHEN o.%1$I IS DISTINCT FROM n.%1$I '
                                              'THEN jsonb_build_object(%1$L, o.%1$I) ELSE %2$s END', c, empty), ' || ')
                       FROM unnest(logged) c), empty) || ' AS old_values, '
        || coalesce((SELECT string_agg(format('CASE WHEN o.%1$I IS DISTINCT FROM n.%1$I '
                                              'THEN jsonb_build_object(%1$L, n.%1$I) ELSE %2$s END', c, empty), ' || ')
                       FROM unnest(logged) c), empty) || ' AS new_values, '
        || 'array_remove(ARRAY['
        || (SELECT string_agg(format('CASE WHEN o.%1$I IS DISTINCT FROM n.%1$I THEN %1$L END', c), ', ') FROM unnest(cols) c)
        || ']::text[], NULL) AS changed) d WHERE n.' || quote_ident(pk[1]) || ' IS NULL OR o.' || quote_ident(pk[1])
        || ' IS NULL OR ('
        || (SELECT string_agg(format('o.%I', c), ', ') FROM unnest(cols) c) || ', NULL) IS DISTINCT FROM ('
        || (SELECT string_agg(format('n.%I', c), ', ') FROM unnest(cols) c) || ', NULL)';
END
$$;
COMMENT ON FUNCTION rls_audit._capture_sql(regclass, text) IS
'Internal: the INSERT ... SELECT rls_audit.capture() runs for a table and operation.';

CREATE FUNCTION rls_audit._invalidate(tbl regclass)
RETURNS void
AS 'MODULE_PATHNAME', 'rls_audit_invalidate'
LANGUAGE C STRICT;
COMMENT ON FUNCTION rls_audit._invalidate(regclass) IS
'Internal: make every backend rebuild its audit statements for a table (after its options changed).';
REVOKE ALL ON FUNCTION rls_audit._invalidate(regclass) FROM PUBLIC;

CREATE FUNCTION rls_audit._invoking_role()
RETURNS name
AS 'MODULE_PATHNAME', 'rls_audit_invoking_role'
LANGUAGE C STABLE;
COMMENT ON FUNCTION rls_audit._invoking_role() IS
'Internal: the role that called, even from inside a SECURITY DEFINER function.';

