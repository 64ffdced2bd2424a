--
-- Policy helpers: site, owner, both, UUID keys, custom groups, idempotence.
--
\set VERBOSITY terse
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_rls_owner;
DROP ROLE IF EXISTS regress_rls_app;
DROP ROLE IF EXISTS regress_rls_bypass;
DROP ROLE IF EXISTS "regress_rls-app";
DROP ROLE IF EXISTS "Regress_RlsApp";
RESET client_min_messages;

CREATE EXTENSION django_rls;
CREATE ROLE regress_rls_owner;
CREATE ROLE regress_rls_app LOGIN;
CREATE ROLE regress_rls_bypass LOGIN BYPASSRLS;
CREATE SCHEMA regress_rls AUTHORIZATION regress_rls_owner;
-- The application role as rls_roles leaves it (no TEMPORARY, pg_temp last); status.sql tests the opposite.
DO $$ BEGIN EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database()); END $$;
DO $$ BEGIN EXECUTE format('ALTER ROLE regress_rls_app IN DATABASE %I SET search_path = public, pg_temp', current_database()); END $$;
ALTER ROLE regress_rls_app SET django_rls.statement_bound = on;
GRANT USAGE ON SCHEMA regress_rls TO regress_rls_app, regress_rls_bypass;

-- A probe that reports every row a query lets it see, like core rowsecurity.sql.
CREATE FUNCTION regress_rls.f_leak(text) RETURNS bool LANGUAGE plpgsql COST 0.0000001
    AS 'BEGIN RAISE NOTICE ''f_leak => %'', $1; RETURN true; END';
GRANT EXECUTE ON FUNCTION regress_rls.f_leak(text) TO PUBLIC;

SET search_path = regress_rls;
CREATE TABLE docs (id bigint PRIMARY KEY, site_id int NOT NULL, user_id bigint, body text);
CREATE TABLE uitems (id int PRIMARY KEY, site uuid NOT NULL, owner uuid NOT NULL, body text);
CREATE TABLE categories (id int PRIMARY KEY, site_id int, name text);
ALTER TABLE docs OWNER TO regress_rls_owner;
ALTER TABLE uitems OWNER TO regress_rls_owner;
ALTER TABLE categories OWNER TO regress_rls_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON docs, uitems, categories TO regress_rls_app;
GRANT SELECT ON docs TO regress_rls_bypass;
-- Test data comes from the superuser: once FORCE is on, the owner sees no rows either.
INSERT INTO docs VALUES (1, 1, 10, 'site 1 by 10'), (2, 1, 11, 'site 1 by 11'),
                        (3, 2, 20, 'site 2 by 20'), (4, 2, 21, 'site 2 by 21');
INSERT INTO uitems VALUES
    (1, 'a0000000-0000-0000-0000-000000000001', 'b0000000-0000-0000-0000-000000000001', 'site a by b1'),
    (2, 'a0000000-0000-0000-0000-000000000001', 'b0000000-0000-0000-0000-000000000002', 'site a by b2'),
    (3, 'a0000000-0000-0000-0000-000000000002', 'b0000000-0000-0000-0000-000000000003', 'site b by b3');
INSERT INTO categories VALUES (1, NULL, 'shared'), (2, 1, 'site 1'), (3, 2, 'site 2');

-- viewpoint from the table owner, who installs the policies
SET ROLE regress_rls_owner;
SELECT rls.protect_by_site('docs', to_role => 'regress_rls_app') AS changed;
SELECT rls.protect_by_site('docs', to_role => 'regress_rls_app') AS changed_again;
SELECT rls.protect_by_site_and_owner('uitems', 'site', 'owner', to_role => 'regress_rls_app') AS changed;
SELECT rls.protect_by_site_and_owner('uitems', 'site', 'owner', to_role => 'regress_rls_app') AS changed_again;
SELECT table_name, rls_enabled, rls_forced, policies FROM rls.status ORDER BY 1;
SELECT polname, pg_get_expr(polqual, polrelid) AS using, pg_get_expr(polwithcheck, polrelid) AS check
  FROM pg_policy WHERE polrelid = 'docs'::regclass ORDER BY 1;
