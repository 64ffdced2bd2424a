/*
 * sql/sqlonly/10_context.sql
 *     The request context of the SQL-only mode: the same functions as the C
 *     library's (sql/install/10_context.sql), in plain SQL and PL/pgSQL.
 *
 * Run by django_rls/sqlonly.py (manage.py rls_apply --install) as the owner
 * role, a non-superuser, after it created the NOLOGIN role django_rls_context,
 * made itself a member of it and granted it TEMPORARY on the database.
 *
 * Where the context lives: in two temporary tables of the session,
 * pg_temp.django_rls_transaction_context (transaction scope: see rls._held()
 * for how) and pg_temp.django_rls_session_context (session scope), created
 * and written only by the setter functions below, which are SECURITY DEFINER
 * functions owned by django_rls_context, and read only by rls._held(), one
 * too.  The application role can neither read, write, truncate, drop nor
 * alter them: it owns neither and has no privilege on them.  It cannot put a table of its own in
 * their place either, because it has no TEMPORARY right on the database
 * (rls_roles revokes it; PostgreSQL checks it on every temporary object, not
 * only the first).  Should a role keep that right by mistake, a table of its
 * own of that name is still never read: the genuine tables have a column of
 * type rls._genuine, which only django_rls_context may use in a table, and
 * the accessors compare it with a value of that type, which no other column
 * type can be compared with.  A context is therefore whatever the last setter
 * call chose: for a role required to sign (11_tokens.sql) only a token signed
 * by the application chooses it; otherwise any SQL the role runs can call
 * rls.set_context() (docs/security.md, "SQL-only mode").
 *
 * @VERSION@ is replaced by the installer with the package version.
 */

-- The installed mode and version, as rls.extension_info() reports them.
CREATE FUNCTION rls._sqlonly_version()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT '@VERSION@'::text $$;
COMMENT ON FUNCTION rls._sqlonly_version() IS
'Internal: the django_rls version of this SQL-only installation.';

