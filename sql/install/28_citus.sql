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

-- What kind of Citus table tbl is: 'distributed', 'reference' or 'Citus local'
-- (Citus's metadata holds it), or NULL (a plain table, or no Citus).
CREATE FUNCTION rls._citus_table_kind(tbl regclass)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind text;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT CASE WHEN partmethod = ''n'' AND repmodel = ''t'' THEN ''reference''
                         WHEN partmethod = ''n'' THEN ''Citus local'' ELSE ''distributed'' END
               FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1'
       INTO kind USING tbl;
    RETURN kind;
END
$$;
COMMENT ON FUNCTION rls._citus_table_kind(regclass) IS
'Internal: distributed, reference or Citus local where Citus''s metadata holds the table; NULL otherwise.';

-- How an error or a problem names a table of Citus of that kind: 'a Citus local table', 'a distributed
-- table of Citus' or 'a reference table of Citus'.
CREATE FUNCTION rls._citus_table_words(kind text)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE kind WHEN 'Citus local' THEN 'a Citus local table' ELSE 'a ' || kind || ' table of Citus' END
$$;
COMMENT ON FUNCTION rls._citus_table_words(text) IS
'Internal: a Citus local table, or a distributed or reference table of Citus, as messages name one.';

-- Refuse to audit a table of Citus (issue 17), for rls_audit._check_auditable() in both modes: the shard
-- placements hold the rows, and Citus copies a table's triggers to them.  Nothing happens on a plain table or
-- without Citus.
CREATE FUNCTION rls._citus_refuse_audit(tbl regclass)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kind text := rls._citus_table_kind(tbl);
BEGIN
    IF kind IS NOT NULL THEN
        RAISE EXCEPTION '% is %, which django_rls cannot audit', tbl, rls._citus_table_words(kind)
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Its rows are written in its shard placements (on the workers, for a distributed or reference table), where the audit triggers would run apart from the audit log and the context of the coordinator; the audit guard refuses the copies of the triggers Citus makes there.',
                  HINT = 'Keep a table whose writes must be audited out of Citus (a plain table on the coordinator: undistribute_table()), or leave it unaudited (Django: audit=False) and record its changes in the application (docs/scale-out.md).';
    END IF;
END
$$;
COMMENT ON FUNCTION rls._citus_refuse_audit(regclass) IS
'Internal: refuse to audit a table Citus holds (its writes happen in its shard placements).';

-- Whether trigger tgname of tbl is Citus's copy of an audit trigger on a shard placement: Citus's metadata
-- knows the shard, or (while Citus creates a shard on a worker, before the metadata reaches it) the trigger
-- and the table carry the same shard id suffix, as Citus names its copies (rls_audit_delete_102137 of
-- items_102137).  False without Citus.  Only the guard's message depends on it, never what it allows.
CREATE FUNCTION rls._citus_shard_trigger(tgname name, tbl regclass)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    known boolean;
    suffix text := substring(tgname from '^rls_audit_(?:insert|update|delete|truncate)_([0-9]+)$');
BEGIN
    IF to_regprocedure('pg_catalog.relation_is_a_known_shard(regclass)') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT pg_catalog.relation_is_a_known_shard($1)' INTO known USING tbl;
    RETURN coalesce(known, false)
        OR (suffix IS NOT NULL AND (SELECT relname FROM pg_class WHERE oid = tbl) LIKE '%\_' || suffix);
END
$$;
COMMENT ON FUNCTION rls._citus_shard_trigger(name, regclass) IS
'Internal: true where an audit trigger of tbl is Citus''s copy on a shard placement.';

-- What, in a pair of policy expressions for tbl, reads another table, as
-- PostgreSQL parses them: 'sub-select' (a SubLink: EXISTS, IN, ANY or a
-- scalar sub-select; Citus refuses to create such a policy on any of its
-- tables, and to distribute a table that has one), 'rls.member_of()' (the C
-- function reads the membership table itself, below Citus: on a worker that
-- is the empty shell of a Citus table), or NULL.  It parses them by creating
-- a probe policy and reading its node tree, inside a block that is always
-- rolled back, with Citus's DDL propagation off for that block (Citus would
-- otherwise refuse the probe itself, with an internal error).  It runs with
-- the caller's search_path, like the CREATE POLICY it stands for.
CREATE FUNCTION rls._policy_reads_tables(tbl regclass, using_expr text, check_expr text)
RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    found text;
    member_of oid := pg_catalog.to_regprocedure('rls.member_of(regclass,name,name,anyelement)');