SELECT polname, pg_get_expr(polqual, polrelid) AS using FROM pg_policy
 WHERE polrelid = 'uitems'::regclass AND polcmd = 'r' ORDER BY 1;
-- FORCE applies to the owner: without a context it sees nothing.
SELECT count(*) FROM docs;
RESET ROLE;

-- viewpoint from the application role, no context: nothing to see or write
SET SESSION AUTHORIZATION regress_rls_app;
SET search_path = regress_rls;
SELECT * FROM docs WHERE f_leak(body);
INSERT INTO docs VALUES (5, 1, 10, 'no context'); -- fail
UPDATE docs SET body = 'x' RETURNING id;
DELETE FROM docs RETURNING id;

-- viewpoint from the application role, site 1 (session scope, so that each
-- statement below commits or fails on its own)
SELECT rls.set_context('1', '10', is_local => false);
SELECT * FROM docs WHERE f_leak(body) ORDER BY id;
SELECT count(*) FROM docs WHERE site_id = 2;
INSERT INTO docs VALUES (5, 1, 10, 'site 1 new');
INSERT INTO docs VALUES (6, 2, 10, 'into site 2'); -- fail
UPDATE docs SET body = 'hijacked' WHERE site_id = 2 RETURNING id;
UPDATE docs SET site_id = 2 WHERE id = 1; -- fail
DELETE FROM docs WHERE site_id = 2 RETURNING id;
SELECT id, site_id FROM docs ORDER BY id;

-- viewpoint from the application role, site 2: its rows survived all that
SELECT rls.set_context('2', '20', is_local => false);
SELECT * FROM docs WHERE f_leak(body) ORDER BY id;

-- UUID keys, site and owner both enforced
SELECT rls.set_context('a0000000-0000-0000-0000-000000000001', 'b0000000-0000-0000-0000-000000000001',
                       is_local => false);
SELECT id, body FROM uitems WHERE f_leak(body) ORDER BY id;
INSERT INTO uitems VALUES (4, 'a0000000-0000-0000-0000-000000000001', 'b0000000-0000-0000-0000-000000000002', 'for someone else'); -- fail
INSERT INTO uitems VALUES (4, 'a0000000-0000-0000-0000-000000000002', 'b0000000-0000-0000-0000-000000000001', 'into site b'); -- fail
INSERT INTO uitems VALUES (4, 'a0000000-0000-0000-0000-000000000001', 'b0000000-0000-0000-0000-000000000001', 'mine');
UPDATE uitems SET owner = 'b0000000-0000-0000-0000-000000000002' WHERE id = 1; -- fail
UPDATE uitems SET body = 'hijacked' WHERE id IN (2, 3) RETURNING id;
DELETE FROM uitems WHERE id IN (2, 3) RETURNING id;
SELECT id FROM uitems ORDER BY id;

-- An integer context against a UUID column is a configuration error, not a match.
SELECT rls.set_context('1', '10', is_local => false);
SELECT count(*) FROM uitems; -- fail
SELECT rls.clear_context();
RESET SESSION AUTHORIZATION;

-- viewpoint from a BYPASSRLS role: it sees every row, and rls.problems says so
SET SESSION AUTHORIZATION regress_rls_bypass;
SELECT count(*) FROM regress_rls.docs;
RESET SESSION AUTHORIZATION;
SELECT object_name, problem FROM rls.problems ORDER BY 1, 2;

-- Custom groups AND together with the site group: a "published" rule for
-- reads only on docs; rows shared by all sites (NULL site) on categories,
-- readable everywhere but written only within the current site.
SET ROLE regress_rls_owner;
SELECT rls.protect('docs', 'published', 'body NOT LIKE ''%secret%''', commands => ARRAY['select'],
                   to_role => 'regress_rls_app') AS changed;
