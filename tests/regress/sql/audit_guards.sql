--
-- The audit guards: what may be audited, every DDL route around an audit
-- trigger (as the table owner and as the application role), writes through
-- partitioned and inheritance parents, and UTC partitions of the log.
--
\set VERBOSITY terse
\pset format unaligned
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_guard_owner;
DROP ROLE IF EXISTS regress_guard_app;
RESET client_min_messages;

CREATE EXTENSION django_rls;
CREATE ROLE regress_guard_owner;
CREATE ROLE regress_guard_app LOGIN;
CREATE SCHEMA regress_guard AUTHORIZATION regress_guard_owner;
GRANT USAGE ON SCHEMA regress_guard TO regress_guard_app;
CREATE SCHEMA regress_guard_moved AUTHORIZATION regress_guard_owner;

-- Runs one statement and shows how it ended: its SQLSTATE, message and hint.
CREATE FUNCTION public.regress_try(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text;
    message text;
    hint text;
BEGIN
    EXECUTE statement;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    RETURN state || ': ' || message || CASE WHEN hint <> '' THEN ' (hint: ' || hint || ')' ELSE '' END;
END
$$;

-- The shape of a table's audit triggers, as pg_trigger has it.
CREATE FUNCTION public.regress_triggers(tbl regclass)
RETURNS TABLE (tgname name, tgtype int2, tgenabled "char", has_when boolean, tgoldtable name, tgnewtable name, ok boolean)
LANGUAGE sql AS $$
    SELECT tgname, tgtype, tgenabled, tgqual IS NOT NULL, tgoldtable, tgnewtable,
           rls_audit._trigger_problem(oid) IS NULL
      FROM pg_trigger WHERE tgrelid = tbl AND NOT tgisinternal ORDER BY tgname
$$;

-------------------------------------------------------------------------------
-- What can be audited
-------------------------------------------------------------------------------
SET SESSION AUTHORIZATION regress_guard_app;
-- viewpoint from the application role, which (still) has TEMP
CREATE TEMP TABLE app_temp (id int PRIMARY KEY, v text);
SELECT regress_try($$SELECT rls_audit.enable('app_temp')$$);
SELECT regress_try($$SELECT rls_audit.enable('pg_temp.app_temp', operations => '{INSERT}')$$);
DROP TABLE app_temp;
RESET SESSION AUTHORIZATION;

SET ROLE regress_guard_owner;
-- viewpoint from the table owner
SET search_path = regress_guard, public;
CREATE TEMP TABLE owner_temp (id int PRIMARY KEY);
SELECT regress_try($$SELECT rls_audit.enable('owner_temp')$$);
DROP TABLE owner_temp;
CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY, v text);
SELECT rls_audit.enable('scratch');               -- unlogged tables are audited; the log itself is logged
CREATE VIEW scratch_view AS SELECT * FROM scratch;
SELECT regress_try($$SELECT rls_audit.enable('scratch_view')$$);
CREATE MATERIALIZED VIEW scratch_mv AS SELECT * FROM scratch;
SELECT regress_try($$SELECT rls_audit.enable('scratch_mv')$$);
CREATE SEQUENCE scratch_seq;
SELECT regress_try($$SELECT rls_audit.enable('scratch_seq')$$);
RESET ROLE;
CREATE FOREIGN DATA WRAPPER regress_guard_fdw;
CREATE SERVER regress_guard_server FOREIGN DATA WRAPPER regress_guard_fdw;
GRANT USAGE ON FOREIGN SERVER regress_guard_server TO regress_guard_owner;
SET ROLE regress_guard_owner;
CREATE FOREIGN TABLE regress_guard.remote (id int, v text) SERVER regress_guard_server;
SELECT regress_try($$SELECT rls_audit.enable('regress_guard.remote')$$);
RESET ROLE;

