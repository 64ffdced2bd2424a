/* sql/django_rls.sql */
\echo Use "CREATE EXTENSION django_rls" to load this file. \quit

COMMENT ON SCHEMA rls IS 'django_rls: request context and row-level security policy helpers';
GRANT USAGE ON SCHEMA rls TO PUBLIC;

-------------------------------------------------------------------------------
-- The request context
-------------------------------------------------------------------------------

CREATE FUNCTION rls.set_context(site text, "user" text, claims jsonb DEFAULT NULL,
                                is_local boolean DEFAULT true)
RETURNS void
AS 'MODULE_PATHNAME', 'rls_set_context'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION rls.set_context(text, text, jsonb, boolean) IS
'Set the request context (site and user: integer or UUID text, or NULL; claims: a JSON object). is_local => true (the default) scopes it to the current transaction block.';

CREATE FUNCTION rls.set_context_signed(token text, is_local boolean DEFAULT true)
RETURNS void
AS 'MODULE_PATHNAME', 'rls_set_context_signed'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION rls.set_context_signed(text, boolean) IS
'Set the request context from a single-use token signed with a key from django_rls.signing_key_file (format: docs/security.md).';

-- Only roles that are meant to act for a request may set a context.
REVOKE ALL ON FUNCTION rls.set_context(text, text, jsonb, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION rls.set_context_signed(text, boolean) FROM PUBLIC;

CREATE FUNCTION rls.clear_context()
RETURNS void
AS 'MODULE_PATHNAME', 'rls_clear_context'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION rls.clear_context() IS
'Clear the request context for the rest of the session. Always allowed: it can only take access away.';

CREATE FUNCTION rls.site_id()
RETURNS bigint
AS 'MODULE_PATHNAME', 'rls_site_id'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls.site_id() IS
'Site of the request context as bigint; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.user_id()
RETURNS bigint
AS 'MODULE_PATHNAME', 'rls_user_id'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls.user_id() IS
'User of the request context as bigint; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.site_uuid()
RETURNS uuid
AS 'MODULE_PATHNAME', 'rls_site_uuid'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls.site_uuid() IS
'Site of the request context as uuid; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.user_uuid()
RETURNS uuid
AS 'MODULE_PATHNAME', 'rls_user_uuid'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls.user_uuid() IS
'User of the request context as uuid; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.claim(key text)
RETURNS text
AS 'MODULE_PATHNAME', 'rls_claim'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION rls.claim(text) IS
'One claim of the request context as text (like ->>); NULL when missing.';

CREATE FUNCTION rls.context()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'rls_context'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls.context() IS
'The whole request context as jsonb, for debugging.';

CREATE FUNCTION rls.extension_info()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'rls_extension_info'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION rls.extension_info() IS
'How the django_rls library is loaded and configured (never the signing key itself).';

-------------------------------------------------------------------------------
-- Policy helpers
--
-- A table is protected by one or more named policy groups ("site", "owner",
-- or any name for a custom expression).  Each group adds RESTRICTIVE policies
-- named rls_<group>_<command>, so groups combine with AND and no other
-- permissive policy can widen them.  One permissive policy, rls_base, lets
-- the roles the groups apply to through at all (restrictive policies alone
-- deny everything).  Each policy's comment records a fingerprint of what
-- django_rls created, so reruns change nothing and edits made behind
-- django_rls's back are reported by rls.status.
-------------------------------------------------------------------------------

CREATE FUNCTION rls._policy_fingerprint(p pg_catalog.pg_policy)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT md5(concat_ws('|', p.polcmd, p.polpermissive,
                         (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ',' ORDER BY 1)
                            FROM unnest(p.polroles) AS r),
                         pg_get_expr(p.polqual, p.polrelid),
                         pg_get_expr(p.polwithcheck, p.polrelid)))
$$;
COMMENT ON FUNCTION rls._policy_fingerprint(pg_catalog.pg_policy) IS
'Internal: fingerprint of a policy as the catalog holds it, to detect changes made outside django_rls.';

