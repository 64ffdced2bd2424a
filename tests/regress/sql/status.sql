--
-- rls.status and rls.problems find every pitfall they know about.
--
\set VERBOSITY terse
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_rls_owner;
DROP ROLE IF EXISTS regress_rls_app;
DROP ROLE IF EXISTS regress_rls_super;
DROP ROLE IF EXISTS regress_rls_bypasser;
DROP ROLE IF EXISTS regress_rls_middle;
RESET client_min_messages;

CREATE EXTENSION django_rls;
CREATE ROLE regress_rls_owner;
CREATE ROLE regress_rls_app LOGIN;
CREATE ROLE regress_rls_super LOGIN SUPERUSER;
CREATE SCHEMA regress_rls AUTHORIZATION regress_rls_owner;
SET search_path = regress_rls;

-- The application role as rls_roles leaves it: no TEMPORARY right on the
-- database (PUBLIC has it by default) and a search_path with pg_temp last.
DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); END $$;
DO $$ BEGIN EXECUTE format('ALTER ROLE regress_rls_app IN DATABASE %I SET search_path = public, pg_temp', current_database()); END $$;
-- Statement-bound, so injected SQL cannot call the setter functions.
ALTER ROLE regress_rls_app SET django_rls.statement_bound = on;

-- A clean setup has no problems.
CREATE TABLE clean (id int PRIMARY KEY, site_id int);
ALTER TABLE clean OWNER TO regress_rls_owner;
SELECT rls.protect_by_site('clean', to_role => 'regress_rls_app');
SELECT * FROM rls.problems;

-- RLS enabled without FORCE, and RLS enabled without any policy.
CREATE TABLE no_force (id int, site_id int);
ALTER TABLE no_force OWNER TO regress_rls_owner;
SELECT rls.protect_by_site('no_force', to_role => 'regress_rls_app');
ALTER TABLE no_force NO FORCE ROW LEVEL SECURITY;
CREATE TABLE no_policy (id int);
ALTER TABLE no_policy ENABLE ROW LEVEL SECURITY;
-- Policies present but RLS switched off.
CREATE TABLE switched_off (id int, site_id int);
SELECT rls.protect_by_site('switched_off', to_role => 'regress_rls_app');
ALTER TABLE switched_off DISABLE ROW LEVEL SECURITY;
-- Only restrictive policies: nobody sees anything.
CREATE TABLE only_restrictive (id int, site_id int);
ALTER TABLE only_restrictive ENABLE ROW LEVEL SECURITY;
CREATE POLICY r ON only_restrictive AS RESTRICTIVE USING (site_id = rls.site_id());
-- Policies for a superuser and for the table's owner, which bypass them.
CREATE TABLE for_super (id int, site_id int);
SELECT rls.protect_by_site('for_super', to_role => 'regress_rls_super');
CREATE TABLE for_owner (id int, site_id int);
ALTER TABLE for_owner OWNER TO regress_rls_owner;
SELECT rls.protect_by_site('for_owner', to_role => 'regress_rls_owner');
-- A view without security_invoker and a materialized view (a view with
-- security_invoker, PostgreSQL 15+: pg15_features.sql).
CREATE VIEW leaky_view AS SELECT * FROM clean;
CREATE MATERIALIZED VIEW copied AS SELECT * FROM clean;
-- A partition without RLS of a protected partitioned table.
CREATE TABLE parted (id int, site_id int) PARTITION BY LIST (site_id);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1);
CREATE TABLE parted_2 PARTITION OF parted FOR VALUES IN (2);
SELECT rls.protect_by_site('parted', to_role => 'regress_rls_app');
SELECT rls.protect_by_site('parted_2', to_role => 'regress_rls_app');
-- The application role may create temporary objects again, and searches pg_temp first.
DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database()); END $$;
DO $$ BEGIN EXECUTE format('ALTER ROLE regress_rls_app IN DATABASE %I SET search_path = pg_temp, public', current_database()); END $$;

