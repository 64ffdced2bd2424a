/*
 * sql/sqlonly/22_audit_capture.sql
 *     The capture of the SQL-only mode: a statement-level AFTER trigger per
 *     operation, reading the statement's transition tables, writing the same
 *     statement rows as the C capture (ext/audit.c).
 *
 * The trigger function must write the log, which its writer may not, so it
 * runs as the log's owner: SECURITY DEFINER, owned by the NOLOGIN role
 * django_rls_audit.  Code running with those rights must run nothing a
 * non-superuser can define.  So rls_audit.enable() generates one function per
 * table (rls_audit._build_capture) whose text names each column and converts
 * it with built-in code only:
 *
 *   - a value is printed by format('%s', col), which calls its type's output
 *     function directly (a base type's output function is C, and only a
 *     superuser creates base types; a domain's is its base type's; arrays,
 *     ranges, enums and composites print through their elements' output
 *     functions), never a cast: to_jsonb(), row_to_json() and ::text would
 *     use a cast to json or text that a type's owner may have created;
 *   - the types the C capture maps to JSON (boolean, integers, floats,
 *     numeric, date and time types, json, jsonb; a domain by its base type)
 *     are first relabelled to that built-in base type, then converted by
 *     to_jsonb(), which for built-in types consults no cast;
 *   - rows are compared by their printed text, never by a type's operators,
 *     and COLLATE "C" (byte by byte): format() takes its argument's collation,
 *     and under a nondeterministic one 'alice' and 'ALICE' compare equal, so
 *     an UPDATE changing only the case would go unrecorded;
 *     UPDATE pairs old and new rows by their position in the transition
 *     tables, as the C capture does;
 *   - jit is off for it: its statements' estimates (transition tables, the
 *     unnested read keys) reach JIT's cost thresholds, and compiling their
 *     many expressions cost a 10,000-row UPDATE seconds;
 *   - every function and operator is resolved with search_path pinned to
 *     pg_catalog (pg_temp is never searched for functions or operators);
 *     transition tables are ephemeral relations (no policy, rule or trigger
 *     of the table applies to reading them); the log is owned by
 *     django_rls_audit, which only the installing role is a member of.
 *
 * The generated text is valid only for the columns and types it was made
 * for.  Without a superuser there is no event trigger to regenerate it when
 * the table changes, so each audited statement first compares the table's
 * signature (columns, types, key, options, read rule) with the one the
 * function was made for, and refuses the write when they differ: an audited
 * write never goes unrecorded or is recorded with stale conversions.
 * rls_audit.status (and so rls.problems and rls_apply) report such a table;
 * rls_audit.enable() generates its function again.
 */

-- The built-in type a column's values are converted through: its base type.
CREATE FUNCTION rls_audit._base_type(typ oid)
RETURNS oid
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE up(t, depth) AS (
        SELECT typ, 0
        UNION ALL
        SELECT y.typbasetype, up.depth + 1 FROM pg_type y JOIN up ON y.oid = up.t
         WHERE y.typtype = 'd' AND up.depth < 100
    )
    SELECT t FROM up ORDER BY depth DESC LIMIT 1
$$;
COMMENT ON FUNCTION rls_audit._base_type(oid) IS 'Internal: a type''s base type (the type itself unless it is a domain).';

-- What the generated text depends on: the table's oid (a restore gives it a new
-- one), every column (number, name, type), the primary key, the options and the
-- read rule.  Every audited statement compares it, so it is PL/pgSQL: the
-- session keeps its query's plan, where a SQL function that cannot be inlined
-- (it pins search_path) plans it again at every call, which was a quarter of
-- a single-row audited INSERT.
CREATE FUNCTION rls_audit._capture_signature(tbl oid)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN concat_ws(' | ', format('oid %s', tbl),
        (SELECT string_agg(format('%s:%s:%s', a.attnum, a.attname, a.atttypid), ',' ORDER BY a.attnum)
           FROM pg_attribute a WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped),
        (SELECT format('key %s', i.indkey::text) FROM pg_index i WHERE i.indrelid = tbl AND i.indisprimary),
        (SELECT format('audit %s %s %s', t.excluded_columns, t.masked_columns, t.operations)
           FROM rls_audit.audited_tables t WHERE t.table_oid = tbl),
        (SELECT format('rule %s %s %s', r.site_column, r.owner_column, r.null_is_shared)
           FROM rls_audit.read_rules r WHERE r.table_oid = tbl));