-- Create, replace or keep one policy; returns true when it changed anything.
CREATE FUNCTION rls._ensure_policy(tbl regclass, policy_name name, permissive boolean,
                                   command text, to_role text,
                                   using_expr text, check_expr text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted text := md5(concat_ws('|', permissive, command, to_role, using_expr, check_expr));
    existing pg_catalog.pg_policy;
    recorded text;
BEGIN
    SELECT * INTO existing FROM pg_catalog.pg_policy
     WHERE polrelid = tbl AND polname = policy_name;
    IF FOUND THEN
        recorded := obj_description(existing.oid, 'pg_policy');
        IF recorded = format('django_rls %s %s', wanted, rls._policy_fingerprint(existing)) THEN
            RETURN false;
        END IF;
        EXECUTE format('DROP POLICY %I ON %s', policy_name, tbl);
    END IF;

    EXECUTE format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s',
                   policy_name, tbl,
                   CASE WHEN permissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                   upper(command),
                   CASE WHEN to_role = 'public' THEN 'PUBLIC' ELSE quote_ident(to_role) END,
                   CASE WHEN using_expr IS NOT NULL THEN format(' USING (%s)', using_expr) ELSE '' END,
                   CASE WHEN check_expr IS NOT NULL THEN format(' WITH CHECK (%s)', check_expr) ELSE '' END);

    SELECT * INTO existing FROM pg_catalog.pg_policy
     WHERE polrelid = tbl AND polname = policy_name;
    EXECUTE format('COMMENT ON POLICY %I ON %s IS %L', policy_name, tbl,
                   format('django_rls %s %s', wanted, rls._policy_fingerprint(existing)));
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls._ensure_policy(regclass, name, boolean, text, text, text, text) IS
'Internal: create or replace one policy unless it already matches.';

-- Keep rls_base (the permissive policy) and the table's RLS switches in step
-- with the restrictive groups; returns true when it changed anything.
CREATE FUNCTION rls._sync_table(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    roles text;
    changed boolean := false;
    enabled boolean;
    forced boolean;
BEGIN
    SELECT string_agg(DISTINCT CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ',')
      INTO roles
      FROM pg_catalog.pg_policy p, unnest(p.polroles) AS r
     WHERE p.polrelid = tbl AND p.polname LIKE 'rls\_%' AND p.polname <> 'rls_base'
       AND NOT p.polpermissive;

    IF roles IS NULL THEN
        IF EXISTS (SELECT FROM pg_catalog.pg_policy WHERE polrelid = tbl AND polname = 'rls_base') THEN
            EXECUTE format('DROP POLICY rls_base ON %s', tbl);
            changed := true;
        END IF;
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_policy WHERE polrelid = tbl) THEN
            SELECT relrowsecurity, relforcerowsecurity INTO enabled, forced
              FROM pg_catalog.pg_class WHERE oid = tbl;
            IF enabled OR forced THEN
                EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY', tbl);
                changed := true;
            END IF;
        END IF;
        RETURN changed;
    END IF;

    IF position(',' IN roles) > 0 THEN
        RAISE EXCEPTION 'django_rls policy groups on % apply to different roles (%)', tbl, roles
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Protect every group of one table for the same role.';
    END IF;
    changed := rls._ensure_policy(tbl, 'rls_base', true, 'all', roles, 'true', 'true');

    SELECT relrowsecurity, relforcerowsecurity INTO enabled, forced
      FROM pg_catalog.pg_class WHERE oid = tbl;
    IF NOT enabled OR NOT forced THEN
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', tbl);
        changed := true;
    END IF;
    RETURN changed;
END
$$;
COMMENT ON FUNCTION rls._sync_table(regclass) IS
'Internal: keep rls_base and ENABLE/FORCE ROW LEVEL SECURITY in step with the policy groups.';

