--
-- The context accessors in a finished plan become parameters that an
-- initplan sets once per execution, while the planner still sees the site.
-- EXPLAIN shows the parameter as $n before PostgreSQL 17 and as
-- (InitPlan n).col1 since (accessor_params_1.out).
--
\set VERBOSITY terse
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_rls_app;
RESET client_min_messages;

CREATE EXTENSION django_rls;
CREATE ROLE regress_rls_app LOGIN;
CREATE SCHEMA regress_rls;
GRANT USAGE ON SCHEMA regress_rls TO regress_rls_app;
CREATE TABLE regress_rls.orders (id int PRIMARY KEY, site_id int NOT NULL, amount int);
INSERT INTO regress_rls.orders SELECT i, i % 10, i FROM generate_series(1, 10000) AS i;
CREATE INDEX ON regress_rls.orders (site_id);
-- Site 1 holds nine rows in ten of this one.
CREATE TABLE regress_rls.skew (id int, site_id int NOT NULL);
INSERT INTO regress_rls.skew SELECT i, CASE WHEN i % 10 = 0 THEN 2 ELSE 1 END FROM generate_series(1, 10000) AS i;
-- Rows of a site and a user each: what a context of both may see.
CREATE TABLE regress_rls.owned (site_id int NOT NULL, owner_id int NOT NULL, note text);
INSERT INTO regress_rls.owned VALUES (1, 10, 'a'), (1, 20, 'b'), (2, 20, 'c'), (2, 10, 'd');
VACUUM ANALYZE regress_rls.orders, regress_rls.skew, regress_rls.owned;
GRANT SELECT, INSERT, UPDATE ON regress_rls.orders TO regress_rls_app;
GRANT SELECT ON regress_rls.skew TO regress_rls_app;
GRANT SELECT ON regress_rls.owned TO regress_rls_app;
ALTER TABLE regress_rls.owned ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON regress_rls.owned TO regress_rls_app
    USING (site_id = rls.site_id() AND owner_id = rls.user_id());
