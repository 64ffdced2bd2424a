/*
 * sql/sqlonly/27_membership.sql
 *     rls.member_of() of the SQL-only mode: whether the context's user has a
 *     membership row for a key, read without expanding the policies the
 *     membership table has for the application role.
 *
 * The C library's rls.member_of() (ext/membership.c) scans the table below
 * the planner, where no policy applies.  Plain SQL cannot read a table with
 * FORCE ROW LEVEL SECURITY without its policies (only a superuser or a
 * BYPASSRLS role can, and the installing role may create neither), so this
 * mode reads it as another role, under a policy of its own:
 *
 *   - rls._member_rows() is SECURITY DEFINER, owned by the NOLOGIN role
 *     django_rls_member, which has no right but SELECT on the key and user
 *     columns of the membership tables rls.allow_member_of() named (the
 *     table's owner runs it; rls_apply does, for each OwnerOrMember).
 *   - That function also gives the table one permissive SELECT policy,
 *     django_rls_member_of, TO django_rls_member, USING the user column
 *     equals the context's user.  It is the only policy that applies to
 *     django_rls_member (the application's are TO the application role), so
 *     the read never expands the policies that would recurse, and sees only
 *     the context user's own rows, whatever the query asks.  Before reading,
 *     rls._member_rows() checks that this is still so, and refuses otherwise.
 *   - rls._member_rows() is executable by everyone, so it trusts its caller
 *     for nothing: before reading, it checks, as the C function does, that
 *     the role may SELECT both columns and that the role's own SELECT
 *     policies show it every row of its user (each one has
 *     "user_column = rls.user_id()" as a top-level OR-branch), for the role
 *     the session runs as outside any SECURITY DEFINER function (SET ROLE's,
 *     else the session's; rls._session_role()), which no caller can claim.
 *     rls._member_keys() runs as the caller and makes the same checks for
 *     current_user when that is another role (inside a SECURITY DEFINER
 *     function, its owner, which is whom the C function checks).  The check
 *     reads the policy's deparsed text, not its parse tree.
 *
 * Policies call it once per statement: rls._policy_text turns
 * rls.member_of(table, 'key', 'user', column) into
 * column::text = ANY ((SELECT rls._member_keys(table, 'key', 'user'))), an
 * InitPlan that lists the user's keys.  rls.member_of() itself, for other
 * callers, looks them up on every call.
 */

-- The USING expression of the policy django_rls_member reads a membership table under.
CREATE FUNCTION rls._member_policy_text(membership regclass, user_column name)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('%I OPERATOR(pg_catalog.=) (SELECT %s)', user_column, rls._accessor_for(membership, user_column, 'user')) $$;
COMMENT ON FUNCTION rls._member_policy_text(regclass, name) IS
'Internal: the condition under which django_rls_member reads a membership table (the context user''s own rows).';

-- A plain table and two key columns of the types rls.member_of() compares; an error otherwise.
CREATE FUNCTION rls._member_table_checked(membership regclass, key_column name, user_column name)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col name;
    typ regtype;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = membership) IS DISTINCT FROM 'r' THEN
        RAISE EXCEPTION '% is not a plain table', membership
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'rls.member_of() reads a plain table (not a view, a partitioned or a foreign table).';
    END IF;
    FOREACH col IN ARRAY ARRAY[key_column, user_column] LOOP
        SELECT atttypid::regtype INTO typ FROM pg_attribute
         WHERE attrelid = membership AND attname = col AND attnum > 0 AND NOT attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'column "%" of % does not exist', col, membership
                USING ERRCODE = 'undefined_column',
                      HINT = 'Name the membership table''s key and user columns.';
        END IF;
        IF typ NOT IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype, 'uuid'::regtype) THEN
            RAISE EXCEPTION 'column "%" of % has type %, not smallint, integer, bigint or uuid', col, membership, typ
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'rls.member_of() compares keys with built-in equality only; use a policy of your own for other key types.';
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION rls._member_table_checked(regclass, name, name) IS
'Internal: refuse a membership table or columns rls.member_of() cannot read.';