CREATE FUNCTION rls.protect(tbl regclass, group_name text, using_expr text,
                            check_expr text DEFAULT NULL,
                            commands text[] DEFAULT ARRAY['select', 'insert', 'update', 'delete'],
                            to_role text DEFAULT 'public')
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cmd text;
    changed boolean := false;
    kind "char";
BEGIN
    SELECT relkind INTO kind FROM pg_catalog.pg_class WHERE oid = tbl;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Row level security applies to tables and partitioned tables only; protect the tables a view reads and create the view WITH (security_invoker = true).';
    END IF;
    IF group_name IS NULL OR group_name !~ '^[a-z][a-z0-9_]{0,39}$' OR group_name = 'base' THEN
        RAISE EXCEPTION 'invalid django_rls policy group name "%"', group_name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use lower-case letters, digits and underscores, starting with a letter (not "base").';
    END IF;
    IF coalesce(btrim(using_expr), '') = '' THEN
        RAISE EXCEPTION 'policy group "%" on % needs an expression', group_name, tbl
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass a boolean SQL expression such as ''site_id = rls.site_id()''.';
    END IF;
    IF commands IS NULL OR cardinality(commands) = 0
       OR EXISTS (SELECT FROM unnest(commands) AS c WHERE c IS NULL OR c NOT IN ('select', 'insert', 'update', 'delete'))
       OR cardinality(commands) <> (SELECT count(DISTINCT c) FROM unnest(commands) AS c) THEN
        RAISE EXCEPTION 'invalid commands % for policy group "%"', commands, group_name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'List each of select, insert, update and delete at most once.';
    END IF;
    IF to_role IS NULL OR (to_role <> 'public' AND to_regrole(quote_ident(to_role)) IS NULL) THEN
        RAISE EXCEPTION 'role "%" does not exist', to_role
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create the application role first, or pass ''public''.';
    END IF;
    check_expr := coalesce(nullif(btrim(check_expr), ''), using_expr);

    FOREACH cmd IN ARRAY ARRAY['select', 'insert', 'update', 'delete'] LOOP
        IF cmd = ANY (commands) THEN
            changed := rls._ensure_policy(
                tbl, format('rls_%s_%s', group_name, cmd), false, cmd, to_role,
                CASE WHEN cmd <> 'insert' THEN using_expr END,
                CASE WHEN cmd IN ('insert', 'update') THEN check_expr END) OR changed;
        ELSIF EXISTS (SELECT FROM pg_catalog.pg_policy
                       WHERE polrelid = tbl AND polname = format('rls_%s_%s', group_name, cmd)) THEN
            EXECUTE format('DROP POLICY %I ON %s', format('rls_%s_%s', group_name, cmd), tbl);
            changed := true;
        END IF;
    END LOOP;
    RETURN rls._sync_table(tbl) OR changed;
END
$$;
COMMENT ON FUNCTION rls.protect(regclass, text, text, text, text[], text) IS
'Protect a table with a named group of restrictive policies (one per command); returns true when anything changed. Rows must satisfy using_expr to be seen, updated or deleted, and check_expr (default: using_expr) to be written.';

-- The accessor that matches a column's type: rls.<who>_id() or rls.<who>_uuid().
CREATE FUNCTION rls._accessor_for(tbl regclass, col name, who text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    typ regtype;
BEGIN
    SELECT atttypid::regtype INTO typ FROM pg_catalog.pg_attribute
     WHERE attrelid = tbl AND attname = col AND attnum > 0 AND NOT attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" of % does not exist', col, tbl
            USING ERRCODE = 'undefined_column',
                  HINT = format('Name the column that holds the %s id.', who);
    END IF;
    IF typ IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype) THEN
        RETURN format('rls.%s_id()', who);
    ELSIF typ = 'uuid'::regtype THEN
        RETURN format('rls.%s_uuid()', who);
    END IF;
    RAISE EXCEPTION 'column "%" of % has type %, not an integer or uuid', col, tbl, typ
        USING ERRCODE = 'datatype_mismatch',
              HINT = 'Use rls.protect() with your own expression for other key types.';
