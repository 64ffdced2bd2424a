-------------------------------------------------------------------------------
-- Status: every protected table, its policies and problems (both modes)
-------------------------------------------------------------------------------

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
   AND c.relnamespace NOT IN (SELECT n.oid FROM pg_catalog.pg_namespace n
                               WHERE n.nspname IN ('pg_catalog', 'information_schema', 'rls_audit'))
   AND (c.relrowsecurity OR EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid));
COMMENT ON VIEW rls.status IS
'Every table under row level security, its policies and the problems rls.problems found for it.';

GRANT SELECT ON rls.problems, rls.status TO PUBLIC;
