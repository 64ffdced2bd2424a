--
-- The request context: who may set it, how long it lives, how it reads back.
--
\set VERBOSITY terse
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_rls_app;
RESET client_min_messages;

CREATE EXTENSION django_rls;
CREATE ROLE regress_rls_app LOGIN;
CREATE SCHEMA regress_rls_forge AUTHORIZATION regress_rls_app;
-- A function with a SET clause, created by a superuser, which is the only
-- kind of role that could create one; the check hook still refuses it.
CREATE FUNCTION forge_by_set_clause() RETURNS bigint LANGUAGE sql
    SET django_rls.site = '666' AS 'SELECT rls.site_id()'; -- fail

-- viewpoint from the application role
SET SESSION AUTHORIZATION regress_rls_app;

-- Nothing set: every accessor reads NULL (fail closed).
SELECT rls.site_id(), rls.user_id(), rls.site_uuid(), rls.user_uuid(), rls.claim('role');
SELECT rls.context();

BEGIN;
SELECT rls.set_context('42', '7', '{"role": "editor", "level": 3, "beta": true, "tags": ["a"], "none": null}');
SELECT rls.site_id(), rls.user_id();
SELECT rls.claim('role'), rls.claim('level'), rls.claim('beta'), rls.claim('tags'), rls.claim('none'), rls.claim('missing');
SELECT rls.context();

-- Every way to forge the context with SQL is refused and changes nothing.
SAVEPOINT s;
SET django_rls.site = '666'; -- fail
ROLLBACK TO s;
SET LOCAL django_rls.site = '666'; -- fail
ROLLBACK TO s;
SELECT set_config('django_rls.site', '666', true); -- fail
ROLLBACK TO s;
SELECT set_config('django_rls.user', '666', false); -- fail
ROLLBACK TO s;
SET LOCAL django_rls."user" = '666'; -- fail
ROLLBACK TO s;
SELECT set_config('django_rls.claims', '{"role": "admin"}', true); -- fail
ROLLBACK TO s;
UPDATE pg_settings SET setting = '666' WHERE name = 'django_rls.site'; -- fail
ROLLBACK TO s;
RESET django_rls."user"; -- fail
ROLLBACK TO s;
-- A role granted SET on the parameter (PostgreSQL 15+) and other
-- django_rls.* names: pg15_features.sql.
SELECT rls.site_id(), rls.user_id(), rls.claim('role');
COMMIT;

ALTER ROLE regress_rls_app SET django_rls.site = '666'; -- fail
ALTER ROLE regress_rls_app IN DATABASE contrib_regression SET django_rls.site = '666'; -- fail
CREATE FUNCTION regress_rls_forge.forge_fn() RETURNS bigint LANGUAGE sql
    SET django_rls.site = '666' AS 'SELECT rls.site_id()'; -- fail
DO $$ BEGIN PERFORM set_config('django_rls.site', '666', false); END $$; -- fail
PREPARE forge AS SELECT set_config('django_rls.site', $1, false);
EXECUTE forge('666'); -- fail
DEALLOCATE forge;

-- Transaction scope: gone after COMMIT and after ROLLBACK.
SELECT rls.site_id() AS after_commit;
BEGIN;
SELECT rls.set_context('1', '2');
ROLLBACK;
SELECT rls.site_id() AS after_rollback;

-- Savepoints: ROLLBACK TO restores the outer context, RELEASE keeps the inner.
BEGIN;
SELECT rls.set_context('1', '10');
SAVEPOINT a;
SELECT rls.set_context('2', '20');
SELECT rls.site_id(), rls.user_id();
ROLLBACK TO a;
SELECT rls.site_id(), rls.user_id();
SAVEPOINT b;
SELECT rls.set_context('3', '30');
RELEASE b;
SELECT rls.site_id(), rls.user_id();
COMMIT;
SELECT rls.site_id();

-- A transaction-scoped context outside a transaction block is an error...
SELECT rls.set_context('1', '2'); -- fail
-- ...but a multi-statement query string is one implicit block, so the
-- context covers the statements after it and ends with them.  (psql shows
-- the last result only, as psql 14 always does.)
\set SHOW_ALL_RESULTS off
SELECT rls.set_context('5', '6') \; SELECT rls.site_id() AS in_implicit_block;
\set SHOW_ALL_RESULTS on
SELECT rls.site_id() AS after_implicit_block;