END
$$;
COMMENT ON FUNCTION rls_audit._capture_signature(oid) IS
'Internal: the table''s columns, key, audit options and read rule, which its generated capture function was made for.';

-- A column's printed text, NULL for NULL, through its type's output function only.
CREATE FUNCTION rls_audit._text_expr(alias text, col name)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('CASE WHEN pg_catalog.num_nulls(%1$s.%2$I) OPERATOR(pg_catalog.=) 0 THEN pg_catalog.format(''%%s'', %1$s.%2$I) COLLATE pg_catalog."C" END',
                  alias, col)
$$;
-- A column's value in a row image: JSON for the types the C capture maps
-- (docs/audit.md, "Row images"), else the text its type's output prints.
CREATE FUNCTION rls_audit._value_expr(alias text, col name, typ oid)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN b IN ('bool'::regtype, 'int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'float4'::regtype,
                   'float8'::regtype, 'numeric'::regtype, 'date'::regtype, 'time'::regtype, 'timetz'::regtype,
                   'timestamp'::regtype, 'timestamptz'::regtype)
            THEN format('pg_catalog.to_jsonb((%s.%I)::pg_catalog.%s)', alias, col, (SELECT typname FROM pg_type WHERE oid = b))
        WHEN b = 'jsonb'::regtype
            THEN format('(%s.%I)::pg_catalog.jsonb', alias, col)
        WHEN b = 'json'::regtype
            -- json may hold \u0000, which jsonb cannot: such a document is kept as its text.
            THEN format('CASE WHEN pg_catalog.num_nulls(%1$s.%2$I) OPERATOR(pg_catalog.<>) 0 THEN NULL::pg_catalog.jsonb '
                        'WHEN pg_catalog.strpos(pg_catalog.format(''%%s'', %1$s.%2$I), ''\u0000'') OPERATOR(pg_catalog.>) 0 '
                        'THEN pg_catalog.to_jsonb(pg_catalog.format(''%%s'', %1$s.%2$I)) '
                        'ELSE pg_catalog.jsonb_in(pg_catalog.textout(pg_catalog.format(''%%s'', %1$s.%2$I))) END', alias, col)
        ELSE rls_audit._text_expr(alias, col)
    END
      FROM (SELECT rls_audit._base_type(typ) AS b) t
$$;

COMMENT ON FUNCTION rls_audit._text_expr(text, name) IS
'Internal: generated text: a column''s value as its output function prints it (NULL for NULL).';
COMMENT ON FUNCTION rls_audit._value_expr(text, name, oid) IS
'Internal: generated text: a column''s value in a row image, mapped as the C capture maps it.';

