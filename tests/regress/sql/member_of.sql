--
-- rls.member_of(): owner-or-member policies that do not recurse, and what it refuses.
--
\set VERBOSITY terse
SET client_min_messages = warning;
DROP ROLE IF EXISTS regress_mo_owner;
DROP ROLE IF EXISTS regress_mo_app;
RESET client_min_messages;

CREATE EXTENSION django_rls;
CREATE ROLE regress_mo_owner;
CREATE ROLE regress_mo_app LOGIN;
CREATE SCHEMA regress_mo AUTHORIZATION regress_mo_owner;
GRANT USAGE ON SCHEMA regress_mo TO regress_mo_app;
SET search_path = regress_mo;
-- Project 1 (owner 10; members 11, 12) and project 2 (owner 20; member 12).
CREATE TABLE proj (id bigint PRIMARY KEY, owner_id bigint NOT NULL, name text);
CREATE TABLE memb (id int PRIMARY KEY, proj_id bigint NOT NULL REFERENCES proj, user_id bigint NOT NULL,
                   UNIQUE (proj_id, user_id));
INSERT INTO proj VALUES (1, 10, 'one'), (2, 20, 'two');
INSERT INTO memb VALUES (1, 1, 11), (2, 1, 12), (3, 2, 12);
ALTER TABLE proj OWNER TO regress_mo_owner;
ALTER TABLE memb OWNER TO regress_mo_owner;
GRANT SELECT ON proj, memb TO regress_mo_app;
-- EXPLAIN's lines, with the accessor's initplan printed the same way on every major
CREATE FUNCTION plan_lines(query text) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    line text;
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
        line := regexp_replace(line, '\(InitPlan 1\)\.col1', '$0', 'g');
        RETURN NEXT regexp_replace(line, 'InitPlan 1 \(returns \$0\)', 'InitPlan 1');
    END LOOP;
END $$;

-- viewpoint from the table owner: two EXISTS subqueries, each reading the other table
SET ROLE regress_mo_owner;
SELECT rls.protect('memb', 'members',
                   'user_id = rls.user_id() OR EXISTS (SELECT 1 FROM proj p WHERE p.id = proj_id)',
                   to_role => 'regress_mo_app') AS changed;
SELECT rls.protect('proj', 'owner_or_member',
                   'owner_id = rls.user_id() OR EXISTS (SELECT 1 FROM memb m WHERE m.proj_id = id AND m.user_id = rls.user_id())',
                   to_role => 'regress_mo_app') AS changed;
RESET ROLE;

-- viewpoint from the application role: every query recurses
SET SESSION AUTHORIZATION regress_mo_app;
SET search_path = regress_mo;
SELECT rls.set_context(NULL, '11', is_local => false);
SELECT name FROM proj; -- fail
RESET SESSION AUTHORIZATION;

-- viewpoint from the table owner: the project reads memberships with rls.member_of()
SET ROLE regress_mo_owner;
SELECT rls.protect('proj', 'owner_or_member',
                   'owner_id = rls.user_id() OR rls.member_of(''memb'', ''proj_id'', ''user_id'', id)',
                   to_role => 'regress_mo_app') AS changed;
RESET ROLE;

-- viewpoint from the application role: members, owners, strangers
SET SESSION AUTHORIZATION regress_mo_app;
SET search_path = regress_mo;
SELECT rls.set_context(NULL, '11', is_local => false);
SELECT name FROM proj ORDER BY 1;
SELECT proj_id, user_id FROM memb ORDER BY 1, 2;
SELECT rls.set_context(NULL, '12', is_local => false);
SELECT name FROM proj ORDER BY 1;
SELECT rls.set_context(NULL, '20', is_local => false);
SELECT name FROM proj ORDER BY 1;
SELECT proj_id, user_id FROM memb ORDER BY 1, 2;
SELECT rls.set_context(NULL, '99', is_local => false);
SELECT name FROM proj ORDER BY 1;
SELECT rls.clear_context();
SELECT name FROM proj ORDER BY 1;
-- plan: one scan of proj; the lookup is a function call, not a subquery
SELECT rls.set_context(NULL, '12', is_local => false);
SELECT plan_lines('SELECT name FROM proj');
-- wrong calls
SELECT rls.member_of('memb', 'proj_id', 'user_id', 1); -- fail: an integer key for a bigint column
SELECT rls.member_of('memb', 'nope', 'user_id', 1::bigint); -- fail
SELECT rls.member_of('memb', 'proj_id', 'user_id', NULL::bigint);
RESET SESSION AUTHORIZATION;

-- viewpoint from the table owner: memberships visible by project only
SET ROLE regress_mo_owner;
SELECT rls.protect('memb', 'members', 'EXISTS (SELECT 1 FROM proj p WHERE p.id = proj_id)',
                   to_role => 'regress_mo_app') AS changed;
RESET ROLE;

-- viewpoint from the application role: refused, the user's own memberships are not all visible
SET SESSION AUTHORIZATION regress_mo_app;
SET search_path = regress_mo;
SELECT rls.set_context(NULL, '11', is_local => false);
SELECT name FROM proj; -- fail
RESET SESSION AUTHORIZATION;

-- it is not SECURITY DEFINER
SELECT prosecdef FROM pg_proc WHERE oid = 'rls.member_of(regclass, name, name, anyelement)'::regprocedure;

DROP SCHEMA regress_mo CASCADE;
DROP EXTENSION django_rls;
DROP ROLE regress_mo_owner;
DROP ROLE regress_mo_app;
