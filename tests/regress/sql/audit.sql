--
-- The audit trail: what is logged, with which context, and who cannot tamper with it.
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
SET search_path = regress_rls, public;

CREATE TABLE accounts (id int PRIMARY KEY, site_id int NOT NULL, owner text, balance int,
                       password_hash text, cache text);
CREATE TABLE no_key (site_id int);
CREATE TABLE pairs (a int, b int, site_id int, note text, PRIMARY KEY (a, b));
ALTER TABLE accounts OWNER TO regress_rls_owner;
ALTER TABLE no_key OWNER TO regress_rls_owner;
ALTER TABLE pairs OWNER TO regress_rls_owner;
GRANT SELECT, INSERT, UPDATE, DELETE ON accounts, pairs TO regress_rls_app;

-- viewpoint from the table owner, who switches auditing on
SET ROLE regress_rls_owner;
SELECT rls_audit.enable('accounts', excluded_columns => '{cache}', masked_columns => '{password_hash}');
SELECT rls_audit.enable('accounts', excluded_columns => '{cache}', masked_columns => '{password_hash}') AS changed_again;
SELECT rls_audit.enable('pairs', operations => '{INSERT,UPDATE}');
SELECT rls_audit.enable('no_key'); -- fail
SELECT rls_audit.enable('accounts', excluded_columns => '{nope}'); -- fail
SELECT rls_audit.enable('accounts', masked_columns => '{id}'); -- fail
SELECT rls_audit.enable('accounts', operations => '{SELECT}'); -- fail
-- The app role reads the entries of the rows it could read: here, by site.
SELECT rls_audit.set_read_rule('accounts', site_column => 'site_id');
SELECT rls_audit.set_read_rule('accounts', site_column => 'site_id') AS changed_again;
SELECT rls_audit.set_read_rule('pairs', site_column => 'site_id');
SELECT rls_audit.set_read_rule('accounts', owner_column => 'owner'); -- fail
SELECT rls_audit.set_read_rule('accounts', 'site_id', 'nope'); -- fail
SELECT rls_audit.set_read_rule('accounts', 'site_id', 'id', null_is_shared => true); -- fail
SELECT table_oid, site_column, owner_column, null_is_shared FROM rls_audit.read_rules ORDER BY 1;
SELECT table_name, operations, excluded_columns, masked_columns, missing_triggers FROM rls_audit.status ORDER BY 1;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'accounts'::regclass ORDER BY 1;
RESET ROLE;

-- viewpoint from the application role: every kind of write is logged with its context
SET SESSION AUTHORIZATION regress_rls_app;
SET search_path = regress_rls, public;
SELECT rls_audit.enable('accounts'); -- fail
SELECT rls_audit.set_read_rule('accounts', 'site_id'); -- fail
BEGIN;
SELECT rls.set_context('1', '7', '{"via": "regress"}');
INSERT INTO accounts VALUES (1, 1, 'ann', 100, 'hash1', 'c'), (2, 1, 'bob', 50, 'hash2', 'c'), (3, 1, 'cy', 0, 'h', 'c');
UPDATE accounts SET balance = balance + 10 WHERE id = 1;
UPDATE accounts SET balance = balance WHERE id = 2;                -- no-op: nothing logged
UPDATE accounts SET cache = 'only an excluded column' WHERE id = 2; -- nothing logged either
UPDATE accounts SET password_hash = 'new', owner = 'bo' WHERE id = 2;
UPDATE accounts SET id = 30 WHERE id = 3;                           -- a new key: both sides logged whole
DELETE FROM accounts WHERE id = 30;
INSERT INTO pairs VALUES (1, 2, 1, 'x');
UPDATE pairs SET note = 'y';
DELETE FROM pairs;                                                  -- not an audited operation here
SELECT operation, table_name, row_key, old_values, new_values, changed_columns, site_id, user_id, claims, db_role
  FROM rls_audit.log ORDER BY id;
SELECT operation, row_key FROM rls_audit.history('accounts', '2');
COMMIT;

-- Without a context, writes are still logged (with NULL site and user), and
-- the application role cannot read those rows.
INSERT INTO accounts VALUES (4, 2, 'dee', 1, 'h', 'c');
SELECT count(*) AS visible_without_context FROM rls_audit.log;
-- Strict mode refuses an audited write without any context.
SET django_rls.strict = on;
INSERT INTO accounts VALUES (5, 2, 'eve', 1, 'h', 'c'); -- fail
RESET django_rls.strict;
-- Another site sees none of site 1's trail (only row 4, which is site 2's).
BEGIN;
SELECT rls.set_context('2', '8');
SELECT operation, row_key, site_id, user_id FROM rls_audit.log ORDER BY id;
COMMIT;

