-------------------------------------------------------------------------------
-- The audit trail
--
-- rls_audit.log holds one row per changed table row, written by a C
-- statement-level trigger (rls_audit.capture) that reads the statement's
-- transition tables, builds the row images in C and inserts the rows as the
-- log's owner, running only built-in code (see ext/audit.c).
--
-- Only the extension owner (a superuser) owns and writes the log.  Each entry
-- records the table's trail id (rls_audit.trails: the table's identity in the
-- trail, which follows it through renames and dump and restore, and dies with
-- it), which rule lets the application role read it and the row's own site and
-- owner values (read_rule, read_keys); the policy rls_audit._may_read shows an
-- entry to every role with the privileges of the table's owner, and to a role
-- that the table's row level security constrains like the roles its policies
-- name, with SELECT on the table, USAGE on its schema and a context that
-- matches.  An event trigger refuses to disable or drop an audit trigger
-- behind rls_audit.disable()'s back.
--
-- The tables (rls_audit.statements, the registrations, the trail ids) and
-- the view rls_audit.log are the SQL-only mode's as well: they are made by
-- 21_audit_base.sql, before this file, and 21_audit_view.sql, after it.  Here
-- is what only the extension has: the leakproof row key index, the read
-- policy and the lookups in C, and which tables pg_dump dumps.
-------------------------------------------------------------------------------

-- Under row level security (and behind a security_barrier view) a reader's
-- condition reaches an index only when its operator is leakproof, and the
-- built-in text[] @> is not declared so: through the log's policy a lookup of
-- one row's history would read every statement row of the table.  So the
-- extension has its own @> on text[]: the built-in arraycontains, which on
-- text[] raises no error that depends on the values, declared LEAKPROOF
-- (only a superuser can), with a GIN operator class over the built-in array
-- support functions.
CREATE FUNCTION rls_audit._keys_contain(text[], text[])
RETURNS boolean
LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE LEAKPROOF
AS 'arraycontains';
COMMENT ON FUNCTION rls_audit._keys_contain(text[], text[]) IS
'Internal: the built-in arraycontains on text[], leakproof, for the row key index of rls_audit.statements.';
CREATE OPERATOR rls_audit.@> (LEFTARG = text[], RIGHTARG = text[], FUNCTION = rls_audit._keys_contain,
                              RESTRICT = contsel, JOIN = contjoinsel);
CREATE OPERATOR CLASS rls_audit.row_key_ops FOR TYPE text[] USING gin AS
    OPERATOR 2 rls_audit.@> (text[], text[]),
    FUNCTION 1 bttextcmp(text, text),
    FUNCTION 2 ginarrayextract(anyarray, internal, internal),
    FUNCTION 3 ginqueryarrayextract(anyarray, internal, int2, internal, internal, internal, internal),
    FUNCTION 4 ginarrayconsistent(internal, int2, anyarray, int4, internal, internal, internal, internal),
    FUNCTION 6 ginarraytriconsistent(internal, int2, anyarray, int4, internal, internal, internal),
    STORAGE text;

-- Indexes live on each partition, not on the partitioned parent: a parent index
-- would make ATTACH PARTITION create same-named partition indexes while
-- pg_restore replays a dump, and the restore would fail on the duplicates.
CREATE FUNCTION rls_audit._index_partition(part regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- a row's history (its key among the chunk's keys; the trail id is on the
    -- statement row); an entry by id; what a site did when; what a user did
    -- when; time ranges, and the newest entries of any reader newest first
    -- (rls_audit.newest_statements(), which a BRIN index cannot order)
    -- (the keys compared by bytes, "C": a row key is looked for by equality,
    -- which no collation changes, and the locale's comparison costs a bulk
    -- write a tenth of its time)
    -- (fastupdate off: with GIN's pending list, a lookup reads every key
    -- waiting there, up to 4MB of them: one object's history took 76 to 95 ms
    -- with 140,000 row keys pending, 0.4 to 3 ms without; putting the keys in
    -- the tree at once cost bulk writes nothing measurable, docs/audit.md)
    EXECUTE format('CREATE INDEX ON %s USING gin (row_keys COLLATE "C" rls_audit.row_key_ops) WITH (fastupdate = off)', part);
    EXECUTE format('CREATE INDEX ON %s (id)', part);
    EXECUTE format('CREATE INDEX ON %s (site_id, logged_at) WHERE site_id IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (site_uuid, logged_at) WHERE site_uuid IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (user_id, logged_at) WHERE user_id IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (user_uuid, logged_at) WHERE user_uuid IS NOT NULL', part);
    EXECUTE format('CREATE INDEX ON %s (logged_at)', part);
