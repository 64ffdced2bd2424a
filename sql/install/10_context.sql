-------------------------------------------------------------------------------
-- The request context
-------------------------------------------------------------------------------

CREATE FUNCTION rls.set_context(site text, "user" text, claims jsonb DEFAULT NULL,
                                is_local boolean DEFAULT true)
RETURNS void
AS 'MODULE_PATHNAME', 'rls_set_context'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION rls.set_context(text, text, jsonb, boolean) IS
'Set the request context (site and user: integer or UUID text, or NULL; claims: a JSON object). is_local => true (the default) scopes it to the current transaction block.';

CREATE FUNCTION rls.set_context_signed(token text, is_local boolean DEFAULT true)
RETURNS void
AS 'MODULE_PATHNAME', 'rls_set_context_signed'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION rls.set_context_signed(text, boolean) IS
'Set the request context from a single-use token signed with a key from django_rls.signing_key_file (format: docs/security.md). A NULL token is an error.';

-- Any role may call the setters: a context only matters to roles that policies
-- apply to, and django_rls.require_signature is what stops a role from
-- choosing its own context.

CREATE FUNCTION rls.clear_context()
RETURNS void
AS 'MODULE_PATHNAME', 'rls_clear_context'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION rls.clear_context() IS
'Clear the request context for the rest of the session. Always allowed: it can only take access away.';

CREATE FUNCTION rls.site_id()
RETURNS bigint
AS 'MODULE_PATHNAME', 'rls_site_id'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls.site_id() IS
'Site of the request context as bigint; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.user_id()
RETURNS bigint
AS 'MODULE_PATHNAME', 'rls_user_id'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls.user_id() IS
'User of the request context as bigint; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.site_uuid()
RETURNS uuid
AS 'MODULE_PATHNAME', 'rls_site_uuid'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls.site_uuid() IS
'Site of the request context as uuid; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.user_uuid()
RETURNS uuid
AS 'MODULE_PATHNAME', 'rls_user_uuid'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls.user_uuid() IS
'User of the request context as uuid; NULL when unset (an error when django_rls.strict is on).';

CREATE FUNCTION rls.claim(key text)
RETURNS text
AS 'MODULE_PATHNAME', 'rls_claim'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION rls.claim(text) IS
'One claim of the request context as text (like ->>); NULL when missing.';

CREATE FUNCTION rls.context()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'rls_context'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls.context() IS
'The whole request context as jsonb, for debugging.';

-- How policy text reads the context: as written.  The accessors are C
-- functions cheap enough to call per row, and a plain call lets the planner
-- see the tenant in its estimates (the SQL-only mode's sql/sqlonly/10_context.sql
-- rewrites the calls into sub-selects instead).
CREATE FUNCTION rls._policy_text(expr text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT expr $$;
COMMENT ON FUNCTION rls._policy_text(text) IS
'Internal: policy text as this mode needs it (the C library: unchanged).';

CREATE FUNCTION rls.extension_info()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'rls_extension_info'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION rls.extension_info() IS
'How the django_rls library is loaded and configured (never the signing key itself).';