END
$$;
COMMENT ON FUNCTION rls._accessor_for(regclass, name, text) IS
'Internal: the context accessor that matches a key column''s type.';

-- One group that compares a key column with the matching context accessor.
CREATE FUNCTION rls._protect_by_key(tbl regclass, group_name text, key_column name, who text,
                                    to_role text)
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT rls.protect(tbl, group_name,
                       format('%I = %s', key_column, rls._accessor_for(tbl, key_column, who)),
                       to_role => to_role)
$$;
COMMENT ON FUNCTION rls._protect_by_key(regclass, text, name, text, text) IS
'Internal: protect a table by comparing a key column with the context.';

CREATE FUNCTION rls.protect_by_site(tbl regclass, site_column name DEFAULT 'site_id',
                                    to_role text DEFAULT 'public')
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT rls._protect_by_key(tbl, 'site', site_column, 'site', to_role) $$;
COMMENT ON FUNCTION rls.protect_by_site(regclass, name, text) IS
'Protect a table so that only rows of the context''s site can be seen or written.';

CREATE FUNCTION rls.protect_by_owner(tbl regclass, owner_column name DEFAULT 'user_id',
                                     to_role text DEFAULT 'public')
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT rls._protect_by_key(tbl, 'owner', owner_column, 'user', to_role) $$;
COMMENT ON FUNCTION rls.protect_by_owner(regclass, name, text) IS
'Protect a table so that only rows owned by the context''s user can be seen or written.';

CREATE FUNCTION rls.protect_by_site_and_owner(tbl regclass, site_column name DEFAULT 'site_id',
                                              owner_column name DEFAULT 'user_id',
                                              to_role text DEFAULT 'public')
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    site_changed boolean := rls.protect_by_site(tbl, site_column, to_role);
    owner_changed boolean := rls.protect_by_owner(tbl, owner_column, to_role);
BEGIN
    RETURN site_changed OR owner_changed;
END
$$;
COMMENT ON FUNCTION rls.protect_by_site_and_owner(regclass, name, name, text) IS
'Protect a table so that only rows of the context''s site and user can be seen or written.';

CREATE FUNCTION rls.unprotect(tbl regclass, group_name text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pol name;
    changed boolean := false;
BEGIN
    FOR pol IN
        SELECT polname FROM pg_catalog.pg_policy
         WHERE polrelid = tbl AND polname <> 'rls_base'
           AND polname LIKE CASE WHEN group_name IS NULL THEN 'rls\_%'
                                 ELSE format('rls\_%s\_%%', replace(group_name, '_', '\_')) END
           AND polname ~ '^rls_.+_(select|insert|update|delete)$'
    LOOP
        EXECUTE format('DROP POLICY %I ON %s', pol, tbl);
        changed := true;
    END LOOP;
    RETURN rls._sync_table(tbl) OR changed;
END
$$;
COMMENT ON FUNCTION rls.unprotect(regclass, text) IS
'Remove one policy group (or all of django_rls''s policies) from a table; row level security is switched off once no policy is left.';

-------------------------------------------------------------------------------
-- Status: every protected table and every problem found
-------------------------------------------------------------------------------

-- Roles granted SET on a django_rls parameter (pg_parameter_acl is PG 15+).
CREATE FUNCTION rls._parameter_set_grants()
RETURNS TABLE (parameter text, grantee text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF current_setting('server_version_num')::int < 150000 THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE $q$
        SELECT a.parname::text,
               CASE WHEN x.grantee = 0 THEN 'public' ELSE x.grantee::regrole::text END
          FROM pg_catalog.pg_parameter_acl a, aclexplode(a.paracl) AS x
         WHERE a.parname LIKE 'django\_rls.%' AND x.privilege_type = 'SET'
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = x.grantee AND r.rolsuper)
    $q$;
END
$$;
COMMENT ON FUNCTION rls._parameter_set_grants() IS
'Internal: roles granted SET on a django_rls parameter.';

CREATE VIEW rls.problems AS
WITH protected AS (
    SELECT c.oid::regclass AS table_name, c.oid, c.relowner, c.relkind,
           c.relrowsecurity, c.relforcerowsecurity
      FROM pg_catalog.pg_class c
     WHERE c.relkind IN ('r', 'p')
       AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
       AND (c.relrowsecurity OR EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid))
),
policy_roles AS (
    SELECT p.polrelid AS oid, r AS role_oid
      FROM pg_catalog.pg_policy p, unnest(p.polroles) AS r
)
SELECT t.table_name, t.table_name::text AS object_name,
       'row level security is disabled, so the table''s policies are ignored' AS problem,
       format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY, or run rls_apply again.', t.table_name) AS hint
  FROM protected t WHERE NOT t.relrowsecurity
