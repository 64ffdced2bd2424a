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
SELECT table_name, operations, excluded_columns, masked_columns, missing_triggers FROM rls_audit.status ORDER BY 1;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'accounts'::regclass ORDER BY 1;
RESET ROLE;

-- viewpoint from the application role: every kind of write is logged with its context
SET SESSION AUTHORIZATION regress_rls_app;
SET search_path = regress_rls, public;
SELECT rls_audit.enable('accounts'); -- fail
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
-- Another site sees none of site 1's trail.
BEGIN;
SELECT rls.set_context('2', '8');
SELECT operation, row_key, site_id, user_id FROM rls_audit.log ORDER BY id;
COMMIT;

-- Tampering, as the application role: every route is refused.
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
ALTER TABLE rls_audit.log_default ADD CONSTRAINT regress_refuse CHECK (operation <> 'INSERT') NOT VALID;
SET SESSION AUTHORIZATION regress_rls_app;
INSERT INTO regress_rls.accounts VALUES (7, 2, 'gus', 1, 'h', 'c'); -- fail
RESET SESSION AUTHORIZATION;
SELECT count(*) AS unaudited_rows FROM regress_rls.accounts WHERE id = 7;
ALTER TABLE rls_audit.log_default DROP CONSTRAINT regress_refuse;

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
CREATE TABLE rls_audit.log_2001_01 PARTITION OF rls_audit.log FOR VALUES FROM ('2001-01-01') TO ('2001-02-01');
INSERT INTO rls_audit.log (logged_at, table_oid, table_name, operation, db_role)
    VALUES ('2001-01-15', 1, 'old', 'INSERT', 'x');
SELECT count(*) > 0 AS rows_in_default FROM rls_audit.log_default;
SELECT rls_audit.ensure_partitions(2);
SELECT rls_audit.ensure_partitions(2) AS created_again;
SELECT count(*) AS rows_left_in_default FROM rls_audit.log_default;
SELECT rls_audit.drop_partitions_before('2001-03-01');
SELECT count(*) AS old_rows FROM rls_audit.log WHERE logged_at < '2002-01-01';
SELECT count(*) > 0 AS recent_rows_kept FROM rls_audit.log;

-- Dropping an audited table takes its registration with it.
DROP TABLE regress_rls.pairs;
SELECT table_name FROM rls_audit.status;

DROP SCHEMA regress_rls CASCADE;
DROP EXTENSION django_rls;
DROP ROLE regress_rls_owner;
DROP ROLE regress_rls_app;