-- Tampering, as the application role: every route is refused.
INSERT INTO rls_audit.statements (table_oid, table_name, operation, db_role, row_keys) VALUES (1, 'x', 'INSERT', 'x', '{1}'); -- fail
UPDATE rls_audit.statements SET user_id = 0; -- fail
DELETE FROM rls_audit.statements; -- fail
TRUNCATE rls_audit.statements; -- fail
INSERT INTO rls_audit.log (table_oid, table_name, operation, db_role) VALUES (1, 'x', 'INSERT', 'x'); -- fail
UPDATE rls_audit.log SET user_id = 0; -- fail
DELETE FROM rls_audit.log; -- fail
TRUNCATE rls_audit.log; -- fail
SET session_replication_role = replica; -- fail
ALTER TABLE accounts DISABLE TRIGGER rls_audit_insert; -- fail
DROP TRIGGER rls_audit_insert ON accounts; -- fail
SELECT rls_audit.disable('accounts'); -- fail
SELECT rls_audit.drop_partitions_before(now()); -- fail
CREATE OR REPLACE FUNCTION rls_audit.capture() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END'; -- fail
DELETE FROM rls_audit.audited_tables; -- fail
RESET SESSION AUTHORIZATION;

-- Even the table owner cannot quietly switch an audit trigger off.
SET ROLE regress_rls_owner;
SET search_path = regress_rls, public;
ALTER TABLE accounts DISABLE TRIGGER rls_audit_update; -- fail
ALTER TABLE accounts DISABLE TRIGGER ALL; -- fail
ALTER TABLE accounts ENABLE REPLICA TRIGGER rls_audit_delete; -- fail
DROP TRIGGER rls_audit_delete ON accounts; -- fail
CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON accounts FOR EACH STATEMENT EXECUTE FUNCTION noop(); -- fail
RESET ROLE;

-- A superuser's replica mode does not skip the ALWAYS triggers either.
SET session_replication_role = replica;
INSERT INTO accounts VALUES (6, 2, 'fay', 1, 'h', 'c');
RESET session_replication_role;
SELECT count(*) AS logged_in_replica_mode FROM rls_audit.log WHERE row_key = '6';

-- A write whose audit row cannot be written fails as a whole.
ALTER TABLE rls_audit.statements_default ADD CONSTRAINT regress_refuse CHECK (operation <> 'INSERT') NOT VALID;
SET SESSION AUTHORIZATION regress_rls_app;
INSERT INTO regress_rls.accounts VALUES (7, 2, 'gus', 1, 'h', 'c'); -- fail
RESET SESSION AUTHORIZATION;
SELECT count(*) AS unaudited_rows FROM regress_rls.accounts WHERE id = 7;
ALTER TABLE rls_audit.statements_default DROP CONSTRAINT regress_refuse;

-- TRUNCATE is logged too.
TRUNCATE regress_rls.accounts;
SELECT operation, row_key FROM rls_audit.log WHERE operation = 'TRUNCATE';

-- Changing options and disabling go through the owner's API; the trail stays.
SET ROLE regress_rls_owner;
SELECT rls_audit.enable('accounts', operations => '{INSERT}');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'accounts'::regclass ORDER BY 1;
SELECT rls_audit.disable('accounts');
SELECT rls_audit.disable('accounts') AS changed_again;
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'accounts'::regclass;
RESET ROLE;
SELECT count(*) > 0 AS trail_kept FROM rls_audit.log;

-- Retention drops whole monthly partitions older than the cutoff, and nothing else.
CREATE TABLE rls_audit.statements_2001_01 PARTITION OF rls_audit.statements FOR VALUES FROM ('2001-01-01') TO ('2001-02-01');
INSERT INTO rls_audit.statements (logged_at, table_oid, table_name, operation, db_role, row_keys)
    VALUES ('2001-01-15', 1, 'old', 'INSERT', 'x', '{1}');