UNION ALL
SELECT t.table_name, t.table_name::text,
       format('FORCE ROW LEVEL SECURITY is off, so the owner %s bypasses the policies', t.relowner::regrole),
       format('ALTER TABLE %s FORCE ROW LEVEL SECURITY, or run rls_apply again.', t.table_name)
  FROM protected t WHERE t.relrowsecurity AND NOT t.relforcerowsecurity
UNION ALL
SELECT t.table_name, t.table_name::text,
       'row level security is on but the table has no policy, so no role but a bypassing one sees any row',
       'Protect the table (rls.protect_by_site and friends) or disable row level security on it.'
  FROM protected t
 WHERE t.relrowsecurity AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid)
UNION ALL
SELECT t.table_name, t.table_name::text,
       'the table has only restrictive policies, so no role sees any row',
       'Add a permissive policy; rls.protect() creates rls_base for this.'
  FROM protected t
 WHERE EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid)
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid AND p.polpermissive)
UNION ALL
SELECT DISTINCT t.table_name, r.rolname::text,
       format('role %s is named in the policies but %s', r.rolname,
              CASE WHEN r.rolsuper THEN 'is a superuser, so it bypasses row level security'
                   WHEN r.rolbypassrls THEN 'has BYPASSRLS, so it bypasses row level security'
                   ELSE 'owns the table, so it can switch row level security off' END),
       'Connect the application with a role that is not a superuser, has NOBYPASSRLS and owns no protected table.'
  FROM protected t
  JOIN policy_roles pr ON pr.oid = t.oid
  JOIN pg_catalog.pg_roles r ON r.oid = pr.role_oid
 WHERE r.rolsuper OR r.rolbypassrls OR pg_catalog.pg_has_role(r.oid, t.relowner, 'MEMBER')
UNION ALL
SELECT DISTINCT t.table_name, r.rolname::text,
       format('role %s has BYPASSRLS and privileges on the table, so it sees every row', r.rolname),
       format('ALTER ROLE %I NOBYPASSRLS, or revoke its privileges on %s.', r.rolname, t.table_name)
  FROM protected t
  JOIN pg_catalog.pg_roles r ON r.rolbypassrls AND NOT r.rolsuper AND r.rolcanlogin
 WHERE pg_catalog.has_table_privilege(r.oid, t.oid, 'SELECT, INSERT, UPDATE, DELETE')
UNION ALL
SELECT DISTINCT t.table_name, v.oid::regclass::text,
       CASE WHEN v.relkind = 'm'
            THEN format('materialized view %s copies rows of the table without row level security', v.oid::regclass)
            ELSE format('view %s reads the table without security_invoker, so it applies the policies as its owner %s',
                        v.oid::regclass, v.relowner::regrole) END,
       CASE WHEN v.relkind = 'm'
            THEN format('Drop %s, or replace it with a security_invoker view or a protected table.', v.oid::regclass)
            ELSE format('ALTER VIEW %s SET (security_invoker = true) (PostgreSQL 15+).', v.oid::regclass) END
  FROM protected t
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass
                              AND d.refclassid = 'pg_catalog.pg_class'::regclass
                              AND d.refobjid = t.oid
  JOIN pg_catalog.pg_rewrite rw ON rw.oid = d.objid
  JOIN pg_catalog.pg_class v ON v.oid = rw.ev_class AND v.oid <> t.oid
 WHERE v.relkind = 'm'
    OR (v.relkind = 'v' AND NOT coalesce((SELECT o.option_value::boolean
                                             FROM pg_catalog.pg_options_to_table(v.reloptions) AS o
                                            WHERE o.option_name = 'security_invoker'), false))
