/* django_rls install script, assembled by the Makefile from the files in sql/install */
\echo Use "CREATE EXTENSION django_rls" to load this file. \quit

COMMENT ON SCHEMA rls IS 'django_rls: request context and row-level security policy helpers';
GRANT USAGE ON SCHEMA rls TO PUBLIC;

