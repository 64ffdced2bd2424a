/*
 * sql/sqlonly/30_status.sql
 *     rls.problems in the SQL-only mode: the problems both modes report
 *     (sql/install/29_problems.sql), and what is weaker without the library.
 */

CREATE VIEW rls.problems AS
SELECT table_name, object_name, problem, hint FROM rls._common_problems
UNION ALL
-- As in the C mode; in this one a table whose columns, key, options or read
-- rule changed since rls_audit.enable() generated its capture is listed too:
-- its audited writes are refused until enable() runs again.
SELECT s.table_name, s.table_name::text,
       format('audit triggers for %s are missing, or the table changed since rls_audit.enable() generated its capture, '
              'so those writes go unrecorded or are refused', array_to_string(s.missing_triggers, ', ')),
       format('SELECT rls_audit.enable(%L) as the table owner, with the same options (manage.py rls_apply does).', s.table_name)
  FROM rls_audit.status s
 WHERE cardinality(s.missing_triggers) > 0
UNION ALL
-- A role that need not sign can choose any context with rls.set_context(),
-- and so can SQL injected into its statements: the SQL-only mode has no
-- statement-bound contexts (docs/security.md).
SELECT NULL::regclass, r.rolname::text,
       format('role %s may set any context with rls.set_context(), so SQL injected into the application''s statements '
              'can switch to another site: the SQL-only mode has no statement-bound contexts and the role is not '
              'required to sign', r.rolname),
       'Set DJANGO_RLS["SIGNING_KEY"] (manage.py rls_keygen) and run manage.py rls_apply --install as the owner: it adds the key and calls rls.require_signature() for the application role.'
  FROM pg_catalog.pg_roles r
 WHERE r.oid IN (SELECT role_oid FROM rls._app_roles)
   AND NOT EXISTS (SELECT FROM rls._signing_role_oids() s WHERE pg_catalog.pg_has_role(r.oid, s, 'MEMBER'))
UNION ALL
-- A role that can act as django_rls_context writes any context directly.
SELECT NULL::regclass, r.rolname::text,
       format('role %s is a member of django_rls_context, so it can write any context without the setter functions',
              r.rolname),
       format('REVOKE django_rls_context FROM %I;', r.rolname)
  FROM pg_catalog.pg_roles r
 WHERE r.oid IN (SELECT role_oid FROM rls._app_roles)
   AND pg_catalog.pg_has_role(r.oid, 'django_rls_context', 'MEMBER')
UNION ALL
SELECT NULL::regclass, 'django_rls_context',
       'role django_rls_context can log in, bypasses row level security or is a superuser',
       'ALTER ROLE django_rls_context NOLOGIN NOBYPASSRLS (as a role with CREATEROLE).'
  FROM pg_catalog.pg_roles r
 WHERE r.rolname = 'django_rls_context' AND (r.rolcanlogin OR r.rolbypassrls OR r.rolsuper);
COMMENT ON VIEW rls.problems IS
'Every row level security problem django_rls can find: one row per problem, with the table it concerns (NULL for server-wide ones) and a hint.';
