-------------------------------------------------------------------------------
-- Membership that cannot recurse (ext/membership.c)
--
-- A C function, so the SQL-only mode (sql/sqlonly/) has no twin of it, and
-- rls_apply refuses OwnerOrMember declarations there.
-------------------------------------------------------------------------------

CREATE FUNCTION rls.member_of(membership regclass, key_column name, user_column name, key anyelement)
RETURNS boolean
AS 'MODULE_PATHNAME', 'rls_member_of'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION rls.member_of(regclass, name, name, anyelement) IS
'Whether the membership table has a row whose key_column is key and whose user_column is the context''s user. Runs as the caller and reads the table without expanding its policies (so a project policy using it cannot recurse through a membership policy that reads the project), and only after checking that the caller''s own SELECT policies show it every row whose user_column is its user.';