SELECT rls.protect_by_site('regress_rls.orders', to_role => 'regress_rls_app');
SELECT rls.protect_by_site('regress_rls.skew', to_role => 'regress_rls_app');
-- The planner's row estimate for a query's top scan.
CREATE FUNCTION regress_rls.estimated_rows(query text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    plan json;
BEGIN
    EXECUTE 'EXPLAIN (FORMAT JSON) ' || query INTO plan;
    RETURN (plan -> 0 -> 'Plan' ->> 'Plan Rows')::int;
END
$$;
-- How many times each initplan of a query ran, and what the scan under its top node read.
CREATE FUNCTION regress_rls.initplan_loops(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    plan jsonb;
BEGIN
    EXECUTE 'EXPLAIN (ANALYZE, FORMAT JSON) ' || query INTO plan;
    RETURN format('initplan loops: %s; scan rows: %s, removed by filter: %s',
                  jsonb_path_query_array(plan, 'strict $.**?(@."Parent Relationship" == "InitPlan")."Actual Loops"'),
                  (plan -> 0 -> 'Plan' -> 'Plans' -> -1 ->> 'Actual Rows')::numeric::int,
                  plan -> 0 -> 'Plan' -> 'Plans' -> -1 ->> 'Rows Removed by Filter');
END
$$;
-- A PL/pgSQL function whose query plan is cached for the session.
CREATE FUNCTION regress_rls.site_total() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT sum(amount) FROM regress_rls.orders);
END
$$;
-- Changes the context, then fetches the rest of a cursor.
CREATE FUNCTION regress_rls.switch_then_fetch(cur refcursor) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM rls.set_context('2', '20', '{"team": "blue", "tier": "silver"}');
    LOOP
        FETCH cur INTO r;
        EXIT WHEN NOT FOUND;
        RETURN NEXT r::text;
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION regress_rls.estimated_rows(text), regress_rls.initplan_loops(text),
    regress_rls.site_total(), regress_rls.switch_then_fetch(refcursor) TO regress_rls_app;

-- The superuser's filtered totals are the reference.
SELECT site_id, count(*), sum(amount) FROM regress_rls.orders WHERE site_id IN (1, 2) GROUP BY 1 ORDER BY 1;

-- viewpoint from the application role (EXPLAIN VERBOSE without query ids)
SET compute_query_id = off;
SET SESSION AUTHORIZATION regress_rls_app;
SET search_path = regress_rls;
SET max_parallel_workers_per_gather = 0;
BEGIN;
SELECT rls.set_context('1', NULL);
-- The policy compares each row with a parameter, set once by the initplan.
EXPLAIN (COSTS OFF) SELECT count(*) FROM orders WHERE amount > 0;
EXPLAIN (VERBOSE, COSTS OFF) SELECT count(*) FROM orders WHERE amount > 0;
SELECT count(*), sum(amount) FROM orders WHERE amount > 0;
-- A leakproof qual of the query still drives the index; the policy filters.
EXPLAIN (COSTS OFF) SELECT * FROM orders WHERE id = 1;
-- The index scans by the policy's site.
EXPLAIN (COSTS OFF) SELECT count(*) FROM orders;
SELECT count(*), sum(amount) FROM orders;
-- The query's own site_id = 1 and the policy's equality merge: the planner
-- checks rls.site_id() = 1 once, and that check becomes a second key of the
-- index scan, which btree compares with the first once, when the scan starts
-- (equal: one key; different: nothing is read).
EXPLAIN (COSTS OFF) SELECT count(*) FROM orders WHERE site_id = 1;
SELECT count(*) FROM orders WHERE site_id = 1;
SELECT count(*) FROM orders WHERE site_id = 2;
-- A call outside any per-row position stays a call (PL/pgSQL keeps running it
-- as a simple expression).
EXPLAIN (COSTS OFF) SELECT rls.site_id();
-- Claims with a constant key become parameters too.
SELECT rls.set_context('1', NULL, '{"tier": "gold"}');
EXPLAIN (VERBOSE, COSTS OFF) SELECT count(*) FROM orders WHERE rls.claim('tier') = 'gold';
SELECT count(*) FROM orders WHERE rls.claim('tier') = 'gold';
-- The planner still folds the accessor into its estimates: each site gets its own.
SELECT estimated_rows('SELECT * FROM skew') > 5000 AS site_1_is_big;
SELECT rls.set_context('2', NULL);
SELECT estimated_rows('SELECT * FROM skew') < 5000 AS site_2_is_small;
COMMIT;

-- On a sequential scan the filter reads the parameter for each of the 10000
-- rows, but the initplan that calls the accessor runs once.
BEGIN;
SET LOCAL enable_indexscan = off;
SET LOCAL enable_bitmapscan = off;
SELECT rls.set_context('1', NULL);
EXPLAIN (COSTS OFF) SELECT count(*) FROM orders WHERE amount > 0;
SELECT initplan_loops('SELECT count(*) FROM orders WHERE amount > 0');
-- Above a sequential scan the merged check stays a one-time filter.
EXPLAIN (COSTS OFF) SELECT count(*) FROM orders WHERE site_id = 1;
SELECT count(*) FROM orders WHERE site_id = 1;
SELECT count(*) FROM orders WHERE site_id = 2;
COMMIT;

-- Writes check the new row against the parameter.
BEGIN;
SELECT rls.set_context('1', NULL);
UPDATE orders SET amount = amount WHERE id = 1 RETURNING id, site_id;
UPDATE orders SET site_id = 2 WHERE id = 1; -- fail
ROLLBACK;
BEGIN;
SELECT rls.set_context('1', NULL);
INSERT INTO orders VALUES (10001, 2, 0); -- fail
ROLLBACK;

-- A prepared statement on a generic plan evaluates the initplan again in each
-- execution, so it follows a change of context.
SET plan_cache_mode = force_generic_plan;
PREPARE site_orders AS SELECT count(*), min(site_id), max(site_id), sum(amount) FROM orders;
BEGIN;
SELECT rls.set_context('1', NULL);
EXECUTE site_orders;
SELECT rls.set_context('2', NULL);
EXECUTE site_orders;
COMMIT;
DEALLOCATE site_orders;
RESET plan_cache_mode;

-- So does a PL/pgSQL function's cached plan.
BEGIN;
SELECT rls.set_context('1', NULL);
SELECT site_total();
SELECT rls.set_context('2', NULL);
SELECT site_total();
COMMIT;

-- A cursor reads the context once: rows fetched after a change of context
-- still come from the site it started with.
BEGIN;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_bitmapscan = off;
SELECT count(*) AS without_context FROM orders WHERE site_id = 1;
SELECT rls.set_context('1', NULL);
-- (An index-only scan takes the merged check as a second key too, and,
-- under an aggregate, keeps its own output, so that it need not project.)
EXPLAIN (VERBOSE, COSTS OFF) SELECT count(*) FROM orders WHERE site_id = 1;
SELECT count(*) FROM orders WHERE site_id = 1;
SELECT count(*) FROM orders WHERE site_id = 2;
DECLARE site_cursor CURSOR FOR SELECT id, site_id FROM orders WHERE id > 0 ORDER BY id;
FETCH 2 FROM site_cursor;
SELECT rls.set_context('2', NULL);
FETCH 2 FROM site_cursor;
CLOSE site_cursor;
COMMIT;

-- One initplan sets every accessor parameter of a plan at once, whichever the
-- plan needs first, so one execution reads one context: a cursor whose first
-- FETCH needed only the site still reads the user of the same context, after
-- the context changed.
BEGIN;
SELECT rls.set_context('1', '10');
EXPLAIN (VERBOSE, COSTS OFF)
SELECT site_id, NULL::int AS owner_id FROM orders WHERE id <= 3
UNION ALL SELECT site_id, owner_id FROM owned;
DECLARE mixed CURSOR FOR
SELECT site_id, NULL::int AS owner_id FROM orders WHERE id <= 3
UNION ALL SELECT site_id, owner_id FROM owned;
FETCH 1 FROM mixed;
SELECT rls.set_context('2', '20');
FETCH ALL FROM mixed;
COMMIT;

-- Several cursors: each keeps the context of its own first FETCH.
BEGIN;
SELECT rls.set_context('1', '10');
DECLARE first_cursor CURSOR FOR
SELECT site_id, NULL::int AS owner_id FROM orders WHERE id <= 3
UNION ALL SELECT site_id, owner_id FROM owned;
FETCH 1 FROM first_cursor;
SELECT rls.set_context('2', '20');
DECLARE second_cursor CURSOR FOR
SELECT site_id, NULL::int AS owner_id FROM orders WHERE id <= 3
UNION ALL SELECT site_id, owner_id FROM owned;
FETCH 1 FROM second_cursor;
SELECT rls.set_context('1', '20');
FETCH ALL FROM first_cursor;
FETCH ALL FROM second_cursor;
-- A cursor first fetched after the change reads the context of then, whole.
DECLARE third_cursor CURSOR FOR SELECT site_id, owner_id FROM owned;
SELECT rls.set_context('2', '10');
FETCH ALL FROM third_cursor;
COMMIT;

-- A WITH HOLD cursor runs to its end when its transaction commits, under the
-- context current then; the rows it had not fetched still come from the
-- context its first FETCH read, and so do the rows fetched after the commit,
-- when no context is set at all.
BEGIN;
SELECT rls.set_context('1', '10');
DECLARE held CURSOR WITH HOLD FOR
SELECT site_id, NULL::int AS owner_id FROM orders WHERE id <= 3
UNION ALL SELECT site_id, owner_id FROM owned;
FETCH 1 FROM held;
SELECT rls.set_context('2', '20');
COMMIT;
SELECT rls.context();
FETCH ALL FROM held;
CLOSE held;

-- The planner's own initplan of a (SELECT rls.user_id()) and a function
-- scan's arguments read the parameters of the same initplan.
BEGIN;
SELECT rls.set_context('1', '10');
EXPLAIN (VERBOSE, COSTS OFF)
SELECT site_id, NULL::int AS owner_id FROM orders WHERE id <= 3
UNION ALL SELECT site_id, owner_id FROM owned WHERE owner_id = (SELECT rls.user_id())
UNION ALL SELECT s::int, u::int FROM generate_series(rls.site_id(), rls.site_id()) AS s,
    generate_series(rls.user_id(), rls.user_id()) AS u;
DECLARE wrapped CURSOR FOR
SELECT site_id, NULL::int AS owner_id FROM orders WHERE id <= 3
UNION ALL SELECT site_id, owner_id FROM owned WHERE owner_id = (SELECT rls.user_id())
UNION ALL SELECT s::int, u::int FROM generate_series(rls.site_id(), rls.site_id()) AS s,
    generate_series(rls.user_id(), rls.user_id()) AS u;
FETCH 1 FROM wrapped;
SELECT rls.set_context('2', '20');
FETCH ALL FROM wrapped;
COMMIT;

-- A function that changes the context between two FETCHes of a cursor;
-- claims with different keys are parameters of the same initplan.
BEGIN;
SELECT rls.set_context('1', '10', '{"team": "red", "tier": "gold"}');
EXPLAIN (VERBOSE, COSTS OFF)
SELECT 'team ' || rls.claim('team') FROM orders WHERE id <= 2
UNION ALL SELECT 'tier ' || rls.claim('tier') || ' of ' || owner_id FROM owned;
DECLARE claims CURSOR FOR
SELECT 'team ' || rls.claim('team') FROM orders WHERE id <= 2
UNION ALL SELECT 'tier ' || rls.claim('tier') || ' of ' || owner_id FROM owned;
FETCH 1 FROM claims;
SELECT switch_then_fetch('claims');
SELECT rls.context() ->> 'site' AS site_now;
COMMIT;

-- In strict mode the initplan raises for a missing user when the plan first
-- needs any accessor, though this row never reaches rls.user_id().
BEGIN;
SET LOCAL django_rls.strict = on;
SELECT rls.set_context('1', NULL);
SELECT id FROM orders WHERE id = 1 AND CASE WHEN site_id = 1 THEN true ELSE rls.user_id() = 0 END; -- fail
ROLLBACK;

-- Parallel workers get the leader's value.
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET enable_indexscan = off;
SET enable_bitmapscan = off;
BEGIN;
SELECT rls.set_context('2', NULL);
EXPLAIN (COSTS OFF) SELECT count(*) FROM orders;
SELECT count(*), min(site_id), max(site_id), sum(amount) FROM orders;
COMMIT;
RESET ALL;

-- viewpoint from a superuser, who can leave the calls in place to compare
RESET SESSION AUTHORIZATION;
SET django_rls.accessor_initplans = off;
SET SESSION AUTHORIZATION regress_rls_app;
SET search_path = regress_rls;
BEGIN;
SELECT rls.set_context('1', NULL);
EXPLAIN (COSTS OFF) SELECT * FROM orders WHERE id = 1;
SELECT id, site_id FROM orders WHERE id = 1;
COMMIT;
SET django_rls.accessor_initplans = on; -- fail

RESET SESSION AUTHORIZATION;
RESET ALL;
DROP SCHEMA regress_rls CASCADE;
DROP EXTENSION django_rls;
DROP ROLE regress_rls_app;