BEGIN
    BEGIN
        PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
        EXECUTE pg_catalog.format('CREATE POLICY rls__probe ON %s AS RESTRICTIVE FOR ALL TO PUBLIC USING (%s) WITH CHECK (%s)',
                                  tbl, coalesce(using_expr, 'true'), coalesce(check_expr, 'true'));
        SELECT CASE WHEN pg_catalog.concat(p.polqual::text, ' ', p.polwithcheck::text) LIKE '%{SUBLINK %'
                    THEN 'sub-select'
                    WHEN member_of IS NOT NULL
                         AND pg_catalog.strpos(pg_catalog.concat(p.polqual::text, ' ', p.polwithcheck::text),
                                               pg_catalog.format('{FUNCEXPR :funcid %s ', member_of)) > 0
                    THEN 'rls.member_of()' END
          INTO found
          FROM pg_catalog.pg_policy p
         WHERE p.polrelid = tbl AND p.polname = 'rls__probe';
        RAISE EXCEPTION USING ERRCODE = 'DRLS0';
    EXCEPTION WHEN SQLSTATE 'DRLS0' THEN
        NULL;  -- the probe and the setting are gone with the block
    END;
    RETURN found;
END
$$;
COMMENT ON FUNCTION rls._policy_reads_tables(regclass, text, text) IS
'Internal: sub-select or rls.member_of() where a policy with these expressions on the table would read another table; NULL otherwise (parsed, never run).';

-- Refuse a policy group that Citus's shards cannot hold (issue 17, item 4):
-- on a table of Citus's, an expression that reads another table.  Citus
-- itself refuses a sub-select, with an internal error and no way out named;
-- rls.member_of() it accepts, and its members would see nothing on the
-- workers.  Nothing happens on a plain table or without Citus.
CREATE FUNCTION rls._citus_refuse_group(tbl regclass, group_name text, raw_using text, raw_check text,
                                        using_expr text, check_expr text)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    kind text := rls._citus_table_kind(tbl);
    reads text;
BEGIN
    IF kind IS NULL THEN
        RETURN;
    END IF;
    reads := rls._policy_reads_tables(tbl, using_expr, check_expr);
    IF reads IS NULL THEN
        RETURN;
    END IF;
    IF reads = 'sub-select' AND rls._policy_text('rls.site_id()') <> 'rls.site_id()'
       AND rls._policy_reads_tables(tbl, raw_using, coalesce(raw_check, raw_using)) IS NULL THEN
        RAISE EXCEPTION 'cannot protect % with the SQL-only mode of django_rls: it is a % table of Citus, and the SQL-only mode reads the context in sub-selects, which Citus does not allow in a policy on its tables', tbl, kind
            USING ERRCODE = 'feature_not_supported',
                  HINT = format('Use the django_rls library instead of the SQL-only mode on every node of the cluster (shared_preload_libraries = ''citus, django_rls''), or keep %s out of Citus: SELECT undistribute_table(%L). docs/scale-out.md', tbl, tbl::text);
    END IF;
    IF reads = 'sub-select' THEN
        RAISE EXCEPTION 'policy group "%" of % reads another table in a sub-select, and % is a % table of Citus, which does not allow sub-selects in a policy on its tables', group_name, tbl, tbl, kind
            USING ERRCODE = 'feature_not_supported',
                  HINT = format('Give %s its own site column, kept in step by the application or a trigger, and protect it by that column (rls.protect_by_site, BySite), or keep it out of Citus: SELECT undistribute_table(%L). docs/scale-out.md', tbl, tbl::text);
    END IF;
    RAISE EXCEPTION 'policy group "%" of % calls rls.member_of(), and % is a % table of Citus: on the workers rls.member_of() reads the membership table''s empty shell, so no member would see a row', group_name, tbl, tbl, kind
        USING ERRCODE = 'feature_not_supported',
              HINT = format('Give %s its own site column and protect it by that column (rls.protect_by_site, BySite), or keep it out of Citus: SELECT undistribute_table(%L). docs/scale-out.md', tbl, tbl::text);
