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

-- Whether a django_rls switch is on for a role in this database: the most
-- specific ALTER ROLE / ALTER DATABASE setting, else the server's own value
-- (configuration file or command line), else off.
CREATE FUNCTION rls._role_switch(role_oid oid, name text)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        (SELECT substr(c, length(name) + 2)::boolean
           FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) AS c
          WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))
            AND s.setrole IN (0, role_oid)
            AND c LIKE name || '=%'
          ORDER BY s.setrole <> 0 DESC, s.setdatabase <> 0 DESC
          LIMIT 1),
        (SELECT g.reset_val::boolean
           FROM pg_catalog.pg_settings g
          WHERE g.name = _role_switch.name AND g.source IN ('configuration file', 'command line')),
        false)
$$;
COMMENT ON FUNCTION rls._role_switch(oid, text) IS
'Internal: whether a boolean django_rls setting is on for a role in the current database.';

CREATE VIEW rls.problems AS
WITH protected AS (SELECT * FROM rls._protected_tables),
policy_roles AS (
    SELECT p.polrelid AS oid, r AS role_oid
      FROM pg_catalog.pg_policy p, unnest(p.polroles) AS r
),
app_roles AS (SELECT role_oid FROM rls._app_roles)
SELECT table_name, object_name, problem, hint FROM rls._common_problems
UNION ALL
SELECT s.table_name, s.table_name::text,
       format('audit triggers for %s are missing, so those writes go unrecorded', array_to_string(s.missing_triggers, ', ')),
       format('SELECT rls_audit.enable(%L) as the table owner, with the same options.', s.table_name)
  FROM rls_audit.status s
 WHERE cardinality(s.missing_triggers) > 0
UNION ALL
SELECT s.table_name, c::text,
       format('%s is a partition or child of audited table %s but is not audited, so writes that name it go unrecorded', c, s.table_name),
       format('SELECT rls_audit.enable(%L) as the table owner: it audits every partition and child.', s.table_name)
  FROM rls_audit.status s, unnest(s.unaudited_children) c
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
   AND pg_catalog.pg_has_role(r.oid, 'pg_read_server_files', 'MEMBER')
UNION ALL
SELECT NULL, r.rolname::text,
       format('role %s may set any context with rls.set_context(), so SQL injected into the application''s statements '
              'can switch to another site: neither django_rls.statement_bound nor django_rls.require_signature is on for it',
              r.rolname),
       format('As a superuser: ALTER ROLE %I SET django_rls.statement_bound = on (manage.py rls_roles does this), '
              'or require signed contexts with django_rls.require_signature.', r.rolname)
  FROM pg_catalog.pg_roles r
 WHERE r.oid IN (SELECT role_oid FROM app_roles)
   AND NOT rls._role_switch(r.oid, 'django_rls.statement_bound')
   AND NOT rls._role_switch(r.oid, 'django_rls.require_signature')
UNION ALL
-- PostgreSQL 14 cannot reserve the django_rls. prefix (MarkGUCPrefixReserved
-- is 15+): any role may SET a django_rls.* name the extension does not define,
-- so a policy that reads one with current_setting() reads what the caller chose.
SELECT t.table_name, p.polname::text,
       format('policy %s reads a django_rls.* setting with current_setting(), and on PostgreSQL 14 any role may SET '
              'such a name when the extension does not define it', p.polname),
       'Read the context with rls.site_id(), rls.user_id(), rls.claim() or rls.context() (rls.protect_by_site and friends do).'
  FROM protected t
  JOIN pg_catalog.pg_policy p ON p.polrelid = t.oid
 WHERE pg_catalog.current_setting('server_version_num')::int < 150000
   AND concat(pg_catalog.pg_get_expr(p.polqual, p.polrelid), ' ', pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))
       ~ 'current_setting\(''django_rls\.'
UNION ALL
-- The audit log's default partition is marked for pg_dump except on
-- PostgreSQL 14, where marking it makes pg_dump crash (21_audit_log.sql).
SELECT NULL, 'rls_audit.statements_default',
       'rows of the audit trail wait in rls_audit.statements_default, which pg_dump leaves out (the extension was installed '
       'on PostgreSQL 14, whose pg_dump cannot dump that partition)',
       'SELECT rls_audit.ensure_partitions(); (as a superuser or a role granted it) moves them into monthly partitions, which pg_dump includes.'
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_extension e
                    WHERE e.extname = 'django_rls' AND 'rls_audit.statements_default'::regclass::oid = ANY (e.extconfig))
   AND EXISTS (SELECT FROM rls_audit.statements_default);
COMMENT ON VIEW rls.problems IS
'Every row level security problem django_rls can find: one row per problem, with the table it concerns (NULL for server-wide ones) and a hint.';

GRANT SELECT ON rls.problems TO PUBLIC;
