/*
 * sql/sqlonly/11_tokens.sql
 *     Signed contexts in the SQL-only mode: the token format of
 *     docs/security.md (the C library's ext/token.c), verified with the
 *     built-in sha256() and spent in a shared table.
 *
 * The keys live in rls._signing_keys, which only django_rls_context (and the
 * members of that role: the owner that installed the mode) can read.  They
 * are kept as HMAC-SHA256's inner and outer padded keys, so that verifying a
 * token is two sha256() calls per key.  Every object here runs or belongs to
 * django_rls_context; the application role reaches them only through
 * rls.set_context_signed().
 */

CREATE TABLE rls._signing_keys (
    inner_pad bytea NOT NULL CHECK (octet_length(inner_pad) = 64),
    outer_pad bytea NOT NULL CHECK (octet_length(outer_pad) = 64),
    fingerprint text PRIMARY KEY,
    added_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE rls._signing_keys IS
'Internal: the signing keys of the SQL-only mode, as HMAC-SHA256 padded keys; readable only by django_rls_context.';

-- Spent tokens, one row per (issuer, sequence number), until a while after
-- they expire.  A logged table: a token spent before a restart stays spent.
CREATE TABLE rls._spent_tokens (
    issuer text NOT NULL,
    sequence bigint NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (issuer, sequence)
);
COMMENT ON TABLE rls._spent_tokens IS
'Internal: tokens spent by rls.set_context_signed(), kept past their expiry so none is accepted twice.';

CREATE FUNCTION rls._signing_key_configured()
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT EXISTS (SELECT FROM rls._signing_keys) $$;
COMMENT ON FUNCTION rls._signing_key_configured() IS
'Internal: whether a signing key is configured (only that, never a key).';

-- base64url (RFC 4648 section 5) without padding, strictly: characters
-- outside the alphabet, padding and non-zero trailing bits are refused.
CREATE FUNCTION rls._b64url_decode(value text)
RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    decoded bytea;
BEGIN
    IF value !~ '^[A-Za-z0-9_-]*$' OR length(value) % 4 = 1 THEN
        RETURN NULL;
    END IF;
    decoded := decode(translate(value, '-_', '+/') || repeat('=', (4 - length(value) % 4) % 4), 'base64');
    IF rls._b64url_encode(decoded) <> value THEN
        RETURN NULL;
    END IF;
    RETURN decoded;
END
$$;
COMMENT ON FUNCTION rls._b64url_decode(text) IS
'Internal: strict base64url decoding (NULL for anything not in canonical unpadded form).';

CREATE FUNCTION rls._b64url_encode(value bytea)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT rtrim(translate(encode(value, 'base64'), E'+/\n', '-_'), '=') $$;
COMMENT ON FUNCTION rls._b64url_encode(bytea) IS
'Internal: base64url encoding without padding.';

-- HMAC-SHA256's padded keys (RFC 2104) of a key given as text.
CREATE FUNCTION rls._hmac_pads(key text, OUT inner_pad bytea, OUT outer_pad bytea)
RETURNS record
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    raw bytea := convert_to(key, 'UTF8');
BEGIN
    IF key IS NULL OR octet_length(raw) < 32 THEN
        RAISE EXCEPTION 'a django_rls signing key must be at least 32 bytes long'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use the DJANGO_RLS["SIGNING_KEY"] of the application; manage.py rls_keygen generates one.';
    END IF;
    IF octet_length(raw) > 64 THEN
        raw := sha256(raw);
    END IF;
    raw := raw || decode(repeat('00', 64 - octet_length(raw)), 'hex');
    inner_pad := raw;
    outer_pad := raw;
    FOR i IN 0..63 LOOP
        inner_pad := set_byte(inner_pad, i, get_byte(raw, i) # 54);
        outer_pad := set_byte(outer_pad, i, get_byte(raw, i) # 92);
    END LOOP;
END
$$;
COMMENT ON FUNCTION rls._hmac_pads(text) IS
'Internal: the inner and outer padded keys of HMAC-SHA256 for a key.';

-- Identifies a key without revealing it: the key's HMAC of a fixed text.
CREATE FUNCTION rls._key_fingerprint(inner_pad bytea, outer_pad bytea)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT encode(sha256(outer_pad || sha256(inner_pad || convert_to('django_rls key', 'UTF8'))), 'hex') $$;
COMMENT ON FUNCTION rls._key_fingerprint(bytea, bytea) IS
'Internal: a fingerprint of a signing key that does not reveal it.';

-- Add a signing key (the text of DJANGO_RLS["SIGNING_KEY"], at least 32
-- bytes).  Granted to nobody but the owner: manage.py rls_apply --install
-- runs it.  Several keys may be configured at once, for a rotation.
CREATE FUNCTION rls.add_signing_key(key text)
RETURNS void
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO rls._signing_keys (inner_pad, outer_pad, fingerprint)
    SELECT p.inner_pad, p.outer_pad, rls._key_fingerprint(p.inner_pad, p.outer_pad)
      FROM rls._hmac_pads(key) p
    ON CONFLICT (fingerprint) DO NOTHING
$$;
COMMENT ON FUNCTION rls.add_signing_key(text) IS
'Add a signing key for rls.set_context_signed() (SQL-only mode). For the owner only.';

CREATE FUNCTION rls.remove_signing_key(key text)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH removed AS (
        DELETE FROM rls._signing_keys k
         USING rls._hmac_pads(key) p
         WHERE k.fingerprint = rls._key_fingerprint(p.inner_pad, p.outer_pad)
        RETURNING 1)
    SELECT EXISTS (SELECT FROM removed)
$$;
COMMENT ON FUNCTION rls.remove_signing_key(text) IS
'Remove a signing key (the old one, after a rotation); true when it was configured.';

-- Refuse a token with SQLSTATE 28000, the C library's message and a detail
-- naming the failed check.
CREATE FUNCTION rls._refuse_token(detail text, message text DEFAULT 'invalid django_rls context token')
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '%', message
        USING ERRCODE = 'invalid_authorization_specification',
              DETAIL = detail,
              HINT = 'Sign a fresh token for every statement or transaction with the application''s key (django_rls.tokens.sign_context).';
END
$$;
COMMENT ON FUNCTION rls._refuse_token(text, text) IS
'Internal: raise the error for a refused token.';

-- Verify a token and spend it; returns its payload.  Runs as
-- django_rls_context, inside rls.set_context_signed().
CREATE FUNCTION rls._spend_token(token text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[];
    signature bytea;
    message bytea;
    valid boolean;
    payload jsonb;
    now_s bigint := floor(extract(epoch FROM clock_timestamp()))::bigint;
    issued bigint;
    expires bigint;
    spent integer;
BEGIN
    IF NOT EXISTS (SELECT FROM rls._signing_keys) THEN
        PERFORM rls._refuse_token('The owner adds keys with rls.add_signing_key() (rls_apply --install does it).', 'no django_rls signing key is configured');
    END IF;
    IF token IS NULL THEN
        RAISE EXCEPTION 'django_rls context token must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass the token the application signed, or call rls.clear_context() to clear the context.';
    END IF;
    IF octet_length(token) > 16384 THEN
        PERFORM rls._refuse_token('The token is longer than 16384 bytes.');
    END IF;
    parts := string_to_array(token, '.');
    IF cardinality(parts) <> 3 OR parts[1] <> 'v1' OR length(parts[3]) <> 43 THEN
        PERFORM rls._refuse_token('The token is not of the form v1.<payload>.<signature>.');
    END IF;
    signature := rls._b64url_decode(parts[3]);
    IF signature IS NULL THEN
        PERFORM rls._refuse_token('The signature is not base64url.');
    END IF;
    -- Compare hashes of the two MACs, so that the time the comparison takes
    -- tells nothing about how many leading bytes of a forgery were right.
    message := convert_to('v1.' || parts[2], 'UTF8');
    SELECT coalesce(bool_or(sha256(sha256(k.outer_pad || sha256(k.inner_pad || message))) = sha256(signature)), false)
      INTO valid
      FROM rls._signing_keys k;
    IF NOT valid THEN
        PERFORM rls._refuse_token('The signature does not match any configured key.');
    END IF;

    BEGIN
        payload := convert_from(rls._b64url_decode(parts[2]), 'UTF8')::jsonb;
    EXCEPTION WHEN OTHERS THEN
        payload := NULL;
    END;
    IF payload IS NULL OR jsonb_typeof(payload) <> 'object' THEN
        PERFORM rls._refuse_token('The payload is not a base64url JSON object.');
    END IF;
    IF EXISTS (SELECT FROM jsonb_object_keys(payload) k
                WHERE k NOT IN ('site', 'user', 'claims', 'iat', 'exp', 'iss', 'seq', 'db')) THEN
        PERFORM rls._refuse_token('The payload has a member other than site, user, claims, iat, exp, iss, seq and db.');
    END IF;
    IF jsonb_typeof(payload -> 'iat') IS DISTINCT FROM 'number' OR jsonb_typeof(payload -> 'exp') IS DISTINCT FROM 'number'
       OR jsonb_typeof(payload -> 'seq') IS DISTINCT FROM 'number'
       OR (payload ->> 'iat') !~ '^-?[0-9]{1,18}$' OR (payload ->> 'exp') !~ '^-?[0-9]{1,18}$'
       OR (payload ->> 'seq') !~ '^[0-9]{1,18}$' OR (payload ->> 'seq')::bigint < 1 THEN
        PERFORM rls._refuse_token('iat, exp and seq must be integers, seq at least 1.');
    END IF;
    IF jsonb_typeof(payload -> 'iss') IS DISTINCT FROM 'string' OR (payload ->> 'iss') !~ '^[A-Za-z0-9_-]{16,64}$' THEN
        PERFORM rls._refuse_token('iss must be 16 to 64 base64url characters.');
    END IF;
    IF jsonb_typeof(coalesce(payload -> 'site', 'null')) NOT IN ('null', 'number', 'string')
       OR jsonb_typeof(coalesce(payload -> 'user', 'null')) NOT IN ('null', 'number', 'string')
       OR jsonb_typeof(coalesce(payload -> 'claims', 'null')) NOT IN ('null', 'object') THEN
        PERFORM rls._refuse_token('site and user must be integers, strings or null; claims an object or null.');
    END IF;
    IF payload ? 'db' AND (jsonb_typeof(payload -> 'db') <> 'string' OR payload ->> 'db' <> current_database()) THEN
        PERFORM rls._refuse_token('The token is bound to another database.');
    END IF;
    issued := (payload ->> 'iat')::bigint;
    expires := (payload ->> 'exp')::bigint;
    IF expires <= now_s THEN
        PERFORM rls._refuse_token('Its exp is in the past.', 'django_rls context token has expired');
    END IF;
    IF expires > now_s + 300 OR issued > expires THEN
        PERFORM rls._refuse_token('Its exp is more than 300 seconds away, or its iat after its exp.', 'django_rls context token lives too long');
    END IF;

    -- Forget tokens long expired, now and then: a row is kept 300 seconds
    -- past its expiry, so that a clock stepped back a little cannot revive it.
    IF random() < 0.01 THEN
        DELETE FROM rls._spent_tokens WHERE expires_at < clock_timestamp() - interval '300 seconds';
    END IF;
    INSERT INTO rls._spent_tokens (issuer, sequence, expires_at)
    VALUES (payload ->> 'iss', (payload ->> 'seq')::bigint, to_timestamp(expires))
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS spent = ROW_COUNT;
    IF spent = 0 THEN
        PERFORM rls._refuse_token('Every token is accepted once, on any connection to this database.', 'django_rls context token has already been used');
    END IF;
    RETURN payload;
END
$$;
COMMENT ON FUNCTION rls._spend_token(text) IS
'Internal: verify a signed token against the configured keys, spend it, and return its payload.';

CREATE FUNCTION rls.set_context_signed(token text, is_local boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    payload jsonb := rls._spend_token(token);
BEGIN
    PERFORM rls._store(rls._canonical_id(payload ->> 'site', 'site'), rls._canonical_id(payload ->> 'user', 'user'),
                       rls._checked_claims(payload -> 'claims'), coalesce(is_local, true));
END
$$;
COMMENT ON FUNCTION rls.set_context_signed(text, boolean) IS
'Set the request context from a single-use token signed with a key added by rls.add_signing_key() (format: docs/security.md). A NULL token is an error.';

-- The roles that must sign, as django_rls.require_signature set per role
-- does with the library: rls.set_context() is refused to them.
CREATE TABLE rls._signing_roles (
    role_oid oid PRIMARY KEY  -- a dropped role's row is ignored: its oid matches no pg_roles row
);
COMMENT ON TABLE rls._signing_roles IS
'Internal: roles that may set a context only with a signed token (rls.require_signature()).';

CREATE FUNCTION rls.require_signature(role regrole, required boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF role IS NULL OR required IS NULL THEN
        RAISE EXCEPTION 'rls.require_signature() needs a role and true or false'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass the role the application logs in as, such as rls.require_signature(''app'').';
    END IF;
    IF required THEN
        INSERT INTO rls._signing_roles VALUES (role) ON CONFLICT DO NOTHING;
    ELSE
        DELETE FROM rls._signing_roles WHERE role_oid = role;
    END IF;
END
$$;
COMMENT ON FUNCTION rls.require_signature(regrole, boolean) IS
'SQL-only mode: require signed contexts from a role (the application''s), or stop requiring them. For the owner only.';

-- Whether the session must sign: its login role is, or is a member of, a role
-- that must.  session_user, because current_user is django_rls_context inside
-- the setters; a role cannot change its session_user without being a
-- superuser.  PL/pgSQL, not SQL: rls.set_context() calls it in every
-- transaction, and a SQL function that cannot be inlined (this one pins
-- search_path) is parsed and planned again at every call, pg_roles' view
-- with it; PL/pgSQL keeps the plan for the session.
CREATE FUNCTION rls._signature_required()
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN EXISTS (SELECT FROM rls._signing_roles s JOIN pg_catalog.pg_roles r ON r.oid = s.role_oid
                    WHERE pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER'));
END
$$;
COMMENT ON FUNCTION rls._signature_required() IS
'Internal: whether the session must set its context with a signed token.';

-- For rls.extension_info(): whether the session must sign (only that).
CREATE FUNCTION rls._session_must_sign()
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT rls._signature_required() $$;
COMMENT ON FUNCTION rls._session_must_sign() IS
'Internal: whether the session must set its context with a signed token (run as django_rls_context).';

-- For rls.problems: the roles that must sign.
CREATE FUNCTION rls._signing_role_oids()
RETURNS SETOF oid
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT s.role_oid FROM rls._signing_roles s JOIN pg_catalog.pg_roles r ON r.oid = s.role_oid $$;
COMMENT ON FUNCTION rls._signing_role_oids() IS
'Internal: the roles that must sign (run as django_rls_context).';

CREATE FUNCTION rls.extension_info()
RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL RESTRICTED
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
               'mode', 'sql',
               'library_version', NULL,
               'sql_version', rls._sqlonly_version(),
               'loaded_at_startup', false,
               'replay_protection', true,
               'signing_key_configured', rls._signing_key_configured(),
               'require_signature', rls._session_must_sign(),
               'statement_bound', false,
               'strict', coalesce(current_setting('django_rls.strict', true), '') IN ('on', 'true', '1', 'yes'))
$$;
COMMENT ON FUNCTION rls.extension_info() IS
'How django_rls is installed here (mode "sql": the SQL-only mode, no library) and configured (never a signing key).';