-- The canonical text of an id, as ext/values.c (ParseId) and
-- django_rls/state.py (parse_id_text) make it: '' for none, an error for junk.
CREATE FUNCTION rls._canonical_id(value text, what text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    inner_text text := value;
BEGIN
    IF value IS NULL OR value = '' THEN
        RETURN '';
    END IF;
    IF length(value) >= 2 AND left(value, 1) = '{' AND right(value, 1) = '}' THEN
        inner_text := substr(value, 2, length(value) - 2);
    END IF;
    IF inner_text ~ '^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$'
       OR inner_text ~ '^[0-9A-Fa-f]{32}$' THEN
        RETURN inner_text::uuid::text;
    END IF;
    IF value ~ '^[+-]?[0-9]+$' AND ltrim(value, '+-0') ~ '^[0-9]{0,19}$'
       AND value::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 THEN
        RETURN value::numeric::bigint::text;
    END IF;
    RAISE EXCEPTION 'invalid % identifier "%"', what, value
        USING ERRCODE = 'invalid_parameter_value',
              HINT = format('Pass the primary key of the %s, such as ''42'' or ''a8098c1a-f86e-11da-bd1a-00112444be1e''.', what);
END
$$;
COMMENT ON FUNCTION rls._canonical_id(text, text) IS
'Internal: the canonical text of a site or user id (64-bit integer or UUID); an error for anything else.';

-- Check claims as ext/values.c does: a JSON object of at most 8 kB, or NULL.
CREATE FUNCTION rls._checked_claims(claims jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF claims IS NULL OR jsonb_typeof(claims) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(claims) <> 'object' THEN
        RAISE EXCEPTION 'django_rls claims must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass claims like ''{"role": "editor"}'', or NULL for none.';
    END IF;
    IF octet_length(claims::text) > 8192 THEN
        RAISE EXCEPTION 'django_rls claims are too large'
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Keep claims to a few small values and look larger data up in tables.';
    END IF;
    RETURN claims;
END
$$;
COMMENT ON FUNCTION rls._checked_claims(jsonb) IS
'Internal: claims checked to be a JSON object of at most 8 kB (NULL for none).';

-- Marks the genuine context tables: only django_rls_context has USAGE on the
-- type, which a column of a new table needs.
CREATE TYPE rls._genuine AS ENUM ('django_rls');
COMMENT ON TYPE rls._genuine IS
'Internal: the type of a column only django_rls''s own context tables can have.';

-- Why the transaction's context is a tagged row, not an ON COMMIT DELETE ROWS
-- table (what earlier versions used): PostgreSQL truncates every ON COMMIT
-- DELETE ROWS table of the session at the commit of every transaction that
-- touched any temporary object (xact.c, PreCommit_on_commit_actions, under
-- XACT_FLAGS_ACCESSEDTEMPNAMESPACE), and the accessors read this table in
-- every statement of a protected table: every transaction paid a truncation
-- of the table, its TOAST table and TOAST index (a scan of all local buffers
-- and file truncations each), 0.25-0.35 ms of backend CPU, five times a
-- primary-key lookup (docs/security.md, "Where the context lives").
--
-- So pg_temp.django_rls_transaction_context is a plain temporary table with
-- one row, which the setter updates in place (a HOT update: the table stays
-- one page however many transactions run) with the context and the 64-bit id
-- of the transaction setting it (pg_current_xact_id(): the setter writes a
-- table, so the transaction has an id anyway).  rls._held() returns that row
-- only while pg_current_xact_id_if_assigned() is that same id.  Full
-- transaction ids are never reused (64 bits, the epoch included) and never go
-- back: no clock is read, so a clock step or two transactions starting in the
-- same microsecond change nothing.  Whatever ends the transaction ends the
-- context with it: COMMIT, ROLLBACK, an error at commit (the update is undone
-- with the rest), an implicit transaction of autocommit or of the extended
-- protocol ending at Sync; ROLLBACK TO SAVEPOINT undoes the update, so the row
-- version before it, with the context before, is the one seen; nothing runs
-- at commit, so SET CONSTRAINTS ALL IMMEDIATE has nothing to fire early;
-- PREPARE TRANSACTION stays refused (the setter wrote a temporary table).  The
-- later transactions of the session, a pooled connection's next request among
-- them, have another id (or none, read-only), and see no transaction context.
--
-- The row with an ended transaction's values stays until the next setter
-- call; no role but django_rls_context reads it: the tables have no grants,
-- and rls._held() is a SECURITY DEFINER function of django_rls_context that
-- returns the current transaction's context only.
--
-- The context the session holds now: the transaction's, else the session's;
-- NULLs when it has none (no setter ran yet, or DISCARD dropped the tables).
-- It runs once per statement in policies (rls._policy_text).  Its queries are
-- guarded by to_regclass() and compare the tables' genuineness, as a
-- comparison of rls._genuine values, which fails to plan on a table of the
-- same name made by anyone but django_rls_context (a role that kept the
-- TEMPORARY right by mistake).
--
-- jit is off for it: its query can be planned again with the caller's
-- settings, and a caller's SET LOCAL enable_seqscan = off makes that plan look
-- expensive enough for JIT, which would then compile the query again at every
-- later call of the session (70 ms each instead of a few microseconds, seen in
-- bench/read_path.py).
CREATE FUNCTION rls._held(OUT site text, OUT "user" text, OUT claims jsonb)
RETURNS record
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    IF to_regclass('pg_temp.django_rls_transaction_context') IS NOT NULL THEN
        SELECT c.site, c."user", c.claims INTO site, "user", claims
          FROM pg_temp.django_rls_transaction_context c
         WHERE c.xact = pg_current_xact_id_if_assigned()
           AND c.genuine = 'django_rls'::rls._genuine;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    IF to_regclass('pg_temp.django_rls_session_context') IS NOT NULL THEN
        SELECT c.site, c."user", c.claims INTO site, "user", claims
          FROM pg_temp.django_rls_session_context c
         WHERE c.genuine = 'django_rls'::rls._genuine;
    END IF;
END
$$;
COMMENT ON FUNCTION rls._held() IS
'Internal: the context the session holds (the current transaction''s, then the session''s).';

-- Create the session's context tables on first use, refusing tables of that
-- name that django_rls_context does not own.  Runs as django_rls_context.
-- A session opened before an upgrade from an earlier version has the
-- ON COMMIT DELETE ROWS table pg_temp.django_rls_context, which nothing reads
-- any more: it is dropped here, so that its truncation at every commit stops
-- too; its session table is kept with its context.
CREATE FUNCTION rls._ensure_context_tables()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name text;
    existing regclass;
    genuine integer := 0;
    context_role oid := (SELECT r.oid FROM pg_roles r WHERE r.rolname = 'django_rls_context');
BEGIN
    FOREACH name IN ARRAY ARRAY['django_rls_transaction_context', 'django_rls_session_context'] LOOP
        existing := to_regclass('pg_temp.' || name);
        CONTINUE WHEN existing IS NULL;
        IF (SELECT c.relowner FROM pg_class c WHERE c.oid = existing) <> context_role THEN
            RAISE EXCEPTION 'a temporary table pg_temp.% that django_rls did not create exists in this session', name
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = 'Only rls.set_context() and rls.set_context_signed() may create it; this one was made to forge a context.',
                      HINT = 'Revoke TEMPORARY on the database from the role (manage.py rls_roles does this) and open a new session.';
        END IF;
        genuine := genuine + 1;
    END LOOP;
    IF genuine = 2 THEN
        RETURN;
    END IF;
    existing := to_regclass('pg_temp.django_rls_context');
    IF existing IS NOT NULL AND (SELECT c.relowner FROM pg_class c WHERE c.oid = existing) = context_role THEN
        DROP TABLE pg_temp.django_rls_context;
    END IF;
    CREATE TEMPORARY TABLE IF NOT EXISTS django_rls_transaction_context (
        site text, "user" text, claims jsonb, xact xid8,
        genuine rls._genuine NOT NULL DEFAULT 'django_rls');
    INSERT INTO pg_temp.django_rls_transaction_context (xact)
    SELECT NULL WHERE NOT EXISTS (SELECT FROM pg_temp.django_rls_transaction_context);
    CREATE TEMPORARY TABLE IF NOT EXISTS django_rls_session_context (
        site text NOT NULL, "user" text NOT NULL, claims jsonb,
        genuine rls._genuine NOT NULL DEFAULT 'django_rls');
    -- Earlier versions let every role read them; rls._held() reads them now.
    REVOKE ALL ON pg_temp.django_rls_transaction_context, pg_temp.django_rls_session_context FROM PUBLIC;
END
$$;
COMMENT ON FUNCTION rls._ensure_context_tables() IS
'Internal: create the session''s context tables (as django_rls_context) unless they exist.';

-- Store a checked context in the scope asked for.  Runs as django_rls_context.
-- Both tables' rows are updated in place, never deleted and inserted again:
-- temporary tables are never vacuumed, and the dead row a DELETE leaves keeps
-- its line pointer until a vacuum, so a session setting and clearing its
-- context per request (SCOPE = "session") grew its table by a page every
-- ~290 requests, all read by every statement; a HOT update's old version is
-- pruned whole.  A cleared session context is a row of empty values, which
-- every reader takes as no context.  Setting the session's context ends the
-- transaction's.
CREATE FUNCTION rls._store(site text, "user" text, claims jsonb, is_local boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM rls._ensure_context_tables();
    IF is_local THEN
        UPDATE pg_temp.django_rls_transaction_context
           SET site = _store.site, "user" = _store."user", claims = _store.claims, xact = pg_current_xact_id();
    ELSE
        UPDATE pg_temp.django_rls_transaction_context
           SET site = NULL, "user" = NULL, claims = NULL, xact = NULL
         WHERE xact IS NOT NULL;
        UPDATE pg_temp.django_rls_session_context
           SET site = _store.site, "user" = _store."user", claims = _store.claims;
        IF NOT FOUND THEN
            INSERT INTO pg_temp.django_rls_session_context (site, "user", claims) VALUES (site, "user", claims);
        END IF;
    END IF;
END
$$;
COMMENT ON FUNCTION rls._store(text, text, jsonb, boolean) IS
'Internal: store a checked context in the transaction or the session scope.';

CREATE FUNCTION rls.set_context(site text, "user" text, claims jsonb DEFAULT NULL,
                                is_local boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF rls._signature_required() THEN
        RAISE EXCEPTION 'rls.set_context() is disabled because django_rls requires a signature of this role'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'In the SQL-only mode, rls.require_signature() was called for this role (rls_apply --install does it when DJANGO_RLS["SIGNING_KEY"] is set).',
                  HINT = 'Call rls.set_context_signed() with a token signed by the application (DJANGO_RLS["SIGNING_KEY"]).';
    END IF;
    PERFORM rls._store(rls._canonical_id(site, 'site'), rls._canonical_id("user", 'user'),
                       rls._checked_claims(claims), coalesce(is_local, true));
END
$$;
COMMENT ON FUNCTION rls.set_context(text, text, jsonb, boolean) IS
'Set the request context (site and user: integer or UUID text, or NULL; claims: a JSON object). is_local => true (the default) scopes it to the current transaction.';

CREATE FUNCTION rls.clear_context()
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass('pg_temp.django_rls_transaction_context') IS NOT NULL
       OR to_regclass('pg_temp.django_rls_session_context') IS NOT NULL THEN
        PERFORM rls._ensure_context_tables();  -- refuses tables it did not create
        UPDATE pg_temp.django_rls_transaction_context
           SET site = NULL, "user" = NULL, claims = NULL, xact = NULL
         WHERE xact IS NOT NULL;
        UPDATE pg_temp.django_rls_session_context
           SET site = '', "user" = '', claims = NULL
         WHERE site <> '' OR "user" <> '' OR claims IS NOT NULL;
    END IF;
END
$$;
COMMENT ON FUNCTION rls.clear_context() IS
'Clear the request context for the rest of the session. Always allowed: it can only take access away.';

-- The accessors.  Unlike the C library's, they are not PARALLEL SAFE (a
-- parallel worker cannot read the leader's temporary tables): policies call
-- them through a scalar sub-select (rls._policy_text), which runs once per
-- statement in the leader and hands the value to the workers.  The SQL ones
-- have no pinned search_path so that PostgreSQL inlines them; their bodies
-- qualify every name.
CREATE FUNCTION rls._id(what text, kind text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
AS $$
DECLARE
    held record := rls._held();
    value text;
    is_uuid boolean;
BEGIN
    -- As in rls._held(), every operator and function is qualified instead of a pinned search_path.
    IF what OPERATOR(pg_catalog.=) 'site' THEN
        value := held.site;
    ELSE
        value := held."user";
    END IF;
    IF value IS NULL OR value OPERATOR(pg_catalog.=) '' THEN
        IF COALESCE(pg_catalog.current_setting('django_rls.strict', true), '')
           OPERATOR(pg_catalog.=) ANY (ARRAY['on', 'true', '1', 'yes']) THEN
            RAISE EXCEPTION 'no % is set in the django_rls context', what
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = pg_catalog.format('django_rls.strict is on, so a policy that needs the %s raises instead of matching no rows.', what),
                      HINT = 'Call rls.set_context() first, or run the code inside django_rls.context() or the middleware.';
        END IF;
        RETURN NULL;
    END IF;
    -- Held ids are canonical (rls._canonical_id): a UUID is 36 characters, an integer at most 20 and
    -- may hold a '-' too (its sign), so a '-' alone does not make a UUID.
    is_uuid := pg_catalog.length(value) OPERATOR(pg_catalog.=) 36;
    IF is_uuid OPERATOR(pg_catalog.<>) (kind OPERATOR(pg_catalog.=) 'uuid') THEN
        RAISE EXCEPTION 'the django_rls % is %, not %', what,
                        CASE WHEN is_uuid THEN 'a UUID' ELSE 'an integer' END,
                        CASE WHEN is_uuid THEN 'an integer' ELSE 'a UUID' END
            USING ERRCODE = 'datatype_mismatch',
                  HINT = pg_catalog.format('Use rls.%s_%s() to read it, and compare it with a column of the same type.',
                                           what, CASE WHEN is_uuid THEN 'uuid' ELSE 'id' END);
    END IF;
    RETURN value;
END
$$;
COMMENT ON FUNCTION rls._id(text, text) IS
'Internal: the site or user of the context as canonical text, checked to be of the kind asked for.';

CREATE FUNCTION rls.site_id()
RETURNS bigint
LANGUAGE sql STABLE PARALLEL RESTRICTED
AS $$ SELECT rls._id('site', 'id')::bigint $$;
COMMENT ON FUNCTION rls.site_id() IS
'Site of the request context as bigint; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.user_id()
RETURNS bigint
LANGUAGE sql STABLE PARALLEL RESTRICTED
AS $$ SELECT rls._id('user', 'id')::bigint $$;
COMMENT ON FUNCTION rls.user_id() IS
'User of the request context as bigint; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.site_uuid()
RETURNS uuid
LANGUAGE sql STABLE PARALLEL RESTRICTED
AS $$ SELECT rls._id('site', 'uuid')::uuid $$;
COMMENT ON FUNCTION rls.site_uuid() IS
'Site of the request context as uuid; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.user_uuid()
RETURNS uuid
LANGUAGE sql STABLE PARALLEL RESTRICTED
AS $$ SELECT rls._id('user', 'uuid')::uuid $$;
COMMENT ON FUNCTION rls.user_uuid() IS
'User of the request context as uuid; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.claim(key text)
RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL RESTRICTED
AS $$ SELECT (rls._held()).claims OPERATOR(pg_catalog.->>) key $$;
COMMENT ON FUNCTION rls.claim(text) IS
'One claim of the request context as text (like ->>); NULL when missing.';

CREATE FUNCTION rls.context()
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
               'site', CASE WHEN coalesce(h.site, '') = '' THEN 'null'::jsonb
                            WHEN h.site ~ '-' AND length(h.site) = 36 THEN to_jsonb(h.site)
                            ELSE h.site::jsonb END,
               'user', CASE WHEN coalesce(h."user", '') = '' THEN 'null'::jsonb
                            WHEN h."user" ~ '-' AND length(h."user") = 36 THEN to_jsonb(h."user")
                            ELSE h."user"::jsonb END,
               'claims', coalesce(h.claims, 'null'::jsonb))
      FROM rls._held() h
$$;
COMMENT ON FUNCTION rls.context() IS
'The whole request context as jsonb, for debugging.';

-- How policy text reads the context in this mode: every accessor call becomes
-- a scalar sub-select, which PostgreSQL runs once per statement (an InitPlan)
-- instead of once per row, and which keeps parallel plans possible.  So does
-- rls.member_of() on a column (27_membership.sql): it becomes a comparison
-- with the list of the user's keys, looked up once per statement.  The C
-- library's accessors are C functions cheap enough per row, and its
-- _policy_text leaves the text alone.
CREATE FUNCTION rls._policy_text(expr text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT regexp_replace(
               regexp_replace(
                   regexp_replace(expr,
                                  '(?<![\w."])rls\.member_of\(\s*(''(?:[^'']|'''')*''(?:::regclass)?)\s*,\s*(''(?:[^'']|'''')*'')\s*,\s*(''(?:[^'']|'''')*'')\s*,\s*("(?:[^"]|"")*"|[a-z_][a-z0-9_]*)\s*\)',
                                  '((\4)::pg_catalog.text OPERATOR(pg_catalog.=) ANY ((SELECT rls._member_keys(\1, \2, \3))::pg_catalog.text[]))', 'g'),
                   '(?<![\w."])rls\.(site_id|user_id|site_uuid|user_uuid|context)\(\s*\)',
                   '(SELECT rls.\1())', 'g'),
               '(?<![\w."])rls\.claim\((''(?:[^'']|'''')*'')\)', '(SELECT rls.claim(\1))', 'g')
$$;
COMMENT ON FUNCTION rls._policy_text(text) IS
'Internal: policy text as this mode needs it (accessor calls as scalar sub-selects, evaluated once per statement).';
