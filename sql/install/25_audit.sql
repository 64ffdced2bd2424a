-------------------------------------------------------------------------------
-- The audit trail
--
-- rls_audit.log holds one row per changed table row, written by a C
-- statement-level trigger (rls_audit.capture) that reads the request context
-- and runs one set-based INSERT ... SELECT over the statement's transition
-- tables.  The SQL of that INSERT is generated per table and operation by
-- rls_audit._capture_sql() and cached as a prepared plan in each backend.
--
-- Only the extension owner (a superuser) owns and writes the log.  The
-- application role may read it, and row level security shows it only the
-- current site's rows.  An event trigger refuses to disable or drop an audit
-- trigger behind rls_audit.disable()'s back.
-------------------------------------------------------------------------------

CREATE SCHEMA rls_audit;
COMMENT ON SCHEMA rls_audit IS 'django_rls: the audit trail of row changes, with the request context that made them';
GRANT USAGE ON SCHEMA rls_audit TO PUBLIC;

CREATE TABLE rls_audit.log (
    id bigint GENERATED ALWAYS AS IDENTITY,
    logged_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    xact_started_at timestamptz NOT NULL DEFAULT transaction_timestamp(),
    xact_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    table_oid oid NOT NULL,
    table_name text NOT NULL,
    operation text NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
    row_key text,
    old_values jsonb,
    new_values jsonb,
    changed_columns text[],
    site_id bigint,
    site_uuid uuid,
    user_id bigint,
    user_uuid uuid,
    claims jsonb,
    db_role name NOT NULL,
    application_name text,
    client_addr inet
) PARTITION BY RANGE (logged_at);
COMMENT ON TABLE rls_audit.log IS
'One row per changed row of an audited table (or per TRUNCATE), with the django_rls context that changed it. Partitioned by month.';
COMMENT ON COLUMN rls_audit.log.row_key IS 'The primary key of the changed row as text; a JSON object of the columns for a composite key.';
COMMENT ON COLUMN rls_audit.log.old_values IS 'DELETE: the row; UPDATE: the changed columns before; without excluded and masked columns.';
COMMENT ON COLUMN rls_audit.log.new_values IS 'INSERT: the row; UPDATE: the changed columns after; without excluded and masked columns.';
COMMENT ON COLUMN rls_audit.log.changed_columns IS 'UPDATE: every changed column, masked ones included.';
COMMENT ON COLUMN rls_audit.log.table_name IS 'The schema-qualified table name; it survives a dump and restore, the oid does not.';
COMMENT ON COLUMN rls_audit.log.db_role IS 'The database role that ran the statement (outside any SECURITY DEFINER function).';

CREATE TABLE rls_audit.log_default PARTITION OF rls_audit.log DEFAULT;
COMMENT ON TABLE rls_audit.log_default IS 'Catches rows for months without a partition; rls_audit.ensure_partitions() creates those ahead of time.';

