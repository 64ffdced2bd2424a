-------------------------------------------------------------------------------
-- The audit trail's hash chain (optional: django_rls.audit_chain = on)
--
-- One chain per site per UTC month: the entries of site S written in month M
-- (by logged_at) form the chain (M, S); entries without a site form the chain
-- (M, '').  Each audited statement seals its entries of each chain with one
-- row of rls_audit.seals: the entries' ids in order, a SHA-256 digest of each
-- entry, and seal = sha256(previous seal || seq || digests), where the first
-- seal of a chain follows a genesis value derived from the month and the
-- chain's name.  rls_audit.chain_heads holds each chain's last seq and seal.
--
-- Per site, so that writers of different sites never wait for each other
-- (the head row stays locked until the writing transaction ends); per month,
-- so that dropping a month's partition for retention drops whole chains and
-- leaves every other one verifiable from its genesis.  See docs/audit.md.
--
-- The two tables are made by 21_audit_base.sql, as in the SQL-only mode,
-- whose retention (24_audit_retention.sql) reads them too.
-------------------------------------------------------------------------------

COMMENT ON TABLE rls_audit.chain_heads IS
'The last seal of each hash chain of the audit log (one per site, or '''' for entries without a site, per UTC month). Store it outside the database to detect a rewrite of a whole chain.';
SELECT pg_catalog.pg_extension_config_dump('rls_audit.chain_heads', '');

COMMENT ON TABLE rls_audit.seals IS
'One row per audited statement and chain: the ids of the entries it wrote (in id order), their SHA-256 digests (32 bytes each, same order) and the seal: sha256(previous seal || seq as 8 bytes || digests).';
SELECT pg_catalog.pg_extension_config_dump('rls_audit.seals', '');

-- The chain an entry belongs to.  Text output of bigint and uuid depends on no setting.
CREATE FUNCTION rls_audit._chain_of(site_id bigint, site_uuid uuid)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN COALESCE(site_id::pg_catalog.text, site_uuid::pg_catalog.text, '');
COMMENT ON FUNCTION rls_audit._chain_of(bigint, uuid) IS
'Internal: the hash chain of an audit entry: its site id or uuid as text, '''' without a site.';
REVOKE ALL ON FUNCTION rls_audit._chain_of(bigint, uuid) FROM PUBLIC;

-- The UTC month of logged_at, whatever the session's TimeZone.
CREATE FUNCTION rls_audit._chain_month(logged_at timestamptz)
RETURNS date
LANGUAGE sql STABLE PARALLEL SAFE
RETURN pg_catalog.date_trunc('month', logged_at, 'UTC')::pg_catalog.timestamp::pg_catalog.date;
COMMENT ON FUNCTION rls_audit._chain_month(timestamptz) IS
'Internal: the UTC month (its first day) of an audit entry''s logged_at, which names its hash chain.';
REVOKE ALL ON FUNCTION rls_audit._chain_month(timestamptz) FROM PUBLIC;

-- Every column but id, as the text of a row of them.  Only TimeZone and
-- DateStyle change that text (timestamptz columns); rls_audit.capture() pins
-- both while it seals, and rls_audit.verify() sets them the same.  The id is
-- sealed through the seal's statement_ids, so that an entry moved to another id
-- (the log reordered) is told from one whose content changed.
CREATE FUNCTION rls_audit._entry_digest(e rls_audit.statements)
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
RETURN pg_catalog.sha256(pg_catalog.convert_to(ROW(
    e.logged_at, e.xact_started_at, e.xact_id, e.table_oid, e.table_name, e.operation,
    e.site_id, e.site_uuid, e.user_id, e.user_uuid, e.claims, e.db_role, e.application_name,
    e.client_addr, e.read_rule, e.read_keys, e.trail_id, e.row_keys, e.old_values, e.new_values,
    e.changed_columns, e.row_read_keys)::pg_catalog.text, 'UTF8'));
