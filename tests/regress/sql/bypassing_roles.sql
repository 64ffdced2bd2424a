--
-- A context is refused to a role that row level security does not limit:
-- superusers, BYPASSRLS roles and owners of protected tables, as current user
-- or as session user, unless a superuser allows it for maintenance.
--
\set VERBOSITY default
\set regress_superuser :USER
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_byp_app;
DROP ROLE IF EXISTS regress_byp_owner;
DROP ROLE IF EXISTS regress_byp_bypass;
DROP ROLE IF EXISTS regress_byp_other;
DROP ROLE IF EXISTS regress_byp_super;
RESET client_min_messages;

CREATE EXTENSION django_rls;
CREATE ROLE regress_byp_app LOGIN;
CREATE ROLE regress_byp_owner LOGIN;
CREATE ROLE regress_byp_bypass LOGIN BYPASSRLS;
CREATE ROLE regress_byp_other LOGIN;
CREATE ROLE regress_byp_super SUPERUSER;
CREATE SCHEMA regress_byp AUTHORIZATION regress_byp_owner;
SET ROLE regress_byp_owner;
CREATE TABLE regress_byp.items (id int PRIMARY KEY, site_id bigint);
CREATE TABLE regress_byp.unprotected (id int PRIMARY KEY);
SELECT rls.protect_by_site('regress_byp.items', to_role => 'regress_byp_app');
GRANT USAGE ON SCHEMA regress_byp TO regress_byp_app;
GRANT SELECT ON regress_byp.items TO regress_byp_app;
RESET ROLE;

-- The application role is unaffected.
SET SESSION AUTHORIZATION regress_byp_app;
BEGIN;
SELECT rls.set_context('1', '2');
SELECT rls.site_id();
ROLLBACK;
RESET SESSION AUTHORIZATION;

-- A superuser is refused (rls.set_context_signed() and the statement marker
-- reach the same check once the token is verified: tests/test_bypassing_roles.py).
SET SESSION AUTHORIZATION regress_byp_super;
BEGIN;
SELECT rls.set_context('1', '2'); -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context(NULL, NULL, '{"role": "x"}'); -- fail: claims alone are a context too
ROLLBACK;
-- Clearing is always allowed, with either function.
BEGIN;
SELECT rls.set_context(NULL, NULL);
ROLLBACK;
SELECT rls.clear_context();
RESET SESSION AUTHORIZATION;

-- A BYPASSRLS role is refused.
SET SESSION AUTHORIZATION regress_byp_bypass;
BEGIN;
SELECT rls.set_context('1', '2'); -- fail
ROLLBACK;
RESET SESSION AUTHORIZATION;

-- The owner of a protected table is refused, and the detail names the table.
SET SESSION AUTHORIZATION regress_byp_owner;
BEGIN;
SELECT rls.set_context('1', '2'); -- fail
ROLLBACK;
RESET SESSION AUTHORIZATION;

-- So is a member of the owner role.
GRANT regress_byp_owner TO regress_byp_other;
SET SESSION AUTHORIZATION regress_byp_other;
BEGIN;
SELECT rls.set_context('1', '2'); -- fail
ROLLBACK;
RESET SESSION AUTHORIZATION;
-- Revoking the membership is seen at once (the ownership cache is invalidated).
REVOKE regress_byp_owner FROM regress_byp_other;
SET SESSION AUTHORIZATION regress_byp_other;
BEGIN;
SELECT rls.set_context('1', '2');
ROLLBACK;
RESET SESSION AUTHORIZATION;

-- Owning only tables no django_rls policy protects does not count; protecting
-- one of them is seen at once.
ALTER TABLE regress_byp.unprotected OWNER TO regress_byp_other;
SET SESSION AUTHORIZATION regress_byp_other;
BEGIN;
SELECT rls.set_context('1', '2');
ROLLBACK;
RESET SESSION AUTHORIZATION;
SELECT rls.protect_by_site('regress_byp.unprotected', 'id', to_role => 'regress_byp_app');
SET SESSION AUTHORIZATION regress_byp_other;
BEGIN;
SELECT rls.set_context('1', '2'); -- fail
ROLLBACK;
RESET SESSION AUTHORIZATION;

-- The session user counts too: RESET ROLE would return to it.
SET SESSION AUTHORIZATION regress_byp_super;
SET ROLE regress_byp_app;
BEGIN;
SELECT rls.set_context('1', '2'); -- fail
ROLLBACK;
RESET SESSION AUTHORIZATION;

-- Only a superuser can allow it, for its own session or for a role.
SET SESSION AUTHORIZATION regress_byp_owner;
SET django_rls.allow_bypassing_roles = on; -- fail
RESET SESSION AUTHORIZATION;
BEGIN;
SET LOCAL django_rls.allow_bypassing_roles = on;
SELECT rls.set_context('1', '2');
SELECT rls.site_id();
ROLLBACK;
ALTER ROLE regress_byp_owner SET django_rls.allow_bypassing_roles = on;
\c - regress_byp_owner
BEGIN;
SELECT rls.set_context('1', '2');
SELECT rls.site_id();
ROLLBACK;
\c - :regress_superuser
ALTER ROLE regress_byp_owner RESET django_rls.allow_bypassing_roles;

DROP SCHEMA regress_byp CASCADE;
DROP EXTENSION django_rls;
DROP ROLE regress_byp_app;
DROP ROLE regress_byp_owner;
DROP ROLE regress_byp_bypass;
DROP ROLE regress_byp_other;
DROP ROLE regress_byp_super;