-- A jsonb object of the given columns (pairs of name and value expression),
-- in pieces of 50 (a function takes at most 100 arguments).
CREATE FUNCTION rls_audit._object_expr(names text[], exprs text[])
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(string_agg(piece, ' OPERATOR(pg_catalog.||) ' ORDER BY g), '''{}''::pg_catalog.jsonb')
      FROM (SELECT (i - 1) / 50 AS g,
                   format('pg_catalog.jsonb_build_object(%s)',
                          string_agg(format('%L, %s', names[i], exprs[i]), ', ' ORDER BY i)) AS piece
              FROM generate_subscripts(names, 1) i GROUP BY 1) p
$$;
COMMENT ON FUNCTION rls_audit._object_expr(text[], text[]) IS 'Internal: generated text: a jsonb object of the given columns.';

-- The text of the capture function of a registered table.
CREATE FUNCTION rls_audit._capture_text(tbl regclass)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    reg rls_audit.audited_tables;
    rule rls_audit.read_rules;
    trail uuid := (SELECT t.trail_id FROM rls_audit.trails t WHERE t.table_oid = tbl);
    fn text := format('rls_audit.%I', 'capture_' || tbl::oid);
    logged_names text[];
    logged_values_o text[];
    logged_values_n text[];
    key_names text[];
    key_cols name[];
    key_o text;
    key_n text;
    img_o text;
    img_n text;
    changed text;
    rk_o text := 'NULL::pg_catalog.text';
    rk_n text := 'NULL::pg_catalog.text';
    rule_name text;
    entries text;
    insert_head text;
    insert_tail text;
BEGIN
    SELECT * INTO reg FROM rls_audit.audited_tables a WHERE a.table_oid = tbl;
    SELECT * INTO rule FROM rls_audit.read_rules r WHERE r.table_oid = tbl;

    SELECT array_agg(a.attname ORDER BY a.attnum),
           array_agg(rls_audit._value_expr('o', a.attname, a.atttypid) ORDER BY a.attnum),
           array_agg(rls_audit._value_expr('n', a.attname, a.atttypid) ORDER BY a.attnum)
      INTO logged_names, logged_values_o, logged_values_n
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname::text <> ALL (reg.excluded_columns || reg.masked_columns);
    img_o := rls_audit._object_expr(coalesce(logged_names, '{}'), coalesce(logged_values_o, '{}'));
    img_n := rls_audit._object_expr(coalesce(logged_names, '{}'), coalesce(logged_values_n, '{}'));

    -- Every column but the excluded ones, masked ones included.
    SELECT format('pg_catalog.array_remove(ARRAY[%s]::pg_catalog.text[], NULL)',
                  coalesce(string_agg(format('CASE WHEN pg_catalog.num_nulls(o.%1$I) OPERATOR(pg_catalog.<>) pg_catalog.num_nulls(n.%1$I) '
                                             'OR pg_catalog.format(''%%s'', o.%1$I) COLLATE pg_catalog."C" OPERATOR(pg_catalog.<>) pg_catalog.format(''%%s'', n.%1$I) COLLATE pg_catalog."C" '
                                             'THEN %2$L END', a.attname, a.attname), ', ' ORDER BY a.attnum), ''))
      INTO changed
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname::text <> ALL (reg.excluded_columns);

    SELECT array_agg(a.attname ORDER BY k.n) INTO key_cols
      FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n)
      JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = k.attnum
     WHERE i.indrelid = tbl AND i.indisprimary;
    IF cardinality(key_cols) = 1 THEN
        key_o := rls_audit._text_expr('o', key_cols[1]);
        key_n := rls_audit._text_expr('n', key_cols[1]);
    ELSE
        key_names := key_cols::text[];
        key_o := format('(%s)::pg_catalog.text', rls_audit._object_expr(key_names,
                        ARRAY(SELECT rls_audit._value_expr('o', a.attname, a.atttypid) FROM unnest(key_cols) WITH ORDINALITY c(name, n)
                                JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = c.name ORDER BY c.n)));
        key_n := format('(%s)::pg_catalog.text', rls_audit._object_expr(key_names,
                        ARRAY(SELECT rls_audit._value_expr('n', a.attname, a.atttypid) FROM unnest(key_cols) WITH ORDINALITY c(name, n)
                                JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = c.name ORDER BY c.n)));
    END IF;

    -- The key a reader's context must match (rls_audit._may_read), "*" for a shared row, NULL for none.
    IF rule.site_column IS NOT NULL AND rule.owner_column IS NOT NULL THEN
        rule_name := 'site_owner';
        rk_o := format('CASE WHEN pg_catalog.num_nulls(o.%1$I, o.%2$I) OPERATOR(pg_catalog.=) 0 THEN pg_catalog.format(''%%s %%s'', o.%1$I, o.%2$I) COLLATE pg_catalog."C" END',
                       rule.site_column, rule.owner_column);
        rk_n := format('CASE WHEN pg_catalog.num_nulls(n.%1$I, n.%2$I) OPERATOR(pg_catalog.=) 0 THEN pg_catalog.format(''%%s %%s'', n.%1$I, n.%2$I) COLLATE pg_catalog."C" END',
                       rule.site_column, rule.owner_column);
    ELSIF rule.site_column IS NOT NULL OR rule.owner_column IS NOT NULL THEN
        rule_name := CASE WHEN rule.site_column IS NOT NULL THEN 'site' ELSE 'owner' END;
        rk_o := format('coalesce(%s, %s)', rls_audit._text_expr('o', coalesce(rule.site_column, rule.owner_column)),
                       CASE WHEN rule.null_is_shared THEN '''*''' ELSE 'NULL' END);
        rk_n := format('coalesce(%s, %s)', rls_audit._text_expr('n', coalesce(rule.site_column, rule.owner_column)),
                       CASE WHEN rule.null_is_shared THEN '''*''' ELSE 'NULL' END);
    END IF;

    -- The statement rows from the entries e(pos, row_key, old_values, new_values, changed_columns, rk),
    -- at most 1,000 entries each, in order.
    insert_head := 'INSERT INTO rls_audit.statements (table_oid, table_name, operation, site_id, site_uuid, user_id, '
                   'user_uuid, claims, db_role, application_name, client_addr, read_rule, read_keys, trail_id, row_keys, '
                   'old_values, new_values, changed_columns, row_read_keys) ';
    insert_tail := format($tail$
        , numbered AS (SELECT y.*, (y.m - 1) / 1000 AS chunk
                         FROM (SELECT pg_catalog.row_number() OVER (ORDER BY e.pos) AS m, e.* FROM e) y),
        keys AS (SELECT x.chunk, k.key, pg_catalog.min(x.m * 2 + k.i) AS first
                   FROM numbered x, pg_catalog.unnest(x.rk) WITH ORDINALITY k(key, i) GROUP BY 1, 2),
        chunk_keys AS (SELECT keys.chunk, pg_catalog.array_agg(keys.key ORDER BY keys.first) AS read_keys FROM keys GROUP BY 1)
        %s
        SELECT rel_oid, rel_oid::pg_catalog.regclass::pg_catalog.text, op_name, ctx_site_id, ctx_site_uuid, ctx_user_id,
               ctx_user_uuid, ctx_claims, ctx_role, pg_catalog.current_setting('application_name'), pg_catalog.inet_client_addr(),
               %L, pg_catalog.min(ck.read_keys), %L::pg_catalog.uuid,
               pg_catalog.array_agg(x.row_key ORDER BY x.m),
               CASE WHEN pg_catalog.bool_or(x.old_values IS NOT NULL) THEN pg_catalog.array_agg(x.old_values ORDER BY x.m) END,
               CASE WHEN pg_catalog.bool_or(x.new_values IS NOT NULL) THEN pg_catalog.array_agg(x.new_values ORDER BY x.m) END,
               CASE WHEN pg_catalog.bool_or(x.changed_columns IS NOT NULL) THEN pg_catalog.array_agg(x.changed_columns ORDER BY x.m) END,
               CASE WHEN pg_catalog.bool_or(x.rk IS NOT NULL) THEN pg_catalog.array_agg(x.rk::pg_catalog.text ORDER BY x.m) END
          FROM numbered x LEFT JOIN chunk_keys ck ON ck.chunk = x.chunk
         GROUP BY x.chunk
         ORDER BY x.chunk;
    $tail$, insert_head, rule_name, trail);

    -- The row read keys of an entry about rows a and b: the distinct non-NULL ones, a's first.
    -- The body (argument 1, the function's name, is unused there).  It holds
    -- the table's column names, which its owner chose, so it is quoted as a
    -- literal below, never dollar-quoted: a column named with the closing tag
    -- ($capture$...) would end the body there, and the rest of its name would
    -- run as SQL of django_rls_audit (CREATE FUNCTION with check_function_bodies
    -- off accepts the cut body).
    entries := format($body$
DECLARE
    held record;
    ctx_site_id bigint;
    ctx_site_uuid uuid;
    ctx_user_id bigint;
    ctx_user_uuid uuid;
    ctx_claims jsonb;
    ctx_role name;
    rel_oid oid := TG_RELID;
    op_name text := TG_OP;
BEGIN
    IF TG_RELID OPERATOR(pg_catalog.<>) %2$s::pg_catalog.oid OR TG_WHEN OPERATOR(pg_catalog.<>) 'AFTER' OR TG_LEVEL OPERATOR(pg_catalog.<>) 'STATEMENT'
       OR TG_NAME OPERATOR(pg_catalog.<>) ('rls_audit_' OPERATOR(pg_catalog.||) pg_catalog.lower(TG_OP)) THEN
        RAISE EXCEPTION 'the audit capture of %% fires only as its rls_audit triggers, not as trigger %% on %%', %3$L, TG_NAME, TG_RELID::pg_catalog.regclass
            USING ERRCODE = 'trigger_protocol_violated', HINT = 'Use rls_audit.enable(table) to audit a table.';
    END IF;
    IF rls_audit._capture_signature(TG_RELID) IS DISTINCT FROM %4$L THEN
        RAISE EXCEPTION 'audited table %% changed since rls_audit.enable() made its capture', TG_RELID::regclass
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Its columns, key, audit options or read rule differ from those the capture was generated for, and the SQL-only mode has no event trigger to follow them: the write is refused rather than recorded wrongly.',
                  HINT = pg_catalog.format('As the table owner: SELECT rls_audit.enable(%%L, ...) with its options again (manage.py rls_apply does).', TG_RELID::regclass);
    END IF;
    -- The context is read as django_rls_audit: only from the context tables django_rls_context made
    -- (a table or view of that name made by the writer could run its owner's code as this role).
    IF EXISTS (SELECT FROM pg_catalog.pg_class c
                WHERE c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()
                  AND c.relname OPERATOR(pg_catalog.=) ANY (ARRAY['django_rls_transaction_context', 'django_rls_session_context']::pg_catalog.name[])
                  AND (c.relkind OPERATOR(pg_catalog.<>) 'r' OR c.relrowsecurity
                       OR c.relowner OPERATOR(pg_catalog.<>) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) 'django_rls_context'))) THEN
        RAISE EXCEPTION 'a temporary context table that django_rls did not create exists in this session'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Revoke TEMPORARY on the database from the role (manage.py rls_roles does this) and open a new session.';
    END IF;
    held := rls._held();
    IF coalesce(held.site, '') OPERATOR(pg_catalog.=) '' AND coalesce(held."user", '') OPERATOR(pg_catalog.=) ''
       AND coalesce(pg_catalog.current_setting('django_rls.strict', true), '') OPERATOR(pg_catalog.=) ANY (ARRAY['on', 'true', '1', 'yes']) THEN
        RAISE EXCEPTION 'no django_rls context is set for a write to audited table "%%"', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'django_rls.strict is on, so audited writes need a site or a user.',
                  HINT = 'Run the write inside django_rls.context() or a request, or turn django_rls.strict off.';
    END IF;
    IF pg_catalog.length(held.site) OPERATOR(pg_catalog.=) 36 THEN ctx_site_uuid := pg_catalog.uuid_in(pg_catalog.textout(held.site));
    ELSIF held.site OPERATOR(pg_catalog.<>) '' THEN ctx_site_id := pg_catalog.int8in(pg_catalog.textout(held.site)); END IF;
    IF pg_catalog.length(held."user") OPERATOR(pg_catalog.=) 36 THEN ctx_user_uuid := pg_catalog.uuid_in(pg_catalog.textout(held."user"));
    ELSIF held."user" OPERATOR(pg_catalog.<>) '' THEN ctx_user_id := pg_catalog.int8in(pg_catalog.textout(held."user")); END IF;
    ctx_claims := held.claims;
    -- The role outside any SECURITY DEFINER function, as the C capture records it.
    ctx_role := CASE WHEN pg_catalog.current_setting('role') OPERATOR(pg_catalog.=) 'none' THEN SESSION_USER
                     ELSE pg_catalog.current_setting('role') END;

    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        WITH r AS (SELECT pg_catalog.row_number() OVER () AS "rls_audit pos", * FROM new_rows),
        e AS (SELECT n."rls_audit pos" AS pos, %5$s AS row_key, NULL::pg_catalog.jsonb AS old_values, %6$s AS new_values,
                     NULL::pg_catalog.text AS changed_columns, %7$s AS rk
                FROM r n)
        %8$s
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        WITH r AS (SELECT pg_catalog.row_number() OVER () AS "rls_audit pos", * FROM old_rows),
        e AS (SELECT o."rls_audit pos" AS pos, %9$s AS row_key, %10$s AS old_values, NULL::pg_catalog.jsonb AS new_values,
                     NULL::pg_catalog.text AS changed_columns, %11$s AS rk
                FROM r o)
        %8$s
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        WITH ro AS (SELECT pg_catalog.row_number() OVER () AS "rls_audit pos", * FROM old_rows),
        rn AS (SELECT pg_catalog.row_number() OVER () AS "rls_audit pos", * FROM new_rows),
        p AS (SELECT coalesce(o."rls_audit pos", n."rls_audit pos") AS pos,
                     o."rls_audit pos" IS NOT NULL AS has_old, n."rls_audit pos" IS NOT NULL AS has_new,
                     %9$s AS ok, %5$s AS nk, %12$s AS ch, %10$s AS oi, %6$s AS ni,
                     %14$s AS ka, %15$s AS kb
                FROM ro o FULL JOIN rn n ON o."rls_audit pos" OPERATOR(pg_catalog.=) n."rls_audit pos"),
        q AS (SELECT p.*, CASE WHEN p.ka IS NULL AND p.kb IS NULL THEN NULL
                               WHEN p.ka IS NULL THEN ARRAY[p.kb] WHEN p.kb IS NULL OR p.ka OPERATOR(pg_catalog.=) p.kb THEN ARRAY[p.ka]
                               ELSE ARRAY[p.ka, p.kb] END AS rk2
                FROM p),
        e AS (
            -- a row whose key did not change: its changed logged columns
            SELECT q.pos OPERATOR(pg_catalog.*) 2 AS pos, q.nk AS row_key,
                   (SELECT coalesce(pg_catalog.jsonb_object_agg(x.key, x.value), '{}'::pg_catalog.jsonb)
                      FROM pg_catalog.jsonb_each(q.oi) x WHERE x.key OPERATOR(pg_catalog.=) ANY (q.ch)) AS old_values,
                   (SELECT coalesce(pg_catalog.jsonb_object_agg(x.key, x.value), '{}'::pg_catalog.jsonb)
                      FROM pg_catalog.jsonb_each(q.ni) x WHERE x.key OPERATOR(pg_catalog.=) ANY (q.ch)) AS new_values,
                   q.ch::pg_catalog.text AS changed_columns, q.rk2 AS rk
              FROM q WHERE q.has_old AND q.has_new AND pg_catalog.cardinality(q.ch) OPERATOR(pg_catalog.>) 0
               AND q.ok OPERATOR(pg_catalog.=) q.nk
            UNION ALL
            -- a row whose key changed: the old row under the old key, the new row under the new one, each whole
            SELECT q.pos OPERATOR(pg_catalog.*) 2, q.ok, q.oi, NULL, q.ch::pg_catalog.text, q.rk2
              FROM q WHERE q.has_old AND q.has_new AND pg_catalog.cardinality(q.ch) OPERATOR(pg_catalog.>) 0
               AND q.ok OPERATOR(pg_catalog.<>) q.nk
            UNION ALL
            SELECT q.pos OPERATOR(pg_catalog.*) 2 OPERATOR(pg_catalog.+) 1, q.nk, NULL, q.ni, q.ch::pg_catalog.text, q.rk2
              FROM q WHERE q.has_old AND q.has_new AND pg_catalog.cardinality(q.ch) OPERATOR(pg_catalog.>) 0
               AND q.ok OPERATOR(pg_catalog.<>) q.nk
            UNION ALL
            -- never expected: an unpaired row, recorded whole rather than lost
            SELECT q.pos OPERATOR(pg_catalog.*) 2, coalesce(q.ok, q.nk),
                   CASE WHEN q.has_old THEN q.oi END, CASE WHEN q.has_new THEN q.ni END, NULL, q.rk2
              FROM q WHERE q.has_old OPERATOR(pg_catalog.<>) q.has_new)
        %8$s
    ELSE
        INSERT INTO rls_audit.statements (table_oid, table_name, operation, site_id, site_uuid, user_id, user_uuid, claims,
                                          db_role, application_name, client_addr, read_rule, read_keys, trail_id, row_keys)
        VALUES (rel_oid, rel_oid::pg_catalog.regclass::pg_catalog.text, op_name, ctx_site_id, ctx_site_uuid, ctx_user_id,
                ctx_user_uuid, ctx_claims, ctx_role, pg_catalog.current_setting('application_name'), pg_catalog.inet_client_addr(),
                NULL, NULL, %13$L::pg_catalog.uuid, ARRAY[NULL]::pg_catalog.text[]);
    END IF;
    RETURN NULL;
END
$body$,
        fn, tbl::oid, tbl::text, rls_audit._capture_signature(tbl),
        key_n, img_n, format('CASE WHEN %1$s IS NULL THEN NULL ELSE ARRAY[%1$s] END', rk_n),
        insert_tail,
        key_o, img_o, format('CASE WHEN %1$s IS NULL THEN NULL ELSE ARRAY[%1$s] END', rk_o),
        changed, trail, rk_o, rk_n);
    RETURN format($head$
CREATE OR REPLACE FUNCTION %s()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET extra_float_digits = 1
SET DateStyle = 'ISO, MDY'
SET IntervalStyle = 'postgres'
SET TimeZone = 'UTC'
SET bytea_output = 'hex'
SET lc_monetary = 'C'
SET xmlbinary = 'base64'
SET xmloption = 'content'
SET quote_all_identifiers = off
SET standard_conforming_strings = on
SET jit = off
AS %L
$head$, fn, entries);
END
$$;
COMMENT ON FUNCTION rls_audit._capture_text(regclass) IS
'Internal: the text of the capture function of a registered table (SQL-only mode).';
REVOKE ALL ON FUNCTION rls_audit._capture_text(regclass) FROM PUBLIC;
