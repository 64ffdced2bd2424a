-------------------------------------------------------------------------------
-- Citus (issue 17, docs/scale-out.md)
--
-- Citus copies a distributed table's policies to every shard placement, but
-- without AS RESTRICTIVE.  rls.protect()'s policy set holds anyway where a
-- table has one policy group per command (rls_base_<command> carries the
-- group's expression, so OR-ing the permissive copy with it changes nothing),
-- and not where it has more (each group alone then admits a row) or where
-- another permissive policy sits beside them (it is OR'd with the groups).
-- What rls.problems reports about distributed tables comes from here; none of
-- it exists, and nothing here runs, where Citus is not installed.
-------------------------------------------------------------------------------

-- One line per policy of a table: name, command, roles and expressions, but
-- not whether it is permissive (Citus's copies never are).  The same text runs
-- on the coordinator and, through run_command_on_placements, on every shard
-- placement ('%s' is the relation), so it has no other '%' and qualifies what
-- it calls.
CREATE FUNCTION rls._policy_summary_query()
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT $q$SELECT coalesce(pg_catalog.string_agg(p.polname::text || ' ' || p.polcmd::text || ' '
               || coalesce(pg_catalog.array_to_string(ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END
                                                              FROM pg_catalog.unnest(p.polroles) AS r ORDER BY 1), ','), '')
               || ' using ' || coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '-')
               || ' check ' || coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), '-'),
               E'\n' ORDER BY p.polname), '')
          FROM pg_catalog.pg_policy p, pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true) AS fixed_path
         WHERE p.polrelid = '%s'::regclass$q$
$$;
COMMENT ON FUNCTION rls._policy_summary_query() IS
'Internal: the query that lists a table''s policies the same way on the coordinator and on each shard placement.';

-- Rows of rls.problems, but that object_name is NULL where it is the table's
-- name and problem has %1$s where the table's name goes: rls.problems fills
-- them in with the caller's search_path, like its other rows (this function
-- runs with its own).
CREATE FUNCTION rls._citus_problems()
RETURNS TABLE (table_name regclass, object_name text, problem text, hint text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass;
    declared text;
    placement record;
    superuser boolean := (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user);
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN;
    END IF;

    FOR tbl IN EXECUTE
        'SELECT d.logicalrelid FROM pg_catalog.pg_dist_partition d
          WHERE EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = d.logicalrelid
                           AND p.polname ~ ''^rls_base(_(select|insert|update|delete))?$'')
          ORDER BY d.logicalrelid::text'
    LOOP
        table_name := tbl;
        object_name := NULL;
        problem := format('%%1$s is distributed by Citus, and the context does not reach the workers, so the application '
                          'role reads and writes none of its rows%s',
                          CASE WHEN NOT superuser THEN ' (its shard placements were not compared with its policies: '
                                                       'only a superuser can)' END);
        hint := 'django_rls does not support Citus yet (docs/scale-out.md): keep protected tables local, or wait for '
                'issue 17; run SELECT * FROM rls.problems as a superuser to compare the shard placements.';
        RETURN NEXT;

        -- A command with two groups: on the shards each is a permissive policy that admits a row alone.
        FOR placement IN
            SELECT substring(p.polname from '_(select|insert|update|delete)$') AS command,
                   string_agg(p.polname::text, ', ' ORDER BY p.polname) AS names
              FROM pg_catalog.pg_policy p
             WHERE p.polrelid = tbl AND NOT p.polpermissive AND p.polname ~ '^rls_.+_(select|insert|update|delete)$'
             GROUP BY 1 HAVING count(*) > 1
        LOOP
            object_name := NULL;
            problem := format('the %s policies of %%1$s (%s) arrive on the shards without AS RESTRICTIVE, so there each '
                              'admits a row on its own', placement.command, placement.names);
            hint := 'Protect a distributed table with one policy group whose expression is the conjunction, for '
                    'instance rls.protect(tbl, ''site_owner'', ''site_id = rls.site_id() AND user_id = rls.user_id()''), '
                    'and remove the others.';
            RETURN NEXT;
        END LOOP;

        -- A permissive policy django_rls did not create: OR'd with the groups' permissive copies on the shards.
        FOR placement IN
            SELECT p.polname FROM pg_catalog.pg_policy p
             WHERE p.polrelid = tbl AND p.polpermissive AND p.polname !~ '^rls_base_(select|insert|update|delete)$'
        LOOP
            object_name := placement.polname::text;
            problem := format('permissive policy %s of %%1$s is OR''d on the shards with the policy groups, which arrive '
                              'there without AS RESTRICTIVE, so it widens what they allow', placement.polname);
            hint := format('Drop policy %I, or express what it allows as a policy group of django_rls.', placement.polname);
            RETURN NEXT;
        END LOOP;

        CONTINUE WHEN NOT superuser;
        EXECUTE replace(rls._policy_summary_query(), '''%s''', quote_literal(tbl::text)) INTO declared;
        FOR placement IN EXECUTE
            'SELECT nodename, nodeport, shardid, success, result
               FROM pg_catalog.run_command_on_placements($1, $2) ORDER BY shardid, nodename, nodeport'
            USING tbl, rls._policy_summary_query()
        LOOP
            CONTINUE WHEN placement.success AND placement.result = declared;
            object_name := format('shard %s on %s:%s', placement.shardid, placement.nodename, placement.nodeport);
            problem := CASE WHEN placement.success
                            THEN format('shard %s of %%1$s on %s:%s holds other policies than the table',
                                        placement.shardid, placement.nodename, placement.nodeport)
                            ELSE format('the policies of shard %s of %%1$s on %s:%s could not be read: %s',
                                        placement.shardid, placement.nodename, placement.nodeport,
                                        replace(placement.result, '%', '%%')) END;
            hint := 'As a superuser, recreate the placement''s policies as the coordinator''s table holds them (drop and '
                    'create them through run_command_on_placements), or move the shard: Citus copies the policies again.';
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION rls._citus_problems() IS
'Internal: what rls.problems reports about tables Citus distributes (nothing without Citus).';

-- Citus's functions that send a statement to other nodes, executable by
-- PUBLIC after CREATE EXTENSION citus: the application role could reach the
-- workers with them, past the coordinator.
CREATE FUNCTION rls._citus_remote_functions()
RETURNS SETOF regprocedure
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
     WHERE p.pronamespace = 'pg_catalog'::regnamespace
       AND p.proname IN ('master_run_on_worker', 'run_command_on_workers', 'run_command_on_all_nodes',
                         'run_command_on_coordinator', 'run_command_on_placements', 'run_command_on_shards',
                         'run_command_on_colocated_placements')
       AND EXISTS (SELECT FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_depend d
                                 ON d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = e.oid
                    WHERE e.extname = 'citus' AND d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid)
$$;
COMMENT ON FUNCTION rls._citus_remote_functions() IS
'Internal: Citus''s functions that run statements on other nodes (none without Citus).';
