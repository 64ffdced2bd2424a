--
-- Parallel plans under a policy keep their shape and their rows; prepared
-- statements follow the context when it changes.
--
\set VERBOSITY terse
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_rls_app;
RESET client_min_messages;

CREATE EXTENSION django_rls;
CREATE ROLE regress_rls_app LOGIN;
CREATE SCHEMA regress_rls;
GRANT USAGE ON SCHEMA regress_rls TO regress_rls_app;
CREATE TABLE regress_rls.events (id int, site_id int, payload text);
INSERT INTO regress_rls.events
    SELECT i, i % 10, repeat('x', 50) FROM generate_series(1, 100000) AS i;
ANALYZE regress_rls.events;
GRANT SELECT ON regress_rls.events TO regress_rls_app;
-- How many workers a query's Gather node really launched.
CREATE FUNCTION regress_rls.workers_launched(query text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    plan json;
BEGIN
    EXECUTE 'EXPLAIN (ANALYZE, FORMAT JSON) ' || query INTO plan;
    RETURN (SELECT sum(n::int) FROM jsonb_path_query(plan::jsonb, 'strict $.**."Workers Launched"') AS n);
END
$$;
GRANT EXECUTE ON FUNCTION regress_rls.workers_launched(text) TO regress_rls_app;
SELECT rls.protect_by_site('regress_rls.events', to_role => 'regress_rls_app');

-- The superuser's filtered counts are the reference.
SELECT count(*) AS site_3_rows FROM regress_rls.events WHERE site_id = 3;
SELECT count(*) AS site_4_rows FROM regress_rls.events WHERE site_id = 4;

-- viewpoint from the application role, parallel plan forced
SET SESSION AUTHORIZATION regress_rls_app;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
BEGIN;
SELECT rls.set_context('3', '1');
-- accessor_params.sql shows the plan's shape.
SELECT count(*) FROM regress_rls.events;
SELECT regress_rls.workers_launched('SELECT count(*) FROM regress_rls.events') > 0 AS workers_ran;
-- The workers ran the policy with the leader's context, not an empty one.
SELECT count(*) FILTER (WHERE site_id <> 3) AS other_sites FROM regress_rls.events;
COMMIT;

-- A prepared statement, forced onto a generic plan, follows the context.
SET plan_cache_mode = force_generic_plan;
PREPARE site_rows AS SELECT count(*), min(site_id), max(site_id) FROM regress_rls.events;
BEGIN;
SELECT rls.set_context('3', '1');
EXECUTE site_rows;
COMMIT;
BEGIN;
SELECT rls.set_context('4', '1');
EXECUTE site_rows;
COMMIT;
EXECUTE site_rows;
SET plan_cache_mode = force_custom_plan;
BEGIN;
SELECT rls.set_context('3', '1');
EXECUTE site_rows;
SELECT rls.set_context('4', '1');
EXECUTE site_rows;
COMMIT;
DEALLOCATE site_rows;
RESET ALL;
RESET SESSION AUTHORIZATION;

DROP SCHEMA regress_rls CASCADE;
DROP EXTENSION django_rls;
DROP ROLE regress_rls_app;