SELECT count(*) > 0 AS rows_in_default FROM rls_audit.statements_default;
SELECT rls_audit.ensure_partitions(2);
SELECT rls_audit.ensure_partitions(2) AS created_again;
SELECT count(*) AS rows_left_in_default FROM rls_audit.statements_default;
SELECT rls_audit.drop_partitions_before('2001-03-01');
SELECT count(*) AS old_rows FROM rls_audit.log WHERE logged_at < '2002-01-01';
SELECT count(*) > 0 AS recent_rows_kept FROM rls_audit.log;

-- Dropping an audited table takes its registration with it, and every
-- backend frees what it cached about the table.
INSERT INTO regress_rls.pairs VALUES (9, 9, 9, 'cached');
SELECT count(*) AS cached_before_drop FROM pg_backend_memory_contexts
 WHERE name = 'django_rls audit table' AND ident = 'regress_rls.pairs';
DROP TABLE regress_rls.pairs;
SELECT table_name FROM rls_audit.status;
SELECT count(*) AS cached_after_drop FROM pg_backend_memory_contexts
 WHERE name = 'django_rls audit table' AND ident = 'regress_rls.pairs';

--
-- No code a role can define runs with raised rights from the capture.
--
-- viewpoint from the application role: the issue's repro with a pg_temp enum,
-- a cast to json that would make the role a superuser, and a temporary table.
-- Whether enable() accepts the temporary table or not, the capture refuses it,
-- and the role cannot attach the capture itself.
SET SESSION AUTHORIZATION regress_rls_app;
CREATE TYPE pg_temp.e AS ENUM ('x');
CREATE FUNCTION pg_temp.evil(pg_temp.e) RETURNS json LANGUAGE plpgsql AS
  $$BEGIN EXECUTE 'ALTER ROLE regress_rls_app SUPERUSER'; RETURN '"x"'; END$$;
CREATE CAST (pg_temp.e AS json) WITH FUNCTION pg_temp.evil(pg_temp.e);
CREATE TEMP TABLE x (id int PRIMARY KEY, v pg_temp.e);
DO $$BEGIN PERFORM rls_audit.enable('pg_temp.x'); EXCEPTION WHEN OTHERS THEN NULL; END$$;
DO $$BEGIN INSERT INTO x VALUES (1, 'x'); EXCEPTION WHEN OTHERS THEN NULL; END$$;
CREATE TRIGGER sneak AFTER INSERT ON x REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture(); -- fail
DROP TABLE x;
DROP CAST (pg_temp.e AS json);
DROP FUNCTION pg_temp.evil(pg_temp.e);
DROP TYPE pg_temp.e;
RESET SESSION AUTHORIZATION;
SELECT rolsuper AS app_became_superuser FROM pg_roles WHERE rolname = 'regress_rls_app';
SELECT count(*) AS temp_rows_logged FROM rls_audit.log WHERE table_name LIKE 'pg\_temp%';
-- Even a superuser's trigger on a temporary table records nothing.
CREATE TEMP TABLE y (id int PRIMARY KEY);
INSERT INTO rls_audit.audited_tables (table_oid) VALUES ('pg_temp.y');
CREATE TRIGGER rls_audit_insert AFTER INSERT ON y REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture();
INSERT INTO y VALUES (1); -- fail
DROP TABLE y;

-- viewpoint from the table owner: a permanent enum with casts to json and to
-- text (what to_jsonb() and ::text used to call) that would make the owner a
-- superuser, on its own audited table.  The images come from enum_out and
-- array_out, and the casts never run.
SET ROLE regress_rls_owner;
SET search_path = regress_rls, public;
CREATE TYPE e2 AS ENUM ('x', 'y');
CREATE FUNCTION evil_json(e2) RETURNS json LANGUAGE plpgsql AS
  $$BEGIN EXECUTE 'ALTER ROLE regress_rls_owner SUPERUSER';
          INSERT INTO rls_audit.log (table_oid, table_name, operation, db_role) VALUES (0, 'forged', 'INSERT', 'x');
          RETURN '"forged"'; END$$;
CREATE FUNCTION evil_text(e2) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN EXECUTE 'ALTER ROLE regress_rls_owner SUPERUSER'; RETURN 'forged'; END$$;
CREATE CAST (e2 AS json) WITH FUNCTION evil_json(e2);
CREATE CAST (e2 AS text) WITH FUNCTION evil_text(e2);
CREATE TABLE moods (id e2 PRIMARY KEY, v e2, w e2[]);
SELECT rls_audit.enable('moods');
INSERT INTO moods VALUES ('x', 'x', '{x,y}');
UPDATE moods SET v = 'y';
DELETE FROM moods;
RESET ROLE;
SET search_path = regress_rls, public;
SELECT rolsuper AS owner_became_superuser FROM pg_roles WHERE rolname = 'regress_rls_owner';
SELECT operation, row_key, old_values, new_values, changed_columns FROM rls_audit.log
 WHERE table_name = 'regress_rls.moods' ORDER BY id;
