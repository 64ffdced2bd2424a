/* django_rls install script, assembled by the Makefile from the files in sql/install */
\echo Use "CREATE EXTENSION django_rls" to load this file. \quit

-- The SQL-only mode (django_rls/sqlonly.py) uses the same schema and names: refuse clearly
-- instead of failing on the first function that exists already.
DO $$
BEGIN
    IF to_regprocedure('rls._sqlonly_version()') IS NOT NULL THEN
        RAISE EXCEPTION 'the SQL-only mode of django_rls is installed in this database'
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'It has the functions of schema rls that the extension would create, and the policies call them.',
                  HINT = 'To move the database to the extension, in one transaction drop the schema rls (CASCADE; the policies go with it and the tables show nothing until rls_apply) and what django_rls_context and django_rls_member own, and create the extension; then run manage.py rls_apply. docs/operating.md, "Moving between the SQL-only mode and the library", has the statements.';
    END IF;
END
$$;

COMMENT ON SCHEMA rls IS 'django_rls: request context and row-level security policy helpers';
GRANT USAGE ON SCHEMA rls TO PUBLIC;

