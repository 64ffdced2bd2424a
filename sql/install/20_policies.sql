-------------------------------------------------------------------------------
-- Policy helpers
--
-- The functions that create policies run with the caller's search_path, like
-- CREATE POLICY itself, so that a policy expression names tables the way the
-- caller sees them; everything they reference themselves is schema-qualified
-- or lives in pg_catalog (always searched first).  Fingerprints are taken with
-- a fixed search_path, so they do not depend on the caller's.
--
-- A table is protected by one or more named policy groups ("site", "owner",
-- or any name for a custom expression).  Each group adds RESTRICTIVE policies
-- named rls_<group>_<command>, so groups combine with AND and no other
-- permissive policy can widen them.  Beside them, one permissive policy per
-- command, rls_base_<command>, lets the roles the groups apply to through at
-- all (restrictive policies alone deny everything); it carries the
-- conjunction of the groups' expressions for its command itself (true only
-- for a command no group covers), so the protection does not depend on
-- AS RESTRICTIVE surviving: an engine that copies the groups as permissive
-- policies (Citus does, onto its shards) ORs each group with a policy that is
-- no wider than all of them together.  Each policy's comment records a fingerprint of what
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

-- The fingerprint of what django_rls asks for, recorded in each policy's comment.
CREATE FUNCTION rls._policy_hash(permissive boolean, command text, to_role text,
                                 using_expr text, check_expr text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT md5(concat_ws('|', permissive, command, to_role, using_expr, check_expr)) $$;
COMMENT ON FUNCTION rls._policy_hash(boolean, text, text, text, text) IS
'Internal: fingerprint of a requested policy.';

-- True when the policy exists as requested and nobody edited it since.
CREATE FUNCTION rls._policy_matches(tbl regclass, policy_name name, wanted text)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT obj_description(p.oid, 'pg_policy')
                            = format('django_rls %s %s', wanted, rls._policy_fingerprint(p))
                       FROM pg_catalog.pg_policy p
                      WHERE p.polrelid = tbl AND p.polname = policy_name), false)
$$;
COMMENT ON FUNCTION rls._policy_matches(regclass, name, text) IS
'Internal: whether a policy exists exactly as django_rls created it.';

-- Create, replace or keep one policy; returns true when it changed anything.
CREATE FUNCTION rls._ensure_policy(tbl regclass, policy_name name, permissive boolean,
                                   command text, to_role text,
                                   using_expr text, check_expr text)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    wanted text := rls._policy_hash(permissive, command, to_role, using_expr, check_expr);
    created pg_catalog.pg_policy;
BEGIN
    IF rls._policy_matches(tbl, policy_name, wanted) THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_policy WHERE polrelid = tbl AND polname = policy_name) THEN
        EXECUTE format('DROP POLICY %I ON %s', policy_name, tbl);
    END IF;

    EXECUTE format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s',
                   policy_name, tbl,
                   CASE WHEN permissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                   upper(command),
                   CASE WHEN to_role = 'public' THEN 'PUBLIC' ELSE quote_ident(to_role) END,
                   CASE WHEN using_expr IS NOT NULL THEN format(' USING (%s)', using_expr) ELSE '' END,
                   CASE WHEN check_expr IS NOT NULL THEN format(' WITH CHECK (%s)', check_expr) ELSE '' END);

    SELECT * INTO created FROM pg_catalog.pg_policy
     WHERE polrelid = tbl AND polname = policy_name;
    EXECUTE format('COMMENT ON POLICY %I ON %s IS %L', policy_name, tbl,
                   format('django_rls %s %s', wanted, rls._policy_fingerprint(created)));
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls._ensure_policy(regclass, name, boolean, text, text, text, text) IS
'Internal: create or replace one policy unless it already matches.';

-- Check a group's arguments and expand it into one policy per command.
CREATE FUNCTION rls._group_policies(tbl regclass, group_name text, using_expr text,
                                    check_expr text, commands text[], to_role text)