COMMENT ON FUNCTION rls_audit._entry_digest(rls_audit.statements) IS
'Internal: the SHA-256 digest of every column of an audit statement row (a chunk of entries) but its id (under TimeZone UTC and DateStyle ISO).';
REVOKE ALL ON FUNCTION rls_audit._entry_digest(rls_audit.statements) FROM PUBLIC;

CREATE FUNCTION rls_audit._chain_genesis(month date, chain text)
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
RETURN pg_catalog.sha256(pg_catalog.convert_to(
    'django_rls audit chain ' || pg_catalog.to_char(month, 'YYYY-MM') || ' ' || chain, 'UTF8'));
COMMENT ON FUNCTION rls_audit._chain_genesis(date, text) IS
'Internal: the value the first seal of a chain follows.';
REVOKE ALL ON FUNCTION rls_audit._chain_genesis(date, text) FROM PUBLIC;

-- seal = sha256(previous seal || seq as 8 bytes || the entry ids in PostgreSQL's
-- binary array format || the entries' digests).  A plain expression (no
-- aggregate), so that it is inlined into the statements using it.
CREATE FUNCTION rls_audit._seal_value(previous bytea, seq bigint, statement_ids bigint[], digests bytea)
RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
RETURN pg_catalog.sha256(previous || pg_catalog.int8send(seq) || pg_catalog.array_send(statement_ids) || digests);
COMMENT ON FUNCTION rls_audit._seal_value(bytea, bigint, bigint[], bytea) IS
'Internal: the seal following previous for the seq-th sealed statement of a chain.';
REVOKE ALL ON FUNCTION rls_audit._seal_value(bytea, bigint, bigint[], bytea) FROM PUBLIC;