-------------------------------------------------------------------------------
-- Every DDL route around an audit trigger, as the table owner
-------------------------------------------------------------------------------
SET ROLE regress_guard_owner;
SET search_path = regress_guard, public;
CREATE TABLE acct (id int PRIMARY KEY, site_id int, balance int, secret text);
CREATE TABLE plain (id int PRIMARY KEY);
GRANT SELECT, INSERT, UPDATE, DELETE ON acct, plain TO regress_guard_app;
SELECT rls_audit.enable('acct', masked_columns => '{secret}', operations => '{INSERT,UPDATE,TRUNCATE}');
SELECT * FROM regress_triggers('acct');
CREATE FUNCTION regress_guard.noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';

-- CREATE OR REPLACE TRIGGER: every change of the trigger is refused (the owner may not
-- even name rls_audit.capture(); the superuser's view below shows the guard's own refusals) ...
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT WHEN (false) EXECUTE FUNCTION rls_audit.capture()$$) AS when_false;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER UPDATE ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS other_event;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT OR DELETE ON acct
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS more_events;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert BEFORE INSERT ON acct
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS before;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH ROW EXECUTE FUNCTION rls_audit.capture()$$) AS per_row;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON acct REFERENCING NEW TABLE AS other_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS other_transition_name;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_update AFTER UPDATE OF balance ON acct
                     REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS some_columns;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON acct
                     FOR EACH STATEMENT EXECUTE FUNCTION regress_guard.noop()$$) AS other_function;
SELECT regress_try($$CREATE OR REPLACE CONSTRAINT TRIGGER rls_audit_insert AFTER INSERT ON acct DEFERRABLE INITIALLY DEFERRED
                     FOR EACH ROW EXECUTE FUNCTION rls_audit.capture()$$) AS constraint_trigger;