SELECT count(*) AS forged_rows FROM rls_audit.log WHERE table_name = 'forged';

--
-- Every type family: images from output functions, the UPDATE diff from a
-- binary comparison (json, point and xml have no = operator).
--
SET ROLE regress_rls_owner;
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN jdom AS jsonb;
CREATE TYPE pair AS (a int, b text);
CREATE TABLE kinds (id int PRIMARY KEY, j json, jb jsonb, x xml, pt point, bx box, ls lseg, pg polygon,
                    ci circle, ia int[], ta text[], r int4range, mr int4multirange, m money, by bytea,
                    tv tsvector, e e2, d posint, jd jdom, c pair, n numeric, f float8, bo boolean,
                    ts timestamp, tz timestamptz, dt date, tm time, iv interval, u uuid, ip inet, bi bit(4));
GRANT SELECT, INSERT, UPDATE, DELETE ON kinds TO regress_rls_app;
SELECT rls_audit.enable('kinds');
RESET ROLE;
SET SESSION AUTHORIZATION regress_rls_app;
SET search_path = regress_rls, public;
INSERT INTO kinds VALUES (1, '{"a": [1, 2]}', '{"b": null}', '<x>1</x>', '(1,2)', '((0,0),(1,1))', '[(0,0),(1,1)]',
                          '((0,0),(1,0),(1,1))', '<(0,0),1>', '{1,2}', '{a,"b c"}', '[1,5)', '{[1,2),[4,5)}',
                          '12.50', '\x0102', 'a:1 b:2', 'x', 3, '[1]', '(1,x)', 1.50, 'NaN', true,
                          '2024-01-02 03:04:05', '2024-01-02 03:04:05+00', '2024-01-02', '03:04:05', '1 day',
                          'a8098c1a-f86e-11da-bd1a-00112444be1e', '10.0.0.1/8', B'1010');
-- every column set to an equal value (some written differently): nothing logged
UPDATE kinds SET j = '{"a": [1, 2]}', jb = '{"b": null}', x = '<x>1</x>', pt = '(1,2)', bx = '((1,1),(0,0))',
                 ls = '[(0,0),(1,1)]', pg = '((0,0),(1,0),(1,1))', ci = '<(0,0),1>', ia = '{1,2}',
                 ta = '{a,"b c"}', r = '[1,4]', mr = '{[1,2),[4,5)}', m = '12.5', by = '\x0102',
                 tv = 'b:2 a:1', e = 'x', d = 3, jd = '[1]', c = '(1,x)', n = 1.50, f = 'NaN', bo = true,
                 ts = '2024-01-02 03:04:05', tz = '2024-01-02 03:04:05+00', dt = '2024-01-02', tm = '03:04:05',
                 iv = '1 day', u = 'A8098C1A-F86E-11DA-BD1A-00112444BE1E',
                 ip = '10.0.0.1/8', bi = B'1010';
-- half of the columns change
UPDATE kinds SET j = '{"a": 3}', x = '<x>2</x>', bx = '((0,0),(2,2))', pg = '((0,0),(2,0),(2,2))', ia = '{1,2,3}',
                 r = '[2,5)', m = '1.00', tv = 'c:3', d = 4, c = '(2,y)', f = 2.5, ts = '2025-01-01', dt = '2025-01-01',
                 iv = '2 days', ip = '10.0.0.2/8';
-- the other half
UPDATE kinds SET jb = '{"b": [true]}', pt = '(3,4)', ls = '[(0,0),(2,2)]', ci = '<(1,1),2>', ta = '{}', mr = '{}',
                 by = '\xff', e = 'y', jd = '"s"', n = 'Infinity', bo = false, tz = '2025-01-01 00:00:00+00',
                 tm = '23:59:59', u = '00000000-0000-0000-0000-000000000000', bi = B'0101';
DELETE FROM kinds;
RESET SESSION AUTHORIZATION;
SELECT rank() OVER (ORDER BY l.id) - 1 AS entry, l.operation, l.changed_columns FROM rls_audit.log l
 WHERE l.table_name = 'regress_rls.kinds' ORDER BY l.id;