RETURNS TABLE (policy_name name, command text, policy_using text, policy_check text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
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
                  HINT = 'Pass the role''s name as it is, without quotes (to_role => ''my-app''), create the role first, or pass ''public''.';
    END IF;
    check_expr := rls._policy_text(coalesce(nullif(btrim(check_expr), ''), using_expr));
    using_expr := rls._policy_text(using_expr);
    RETURN QUERY
        SELECT format('rls_%s_%s', group_name, c)::name, c,
               CASE WHEN c <> 'insert' THEN using_expr END,
               CASE WHEN c IN ('insert', 'update') THEN check_expr END
          FROM unnest(ARRAY['select', 'insert', 'update', 'delete']) AS c
         WHERE c = ANY (commands);
END
$$;
COMMENT ON FUNCTION rls._group_policies(regclass, text, text, text, text[], text) IS
'Internal: validate a policy group and list the policies it consists of.';

-- What the permissive rls_base_<command> policy of a table holds: the
-- conjunction of the USING and of the WITH CHECK expressions of the
-- restrictive groups for that command, as the catalog holds them (deparsed
-- with a fixed search_path, so every name is qualified and the text does not
-- depend on the caller's), 'true' where no group covers the command, and
-- NULL where the command takes no such expression.
CREATE FUNCTION rls._base_policy(tbl regclass, command text)
RETURNS TABLE (policy_using text, policy_check text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH groups AS (
        SELECT pg_get_expr(p.polqual, p.polrelid) AS qual,
               pg_get_expr(p.polwithcheck, p.polrelid) AS checks, p.polname
          FROM pg_catalog.pg_policy p
         WHERE p.polrelid = tbl AND NOT p.polpermissive
           AND p.polname ~ format('^rls_.+_%s$', command)
    )
    SELECT CASE WHEN command <> 'insert'
                THEN coalesce((SELECT string_agg(format('(%s)', qual), ' AND ' ORDER BY polname)
                                 FROM groups WHERE qual IS NOT NULL), 'true') END,
           CASE WHEN command IN ('insert', 'update')
                THEN coalesce((SELECT string_agg(format('(%s)', coalesce(checks, qual)), ' AND ' ORDER BY polname)
                                 FROM groups WHERE coalesce(checks, qual) IS NOT NULL), 'true') END
$$;
COMMENT ON FUNCTION rls._base_policy(regclass, text) IS
'Internal: the expressions of a table''s permissive rls_base_<command> policy (the conjunction of its groups''s).';

-- Keep the permissive rls_base_<command> policies and the table's RLS
-- switches in step with the restrictive groups; returns true when it changed
-- anything.  A table protected before rls_base_<command> existed loses its
-- single rls_base USING (true) here.
CREATE FUNCTION rls._sync_table(tbl regclass)
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    roles text[];
    changed boolean := false;
    enabled boolean;
    forced boolean;
    base name;
    cmd text;
    expr record;
BEGIN
    -- Role names as pg_roles spells them (not regrole's quoted form): to_role
    -- is a name, quoted once where a statement is built.
    SELECT array_agg(DISTINCT coalesce(a.rolname::text, 'public'))
      INTO roles
      FROM pg_catalog.pg_policy p
     CROSS JOIN unnest(p.polroles) AS r
      LEFT JOIN pg_catalog.pg_roles a ON a.oid = r
     WHERE p.polrelid = tbl AND p.polname LIKE 'rls\_%' AND p.polname !~ '^rls_base(_(select|insert|update|delete))?$'
       AND NOT p.polpermissive;

    IF EXISTS (SELECT FROM pg_catalog.pg_policy WHERE polrelid = tbl AND polname = 'rls_base') THEN
        EXECUTE format('DROP POLICY rls_base ON %s', tbl);
        changed := true;
    END IF;
    IF roles IS NULL THEN
        FOR base IN
            SELECT polname FROM pg_catalog.pg_policy
             WHERE polrelid = tbl AND polname ~ '^rls_base_(select|insert|update|delete)$'
        LOOP
            EXECUTE format('DROP POLICY %I ON %s', base, tbl);
            changed := true;
        END LOOP;
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

    IF cardinality(roles) > 1 THEN
        RAISE EXCEPTION 'django_rls policy groups on % apply to different roles (%)', tbl, array_to_string(roles, ', ')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Protect every group of one table for the same role.';
    END IF;
    FOREACH cmd IN ARRAY ARRAY['select', 'insert', 'update', 'delete'] LOOP
        SELECT * INTO expr FROM rls._base_policy(tbl, cmd);
        changed := rls._ensure_policy(tbl, format('rls_base_%s', cmd)::name, true, cmd, roles[1],
                                      expr.policy_using, expr.policy_check) OR changed;
    END LOOP;

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
'Internal: keep the rls_base_<command> policies and ENABLE/FORCE ROW LEVEL SECURITY in step with the policy groups.';

CREATE FUNCTION rls.protect(tbl regclass, group_name text, using_expr text,
                            check_expr text DEFAULT NULL,
                            commands text[] DEFAULT ARRAY['select', 'insert', 'update', 'delete'],
                            to_role text DEFAULT 'public')
RETURNS boolean
LANGUAGE plpgsql
AS $$
DECLARE
    spec record;
    stale name;
    changed boolean := false;
BEGIN
    FOR spec IN SELECT * FROM rls._group_policies(tbl, group_name, using_expr, check_expr, commands, to_role) LOOP
        changed := rls._ensure_policy(tbl, spec.policy_name, false, spec.command, to_role,
                                      spec.policy_using, spec.policy_check) OR changed;
    END LOOP;
    FOR stale IN
        SELECT polname FROM pg_catalog.pg_policy
         WHERE polrelid = tbl
           AND polname IN (SELECT format('rls_%s_%s', group_name, c)
                             FROM unnest(ARRAY['select', 'insert', 'update', 'delete']) AS c
                            WHERE c <> ALL (commands))
    LOOP
        EXECUTE format('DROP POLICY %I ON %s', stale, tbl);
        changed := true;
    END LOOP;
    RETURN rls._sync_table(tbl) OR changed;
END
$$;
COMMENT ON FUNCTION rls.protect(regclass, text, text, text, text[], text) IS
'Protect a table with a named group of restrictive policies (one per command); returns true when anything changed. Rows must satisfy using_expr to be seen, updated or deleted, and check_expr (default: using_expr) to be written.';

CREATE FUNCTION rls.group_in_sync(tbl regclass, group_name text, using_expr text,
                                  check_expr text DEFAULT NULL,
                                  commands text[] DEFAULT ARRAY['select', 'insert', 'update', 'delete'],
                                  to_role text DEFAULT 'public')
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT bool_and(rls._policy_matches(tbl, g.policy_name,
                                        rls._policy_hash(false, g.command, to_role, g.policy_using, g.policy_check)))
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy p
                            WHERE p.polrelid = tbl
                              AND p.polname IN (SELECT format('rls_%s_%s', group_name, c)
                                                  FROM unnest(ARRAY['select', 'insert', 'update', 'delete']) AS c
                                                 WHERE c <> ALL (commands)))
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = tbl AND p.polname = 'rls_base')
           AND (SELECT bool_and(rls._policy_matches(tbl, format('rls_base_%s', c)::name,
                                                    rls._policy_hash(true, c, to_role, b.policy_using, b.policy_check)))
                  FROM unnest(ARRAY['select', 'insert', 'update', 'delete']) AS c,
                       LATERAL rls._base_policy(tbl, c) AS b)
           AND (SELECT relrowsecurity AND relforcerowsecurity FROM pg_catalog.pg_class WHERE oid = tbl)
      FROM rls._group_policies(tbl, group_name, using_expr, check_expr, commands, to_role) AS g
$$;
COMMENT ON FUNCTION rls.group_in_sync(regclass, text, text, text, text[], text) IS
'Whether rls.protect() with these arguments would change nothing (read-only; for drift checks).';

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
AS $$ SELECT rls._protect_by_key(tbl, 'site', site_column, 'site', to_role) $$;
COMMENT ON FUNCTION rls.protect_by_site(regclass, name, text) IS
'Protect a table so that only rows of the context''s site can be seen or written.';

CREATE FUNCTION rls.protect_by_owner(tbl regclass, owner_column name DEFAULT 'user_id',
                                     to_role text DEFAULT 'public')
RETURNS boolean
LANGUAGE sql
AS $$ SELECT rls._protect_by_key(tbl, 'owner', owner_column, 'user', to_role) $$;
COMMENT ON FUNCTION rls.protect_by_owner(regclass, name, text) IS
'Protect a table so that only rows owned by the context''s user can be seen or written.';

CREATE FUNCTION rls.protect_by_site_and_owner(tbl regclass, site_column name DEFAULT 'site_id',
                                              owner_column name DEFAULT 'user_id',
                                              to_role text DEFAULT 'public')
RETURNS boolean
LANGUAGE plpgsql
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
AS $$
DECLARE
    pol name;
    changed boolean := false;
BEGIN
    FOR pol IN
        SELECT polname FROM pg_catalog.pg_policy
         WHERE polrelid = tbl AND polname !~ '^rls_base(_(select|insert|update|delete))?$'
           AND polname ~ '^rls_.+_(select|insert|update|delete)$'
           -- A group's own four names only: a prefix pattern would also take the policies of
           -- every group whose name begins with this one's and an underscore (site_archive
           -- beside site), and leave the table without them, or without row level security.
           AND (group_name IS NULL
                OR polname::text IN (SELECT format('rls_%s_%s', group_name, c)
                                       FROM unnest(ARRAY['select', 'insert', 'update', 'delete']) AS c))
    LOOP
        EXECUTE format('DROP POLICY %I ON %s', pol, tbl);
        changed := true;
    END LOOP;
    RETURN rls._sync_table(tbl) OR changed;
END
$$;
COMMENT ON FUNCTION rls.unprotect(regclass, text) IS
'Remove one policy group (or all of django_rls''s policies) from a table; row level security is switched off once no policy is left.';