-- Whether django_rls_member may read the table as rls.allow_member_of() sets it up.
CREATE FUNCTION rls.member_of_allowed(membership regclass, key_column name, user_column name)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT has_column_privilege('django_rls_member', membership, key_column, 'SELECT')
       AND has_column_privilege('django_rls_member', membership, user_column, 'SELECT')
       AND rls._policy_matches(membership, 'django_rls_member_of',
                               rls._policy_hash(true, 'select', 'django_rls_member',
                                                rls._member_policy_text(membership, user_column), NULL))
$$;
COMMENT ON FUNCTION rls.member_of_allowed(regclass, name, name) IS
'Whether rls.member_of() may read this membership table (SQL-only mode): rls.allow_member_of() would change nothing.';

-- Run by the table's owner (rls_apply does, for each OwnerOrMember): let rls.member_of() read it.
CREATE FUNCTION rls.allow_member_of(membership regclass, key_column name, user_column name)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM rls._member_table_checked(membership, key_column, user_column);
    IF rls.member_of_allowed(membership, key_column, user_column) THEN
        RETURN false;
    END IF;
    EXECUTE format('GRANT SELECT (%I, %I) ON %s TO django_rls_member', key_column, user_column, membership);
    PERFORM rls._ensure_policy(membership, 'django_rls_member_of', true, 'select', 'django_rls_member',
                               rls._member_policy_text(membership, user_column), NULL);
    RETURN true;
END
$$;
COMMENT ON FUNCTION rls.allow_member_of(regclass, name, name) IS
'SQL-only mode: let rls.member_of() read a membership table (SELECT on its two columns and one policy for django_rls_member, showing it the context user''s rows only). Run as the table''s owner.';

-- The role a statement of this session runs as outside any SECURITY DEFINER function: what SET ROLE
-- set, else the session's.  Neither can be claimed by a caller: SET ROLE checks membership, and
-- only a superuser changes the session's role.
CREATE FUNCTION rls._session_role()
RETURNS oid
LANGUAGE sql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.oid FROM pg_roles r
     WHERE r.rolname = CASE WHEN current_setting('role') = 'none' THEN session_user::text
                            ELSE current_setting('role') END
$$;
COMMENT ON FUNCTION rls._session_role() IS
'Internal: the role the session runs as outside any SECURITY DEFINER function (SET ROLE''s, else the session user).';

-- Refuse unless role may SELECT both columns and its own SELECT policies show it every row whose
-- user_column is its user, as the C function checks for its caller.
CREATE FUNCTION rls._member_reader_checked(reader oid, membership regclass, key_column name, user_column name)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col name;
    permitted boolean := false;
    refusing name;
    policy record;
    admits boolean;
BEGIN
    -- NULL when SET ROLE's role was renamed since (the setting keeps the name): refuse, never skip.
    IF reader IS NULL THEN
        RAISE EXCEPTION 'rls.member_of() cannot tell which role this session runs as'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'The role chosen with SET ROLE no longer has the name it had then.',
                  HINT = 'Run SET ROLE again (or RESET ROLE).';
    END IF;
    PERFORM rls._member_table_checked(membership, key_column, user_column);
    FOREACH col IN ARRAY ARRAY[key_column, user_column] LOOP
        IF NOT has_column_privilege(reader, membership, col, 'SELECT') THEN
            RAISE EXCEPTION 'permission denied for column "%" of %', col, membership
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'rls.member_of() reads only what its caller may SELECT; grant SELECT on the membership table.';
        END IF;
    END LOOP;
    -- row_security_active() for reader: policies apply unless the table has none enabled, the role
    -- bypasses them (a superuser or BYPASSRLS), or it has its owner's rights and nothing forces them.
    IF NOT EXISTS (SELECT FROM pg_class c, pg_roles r
                    WHERE c.oid = membership AND r.oid = reader AND c.relrowsecurity
                      AND NOT r.rolsuper AND NOT r.rolbypassrls
                      AND (c.relforcerowsecurity OR NOT pg_has_role(reader, c.relowner, 'USAGE'))) THEN
        RETURN;
    END IF;
    FOR policy IN
        SELECT p.polname, p.polpermissive, pg_get_expr(p.polqual, p.polrelid) AS qual
          FROM pg_policy p
         WHERE p.polrelid = membership AND p.polcmd IN ('r', '*')
           AND EXISTS (SELECT FROM unnest(p.polroles) AS r
                        WHERE r = 0 OR pg_has_role(reader, r, 'USAGE'))
         ORDER BY p.polname
    LOOP
        admits := rls._admits_own_rows(policy.qual, user_column);
        IF policy.polpermissive THEN
            permitted := permitted OR admits OR policy.qual = 'true';
        ELSIF NOT admits AND refusing IS NULL THEN
            refusing := policy.polname;
        END IF;
    END LOOP;
    IF refusing IS NOT NULL OR NOT permitted THEN
        RAISE EXCEPTION 'the policies of % do not show role % the rows whose "%" is its user',
                        membership, reader::regrole, user_column
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = CASE WHEN refusing IS NOT NULL
                                THEN format('Policy "%s" has no OR-branch "%s = rls.user_id()"; rls.member_of() reads only rows its caller may read itself.', refusing, user_column)
                                ELSE 'No permissive SELECT policy admits them; rls.member_of() reads only rows its caller may read itself.' END,
                  HINT = format('Protect the membership table with Members() (a user''s own memberships are always visible), or give each of its SELECT policies the branch "%s = rls.user_id() OR ...".', user_column);
    END IF;
