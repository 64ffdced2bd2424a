-------------------------------------------------------------------------------
-- Problems both modes report (the C library's sql/install/30_status.sql and
-- the SQL-only mode's sql/sqlonly/30_status.sql add their own)
-------------------------------------------------------------------------------

-- The search_path a role starts with in this database, from the most specific
-- ALTER ROLE / ALTER DATABASE setting (role and database, role, database,
-- every role); NULL when none is set, so the server's default applies.
CREATE FUNCTION rls._role_search_path(role_oid oid)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT substr(c, length('search_path=') + 1)
      FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) AS c
     WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))
       AND s.setrole IN (0, role_oid)
       AND c LIKE 'search\_path=%'
     ORDER BY s.setrole <> 0 DESC, s.setdatabase <> 0 DESC
     LIMIT 1
$$;
COMMENT ON FUNCTION rls._role_search_path(oid) IS
'Internal: the search_path a role starts with in the current database (NULL when only the server default applies).';

-- Whether a search_path setting searches pg_temp last: only then can no
-- temporary object hide a table, function or type of the same name.
CREATE FUNCTION rls._ends_with_pg_temp(path text)
RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(btrim((regexp_split_to_array(btrim(path), '\s*,\s*'))[
               cardinality(regexp_split_to_array(btrim(path), '\s*,\s*'))], '"') = 'pg_temp', false)
$$;
COMMENT ON FUNCTION rls._ends_with_pg_temp(text) IS
'Internal: whether a search_path setting lists pg_temp last.';

-- Tables under row level security (but django_rls's own audit log).
CREATE VIEW rls._protected_tables AS
SELECT c.oid::regclass AS table_name, c.oid, c.relowner, c.relkind,
       c.relrowsecurity, c.relforcerowsecurity
  FROM pg_catalog.pg_class c
 WHERE c.relkind IN ('r', 'p')
   AND c.relnamespace NOT IN (SELECT n.oid FROM pg_catalog.pg_namespace n
                               WHERE n.nspname IN ('pg_catalog', 'information_schema', 'rls_audit'))
   AND (c.relrowsecurity OR EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid));
COMMENT ON VIEW rls._protected_tables IS
'Internal: the tables under row level security that rls.problems looks at.';

-- Roles the policies of protected tables apply to, but for those reported
-- already as bypassing them (superusers, BYPASSRLS, owners).  Not the SQL-only
-- mode's django_rls_member either (sql/sqlonly/27_membership.sql): its policy
-- django_rls_member_of is read only by a function with a pinned search_path,
-- as a role that cannot log in, set a context or create anything.
CREATE VIEW rls._app_roles AS
WITH policy_roles AS (
    SELECT p.polrelid AS oid, r AS role_oid
      FROM pg_catalog.pg_policy p, unnest(p.polroles) AS r
     WHERE p.polname <> 'django_rls_member_of'
)
SELECT DISTINCT pr.role_oid
  FROM rls._protected_tables t
  JOIN policy_roles pr ON pr.oid = t.oid
  JOIN pg_catalog.pg_roles r ON r.oid = pr.role_oid
 WHERE NOT r.rolsuper AND NOT r.rolbypassrls
   AND NOT EXISTS (SELECT FROM rls._protected_tables o JOIN policy_roles po ON po.oid = o.oid
                    WHERE po.role_oid = r.oid AND pg_catalog.pg_has_role(r.oid, o.relowner, 'MEMBER'));
COMMENT ON VIEW rls._app_roles IS
'Internal: the roles policies apply to that do not bypass them.';

CREATE VIEW rls._common_problems AS
WITH protected AS (SELECT * FROM rls._protected_tables),
policy_roles AS (
    SELECT p.polrelid AS oid, r AS role_oid
      FROM pg_catalog.pg_policy p, unnest(p.polroles) AS r
),
app_roles AS (SELECT role_oid FROM rls._app_roles)
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
       'Protect the table (rls.protect_by_site and friends). Disabling row level security instead opens every row to every role with privileges on it: do that only for a table that holds no per-site or per-user rows.'
  FROM protected t
 WHERE t.relrowsecurity AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid)
UNION ALL
SELECT t.table_name, t.table_name::text,
       'the table has only restrictive policies, so no role sees any row',
       'Add a permissive policy; rls.protect() creates rls_base_<command> for this.'
  FROM protected t
 WHERE EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid)
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = t.oid AND p.polpermissive)
UNION ALL
SELECT DISTINCT t.table_name, r.rolname::text,
       format('role %s is named in the policies but %s', r.rolname,
              CASE WHEN r.rolsuper THEN 'is a superuser, so it bypasses row level security'
                   WHEN r.rolbypassrls THEN 'has BYPASSRLS, so it bypasses row level security'
                   WHEN r.oid = t.relowner THEN 'owns the table, so it can switch row level security off'
                   ELSE format('can SET ROLE to %s, the table''s owner, and switch row level security off',
                               t.relowner::regrole) END),
       'Protect the table for the role the application connects as, and make that a role that is not a superuser, has NOBYPASSRLS and owns no protected table (manage.py rls_roles creates one); never demote the role you administer the server with.'
  FROM protected t
  JOIN policy_roles pr ON pr.oid = t.oid
  JOIN pg_catalog.pg_roles r ON r.oid = pr.role_oid
 WHERE r.rolsuper OR r.rolbypassrls OR pg_catalog.pg_has_role(r.oid, t.relowner, 'MEMBER')