SELECT rls.protect('categories', 'site', 'site_id = rls.site_id() OR site_id IS NULL',
                   'site_id = rls.site_id()', to_role => 'regress_rls_app') AS changed;
RESET ROLE;
UPDATE docs SET body = 'site 1 secret' WHERE id = 2;
SET SESSION AUTHORIZATION regress_rls_app;
SELECT rls.set_context('1', '10', is_local => false);
SELECT id, body FROM docs ORDER BY id;
SELECT id, name FROM categories ORDER BY id;
INSERT INTO categories VALUES (4, NULL, 'new shared'); -- fail
UPDATE categories SET name = 'renamed' WHERE id = 1 RETURNING id; -- fail
INSERT INTO categories VALUES (4, 1, 'new site 1');
SELECT rls.clear_context();
RESET SESSION AUTHORIZATION;

-- A changed definition replaces the old one; dropping a group keeps the others.
ALTER TABLE docs ADD COLUMN tenant_id bigint;
UPDATE docs SET tenant_id = site_id + 100;
SET ROLE regress_rls_owner;
SELECT rls.protect_by_site('docs', 'tenant_id', to_role => 'regress_rls_app') AS changed;
SELECT polname, pg_get_expr(polqual, polrelid) AS using FROM pg_policy
 WHERE polrelid = 'docs'::regclass ORDER BY 1;
SELECT rls.unprotect('docs', 'published') AS changed;
SELECT rls.unprotect('docs', 'published') AS changed_again;
SELECT policies FROM rls.status WHERE table_name = 'docs'::regclass;

-- rls.group_in_sync() tells, without changing anything, whether a rerun would.
SELECT rls.group_in_sync('docs', 'site', 'tenant_id = rls.site_id()', to_role => 'regress_rls_app') AS in_sync,
       rls.group_in_sync('docs', 'site', 'site_id = rls.site_id()', to_role => 'regress_rls_app') AS other_expr,
       rls.group_in_sync('docs', 'site', 'tenant_id = rls.site_id()', to_role => 'public') AS other_role,
       rls.group_in_sync('docs', 'site', 'tenant_id = rls.site_id()', commands => '{select}',
                         to_role => 'regress_rls_app') AS fewer_commands;

-- An edit behind django_rls's back is reported, and a rerun repairs it.
ALTER POLICY rls_site_select ON docs USING (true);
SELECT rls.group_in_sync('docs', 'site', 'tenant_id = rls.site_id()', to_role => 'regress_rls_app') AS in_sync_after_edit;
SELECT object_name, problem FROM rls.problems ORDER BY 1, 2;
SELECT rls.protect_by_site('docs', 'tenant_id', to_role => 'regress_rls_app') AS repaired;
SELECT object_name, problem FROM rls.problems ORDER BY 1, 2;

-- Unprotecting everything switches row level security off again.
SELECT rls.unprotect('docs') AS changed;
SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'docs'::regclass;
SELECT count(*) FROM pg_policy WHERE polrelid = 'docs'::regclass;

-- Bad calls say what is wrong.
CREATE VIEW docs_view AS SELECT * FROM docs;
SELECT rls.protect_by_site('docs_view'); -- fail
SELECT rls.protect_by_site('docs', 'no_such_column'); -- fail
SELECT rls.protect_by_site('docs', 'body'); -- fail
SELECT rls.protect('docs', 'Bad-Name', 'true'); -- fail
SELECT rls.protect('docs', 'base', 'true'); -- fail
SELECT rls.protect('docs', 'x', ''); -- fail
SELECT rls.protect('docs', 'x', 'true', commands => ARRAY['select', 'select']); -- fail
SELECT rls.protect('docs', 'x', 'true', commands => ARRAY['truncate']); -- fail
SELECT rls.protect('docs', 'x', 'true', to_role => 'regress_rls_nobody'); -- fail
SELECT rls.protect('uitems', 'extra', 'true', to_role => 'public'); -- fail
RESET ROLE;