SELECT l.operation, k.key, l.old_values -> k.key AS old, l.new_values -> k.key AS new
  FROM rls_audit.log l, LATERAL jsonb_object_keys(coalesce(l.new_values, l.old_values)) AS k(key)
 WHERE l.table_name = 'regress_rls.kinds' ORDER BY l.id, k.key;

--
-- Reading the trail: a role reads only the entries of rows its policies
-- would let it read.
--
SET ROLE regress_rls_owner;
CREATE TABLE memos (id int PRIMARY KEY, site_id int, user_id int, body text);   -- by site and owner
CREATE TABLE secrets (id int PRIMARY KEY, site_id int, body text);              -- no rule: owner only
CREATE TABLE hidden (id int PRIMARY KEY, site_id int, body text);               -- no SELECT for the app
CREATE TABLE shared_docs (id int PRIMARY KEY, site_id int, body text);          -- NULL site: everyone's
GRANT SELECT, INSERT, UPDATE, DELETE ON memos, secrets, shared_docs TO regress_rls_app;
GRANT INSERT, UPDATE ON hidden TO regress_rls_app;
SELECT rls_audit.enable(t) FROM unnest(ARRAY['memos', 'secrets', 'hidden', 'shared_docs']::regclass[]) t;
SELECT rls_audit.set_read_rule('memos', 'site_id', 'user_id');
SELECT rls_audit.set_read_rule('hidden', 'site_id');
SELECT rls_audit.set_read_rule('shared_docs', 'site_id', null_is_shared => true);
CREATE FUNCTION write_as(site text, usr text, memo int) RETURNS void LANGUAGE plpgsql AS
  $$BEGIN PERFORM rls.set_context(site, usr); UPDATE regress_rls.memos SET body = body || '!' WHERE id = memo; END$$;
RESET ROLE;
SET SESSION AUTHORIZATION regress_rls_app;
SET search_path = regress_rls, public;
BEGIN;
SELECT rls.set_context('1', '7');
INSERT INTO memos VALUES (1, 1, 7, 'private of 7'), (2, 1, 8, 'private of 8');
INSERT INTO secrets VALUES (1, 1, 'secret');
INSERT INTO hidden VALUES (1, 1, 'hidden');
INSERT INTO shared_docs VALUES (1, NULL, 'for every site'), (2, 1, 'site 1 only');
UPDATE memos SET site_id = 2, user_id = 9 WHERE id = 1;   -- moves to site 2, user 9: readable by both
COMMIT;
-- viewpoint from user 7 of site 1
BEGIN;
SELECT rls.set_context('1', '7');
SELECT table_name, row_key, operation FROM rls_audit.log
 WHERE table_name ~ '(memos|secrets|hidden|shared_docs)$' ORDER BY id;
COMMIT;
-- viewpoint from user 8 of site 1: not user 7's memo
BEGIN;
SELECT rls.set_context('1', '8');
SELECT table_name, row_key, operation, new_values FROM rls_audit.log
 WHERE table_name ~ '(memos|secrets|hidden|shared_docs)$' ORDER BY id;
SELECT count(*) AS user_7_memo_entries FROM rls_audit.history('memos', '1');
COMMIT;
-- viewpoint from user 9 of site 2: the moved memo's update, and the shared document
BEGIN;
SELECT rls.set_context('2', '9');
SELECT table_name, row_key, operation FROM rls_audit.log
 WHERE table_name ~ '(memos|secrets|hidden|shared_docs)$' ORDER BY id;
COMMIT;
RESET SESSION AUTHORIZATION;
-- viewpoint from the table owner: every entry of its tables
SET ROLE regress_rls_owner;
SELECT table_name, count(*) FROM rls_audit.log
 WHERE table_name ~ '(memos|secrets|hidden|shared_docs)$' GROUP BY 1 ORDER BY 1;
RESET ROLE;