UNION ALL
SELECT t.table_name, part.oid::regclass::text,
       format('partition %s has no row level security, so querying it directly bypasses the policies of %s',
              part.oid::regclass, t.table_name),
       format('Protect %s too, or revoke the application role''s privileges on it.', part.oid::regclass)
  FROM protected t
  JOIN pg_catalog.pg_inherits i ON i.inhparent = t.oid
  JOIN pg_catalog.pg_class part ON part.oid = i.inhrelid
 WHERE t.relkind = 'p' AND NOT part.relrowsecurity
UNION ALL
SELECT t.table_name, p.polname::text,
       format('policy %s was changed outside django_rls', p.polname),
       'Run rls_apply (or the rls.protect call that created it) again to restore it.'
  FROM protected t
  JOIN pg_catalog.pg_policy p ON p.polrelid = t.oid
 WHERE (p.polname ~ '^rls_.+_(select|insert|update|delete)$' OR p.polname = 'rls_base')
   AND split_part(coalesce(obj_description(p.oid, 'pg_policy'), ''), ' ', 3)
       IS DISTINCT FROM rls._policy_fingerprint(p)
UNION ALL
SELECT NULL, g.parameter,
       format('role %s may SET %s', g.grantee, g.parameter),
       format('REVOKE SET ON PARAMETER %s FROM %s;', g.parameter, g.grantee)
  FROM rls._parameter_set_grants() g
UNION ALL
SELECT NULL, 'django_rls',
       'the django_rls library was not preloaded, so signed tokens are unavailable and settings appear only after first use',
       'Add django_rls to shared_preload_libraries in postgresql.conf and restart the server.'
 WHERE NOT (rls.extension_info() ->> 'loaded_at_startup')::boolean
UNION ALL
SELECT NULL, r.rolname::text,
       format('role %s can read the django_rls signing key file (member of pg_read_server_files)', r.rolname),
       format('REVOKE pg_read_server_files FROM %I;', r.rolname)
  FROM pg_catalog.pg_roles r
 WHERE (rls.extension_info() ->> 'signing_key_configured')::boolean
   AND r.rolcanlogin AND NOT r.rolsuper
   AND pg_catalog.pg_has_role(r.oid, 'pg_read_server_files', 'MEMBER');
COMMENT ON VIEW rls.problems IS
'Every row level security problem django_rls can find: one row per problem, with the table it concerns (NULL for server-wide ones) and a hint.';

CREATE VIEW rls.status AS
SELECT c.oid::regclass AS table_name,
       c.relrowsecurity AS rls_enabled,
       c.relforcerowsecurity AS rls_forced,
       coalesce((SELECT array_agg(format('%s (%s %s to %s)', p.polname,
                                         CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END,
                                         CASE p.polcmd WHEN 'r' THEN 'select' WHEN 'a' THEN 'insert'
                                                       WHEN 'w' THEN 'update' WHEN 'd' THEN 'delete' ELSE 'all' END,
                                         (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ', ')
                                            FROM unnest(p.polroles) AS r))
                                  ORDER BY p.polname)
                   FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid), '{}') AS policies,
       coalesce((SELECT array_agg(pr.problem ORDER BY pr.problem)
                   FROM rls.problems pr WHERE pr.table_name = c.oid), '{}') AS problems
  FROM pg_catalog.pg_class c
 WHERE c.relkind IN ('r', 'p')
   AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
   AND (c.relrowsecurity OR EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid));
COMMENT ON VIEW rls.status IS
'Every table under row level security, its policies and the problems rls.problems found for it.';

GRANT SELECT ON rls.problems, rls.status TO PUBLIC;