SELECT table_name, object_name, problem FROM rls.problems ORDER BY 1, 2, 3;
SELECT hint FROM rls.problems WHERE problem LIKE '%temporary tables%' OR problem LIKE '%search_path%' ORDER BY 1;
-- No search_path of its own: the server default searches pg_temp first.
DO $$ BEGIN EXECUTE format('ALTER ROLE regress_rls_app IN DATABASE %I RESET search_path', current_database()); END $$;
SELECT problem FROM rls.problems WHERE problem LIKE '%search_path%' ORDER BY 1;
-- A search_path set for the role in every database counts too; the
-- database-specific setting wins over it.
ALTER ROLE regress_rls_app SET search_path = public, "pg_temp";
SELECT problem FROM rls.problems WHERE problem LIKE '%search_path%' ORDER BY 1;
DO $$ BEGIN EXECUTE format('ALTER ROLE regress_rls_app IN DATABASE %I SET search_path = "$user", public', current_database()); END $$;
SELECT problem FROM rls.problems WHERE problem LIKE '%search_path%' ORDER BY 1;
ALTER ROLE regress_rls_app RESET search_path;
-- Neither statement-bound nor signatures required: injection can choose
-- a context.  Either switch, for the role or in this database, closes it.
ALTER ROLE regress_rls_app RESET django_rls.statement_bound;
SELECT object_name, problem FROM rls.problems WHERE problem LIKE '%statement_bound%';
ALTER ROLE regress_rls_app SET django_rls.require_signature = on;
SELECT count(*) AS unbound FROM rls.problems WHERE problem LIKE '%statement_bound%';
ALTER ROLE regress_rls_app RESET django_rls.require_signature;
DO $$ BEGIN EXECUTE format('ALTER ROLE regress_rls_app IN DATABASE %I SET django_rls.statement_bound = on', current_database()); END $$;
SELECT count(*) AS unbound FROM rls.problems WHERE problem LIKE '%statement_bound%';
-- As at login, the role's setting in this database wins over its setting for every database.
ALTER ROLE regress_rls_app SET django_rls.statement_bound = off;
SELECT count(*) AS unbound FROM rls.problems WHERE problem LIKE '%statement_bound%';
ALTER ROLE regress_rls_app RESET django_rls.statement_bound;
SELECT count(*) AS unbound FROM rls.problems WHERE problem LIKE '%statement_bound%';
DO $$ BEGIN EXECUTE format('ALTER ROLE regress_rls_app IN DATABASE %I RESET django_rls.statement_bound', current_database()); END $$;
ALTER ROLE regress_rls_app SET django_rls.statement_bound = on;
SELECT table_name, problems FROM rls.status WHERE table_name::text LIKE '%no_force' OR table_name::text LIKE '%clean' ORDER BY 1;

-- An application role that can SET ROLE to a BYPASSRLS role, to a superuser
-- (here through a role in between) or to a table's owner bypasses the
-- policies with one statement.
CREATE ROLE regress_rls_bypasser NOLOGIN BYPASSRLS;
CREATE ROLE regress_rls_middle NOLOGIN;
GRANT regress_rls_bypasser TO regress_rls_app;
GRANT regress_rls_super TO regress_rls_middle;
GRANT regress_rls_middle TO regress_rls_app;
SELECT table_name, object_name, problem FROM rls.problems WHERE problem LIKE '%SET ROLE%' ORDER BY 1, 2, 3;
SELECT DISTINCT hint FROM rls.problems WHERE problem LIKE '%SET ROLE%' ORDER BY 1;
REVOKE regress_rls_bypasser FROM regress_rls_app;
REVOKE regress_rls_middle FROM regress_rls_app;
GRANT regress_rls_owner TO regress_rls_app;
SELECT table_name, object_name, problem FROM rls.problems WHERE problem LIKE '%SET ROLE%' ORDER BY 1, 2, 3;
REVOKE regress_rls_owner FROM regress_rls_app;
SELECT count(*) AS set_role_problems FROM rls.problems WHERE problem LIKE '%SET ROLE%';
DROP ROLE regress_rls_bypasser;
DROP ROLE regress_rls_middle;

-- The application role can read both views (they hold no row data).
SET SESSION AUTHORIZATION regress_rls_app;
SELECT count(*) > 0 AS sees_problems FROM rls.problems;
SELECT count(*) > 0 AS sees_status FROM rls.status;
RESET SESSION AUTHORIZATION;

DROP SCHEMA regress_rls CASCADE;
DROP EXTENSION django_rls;
DROP ROLE regress_rls_owner;
DROP ROLE regress_rls_app;
DROP ROLE regress_rls_super;