-- The application role cannot change policies on tables it does not own.
SET SESSION AUTHORIZATION regress_rls_app;
SELECT rls.unprotect('regress_rls.uitems'); -- fail
ALTER TABLE regress_rls.uitems DISABLE ROW LEVEL SECURITY; -- fail
ALTER TABLE regress_rls.uitems NO FORCE ROW LEVEL SECURITY; -- fail
DROP POLICY rls_site_select ON regress_rls.uitems; -- fail
CREATE POLICY sneak ON regress_rls.uitems USING (true); -- fail
TRUNCATE regress_rls.uitems; -- fail
RESET SESSION AUTHORIZATION;

-- Role names that need quoting are quoted exactly once: rls_base, the policy
-- groups and the drift check all name the same role.
CREATE ROLE "regress_rls-app" LOGIN;
CREATE ROLE "Regress_RlsApp" LOGIN;
GRANT USAGE ON SCHEMA regress_rls TO "regress_rls-app", "Regress_RlsApp";
CREATE TABLE regress_rls.quoted (id int, site_id bigint, user_id bigint);
CREATE TABLE regress_rls."MixedCase" (id int, "SiteId" bigint, user_id bigint);
ALTER TABLE regress_rls.quoted OWNER TO regress_rls_owner;
ALTER TABLE regress_rls."MixedCase" OWNER TO regress_rls_owner;
INSERT INTO regress_rls.quoted VALUES (1, 1, 10), (2, 2, 20);
INSERT INTO regress_rls."MixedCase" VALUES (1, 1, 10), (2, 2, 20);
GRANT SELECT ON regress_rls.quoted TO "regress_rls-app";
GRANT SELECT ON regress_rls."MixedCase" TO "Regress_RlsApp";
SET ROLE regress_rls_owner;
SELECT rls.protect_by_site('regress_rls.quoted', to_role => 'regress_rls-app') AS changed;
SELECT rls.protect_by_site('regress_rls.quoted', to_role => 'regress_rls-app') AS changed_again;
SELECT rls.protect_by_site_and_owner('regress_rls."MixedCase"', 'SiteId', to_role => 'Regress_RlsApp') AS changed;
SELECT rls.protect_by_site_and_owner('regress_rls."MixedCase"', 'SiteId', to_role => 'Regress_RlsApp') AS changed_again;
SELECT rls.group_in_sync('regress_rls.quoted', 'site', 'site_id = rls.site_id()', to_role => 'regress_rls-app') AS in_sync,
       rls.group_in_sync('regress_rls.quoted', 'site', 'site_id = rls.site_id()', to_role => 'regress_rls_app') AS other_role;
SELECT c.relname, p.polname, p.polroles::regrole[] FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
 WHERE c.relname IN ('quoted', 'MixedCase') ORDER BY 1, 2;
SELECT rls.protect_by_site('regress_rls.quoted', to_role => '"regress_rls-app"'); -- fail
RESET ROLE;
SELECT object_name, problem FROM rls.problems WHERE table_name::text LIKE '%quoted' OR table_name::text LIKE '%MixedCase%';

-- viewpoint from "regress_rls-app" and "Regress_RlsApp"
SET SESSION AUTHORIZATION "regress_rls-app";
SELECT rls.set_context('2', NULL, is_local => false);
SELECT id FROM regress_rls.quoted;
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION "Regress_RlsApp";
SELECT rls.set_context('1', '10', is_local => false);
SELECT id FROM regress_rls."MixedCase";
SELECT rls.clear_context();
RESET SESSION AUTHORIZATION;

DROP SCHEMA regress_rls CASCADE;
DROP EXTENSION django_rls;
DROP ROLE regress_rls_owner;
DROP ROLE regress_rls_app;
DROP ROLE regress_rls_bypass;
DROP ROLE "regress_rls-app";
DROP ROLE "Regress_RlsApp";
DO $$ BEGIN EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database()); END $$;