END
$$;
COMMENT ON FUNCTION rls_audit._index_partition(regclass) IS
'Internal: the indexes every partition of rls_audit.statements carries.';
REVOKE ALL ON FUNCTION rls_audit._index_partition(regclass) FROM PUBLIC;
SELECT rls_audit._index_partition('rls_audit.statements_default');

-- Readers see only the entries of rows their policies would let them read;
-- nobody but the owner writes.
CREATE FUNCTION rls_audit._may_read(trail_id uuid, read_rule text, read_keys text[])
RETURNS boolean
AS 'MODULE_PATHNAME', 'rls_audit_may_read'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION rls_audit._may_read(uuid, text, text[]) IS
'Internal: the read policy of rls_audit.log. The entry is about the table rls_audit.trails names for trail_id (none once it is dropped). True for roles with the privileges of the table''s owner; otherwise the reader needs USAGE on the table''s schema, SELECT on the table, row level security on it whose every SELECT policy applies to the reader (one of them permissive; or no row level security at all), and a context matching one of read_keys under read_rule.';

-- The statement rows holding a row's entries, found by the row key index:
-- readers put them into rls_audit.log's statement_id, a leakproof condition
-- that reaches the id index behind the view's barrier.  It finds the entries
-- as the log's owner and keeps those rls_audit._may_read() lets the caller
-- read, so it tells nothing of the others (ext/audit_lookup.c).
-- LEAKPROOF (only a superuser can declare it): its errors depend on nothing
-- it is given or reads, and it returns only what the caller may read, so a
-- condition on rls_audit.log calling it may run below the view's barrier.
-- No SET clause: the queries it runs name every object with its schema.
-- COST: it runs two queries, so the planner should call it once (as an
-- index condition), never once per row of a scan it filters.
CREATE FUNCTION rls_audit.statements_of(tbl regclass, row_key text)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'rls_audit_statements_of'
LANGUAGE C STABLE STRICT LEAKPROOF COST 10000;
COMMENT ON FUNCTION rls_audit.statements_of(regclass, text) IS
'The ids of the statement rows (rls_audit.log.statement_id) holding entries of the row row_key of tbl (or of any table of its partition tree, under any name it had) that the caller may read. Use: WHERE statement_id = ANY (rls_audit.statements_of(tbl, key)) AND row_key = key.';

-- The statement rows holding the caller's newest entries, found by the
-- (site_id, logged_at) and (user_id, logged_at) indexes newest first: readers
-- put them into rls_audit.log's statement_id, with the same conditions and
-- their own ORDER BY logged_at DESC, id DESC and LIMIT.  PostgreSQL plans the
-- security_barrier view for full retrieval when the reader's query sorts, so
-- without it a site's latest 50 entries read and sort every statement row of
-- the site.  It reads the statement rows as the log's owner and counts only
-- the entries rls_audit._may_read() lets the caller read (ext/audit_lookup.c).
-- Each condition given (not NULL) must hold; one on an entry's own columns
-- (row_key, the images) cannot be given, and a reader that has one must not
-- narrow its query this way.  Not LEAKPROOF: called on constants, it runs
-- once below the view's barrier all the same.  COST as statements_of().
CREATE FUNCTION rls_audit.newest_statements(
    entries integer,
    site_id bigint DEFAULT NULL, site_uuid uuid DEFAULT NULL,
    user_id bigint DEFAULT NULL, user_uuid uuid DEFAULT NULL,
    table_name text DEFAULT NULL, operation text DEFAULT NULL, db_role name DEFAULT NULL,
    logged_from timestamptz DEFAULT NULL, logged_before timestamptz DEFAULT NULL)
RETURNS bigint[]
AS 'MODULE_PATHNAME', 'rls_audit_newest_statements'
LANGUAGE C STABLE COST 10000;
COMMENT ON FUNCTION rls_audit.newest_statements(integer, bigint, uuid, bigint, uuid, text, text, name, timestamptz, timestamptz) IS
'The ids of the statement rows (rls_audit.log.statement_id), newest first, holding the caller''s newest readable entries (at least entries of them, or all there are) among those whose statement columns match every condition given (logged_from inclusive, logged_before exclusive). Use: WHERE statement_id = ANY (rls_audit.newest_statements(50, site_id => 7)) AND site_id = 7 ORDER BY logged_at DESC, id DESC LIMIT 50.';