-- The capture seals in C with the same results (ext/audit_chain.c); it calls
-- this (as the log's owner, in the statement that inserts the entries) when
-- a superuser changed chain_heads or seals (a trigger, rule, CHECK, other
-- columns), so that what was added applies, and from its INSERT ... SELECT
-- when the log itself was changed: once per chain the statement wrote to, in
-- (month, chain) order, so that two statements lock the heads they share in
-- the same order.  The head row stays locked until the transaction ends.
CREATE FUNCTION rls_audit._seal(month date, chain text, statement_ids bigint[], digests bytea)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    sealed_seq bigint;
    sealed bytea;
BEGIN
    INSERT INTO rls_audit.chain_heads AS h (month, chain, seq, seal)
    VALUES (_seal.month, _seal.chain, 1,
            rls_audit._seal_value(rls_audit._chain_genesis(_seal.month, _seal.chain), 1, _seal.statement_ids, _seal.digests))
    ON CONFLICT ON CONSTRAINT chain_heads_pkey DO UPDATE
       SET seq = h.seq + 1, seal = rls_audit._seal_value(h.seal, h.seq + 1, _seal.statement_ids, _seal.digests)
    RETURNING h.seq, h.seal INTO sealed_seq, sealed;
    INSERT INTO rls_audit.seals (month, chain, seq, statement_ids, digests, seal)
    VALUES (_seal.month, _seal.chain, sealed_seq, _seal.statement_ids, _seal.digests, sealed);
END
$$;
COMMENT ON FUNCTION rls_audit._seal(date, text, bigint[], bytea) IS
'Internal: append one statement''s entries of one chain to the chain (rls_audit.capture() with django_rls.audit_chain on).';
REVOKE ALL ON FUNCTION rls_audit._seal(date, text, bigint[], bytea) FROM PUBLIC;

-- The statement rows of one month, with their content digests: those its
-- seals list (expected) against those the log holds (actual), in one pass
-- over the month for all its chains.  The first difference by id in each
-- chain is that chain's first bad statement row, reported by its first entry;
-- entries counts the entries of the statement rows that match their seals.
CREATE FUNCTION rls_audit._month_first_bad_entries(month date,
                                                   OUT chain text, OUT entry_id bigint, OUT seal_seq bigint, OUT problem text,
                                                   OUT entries bigint)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, MDY'
BEGIN ATOMIC
    WITH expected AS (
        SELECT s.chain, s.seq, u.id, substring(s.digests FROM (u.n::integer - 1) * 32 + 1 FOR 32) AS digest
          FROM rls_audit.seals s, unnest(s.statement_ids) WITH ORDINALITY AS u(id, n)
         WHERE s.month = _month_first_bad_entries.month),
    actual AS (
        SELECT l.id, rls_audit._chain_of(l.site_id, l.site_uuid) AS chain, rls_audit._entry_digest(l) AS digest,
               cardinality(l.row_keys) AS n
          FROM rls_audit.statements l
         WHERE l.logged_at >= (_month_first_bad_entries.month::timestamp AT TIME ZONE 'UTC')
           AND l.logged_at < ((_month_first_bad_entries.month + 31)::timestamp AT TIME ZONE 'UTC')
           AND rls_audit._chain_month(l.logged_at) = _month_first_bad_entries.month),
    -- The first disagreement of each chain; only those few are then classified.
    first_bad AS (
        SELECT DISTINCT ON (coalesce(e.chain, a.chain))
               coalesce(e.chain, a.chain) AS chain, coalesce(e.id, a.id) AS id, e.seq,
               e.id AS expected_id, a.id AS actual_id, a.digest AS actual_digest
          FROM expected e FULL JOIN actual a ON a.id = e.id AND a.chain = e.chain
         WHERE e.digest IS DISTINCT FROM a.digest
         ORDER BY coalesce(e.chain, a.chain), coalesce(e.id, a.id)),
    counted AS (
        SELECT a.chain, sum(a.n) AS entries
          FROM expected e JOIN actual a ON a.id = e.id AND a.chain = e.chain AND a.digest = e.digest
         GROUP BY a.chain)
    SELECT coalesce(b.chain, c.chain), b.id * 1024 + 1, b.seq,
           CASE WHEN b.chain IS NULL THEN NULL
                WHEN b.expected_id IS NULL THEN 'inserted'
                WHEN b.actual_id IS NOT NULL
                     AND EXISTS (SELECT 1 FROM expected x
                                  WHERE x.chain = b.chain AND x.digest = b.actual_digest AND x.id <> b.actual_id)
                    THEN 'reordered'
                WHEN b.actual_id IS NULL AND EXISTS (SELECT 1 FROM rls_audit.statements l WHERE l.id = b.expected_id) THEN 'edited'
                WHEN b.actual_id IS NULL THEN 'deleted'
                ELSE 'edited' END,
           coalesce(c.entries, 0)
      FROM first_bad b FULL JOIN counted c ON c.chain = b.chain;
END;
COMMENT ON FUNCTION rls_audit._month_first_bad_entries(date) IS
'Internal: per chain of a month, the entries of its statement rows that match their seals and the first entry of the first statement row (by id) that its seals and the log disagree on, and how; chains without a seal included.';
REVOKE ALL ON FUNCTION rls_audit._month_first_bad_entries(date) FROM PUBLIC;

-- STABLE: the whole check reads one snapshot, so entries and seals written
-- meanwhile are either all seen or not at all.
CREATE FUNCTION rls_audit.verify(since date DEFAULT NULL)
RETURNS TABLE (month date, chain text, seals bigint, entries bigint, problem text,
               entry_id bigint, seal_seq bigint, detail text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, MDY'
AS $$
DECLARE
    m date;
    c text;
    s record;
    head rls_audit.chain_heads;
    previous bytea;
    bad jsonb;
    bads jsonb;
BEGIN
    FOR m IN SELECT DISTINCT x.month
               FROM (SELECT h.month FROM rls_audit.chain_heads h UNION SELECT z.month FROM rls_audit.seals z) x
              WHERE verify.since IS NULL OR x.month >= date_trunc('month', verify.since)::date
              ORDER BY x.month LOOP
        -- One pass over the month's statement rows for all its chains.
        SELECT coalesce(jsonb_object_agg(b.chain, jsonb_build_array(b.entry_id, b.seal_seq, b.problem, b.entries)), '{}')
          INTO bads FROM rls_audit._month_first_bad_entries(m) b;
        FOR c IN SELECT h.chain FROM rls_audit.chain_heads h WHERE h.month = m
                 UNION SELECT z.chain FROM rls_audit.seals z WHERE z.month = m
                 UNION SELECT k FROM jsonb_object_keys(bads) k
                 ORDER BY 1 LOOP
            month := m; chain := c; seals := 0; entries := 0;
            problem := NULL; entry_id := NULL; seal_seq := NULL; detail := NULL;
            previous := rls_audit._chain_genesis(m, c);
            FOR s IN SELECT z.seq, z.statement_ids, z.digests, z.seal FROM rls_audit.seals z
                      WHERE z.month = m AND z.chain = c ORDER BY z.seq LOOP
                IF s.seq <> seals + 1 THEN
                    problem := 'seal deleted'; seal_seq := seals + 1;
                    detail := format('seal %s is missing (the next one is %s): the entries it sealed cannot be checked', seals + 1, s.seq);
                    EXIT;
                END IF;
                IF octet_length(s.digests) <> 32 * cardinality(s.statement_ids)
                   OR rls_audit._seal_value(previous, s.seq, s.statement_ids, s.digests) IS DISTINCT FROM s.seal THEN
                    problem := 'seal edited'; seal_seq := s.seq;
                    detail := format('seal %s does not follow from the seal before it and the entries it lists', s.seq);
                    EXIT;
                END IF;
                previous := s.seal;
                seals := seals + 1;
            END LOOP;
            IF problem IS NULL AND seals > 0 THEN
                SELECT * INTO head FROM rls_audit.chain_heads h WHERE h.month = m AND h.chain = c;
                IF head.seq IS DISTINCT FROM seals OR head.seal IS DISTINCT FROM previous THEN
                    problem := 'seal deleted'; seal_seq := seals + 1;
                    detail := format('the chain''s head is at seal %s but its seals end at %s: the last seals (and their entries) were deleted, or the head was changed',
                                     coalesce(head.seq::text, 'none'), seals);
                END IF;
            ELSIF problem IS NULL AND EXISTS (SELECT 1 FROM rls_audit.chain_heads h WHERE h.month = m AND h.chain = c) THEN
                problem := 'seal deleted'; seal_seq := 1;
                detail := 'the chain has a head but no seal: its seals were deleted';
            END IF;
            bad := bads -> c;
            entries := coalesce((bad ->> 3)::bigint, 0);
            IF problem IS NULL AND bad ->> 2 IS NOT NULL THEN
                entry_id := (bad ->> 0)::bigint; seal_seq := (bad ->> 1)::bigint; problem := bad ->> 2;
                detail := CASE problem
                    WHEN 'edited' THEN format('the statement row of entries from %s on differs from what seal %s recorded', entry_id, seal_seq)
                    WHEN 'deleted' THEN format('the statement row of entries from %s on, sealed by seal %s, is missing from the log', entry_id, seal_seq)
                    WHEN 'inserted' THEN format('the statement row of entries from %s on is in the log but no seal of its chain lists it', entry_id)
                    ELSE format('the statement row of entries from %s on holds what the chain recorded for another statement row', entry_id) END;
            END IF;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END
$$;
COMMENT ON FUNCTION rls_audit.verify(date) IS
'Check the audit log''s hash chains (one per site per UTC month; from the month of since on): one row per chain, with the number of seals and entries checked and, when problem is not NULL, the first bad entry or seal: edited, deleted, inserted, reordered, seal edited, seal deleted.';
REVOKE ALL ON FUNCTION rls_audit.verify(date) FROM PUBLIC;