END
$$;
COMMENT ON FUNCTION rls._member_reader_checked(oid, regclass, name, name) IS
'Internal: refuse unless the role may SELECT the membership table''s two columns and its own SELECT policies show it every row whose user_column is its user.';

-- The read, as django_rls_member: the keys of the context user's membership rows, as text.  Anyone
-- may call it, so it trusts its caller for nothing: it makes the checks of the C function itself,
-- for the session's role (rls._session_role()), which the caller cannot choose.
CREATE FUNCTION rls._member_rows(membership regclass, key_column name, user_column name)
RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    member oid := (SELECT oid FROM pg_roles WHERE rolname = 'django_rls_member');
    other name;
    keys text[];
BEGIN
    PERFORM rls._member_reader_checked(rls._session_role(), membership, key_column, user_column);
    IF NOT rls.member_of_allowed(membership, key_column, user_column) THEN
        RAISE EXCEPTION 'rls.member_of() may not read %', membership
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'In the SQL-only mode, rls.member_of() reads a membership table as the role django_rls_member, which needs SELECT on its two columns and the policy django_rls_member_of as django_rls created it.',
                  HINT = format('Run SELECT rls.allow_member_of(%L, %L, %L) as the table''s owner (rls_apply does it for OwnerOrMember declarations).',
                                membership::text, key_column, user_column);
    END IF;
    SELECT p.polname INTO other FROM pg_policy p
     WHERE p.polrelid = membership AND p.polname <> 'django_rls_member_of'
       AND (0 = ANY (p.polroles) OR member = ANY (p.polroles))
     ORDER BY p.polname
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'policy "%" of % applies to django_rls_member', other, membership
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'rls.member_of() reads the table under its own policy django_rls_member_of alone, so that the policies of the application cannot recurse through it.',
                  HINT = 'Give the table''s policies TO the application role, not TO PUBLIC (rls_apply does).';
    END IF;
    -- Only built-in code: integer and uuid columns (checked above), their output functions, and
    -- pg_catalog's operators; the user column is also what the policy compares.
    EXECUTE format('SELECT array_agg(DISTINCT m.%I::pg_catalog.text) FROM %s m WHERE m.%I OPERATOR(pg_catalog.=) (SELECT %s)',
                   key_column, membership, user_column, rls._accessor_for(membership, user_column, 'user'))
       INTO keys;
    RETURN coalesce(keys, '{}');
END
$$;
COMMENT ON FUNCTION rls._member_rows(regclass, name, name) IS
'Internal: the keys (as text) of the context user''s rows of a membership table, read as django_rls_member once the session''s role is shown to see them itself.';