-- How many of the caller's entries, and from when to when: the admin list's
-- paginator and its date hierarchy.  count(*), min(logged_at) and
-- max(logged_at) of the view with the same conditions give the same answers,
-- but through the view each one unnests every matching entry with its row
-- images and sorts them in the view's order.  These walk the statement rows
-- as newest_statements() does (as their owner, through the same indexes,
-- never reading the images) and count only the entries rls_audit._may_read()
-- lets the caller read, as the caller.  count_entries() stops at up_to (a
-- paginator's "more than N"); entry_times() reads from either end of the
-- indexes up to the first statement row with a readable entry.
CREATE FUNCTION rls_audit.count_entries(
    up_to bigint,
    site_id bigint DEFAULT NULL, site_uuid uuid DEFAULT NULL,
    user_id bigint DEFAULT NULL, user_uuid uuid DEFAULT NULL,
    table_name text DEFAULT NULL, operation text DEFAULT NULL, db_role name DEFAULT NULL,
    logged_from timestamptz DEFAULT NULL, logged_before timestamptz DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'rls_audit_count_entries'
LANGUAGE C STABLE COST 10000;
COMMENT ON FUNCTION rls_audit.count_entries(bigint, bigint, uuid, bigint, uuid, text, text, name, timestamptz, timestamptz) IS
'How many entries of rls_audit.log the caller may read among those whose statement columns match every condition given (logged_from inclusive, logged_before exclusive), counting at most up_to (NULL: all): count(*) of the view with those conditions, or up_to if that is more.';

CREATE FUNCTION rls_audit.entry_times(
    site_id bigint DEFAULT NULL, site_uuid uuid DEFAULT NULL,
    user_id bigint DEFAULT NULL, user_uuid uuid DEFAULT NULL,
    table_name text DEFAULT NULL, operation text DEFAULT NULL, db_role name DEFAULT NULL,
    logged_from timestamptz DEFAULT NULL, logged_before timestamptz DEFAULT NULL,
    OUT oldest timestamptz, OUT newest timestamptz)
AS 'MODULE_PATHNAME', 'rls_audit_entry_times'
LANGUAGE C STABLE COST 10000;
COMMENT ON FUNCTION rls_audit.entry_times(bigint, uuid, bigint, uuid, text, text, name, timestamptz, timestamptz) IS
'min(logged_at) and max(logged_at) of the entries of rls_audit.log the caller may read among those whose statement columns match every condition given (logged_from inclusive, logged_before exclusive); both NULL if there are none.';

-- The partitioned parent holds no rows of its own and is not marked (pg_dump
-- 14 crashes on that); the monthly partitions are no members of the extension,
-- so pg_dump dumps them whole; the default partition is marked.  The id
-- sequence is dumped as well, so that ids go on from where they were after a
-- restore.
--
-- Not on PostgreSQL 14: pg_dump 14 leaves a member table out of its plan when
-- its privileges are still the ones the install script gave it, so it never
-- looks up the default partition's parent, and crashes when it dumps the
-- partition's rows; no dump of the database would succeed.  There,
-- rls.problems reports rows waiting in the default partition, and
-- rls_audit.ensure_partitions() moves them into monthly partitions.
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('rls_audit.statements', 'id')::regclass, '');
DO $$
BEGIN
    IF pg_catalog.current_setting('server_version_num')::int >= 150000 THEN
        PERFORM pg_catalog.pg_extension_config_dump('rls_audit.statements_default', '');
    END IF;
END
$$;

SELECT pg_catalog.pg_extension_config_dump('rls_audit.audited_tables', '');

-- A table's identity in the trail.  The log records it with every entry, and
-- the read policy finds the table through it: an entry stays with its table
-- when that is renamed or moved to another schema, a table that later takes
-- the old name reads none of it, and a restore (which gives tables new oids)
-- binds it to the restored table by name.  Made when a table is first
-- audited, kept when auditing stops (so the owner still reads the entries),
-- removed with the table (the entries are then read only by roles that bypass
-- row level security).
COMMENT ON TABLE rls_audit.trails IS
'The trail id of every table that is or was audited and still exists: rls_audit.log entries carry it, and are read as entries of the table it names.';
SELECT pg_catalog.pg_extension_config_dump('rls_audit.trails', '');