UNION ALL
SELECT DISTINCT NULL::regclass, r.rolname::text,
       format('role %s is named in the policies but can SET ROLE to %s, which %s, so any SQL it runs can bypass row level security',
              r.rolname, b.rolname, CASE WHEN b.rolsuper THEN 'is a superuser' ELSE 'has BYPASSRLS' END),
       format('As a superuser, revoke the membership that lets %I become %I (REVOKE %I FROM %I when it is direct; '
              'manage.py rls_roles does this for the application role).', r.rolname, b.rolname, b.rolname, r.rolname)
  FROM pg_catalog.pg_roles r
  JOIN pg_catalog.pg_roles b ON b.oid <> r.oid AND (b.rolsuper OR b.rolbypassrls)
 WHERE r.oid IN (SELECT role_oid FROM app_roles)
   AND pg_catalog.pg_has_role(r.oid, b.oid, 'MEMBER')
UNION ALL
SELECT DISTINCT t.table_name, r.rolname::text,
       format('role %s has BYPASSRLS and privileges on the table, so it sees every row', r.rolname),
       format('If %I is not a maintenance or backup role that is meant to see every row, revoke its privileges on %s '
              '(or ALTER ROLE %I NOBYPASSRLS, as a superuser connected as another role).', r.rolname, t.table_name, r.rolname)
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
            WHEN pg_catalog.current_setting('server_version_num')::int < 150000
            THEN format('PostgreSQL 14 has no security_invoker views: drop %s, revoke the application role''s privileges '
                        'on it, or replace it with a set-returning function, which runs with its caller''s rights.', v.oid::regclass)
            ELSE format('ALTER VIEW %s SET (security_invoker = true).', v.oid::regclass) END
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
-- A policy is django_rls's by its name or by the mark rls._ensure_policy() leaves in its comment,
-- which ALTER POLICY ... RENAME keeps: one renamed away from its name (where django_rls no longer
-- finds it to replace it) is reported, and checked whatever its name.
SELECT t.table_name, p.polname::text,
       format(CASE WHEN named THEN 'policy %s was changed outside django_rls'
                   WHEN changed THEN 'policy %s was renamed and changed outside django_rls'
                   ELSE 'policy %s was renamed outside django_rls' END, p.polname),
       CASE WHEN named THEN 'Run rls_apply (or the rls.protect call that created it) again to restore it.'
            ELSE format('DROP POLICY %I ON %s, then run rls_apply (or the rls.protect call that created it) again.',
                        p.polname, t.table_name) END
  FROM protected t
  JOIN pg_catalog.pg_policy p ON p.polrelid = t.oid,
       LATERAL (SELECT p.polname ~ '^rls_.+_(select|insert|update|delete)$' OR p.polname = 'rls_base' AS named,
                       coalesce(obj_description(p.oid, 'pg_policy'), '') AS mark) m,
       LATERAL (SELECT split_part(m.mark, ' ', 3) IS DISTINCT FROM rls._policy_fingerprint(p) AS changed) c
 WHERE p.polname <> 'django_rls_member_of'
   AND (m.named AND c.changed OR NOT m.named AND m.mark LIKE 'django\_rls %')
UNION ALL
SELECT NULL, r.rolname::text,
       format('role %s may create temporary tables in database %s, and a temporary table hides the table of the same name '
              'from every later query on the same pooled or reused connection', r.rolname, current_database()),
       format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC, %I; then GRANT TEMPORARY ON DATABASE %I to the roles that need it, '
              'not to %I (manage.py rls_roles does this).', current_database(), r.rolname, current_database(), r.rolname)
  FROM pg_catalog.pg_roles r
 WHERE r.oid IN (SELECT role_oid FROM app_roles)
   AND pg_catalog.has_database_privilege(r.oid, current_database(), 'TEMPORARY')
UNION ALL
SELECT NULL, r.rolname::text,
       CASE WHEN rls._role_search_path(r.oid) IS NULL
            THEN format('role %s has no search_path of its own in database %s, so the server default searches pg_temp first',
                        r.rolname, current_database())
            ELSE format('role %s has search_path %s in database %s, which does not search pg_temp last',
                        r.rolname, rls._role_search_path(r.oid), current_database()) END,
       format('ALTER ROLE %I IN DATABASE %I SET search_path = public, pg_temp (manage.py rls_roles does this).',
              r.rolname, current_database())
  FROM pg_catalog.pg_roles r
 WHERE r.oid IN (SELECT role_oid FROM app_roles)
   AND NOT rls._ends_with_pg_temp(rls._role_search_path(r.oid))
UNION ALL
SELECT c.table_name, coalesce(c.object_name, c.table_name::text), format(c.problem, c.table_name::text), c.hint
  FROM rls._citus_problems() AS c
UNION ALL
SELECT NULL, r.rolname::text,
       format('role %s may run statements on the Citus workers itself, past the coordinator, with %s',
              r.rolname, string_agg(f::text, ', ' ORDER BY f::text)),
       format('As a superuser: REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC (manage.py rls_roles does this).',
              string_agg(f::text, ', ' ORDER BY f::text))
  FROM pg_catalog.pg_roles r, rls._citus_remote_functions() AS f
 WHERE r.oid IN (SELECT role_oid FROM app_roles)
   AND pg_catalog.has_function_privilege(r.oid, f, 'EXECUTE')
 GROUP BY r.rolname;
COMMENT ON VIEW rls._common_problems IS
'Internal: the problems rls.problems reports in every mode.';