-- Indexes live on each partition, not on the partitioned parent: a parent index
-- would make ATTACH PARTITION create same-named partition indexes while
-- pg_restore replays a dump, and the restore would fail on the duplicates.
CREATE FUNCTION rls_audit._index_partition(part regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- history of a row; what a site did when; what a user did when; time ranges
    EXECUTE format('CREATE INDEX ON %s (table_name, row_key)', part);
    EXECUTE format('CREATE INDEX ON %s (site_id, logged_at) WHERE site_id IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (site_uuid, logged_at) WHERE site_uuid IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (user_id, logged_at) WHERE user_id IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (user_uuid, logged_at) WHERE user_uuid IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s USING brin (logged_at)', part);
END
$$;
COMMENT ON FUNCTION rls_audit._index_partition(regclass) IS
'Internal: the indexes every partition of rls_audit.log carries.';
REVOKE ALL ON FUNCTION rls_audit._index_partition(regclass) FROM PUBLIC;
SELECT rls_audit._index_partition('rls_audit.log_default');

-- Readers see only the current site's trail; nobody but the owner writes.
CREATE FUNCTION rls._site_id_lenient()
RETURNS bigint
AS 'MODULE_PATHNAME', 'rls_site_id_lenient'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls._site_id_lenient() IS
'Internal: rls.site_id(), but NULL (never an error) when the site is unset or a UUID.';
CREATE FUNCTION rls._site_uuid_lenient()
RETURNS uuid
AS 'MODULE_PATHNAME', 'rls_site_uuid_lenient'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls._site_uuid_lenient() IS
'Internal: rls.site_uuid(), but NULL (never an error) when the site is unset or an integer.';

ALTER TABLE rls_audit.log ENABLE ROW LEVEL SECURITY;
CREATE POLICY log_read ON rls_audit.log FOR SELECT TO PUBLIC
    USING (site_id = rls._site_id_lenient() OR site_uuid = rls._site_uuid_lenient());
REVOKE ALL ON rls_audit.log FROM PUBLIC;
GRANT SELECT ON rls_audit.log TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('rls_audit.log', '');
SELECT pg_catalog.pg_extension_config_dump('rls_audit.log_default', '');

CREATE TABLE rls_audit.audited_tables (
    table_oid regclass PRIMARY KEY,  -- regclass, not oid: a dump stores the name, so a restore finds the table
    excluded_columns text[] NOT NULL DEFAULT '{}',
    masked_columns text[] NOT NULL DEFAULT '{}',
    operations text[] NOT NULL DEFAULT '{INSERT,UPDATE,DELETE,TRUNCATE}'
);
COMMENT ON TABLE rls_audit.audited_tables IS 'Which tables are audited, and how (rls_audit.enable()).';
REVOKE ALL ON rls_audit.audited_tables FROM PUBLIC;
GRANT SELECT ON rls_audit.audited_tables TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('rls_audit.audited_tables', '');

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

-------------------------------------------------------------------------------
-- Retention: monthly partitions, created ahead and dropped whole
-------------------------------------------------------------------------------

CREATE FUNCTION rls_audit.ensure_partitions(months_ahead integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    month date;
    created integer := 0;
    name text;
BEGIN
    FOR month IN SELECT generate_series(date_trunc('month', now()), date_trunc('month', now()) + make_interval(months => months_ahead), '1 month')::date LOOP
        name := format('log_%s', to_char(month, 'YYYY_MM'));
        IF to_regclass(format('rls_audit.%I', name)) IS NULL THEN
            IF EXISTS (SELECT FROM rls_audit.log_default
                        WHERE logged_at >= month AND logged_at < month + interval '1 month') THEN
                -- Rows of this month already sit in the default partition: move them
                -- into a new table and attach that, since a new partition may not
                -- overlap rows of the default one.
                EXECUTE format('CREATE TABLE rls_audit.%I (LIKE rls_audit.log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
                EXECUTE format('WITH moved AS (DELETE FROM rls_audit.log_default WHERE logged_at >= %L AND logged_at < %L '
                               'RETURNING *) INSERT INTO rls_audit.%I SELECT * FROM moved',
                               month, month + interval '1 month', name);
                EXECUTE format('ALTER TABLE rls_audit.log ATTACH PARTITION rls_audit.%I FOR VALUES FROM (%L) TO (%L)',
                               name, month, month + interval '1 month');
            ELSE
                EXECUTE format('CREATE TABLE rls_audit.%I PARTITION OF rls_audit.log FOR VALUES FROM (%L) TO (%L)',
                               name, month, month + interval '1 month');
            END IF;
            PERFORM rls_audit._index_partition(format('rls_audit.%I', name)::regclass);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;
COMMENT ON FUNCTION rls_audit.ensure_partitions(integer) IS
'Create the monthly partitions of rls_audit.log up to months_ahead; run it from a scheduled job.';

CREATE FUNCTION rls_audit.drop_partitions_before(cutoff timestamptz)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'rls_audit.log'::regclass
           AND c.oid <> 'rls_audit.log_default'::regclass
    LOOP
        IF substring(part.bound FROM 'TO \(''([^'']+)''\)')::timestamptz <= cutoff THEN
            EXECUTE format('DROP TABLE %s', part.name);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;
COMMENT ON FUNCTION rls_audit.drop_partitions_before(timestamptz) IS
'Retention: drop every monthly partition whose rows are all older than cutoff. Never deletes single rows.';

-- Retention and partition upkeep are for an operator role: grant them explicitly.
REVOKE ALL ON FUNCTION rls_audit.ensure_partitions(integer), rls_audit.drop_partitions_before(timestamptz) FROM PUBLIC;

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