END
$$;
COMMENT ON FUNCTION rls._citus_refuse_group(regclass, text, text, text, text, text) IS
'Internal: refuse a policy group that reads another table on a table Citus holds (its shards cannot run it).';

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
    member_of oid := pg_catalog.to_regprocedure('rls.member_of(regclass,name,name,anyelement)');
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN;
    END IF;

    -- An audited table of Citus's: rls_audit.enable() refuses one, and the audit guard refuses the trigger
    -- copies that distributing an audited table makes, but a superuser can step around both (the guard's event
    -- trigger disabled, or the table audited before the citus extension existed).
    FOR tbl IN EXECUTE
        'SELECT d.logicalrelid FROM pg_catalog.pg_dist_partition d
          WHERE d.logicalrelid IN (SELECT a.table_oid FROM rls_audit.audited_tables a)
          ORDER BY d.logicalrelid::text'
    LOOP
        table_name := tbl;
        object_name := NULL;
        problem := format('%%1$s is audited and %s, so its writes are captured in its shard placements, apart from '
                          'the audit log of the coordinator (where they are captured at all)',
                          rls._citus_table_words(rls._citus_table_kind(tbl)));
        hint := 'Keep an audited table out of Citus (undistribute_table()), or stop auditing it '
                '(rls_audit.disable(), Django: audit=False); docs/scale-out.md.';
        RETURN NEXT;
    END LOOP;

    FOR tbl IN EXECUTE
        'SELECT d.logicalrelid FROM pg_catalog.pg_dist_partition d
          WHERE EXISTS (SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = d.logicalrelid
                           AND p.polname ~ ''^rls_base(_(select|insert|update|delete))?$'')
          ORDER BY d.logicalrelid::text'
    LOOP
        table_name := tbl;
        object_name := NULL;
        problem := format('%%1$s is distributed by Citus, and the context reaches its shards only from a transaction '
                          'block on the coordinator, so an autocommit statement of the application role reads and '
                          'writes none of its rows%s',
                          CASE WHEN NOT superuser THEN ' (its shard placements were not compared with its policies: '
                                                       'only a superuser can)' END);
        hint := 'Run every request in a transaction (Django: ATOMIC_REQUESTS), give every node the same '
                'django_rls.signing_key_file and admit the application role on the workers only from the coordinator '
                '(pg_hba.conf; docs/scale-out.md); run SELECT * FROM rls.problems as a superuser to compare the shard '
                'placements.';
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

        -- A policy that reads another table: Citus refuses to create one with a sub-select on its tables
        -- (rls.protect refuses first), but one can predate Citus's metadata or be made with its DDL
        -- propagation off; rls.member_of() it accepts, and on the workers it reads an empty shell.
        FOR placement IN
            SELECT p.polname,
                   CASE WHEN pg_catalog.concat(p.polqual::text, ' ', p.polwithcheck::text) LIKE '%{SUBLINK %'
                        THEN 'in a sub-select, which Citus does not run in a policy on its shards'
                        ELSE 'with rls.member_of(), which on the workers reads the membership table''s empty shell, '
                             'so no member sees a row' END AS how
              FROM pg_catalog.pg_policy p
             WHERE p.polrelid = tbl
               AND p.polname !~ '^rls_base_'  -- they repeat the groups' expressions
               AND (pg_catalog.concat(p.polqual::text, ' ', p.polwithcheck::text) LIKE '%{SUBLINK %'
                    OR (member_of IS NOT NULL
                        AND pg_catalog.strpos(pg_catalog.concat(p.polqual::text, ' ', p.polwithcheck::text),
                                              pg_catalog.format('{FUNCEXPR :funcid %s ', member_of)) > 0))
             ORDER BY p.polname
        LOOP
            object_name := placement.polname::text;
            problem := format('policy %s of %%1$s reads another table %s', placement.polname,
                              replace(placement.how, '%', '%%'));
            hint := 'Give the table its own site column and protect it by that column (rls.protect_by_site, BySite), '
                    'or keep it out of Citus (undistribute_table). docs/scale-out.md';
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
'Internal: what rls.problems reports about tables Citus distributes, and audited tables of Citus''s (nothing without Citus).';

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
