/*
 * sql/sqlonly/90_privileges.sql
 *     Who owns and may run what in the SQL-only mode.
 *
 * The setters and the tables of keys and spent tokens belong to the NOLOGIN
 * role django_rls_context, so they run with its rights only: TEMPORARY on the
 * database (for the session's context tables) and its own tables.  The
 * internal functions those setters call are for django_rls_context alone.
 * The installer grants django_rls_context CREATE on schema rls only for the
 * ALTER ... OWNER statements below, and revokes it afterwards.
 */

REVOKE ALL ON rls._signing_keys, rls._spent_tokens, rls._signing_roles FROM PUBLIC;
ALTER TABLE rls._signing_keys OWNER TO django_rls_context;
ALTER TABLE rls._spent_tokens OWNER TO django_rls_context;
ALTER TABLE rls._signing_roles OWNER TO django_rls_context;

-- Only django_rls_context may give a table a column of this type: it marks its context tables.
ALTER TYPE rls._genuine OWNER TO django_rls_context;
REVOKE USAGE ON TYPE rls._genuine FROM PUBLIC;

ALTER FUNCTION rls.set_context(text, text, jsonb, boolean) OWNER TO django_rls_context;
ALTER FUNCTION rls.set_context_signed(text, boolean) OWNER TO django_rls_context;
ALTER FUNCTION rls.clear_context() OWNER TO django_rls_context;
ALTER FUNCTION rls._signing_key_configured() OWNER TO django_rls_context;
ALTER FUNCTION rls.add_signing_key(text) OWNER TO django_rls_context;
ALTER FUNCTION rls.remove_signing_key(text) OWNER TO django_rls_context;
ALTER FUNCTION rls.require_signature(regrole, boolean) OWNER TO django_rls_context;
ALTER FUNCTION rls._session_must_sign() OWNER TO django_rls_context;
ALTER FUNCTION rls._signing_role_oids() OWNER TO django_rls_context;
-- The only reader of the context tables, which have no grants (sql/sqlonly/10_context.sql).
ALTER FUNCTION rls._held() OWNER TO django_rls_context;

-- Keys and the roles that must sign are the owner's to change (a member of django_rls_context).
REVOKE EXECUTE ON FUNCTION rls.add_signing_key(text), rls.remove_signing_key(text),
                           rls.require_signature(regrole, boolean) FROM PUBLIC;

REVOKE EXECUTE ON FUNCTION rls._store(text, text, jsonb, boolean), rls._ensure_context_tables(),
                           rls._spend_token(text), rls._signature_required() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rls._store(text, text, jsonb, boolean), rls._ensure_context_tables(),
                          rls._spend_token(text), rls._signature_required() TO django_rls_context;

-- rls.member_of()'s read runs as the NOLOGIN role django_rls_member, whose only rights are
-- SELECT on the two columns of each membership table rls.allow_member_of() named.
ALTER FUNCTION rls._member_rows(regclass, name, name) OWNER TO django_rls_member;

-- The audit log and its registrations belong to the NOLOGIN role django_rls_audit, which only
-- the capture functions rls_audit.enable() generates (owned by it, SECURITY DEFINER) and the
-- retention functions run as; it creates those functions and the log's monthly partitions, so it
-- keeps CREATE on schema rls_audit (sql/sqlonly/22_audit_capture.sql).
GRANT CREATE ON SCHEMA rls_audit TO django_rls_audit;
ALTER TABLE rls_audit.statements OWNER TO django_rls_audit;
ALTER TABLE rls_audit.statements_default OWNER TO django_rls_audit;
ALTER TABLE rls_audit.audited_tables OWNER TO django_rls_audit;
ALTER TABLE rls_audit.trails OWNER TO django_rls_audit;
ALTER TABLE rls_audit.read_rules OWNER TO django_rls_audit;
ALTER TABLE rls_audit.captures OWNER TO django_rls_audit;
ALTER TABLE rls_audit._requests OWNER TO django_rls_audit;
ALTER TABLE rls_audit.chain_heads OWNER TO django_rls_audit;
ALTER TABLE rls_audit.seals OWNER TO django_rls_audit;
ALTER VIEW rls_audit.log OWNER TO django_rls_audit;
ALTER FUNCTION rls_audit._build_capture(regclass) OWNER TO django_rls_audit;
ALTER FUNCTION rls_audit._apply_requests(regclass) OWNER TO django_rls_audit;
-- Reached only through rls_audit._apply_requests(), as django_rls_audit.
REVOKE ALL ON FUNCTION rls_audit._store_read_rule(regclass, name, name, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rls_audit._store_read_rule(regclass, name, name, boolean) TO django_rls_audit;
ALTER FUNCTION rls_audit._index_partition(regclass) OWNER TO django_rls_audit;
ALTER FUNCTION rls_audit._log_partitions() OWNER TO django_rls_audit;
ALTER FUNCTION rls_audit.ensure_partitions(integer) OWNER TO django_rls_audit;
ALTER FUNCTION rls_audit.drop_partitions_before(timestamptz) OWNER TO django_rls_audit;
GRANT EXECUTE ON FUNCTION rls_audit._capture_text(regclass) TO django_rls_audit;