--
-- The context recorded is the one the writing statement started with.
--
SET SESSION AUTHORIZATION regress_rls_app;
SET search_path = regress_rls, public;
BEGIN;
SELECT rls.set_context('1', '8');
-- the issue's repro: the statement clears the context after writing
WITH u AS (UPDATE memos SET body = 'cte' WHERE id = 2 RETURNING id)
SELECT (SELECT count(*) FROM u) AS updated, rls.clear_context() IS NULL AS cleared;
SELECT rls.set_context('1', '8');
-- a function that sets a context and then writes records the context it wrote with
SELECT write_as('2', '9', 1);
SELECT rls.set_context('1', '8');
-- an aborted subtransaction leaves nothing behind
SAVEPOINT s;
INSERT INTO memos VALUES (2, 1, 8, 'duplicate'); -- fail
ROLLBACK TO s;
INSERT INTO memos VALUES (3, 1, 8, 'after the savepoint');
-- COPY and TRUNCATE start with a context too
COPY memos FROM stdin;
4	1	8	copied
\.
COMMIT;
RESET SESSION AUTHORIZATION;
SELECT operation, row_key, site_id, user_id, new_values FROM rls_audit.log
 WHERE table_name = 'regress_rls.memos' AND id > (SELECT max(id) FROM rls_audit.log WHERE table_name = 'regress_rls.memos'
                                                   AND operation = 'UPDATE' AND row_key = '1' AND new_values ? 'site_id')
 ORDER BY id;

-- TRUNCATE fires its triggers outside the executor: a BEFORE TRUNCATE trigger
-- that clears the context does not change what is recorded.
CREATE FUNCTION regress_rls.clear_ctx() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN PERFORM rls.clear_context(); RETURN NULL; END$$;
CREATE TRIGGER clear_ctx BEFORE TRUNCATE ON regress_rls.secrets FOR EACH STATEMENT
    EXECUTE FUNCTION regress_rls.clear_ctx();
BEGIN;
SET LOCAL django_rls.allow_bypassing_roles = on;  -- a superuser sets a context only when allowed
SELECT rls.set_context('3', '4');
TRUNCATE regress_rls.secrets;
SELECT rls.context();
COMMIT;
SELECT operation, site_id, user_id FROM rls_audit.log
 WHERE table_name = 'regress_rls.secrets' AND operation = 'TRUNCATE';

-- What a backend cached about a table follows ALTER TABLE and new options.
INSERT INTO memos VALUES (5, 1, 8, 'before');
ALTER TABLE memos ADD COLUMN tag text;
INSERT INTO memos VALUES (6, 1, 8, 'after', 'new column');
SET ROLE regress_rls_owner;
SELECT rls_audit.enable('memos', masked_columns => '{body}');
RESET ROLE;
INSERT INTO memos VALUES (7, 1, 8, 'masked now', 'x');
SELECT row_key, new_values FROM rls_audit.log
 WHERE table_name = 'regress_rls.memos' AND row_key IN ('5', '6', '7') ORDER BY id;

--
-- A trigger on a partitioned parent or an inheritance parent records the
-- parent's name and rows in the parent's row type (set up here by hand,
-- as rls_audit.enable() does for parents).
--
CREATE TABLE parted (id int, site_id int, extra text, PRIMARY KEY (id, site_id)) PARTITION BY LIST (site_id);
CREATE TABLE parted_2 (extra text, site_id int NOT NULL, id int NOT NULL);
ALTER TABLE parted ATTACH PARTITION parted_2 FOR VALUES IN (2);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES IN (1);
CREATE TABLE animals (id int PRIMARY KEY, name text);
CREATE TABLE dogs (bark text, PRIMARY KEY (id)) INHERITS (animals);
INSERT INTO rls_audit.audited_tables (table_oid) VALUES ('parted'), ('animals');
INSERT INTO rls_audit.trails (table_oid) VALUES ('parted'), ('animals');
CREATE TRIGGER rls_audit_insert AFTER INSERT ON parted REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture();
CREATE TRIGGER rls_audit_update AFTER UPDATE ON parted REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture();
CREATE TRIGGER rls_audit_update AFTER UPDATE ON animals REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture();
INSERT INTO parted VALUES (1, 1, 'a'), (2, 2, 'b');
UPDATE parted SET site_id = 2, extra = 'moved' WHERE id = 1;
INSERT INTO dogs VALUES (1, 'rex', 'woof');
UPDATE animals SET name = 'max';
SELECT table_name, operation, row_key, old_values, new_values, changed_columns FROM rls_audit.log
 WHERE table_name IN ('regress_rls.parted', 'regress_rls.animals') ORDER BY id;

DROP SCHEMA regress_rls CASCADE;
DROP EXTENSION django_rls;
DROP ROLE regress_rls_owner;
DROP ROLE regress_rls_app;
