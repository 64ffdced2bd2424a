-------------------------------------------------------------------------------
-- The audit log as readers see it, in both modes
--
-- Shared, as 21_audit_base.sql is: the extension's install script includes
-- it, and so does the SQL-only mode (django_rls/sqlonly.py, SCRIPTS), after
-- the mode's own 21_audit_log.sql has made the read policy the view calls,
-- rls_audit._may_read() (C in the extension, SQL in the SQL-only mode).  The
-- comments on the columns table_name and trail_id are each mode's own, with
-- its rls_audit.history() (23_audit_admin.sql).
-------------------------------------------------------------------------------

-- One row per changed row.  A security_barrier view reads its table as its
-- owner, so it decides for each row itself who reads it: rls_audit._may_read()
-- runs as the caller and decides by the caller's role (also on PostgreSQL 14,
-- which has no security_invoker views), and a reader's own conditions run
-- after it unless their operators are leakproof (then they reach the
-- indexes).  An entry's id is its statement row's id times 1024 plus its
-- position: unique, increasing with insertion order, and found back through
-- the B-tree on the statement row's id.
--
-- Newest first, as the admin lists it: PostgreSQL plans a security_barrier
-- view on its own, before and without the reader's ORDER BY and LIMIT, so the
-- order is the view's.  Then a site's (or user's) latest entries come from
-- its (site_id, logged_at) index, and LIMIT stops the scan: without it, the
-- view would unnest every statement row of the site for the reader to sort.
CREATE VIEW rls_audit.log WITH (security_barrier) AS
SELECT s.id * 1024 + e.n AS id,
       s.logged_at, s.xact_started_at, s.xact_id, s.table_oid, s.table_name, s.operation,
       e.row_key, e.old_values, e.new_values, e.changed_columns::text[] AS changed_columns,
       s.site_id, s.site_uuid, s.user_id, s.user_uuid, s.claims, s.db_role, s.application_name,
       s.client_addr, s.read_rule, e.read_keys::text[] AS read_keys, s.trail_id,
       s.id AS statement_id
  FROM rls_audit.statements s
 CROSS JOIN LATERAL ROWS FROM (unnest(s.row_keys), unnest(s.old_values), unnest(s.new_values),
                               unnest(s.changed_columns), unnest(s.row_read_keys))
       WITH ORDINALITY AS e(row_key, old_values, new_values, changed_columns, read_keys, n)
 WHERE rls_audit._may_read(s.trail_id, s.read_rule, e.read_keys::text[])
 ORDER BY logged_at DESC, id DESC;
COMMENT ON VIEW rls_audit.log IS
'One row per changed row of an audited table (or per TRUNCATE), with the django_rls context that changed it; each reader sees the entries of rows its policies let it read. Stored in rls_audit.statements.';
COMMENT ON COLUMN rls_audit.log.id IS 'The entry: its statement row''s id times 1024 plus its position there; increasing with insertion order.';
COMMENT ON COLUMN rls_audit.log.row_key IS 'The primary key of the changed row as text; a JSON object of the columns for a composite key.';
COMMENT ON COLUMN rls_audit.log.old_values IS 'DELETE: the row; UPDATE: the changed columns before; without excluded and masked columns.';
COMMENT ON COLUMN rls_audit.log.new_values IS 'INSERT: the row; UPDATE: the changed columns after; without excluded and masked columns.';
COMMENT ON COLUMN rls_audit.log.changed_columns IS 'UPDATE: every changed column, masked ones included.';
COMMENT ON COLUMN rls_audit.log.db_role IS 'The database role that ran the statement (outside any SECURITY DEFINER function).';
COMMENT ON COLUMN rls_audit.log.operation IS 'INSERT, UPDATE, DELETE or TRUNCATE.';
COMMENT ON COLUMN rls_audit.log.read_rule IS
'Which of the row''s values a reader''s context must match (site, owner, site_owner); NULL: only the table''s owner and roles that bypass row level security read the entry.';
COMMENT ON COLUMN rls_audit.log.read_keys IS
'The row''s own site and/or owner values (canonical text, "site owner" for site_owner) before and after the change; "*" when the row is shared with everyone.';
COMMENT ON COLUMN rls_audit.log.statement_id IS 'The rls_audit.statements row holding the entry.';
REVOKE ALL ON rls_audit.log FROM PUBLIC;
GRANT SELECT ON rls_audit.log TO PUBLIC;

CREATE FUNCTION rls_audit.table_name(tbl regclass)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT tbl::text $$;
COMMENT ON FUNCTION rls_audit.table_name(regclass) IS
'A table''s name as rls_audit.log.table_name records it (always schema-qualified).';
