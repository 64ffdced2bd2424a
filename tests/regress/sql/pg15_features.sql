--
-- What PostgreSQL 15 added that django_rls uses where it exists: GRANT SET ON
-- PARAMETER, a reserved settings prefix, security_invoker views, and a
-- pg_dump that can dump a partition the extension marks.  pg15_features.out
-- is the output on 15 and later, pg15_features_1.out the one on 14, which
-- lacks them all (docs/security.md, "PostgreSQL 14").
--
\set VERBOSITY terse
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_rls_owner;
DROP ROLE IF EXISTS regress_rls_app;
RESET client_min_messages;

CREATE EXTENSION django_rls;
CREATE ROLE regress_rls_owner;
CREATE ROLE regress_rls_app LOGIN;
CREATE SCHEMA regress_rls AUTHORIZATION regress_rls_owner;
GRANT USAGE ON SCHEMA regress_rls TO regress_rls_app;
SET search_path = regress_rls;
-- As rls_roles leaves the application role, so that rls.problems reports
-- only what this file is about.
DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); END $$;
DO $$ BEGIN EXECUTE format('ALTER ROLE regress_rls_app IN DATABASE %I SET search_path = public, pg_temp', current_database()); END $$;

-- GRANT SET ON PARAMETER: even a role granted SET on the parameter cannot
-- set the context, and RESET can only clear it.  (14: no such grant, so
-- every attempt fails for want of the privilege.)
GRANT SET ON PARAMETER django_rls.site TO regress_rls_app;

-- viewpoint from the application role
SET SESSION AUTHORIZATION regress_rls_app;
BEGIN;
SELECT rls.set_context('42', '7');
SAVEPOINT s;
SET django_rls.site = '666'; -- fail
ROLLBACK TO s;
SET LOCAL django_rls.site = '666'; -- fail
ROLLBACK TO s;
SELECT set_config('django_rls.site', '666', true); -- fail
ROLLBACK TO s;
UPDATE pg_settings SET setting = '666' WHERE name = 'django_rls.site'; -- fail
ROLLBACK TO s;
RESET django_rls.site;
SELECT rls.site_id() AS after_reset;
ROLLBACK TO s;
SELECT rls.site_id(), rls.user_id();
COMMIT;
ALTER ROLE regress_rls_app SET django_rls.site = '666'; -- fail
DO $$ BEGIN PERFORM set_config('django_rls.site', '666', false); END $$; -- fail

-- The reserved prefix: no other django_rls.* name can be set.  (14: it can,
-- so a policy that reads one reads what the caller chose.)
SET django_rls.tenant = '2'; -- fail
SELECT current_setting('django_rls.tenant', true) AS tenant;
RESET SESSION AUTHORIZATION;
CREATE TABLE by_setting (id int, site_id int);
INSERT INTO by_setting VALUES (1, 1), (2, 2);
ALTER TABLE by_setting OWNER TO regress_rls_owner;
ALTER TABLE by_setting ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY by_setting_read ON by_setting FOR SELECT TO regress_rls_app
    USING (site_id = current_setting('django_rls.tenant', true)::int);
GRANT SELECT ON by_setting TO regress_rls_app;
SET SESSION AUTHORIZATION regress_rls_app;
SELECT id FROM by_setting;
RESET SESSION AUTHORIZATION;
SELECT object_name, problem, hint FROM rls.problems WHERE table_name = 'by_setting'::regclass;

-- security_invoker views apply their caller's policies, so rls.problems
-- reports only the view without it.  (14: there is no such view, and the
-- hint names what 14 offers instead.)
CREATE TABLE clean (id int PRIMARY KEY, site_id int);
ALTER TABLE clean OWNER TO regress_rls_owner;
SELECT rls.protect_by_site('clean', to_role => 'regress_rls_app');
CREATE VIEW safe_view WITH (security_invoker = true) AS SELECT * FROM clean;
CREATE VIEW leaky_view AS SELECT * FROM clean;
SELECT object_name, problem, hint FROM rls.problems WHERE table_name = 'clean'::regclass ORDER BY 1;

-- SET granted on a django_rls parameter is a problem.  (14: cannot happen.)
GRANT SET ON PARAMETER django_rls.require_signature TO regress_rls_app;
SELECT object_name, problem, hint FROM rls.problems WHERE object_name LIKE 'django_rls.%' ORDER BY 1;

-- The audit log's default partition is dumped with the database.  (14:
-- pg_dump 14 cannot dump it, so it is not marked, and rls.problems reports
-- rows waiting in it until ensure_partitions() moves them to a partition.)
SELECT 'rls_audit.statements_default'::regclass::oid = ANY (extconfig) AS default_partition_dumped
  FROM pg_extension WHERE extname = 'django_rls';
INSERT INTO rls_audit.statements (logged_at, table_oid, table_name, operation, db_role, row_keys)
    VALUES ('2003-04-05', 1, 'old', 'INSERT', 'x', '{1}');
SELECT object_name, problem, hint FROM rls.problems WHERE object_name LIKE 'rls_audit.%';
SELECT rls_audit.ensure_partitions(0);
SELECT tableoid::regclass, table_name FROM rls_audit.statements;
SELECT object_name, problem, hint FROM rls.problems WHERE object_name LIKE 'rls_audit.%';

REVOKE SET ON PARAMETER django_rls.site FROM regress_rls_app;
REVOKE SET ON PARAMETER django_rls.require_signature FROM regress_rls_app;
DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database()); END $$;
DROP SCHEMA regress_rls CASCADE;
DROP EXTENSION django_rls;
DROP ROLE regress_rls_owner;
DROP ROLE regress_rls_app;