-- The same trigger again, and more capture triggers: a second record of each write, or a
-- trigger for an operation not audited.
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS identical;
-- More capture triggers: a second record of each write, or a trigger for an operation not audited.
SELECT regress_try($$CREATE TRIGGER zz_again AFTER INSERT ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS second_capture;
SELECT regress_try($$CREATE TRIGGER rls_audit_delete AFTER DELETE ON acct REFERENCING OLD TABLE AS old_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS unaudited_operation;
SELECT regress_try($$CREATE TRIGGER rls_audit_delete AFTER DELETE ON acct FOR EACH STATEMENT EXECUTE FUNCTION regress_guard.noop()$$)
    AS reserved_name;
SELECT regress_try($$CREATE TRIGGER capture_here AFTER INSERT ON plain REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS capture_on_unaudited_table;
-- ALTER TRIGGER: renaming an audit trigger away, or another trigger into its name.
SELECT regress_try($$ALTER TRIGGER rls_audit_insert ON acct RENAME TO quiet$$) AS rename_away;
CREATE TRIGGER some_trigger AFTER DELETE ON acct FOR EACH STATEMENT EXECUTE FUNCTION regress_guard.noop();
SELECT regress_try($$ALTER TRIGGER some_trigger ON acct RENAME TO rls_audit_delete$$) AS rename_into;
DROP TRIGGER some_trigger ON acct;
-- ALTER TABLE ... ENABLE / DISABLE: only ALWAYS stays.
SELECT regress_try($$ALTER TABLE acct DISABLE TRIGGER rls_audit_insert$$) AS disable_one;
SELECT regress_try($$ALTER TABLE acct DISABLE TRIGGER ALL$$) AS disable_all;
SELECT regress_try($$ALTER TABLE acct DISABLE TRIGGER USER$$) AS disable_user;
SELECT regress_try($$ALTER TABLE acct ENABLE REPLICA TRIGGER rls_audit_update$$) AS enable_replica;
SELECT regress_try($$ALTER TABLE acct ENABLE TRIGGER rls_audit_update$$) AS enable_origin;
SELECT regress_try($$ALTER TABLE acct ENABLE TRIGGER ALL$$) AS enable_all_origin;
SELECT regress_try($$DROP TRIGGER rls_audit_truncate ON acct$$) AS drop_trigger;
SELECT regress_try($$SET session_replication_role = replica$$) AS replica_mode;
SELECT regress_try($$SELECT rls_audit._place_triggers('acct')$$) AS internal_function;
SELECT regress_try($$SELECT rls_audit._register('acct', '{}', '{}', '{INSERT}')$$) AS internal_function;
SELECT regress_try($$SELECT rls_audit._sync_tree(ARRAY['acct'::regclass::oid])$$) AS internal_function;
SELECT regress_try($$CREATE TEMP TABLE owner_child (PRIMARY KEY (id)) INHERITS (acct)$$) AS temp_child;
-- Nothing of that changed a trigger.
SELECT * FROM regress_triggers('acct');
-- Renaming a masked column keeps it masked; renaming or moving the table keeps it audited.
ALTER TABLE acct RENAME COLUMN secret TO pin;
SELECT masked_columns FROM rls_audit.audited_tables WHERE table_oid = 'acct'::regclass;
ALTER TABLE acct RENAME TO account;
ALTER TABLE account SET SCHEMA regress_guard_moved;
SELECT table_name, missing_triggers FROM rls_audit.status;
ALTER TABLE regress_guard_moved.account SET SCHEMA regress_guard;
ALTER TABLE account RENAME TO acct;
-- Triggers of the owner's own that stop or fail a write stop the write: nothing unrecorded is kept.
CREATE TABLE shadow (LIKE acct);
GRANT INSERT ON shadow TO regress_guard_app;
CREATE FUNCTION regress_guard.swallow() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
CREATE TRIGGER a_swallow BEFORE INSERT ON acct FOR EACH ROW EXECUTE FUNCTION regress_guard.swallow();
CREATE FUNCTION regress_guard.fail() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'no'; END$$;
CREATE TRIGGER z_fail AFTER UPDATE ON acct FOR EACH STATEMENT EXECUTE FUNCTION regress_guard.fail();
CREATE RULE divert AS ON INSERT TO acct WHERE new.site_id = 99 DO INSTEAD INSERT INTO shadow VALUES (new.*);
RESET ROLE;

-- viewpoint from a superuser, the one role that may still name rls_audit.capture()
-- in a trigger (as pg_restore does): the guard compares the whole trigger for it too.
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT WHEN (false) EXECUTE FUNCTION rls_audit.capture()$$) AS when_false;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER UPDATE ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS other_event;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert BEFORE INSERT ON acct
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS before;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH ROW EXECUTE FUNCTION rls_audit.capture()$$) AS per_row;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON acct REFERENCING NEW TABLE AS other_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS other_transition_name;
SELECT regress_try($$CREATE TRIGGER zz_again AFTER INSERT ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS second_capture;
SELECT regress_try($$CREATE TRIGGER rls_audit_delete AFTER DELETE ON acct REFERENCING OLD TABLE AS old_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS unaudited_operation;
SELECT regress_try($$CREATE TRIGGER capture_here AFTER INSERT ON plain REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS capture_on_unaudited_table;
-- ... and an identical one is harmless: it stays ENABLE ALWAYS.
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS identical;
SELECT * FROM regress_triggers('acct');

-- viewpoint from the application role: the same routes fail for want of ownership
SET SESSION AUTHORIZATION regress_guard_app;
SET search_path = regress_guard, public;
SELECT regress_try($$CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT WHEN (false) EXECUTE FUNCTION rls_audit.capture()$$) AS when_false;
SELECT regress_try($$CREATE TRIGGER zz_again AFTER INSERT ON acct REFERENCING NEW TABLE AS new_rows
                     FOR EACH STATEMENT EXECUTE FUNCTION rls_audit.capture()$$) AS second_capture;
SELECT regress_try($$ALTER TRIGGER rls_audit_insert ON acct RENAME TO quiet$$) AS rename_away;
SELECT regress_try($$ALTER TABLE acct DISABLE TRIGGER ALL$$) AS disable_all;
SELECT regress_try($$ALTER TABLE acct ENABLE REPLICA TRIGGER rls_audit_update$$) AS enable_replica;
SELECT regress_try($$DROP TRIGGER rls_audit_truncate ON acct$$) AS drop_trigger;
SELECT regress_try($$SET session_replication_role = replica$$) AS replica_mode;
SELECT regress_try($$ALTER TABLE acct RENAME TO elsewhere$$) AS rename_table;
SELECT regress_try($$SELECT rls_audit.disable('acct')$$) AS disable;
SELECT regress_try($$SELECT rls_audit.enable('acct', operations => '{TRUNCATE}')$$) AS fewer_operations;
SELECT regress_try($$SELECT rls_audit._place_triggers('acct')$$) AS internal_function;
SELECT regress_try($$SELECT rls_audit._register('acct', '{}', '{}', '{INSERT}')$$) AS internal_function;
SELECT regress_try($$CREATE TEMP TABLE app_child () INHERITS (acct)$$) AS temp_child;
-- Writes: the swallowed insert leaves neither a row nor a record, the diverted one lands
-- in shadow (not audited), the failing update rolls back with its record, a plain insert is recorded.
BEGIN;
SELECT rls.set_context('1', '7');
INSERT INTO acct VALUES (1, 1, 10, 'p1');
INSERT INTO acct VALUES (2, 99, 10, 'p2');
SELECT regress_try($$UPDATE acct SET balance = 0$$) AS failing_update;
COMMIT;
RESET SESSION AUTHORIZATION;
SELECT count(*) AS acct_rows FROM regress_guard.acct;
SELECT count(*) AS shadow_rows FROM regress_guard.shadow;
SELECT operation, table_name, row_key FROM rls_audit.log ORDER BY id;
SET ROLE regress_guard_owner;
SET search_path = regress_guard, public;
DROP RULE divert ON acct;
DROP TRIGGER a_swallow ON acct;
DROP TRIGGER z_fail ON acct;
RESET ROLE;
SET SESSION AUTHORIZATION regress_guard_app;
SET search_path = regress_guard, public;
BEGIN;
SELECT rls.set_context('1', '7');
INSERT INTO acct VALUES (1, 1, 10, 'p1');
UPDATE acct SET balance = 11, pin = 'p2';
COMMIT;
RESET SESSION AUTHORIZATION;
SELECT operation, table_name, row_key, new_values, changed_columns FROM rls_audit.log ORDER BY id;

-------------------------------------------------------------------------------
-- Partitioned and inheritance parents
-------------------------------------------------------------------------------
SET ROLE regress_guard_owner;
SET search_path = regress_guard, public;
CREATE TABLE part (id int, site_id int, v text, secret text, PRIMARY KEY (id, site_id)) PARTITION BY LIST (site_id);
CREATE TABLE part_1 PARTITION OF part FOR VALUES IN (1);
CREATE TABLE part_2 PARTITION OF part FOR VALUES IN (2, 3) PARTITION BY LIST (site_id);
CREATE TABLE part_2a PARTITION OF part_2 FOR VALUES IN (2);
-- A partition cannot be audited alone: writes through its parent would pass unrecorded.
SELECT regress_try($$SELECT rls_audit.enable('part_1')$$) AS partition_alone;
SELECT rls_audit.enable('part', masked_columns => '{secret}');
SELECT table_name, audited_through, masked_columns, missing_triggers FROM rls_audit.status
 WHERE table_name::text LIKE 'part%' ORDER BY 1;
-- New and attached partitions are audited with the parent's options.
CREATE TABLE part_3 PARTITION OF part_2 FOR VALUES IN (3);
CREATE TABLE part_4 (id int NOT NULL, site_id int NOT NULL, v text, secret text);
ALTER TABLE part ATTACH PARTITION part_4 FOR VALUES IN (4);
SELECT table_name, audited_through, masked_columns, missing_triggers FROM rls_audit.status
 WHERE table_name::text LIKE 'part%' ORDER BY 1;
-- A partition's options follow its parent; it is disabled through its parent.
SELECT regress_try($$SELECT rls_audit.enable('part_1', operations => '{INSERT}')$$) AS partition_options;
SELECT rls_audit.enable('part_1', masked_columns => '{secret}') AS partition_same_options;
SELECT regress_try($$SELECT rls_audit.disable('part_1')$$) AS partition_disable;
SELECT regress_try($$ALTER TABLE part_1 DISABLE TRIGGER rls_audit_insert$$) AS partition_trigger;
SELECT regress_try($$ALTER TABLE part DISABLE TRIGGER ALL$$) AS parent_trigger;
-- An audited table cannot go under a parent that is not audited ...
CREATE TABLE loose (id int, site_id int, v text, secret text, PRIMARY KEY (id, site_id)) PARTITION BY LIST (site_id);
SELECT regress_try($$ALTER TABLE part DETACH PARTITION part_4$$) AS detach;
SELECT table_name, audited_through FROM rls_audit.status WHERE table_name = 'part_4'::regclass;
SELECT regress_try($$ALTER TABLE loose ATTACH PARTITION part_4 FOR VALUES IN (4)$$) AS attach_to_unaudited;
ALTER TABLE part ATTACH PARTITION part_4 FOR VALUES IN (4);
-- ... nor can a foreign table or a table without a primary key be placed under an audited parent.
SELECT regress_try($$CREATE FOREIGN TABLE regress_guard.part_9 PARTITION OF regress_guard.part FOR VALUES IN (9)
                     SERVER regress_guard_server$$) AS foreign_partition;
CREATE TABLE inh (id int PRIMARY KEY, site_id int, v text);
SELECT rls_audit.enable('inh');
SELECT regress_try($$CREATE TABLE inh_nokey () INHERITS (inh)$$) AS child_without_key;
SELECT regress_try($$CREATE FOREIGN TABLE inh_remote () INHERITS (inh) SERVER regress_guard_server$$) AS foreign_child;
CREATE TABLE inh_child (PRIMARY KEY (id), extra text) INHERITS (inh);
CREATE TABLE inh_other (id int PRIMARY KEY, site_id int, v text);
SELECT rls_audit.enable('inh_other');
CREATE TABLE unaudited_parent (id int, site_id int, v text);
SELECT regress_try($$ALTER TABLE inh_other INHERIT unaudited_parent$$) AS inherit_unaudited;
GRANT SELECT, INSERT, UPDATE, DELETE ON part, part_1, part_2, part_2a, inh, inh_child TO regress_guard_app;
RESET ROLE;

-- viewpoint from the application role: every write is recorded exactly once,
-- under the table the statement named.
SET SESSION AUTHORIZATION regress_guard_app;
SET search_path = regress_guard, public;
SELECT regress_try($$ALTER TABLE part DETACH PARTITION part_1$$) AS detach;
BEGIN;
SELECT rls.set_context('1', '7');
INSERT INTO part VALUES (1, 1, 'a', 's'), (2, 2, 'b', 's');
UPDATE part SET v = v || '!';
INSERT INTO part_1 VALUES (3, 1, 'direct', 's');
UPDATE part_2 SET v = 'through part_2';
DELETE FROM part WHERE id = 1;
INSERT INTO inh VALUES (10, 1, 'parent row');
INSERT INTO inh_child VALUES (11, 1, 'child row', 'x');
UPDATE inh SET v = v || '!';
DELETE FROM inh;
COMMIT;
RESET SESSION AUTHORIZATION;
SELECT table_name, operation, row_key, old_values, new_values FROM rls_audit.log
 WHERE table_name NOT LIKE '%acct' ORDER BY id;
SELECT table_name, row_key, operation, count(*) FROM rls_audit.log GROUP BY 1, 2, 3 HAVING count(*) > 1;
-- A row's history in a partition tree reads every table of the tree, from any of them.
SELECT table_name, operation FROM rls_audit.history('regress_guard.part_2a', '{"id": 2, "site_id": 2}');
SELECT count(*) AS same_from_the_root FROM rls_audit.history('regress_guard.part', '{"id": 2, "site_id": 2}');

-- A trigger changed behind the guards' back (a superuser who switched them off) shows in
-- rls_audit.status, and enable() by the owner puts it back.
ALTER EVENT TRIGGER rls_audit_guard DISABLE;
CREATE OR REPLACE TRIGGER rls_audit_insert AFTER INSERT ON regress_guard.part_1 REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT WHEN (false) EXECUTE FUNCTION rls_audit.capture();
ALTER EVENT TRIGGER rls_audit_guard ENABLE ALWAYS;
SELECT table_name, missing_triggers FROM rls_audit.status WHERE cardinality(missing_triggers) > 0;
SET ROLE regress_guard_owner;
SELECT rls_audit.enable('regress_guard.part_1', masked_columns => '{secret}') AS repaired;
RESET ROLE;
SELECT table_name, missing_triggers FROM rls_audit.status WHERE cardinality(missing_triggers) > 0;
SELECT * FROM regress_triggers('regress_guard.part_1');

-- disable() on the root stops the whole tree; a detached partition keeps its own auditing.
SET ROLE regress_guard_owner;
SET search_path = regress_guard, public;
ALTER TABLE part DETACH PARTITION part_4;
SELECT rls_audit.disable('part');
SELECT table_name FROM rls_audit.status WHERE table_name::text LIKE 'part%' ORDER BY 1;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgrelid IN ('part'::regclass, 'part_1'::regclass, 'part_2a'::regclass);
SELECT rls_audit.disable('part_4');
-- INHERIT audits a new child with its parent's options; NO INHERIT leaves it audited on its own.
CREATE TABLE inh_late (id int PRIMARY KEY, site_id int, v text);
ALTER TABLE inh_late INHERIT inh;
SELECT table_name, audited_through, missing_triggers FROM rls_audit.status WHERE table_name = 'inh_late'::regclass;
ALTER TABLE inh_late NO INHERIT inh;
SELECT table_name, audited_through, missing_triggers FROM rls_audit.status WHERE table_name = 'inh_late'::regclass;
-- Dropping a masked column forgets it.
ALTER TABLE acct DROP COLUMN pin;
SELECT masked_columns FROM rls_audit.audited_tables WHERE table_oid = 'acct'::regclass;
RESET ROLE;

-------------------------------------------------------------------------------
-- Monthly partitions of the log are UTC months, whatever the caller's zone
-------------------------------------------------------------------------------
SET TimeZone = 'Pacific/Kiritimati';
SELECT rls_audit.ensure_partitions(3) AS created;
SET TimeZone = 'America/Adak';
SELECT rls_audit.ensure_partitions(4) AS created;
SET TimeZone = 'UTC';
SELECT rls_audit.ensure_partitions(5) AS created;
SET TimeZone = 'Asia/Kathmandu';
SELECT rls_audit.ensure_partitions(5) AS created_again;
-- Each partition is one UTC month and starts where the one before ends, from
-- the start of this UTC month to the end of the fifth month after it.
CREATE FUNCTION public.regress_partitions_cover(first_month integer, months integer)
RETURNS TABLE (partitions bigint, utc_months bigint, starts_right boolean, ends_right boolean, contiguous boolean)
LANGUAGE sql AS $$
    SELECT count(*),
           count(*) FILTER (WHERE lower_bound = date_trunc('month', lower_bound AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                              AND upper_bound = (date_trunc('month', lower_bound AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'),
           min(lower_bound) = (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => first_month)) AT TIME ZONE 'UTC',
           max(upper_bound) = (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => months)) AT TIME ZONE 'UTC',
           bool_and(gap_before IS NULL OR gap_before = interval '0')
      FROM (SELECT lower_bound, upper_bound, lower_bound - lag(upper_bound) OVER (ORDER BY lower_bound) AS gap_before
              FROM rls_audit._log_partitions()) p
$$;
SELECT * FROM regress_partitions_cover(0, 6);
-- Two past UTC months, made by hand (ensure_partitions makes none before this month).
SET TimeZone = 'UTC';
DO $$
DECLARE m timestamptz;
BEGIN
    FOR m IN SELECT generate_series(date_trunc('month', now()) - interval '2 months',
                                    date_trunc('month', now()) - interval '1 month', interval '1 month') LOOP
        EXECUTE format('CREATE TABLE rls_audit.%I PARTITION OF rls_audit.statements FOR VALUES FROM (%L) TO (%L)',
                       'statements_' || to_char(m, 'YYYY_MM'), m, m + interval '1 month');
    END LOOP;
END $$;
SELECT * FROM regress_partitions_cover(-2, 6);
-- drop_partitions_before agrees, from any zone: a cutoff at a UTC month start
-- drops exactly the months before it.
SET TimeZone = 'Pacific/Kiritimati';
SELECT rls_audit.drop_partitions_before((date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month') AT TIME ZONE 'UTC') AS dropped;
SET TimeZone = 'America/Adak';
SELECT * FROM regress_partitions_cover(-1, 6);
SELECT rls_audit.drop_partitions_before(date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS dropped;
SELECT * FROM regress_partitions_cover(0, 6);
-- A cutoff later than the start of the current UTC month would drop the
-- partition being written (and later ones): refused, from any zone.
SET TimeZone = 'Pacific/Kiritimati';
SELECT regress_try($$SELECT rls_audit.drop_partitions_before((date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 second') AT TIME ZONE 'UTC')$$) AS one_second_into_the_month;
SELECT regress_try($$SELECT rls_audit.drop_partitions_before(now() + interval '2 months')$$) AS future;
SELECT regress_try($$SELECT rls_audit.drop_partitions_before('infinity')$$) AS infinity;
SELECT * FROM regress_partitions_cover(0, 6);
-- Clear the months for the next part (as the superuser, by hand).
DO $$
DECLARE p regclass;
BEGIN
    FOR p IN SELECT part FROM rls_audit._log_partitions() LOOP
        EXECUTE format('DROP TABLE %s', p);
    END LOOP;
END $$;
-- A partition an earlier version made in the caller's zone (next month, from
-- Kiritimati's midnight): the UTC months next to it meet it, with neither a gap
-- nor an overlap error.
SET TimeZone = 'Pacific/Kiritimati';
DO $$
DECLARE m date := date_trunc('month', now() AT TIME ZONE 'UTC' + interval '1 month');
BEGIN
    EXECUTE format('CREATE TABLE rls_audit.%I PARTITION OF rls_audit.statements FOR VALUES FROM (%L) TO (%L)',
                   'statements_' || to_char(m, 'YYYY_MM'), m, m + interval '1 month');
END $$;
SET TimeZone = 'America/Adak';
SELECT rls_audit.ensure_partitions(3) AS created;
SELECT partitions, utc_months, starts_right, contiguous FROM regress_partitions_cover(0, 4);
RESET TimeZone;
SELECT regress_try($$SELECT rls_audit.ensure_partitions(-1)$$) AS negative;
SELECT regress_try($$SELECT rls_audit.drop_partitions_before(NULL)$$) AS no_cutoff;

DROP SCHEMA regress_guard CASCADE;
DROP SCHEMA regress_guard_moved;
DROP FOREIGN DATA WRAPPER regress_guard_fdw CASCADE;
DROP EXTENSION django_rls;
DROP FUNCTION public.regress_try(text);
DROP FUNCTION public.regress_triggers(regclass);
DROP FUNCTION public.regress_partitions_cover(integer, integer);
DROP ROLE regress_guard_owner;
DROP ROLE regress_guard_app;