-- Whether the caller's own SELECT policies on the table admit every row whose user_column is its user.
CREATE FUNCTION rls._admits_own_rows(qual text, user_column name)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    branch text;
    depth integer := 0;
    quote text := NULL;
    ch text;
    start integer;
BEGIN
    IF qual IS NULL THEN
        RETURN false;
    END IF;
    FOREACH branch IN ARRAY ARRAY[format('(%I = ( SELECT rls.user_id() AS user_id))', user_column),
                                  format('(%I = ( SELECT rls.user_uuid() AS user_uuid))', user_column),
                                  format('(%I = rls.user_id())', user_column),
                                  format('(%I = rls.user_uuid())', user_column)] LOOP
        IF qual = branch THEN
            RETURN true;
        END IF;
        -- An OR of several branches deparses as "(b1 OR b2 ...)": find the branch at depth 1, outside quotes.
        depth := 0;
        quote := NULL;
        FOR i IN 1 .. length(qual) LOOP
            ch := substr(qual, i, 1);
            IF quote IS NOT NULL THEN
                IF ch = quote THEN
                    quote := NULL;
                END IF;
                CONTINUE;
            END IF;
            IF ch IN ('''', '"') THEN
                quote := ch;
            ELSIF ch = '(' THEN
                depth := depth + 1;
                IF depth = 2 AND substr(qual, i, length(branch)) = branch THEN
                    start := i;
                    IF (substr(qual, start - 1, 1) = '(' AND start = 2 OR substr(qual, start - 4, 4) = ' OR ')
                       AND (substr(qual, start + length(branch), 4) = ' OR '
                            OR start + length(branch) = length(qual)) THEN
                        RETURN true;
                    END IF;
                END IF;
            ELSIF ch = ')' THEN
                depth := depth - 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN false;
END
$$;
COMMENT ON FUNCTION rls._admits_own_rows(text, name) IS
'Internal: whether a deparsed policy expression is, or ORs in at its top level, "user_column = rls.user_id()" (or user_uuid()).';

-- As the caller: the keys of its user's memberships.  rls._member_rows() checks the session's role;
-- inside a SECURITY DEFINER function the caller is another role (the function's owner), checked here.
CREATE FUNCTION rls._member_keys(membership regclass, key_column name, user_column name)
RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The name comparison is rls._session_role() without its catalog lookup (this runs per statement).
    IF current_user::text IS DISTINCT FROM (CASE WHEN current_setting('role') = 'none' THEN session_user::text
                                                 ELSE current_setting('role') END) THEN
        PERFORM rls._member_reader_checked((SELECT oid FROM pg_roles WHERE rolname = current_user),
                                           membership, key_column, user_column);
    END IF;
    RETURN rls._member_rows(membership, key_column, user_column);
END
$$;
COMMENT ON FUNCTION rls._member_keys(regclass, name, name) IS
'Internal: the keys (as text) of the context user''s rows of a membership table, once the caller and the session''s role are shown to see them themselves.';

CREATE FUNCTION rls.member_of(membership regclass, key_column name, user_column name, key anyelement)
RETURNS boolean
LANGUAGE plpgsql STABLE STRICT PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    column_type regtype;
BEGIN
    SELECT atttypid::regtype INTO column_type FROM pg_attribute
     WHERE attrelid = membership AND attname = key_column AND attnum > 0 AND NOT attisdropped;
    IF FOUND AND pg_typeof(key) <> column_type THEN
        RAISE EXCEPTION 'rls.member_of() got a key of type % for column "%" of type %',
                        pg_typeof(key), key_column, column_type
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'Pass the key as the column''s type (a foreign key''s column has its target''s type).';
    END IF;
    RETURN key::text = ANY (rls._member_keys(membership, key_column, user_column));
END
$$;
COMMENT ON FUNCTION rls.member_of(regclass, name, name, anyelement) IS
'Whether the membership table has a row whose key_column is key and whose user_column is the context''s user. SQL-only mode: read as django_rls_member under its own policy (rls.allow_member_of), so a project policy using it cannot recurse through a membership policy that reads the project, and only after checking that the caller''s own SELECT policies show it every row whose user_column is its user. In policies, rls._policy_text turns it into one lookup per statement.';