-- Session scope, only when asked for; clear_context() and RESET ALL clear it.
SELECT rls.set_context('8', '9', is_local => false);
SELECT rls.site_id(), rls.user_id();
SELECT rls.clear_context();
SELECT rls.site_id(), rls.user_id();
SELECT rls.set_context('8', '9', is_local => false);
RESET ALL;
SELECT rls.site_id() AS after_reset_all;
SELECT rls.set_context('8', '9', is_local => false);
SET SESSION AUTHORIZATION DEFAULT;
DISCARD ALL;
SET SESSION AUTHORIZATION regress_rls_app;
SELECT rls.site_id() AS after_discard_all;

-- Integer and UUID identifiers: 8-4-4-4-12 or 32 hex digits, optionally in braces
-- (tests/id_vectors.json lists every case, run against Python too).
BEGIN;
SELECT rls.set_context('A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{a0eebc999c0b4ef8bb6d6bb9bd380a12}');
SELECT rls.site_uuid(), rls.user_uuid();
SELECT rls.site_id(); -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context('-9223372036854775808', '+0042');
SELECT rls.site_id(), rls.user_id();
SELECT rls.user_uuid(); -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context(NULL, '7');
SELECT rls.site_id() IS NULL AS no_site, rls.user_id();
ROLLBACK;
-- 32 decimal digits are a UUID, never an integer.
BEGIN;
SELECT rls.set_context('00000000000000000000000000000042', NULL);
SELECT rls.site_uuid();
ROLLBACK;
BEGIN;
SELECT rls.set_context('a0eebc99-9c0b4ef8-bb6d-6bb9bd380a11', NULL); -- fail
ROLLBACK;
-- A NULL token is an error, not a call that leaves the context as it was.
BEGIN;
SELECT rls.set_context('3', '4');
SELECT rls.set_context_signed(NULL); -- fail
ROLLBACK;

-- Bad input is refused with a reason.
BEGIN;
SELECT rls.set_context('9223372036854775808', '1'); -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context('megacorp', '1'); -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context('1', '1', '[1, 2]'); -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context('1', '1', jsonb_build_object('blob', repeat('x', 9000))); -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context('1', '1', 'null');
SELECT rls.context();
ROLLBACK;

-- Strict mode turns "no rows" into an error that says what is missing.
SET django_rls.strict = on;
SELECT rls.site_id(); -- fail
SELECT rls.user_uuid(); -- fail
SELECT rls.claim('role'); -- fail
BEGIN;
SELECT rls.set_context('1', NULL);
SELECT rls.site_id();
SELECT rls.user_id(); -- fail
ROLLBACK;
RESET django_rls.strict;

-- Signatures required: unsigned set_context is refused for non-superusers.
RESET SESSION AUTHORIZATION;
SET django_rls.require_signature = on; -- superusers only
SET SESSION AUTHORIZATION regress_rls_app;
SET django_rls.require_signature = off; -- fail
BEGIN;
SELECT rls.set_context('1', '1'); -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context_signed('v1.e30.AAAA'); -- fail
ROLLBACK;
RESET SESSION AUTHORIZATION;
RESET django_rls.require_signature;

-- Statement-bound: the setter functions refuse non-superusers even unsigned
-- or signed, and the role cannot turn the setting off; clearing still works.
RESET SESSION AUTHORIZATION;
SET django_rls.statement_bound = on; -- superusers only
SET SESSION AUTHORIZATION regress_rls_app;
SET django_rls.statement_bound = off; -- fail
SELECT set_config('django_rls.statement_bound', 'off', false); -- fail
BEGIN;
SELECT rls.set_context('1', '1'); -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context('1', '1', NULL, false); -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context_signed('v1.e30.AAAA'); -- fail
ROLLBACK;
SELECT rls.clear_context();
SELECT rls.site_id() IS NULL AS cleared;
SELECT (rls.extension_info() ->> 'statement_bound')::boolean AS statement_bound;
-- A superuser is not bound by it, so maintenance keeps the functions (once it
-- allows itself a context: bypassing_roles.sql).
RESET SESSION AUTHORIZATION;
BEGIN;
SET LOCAL django_rls.allow_bypassing_roles = on;
SELECT rls.set_context('1', '1');
SELECT rls.site_id();
ROLLBACK;
RESET django_rls.statement_bound;

-- The superuser is bound by the check hook too: only the setter sets it.
SET django_rls.site = '666'; -- fail
SELECT set_config('django_rls.site', '666', false); -- fail
ALTER SYSTEM SET django_rls.site = '666'; -- fail
ALTER DATABASE contrib_regression SET django_rls.site = '666'; -- fail
SET django_rls.site = '';
SELECT rls.site_id();

DROP SCHEMA regress_rls_forge CASCADE;
DROP EXTENSION django_rls;
DROP ROLE regress_rls_app;
