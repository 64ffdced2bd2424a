-------------------------------------------------------------------------------
-- Retention: monthly partitions, created ahead and dropped whole
--
-- A month is a month of UTC: partition bounds never depend on the caller's
-- TimeZone (nor DateStyle), so callers in different zones agree on them.  The
-- functions pin both settings, and read existing bounds under them too.
-- ensure_partitions() also pins where and how its tables are stored, which a
-- caller's default_tablespace / default_table_access_method would otherwise
-- choose with the definer's rights.
-------------------------------------------------------------------------------

-- Every partition of the log but the default one, with its bounds (NULL for
-- MINVALUE / MAXVALUE).
CREATE FUNCTION rls_audit._log_partitions()
RETURNS TABLE (part regclass, lower_bound timestamptz, upper_bound timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
AS $$
    SELECT c.oid::regclass, b[1]::timestamptz, b[2]::timestamptz
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
           LATERAL (SELECT ARRAY[substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)'),
                                 substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')] AS b) bounds
     WHERE i.inhparent = 'rls_audit.statements'::regclass
       AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
$$;
COMMENT ON FUNCTION rls_audit._log_partitions() IS
'Internal: the monthly partitions of rls_audit.statements and their bounds (NULL for an open end).';
REVOKE ALL ON FUNCTION rls_audit._log_partitions() FROM PUBLIC;

CREATE FUNCTION rls_audit.ensure_partitions(months_ahead integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
SET default_tablespace = ''
SET default_table_access_method = 'heap'
AS $$
DECLARE
    month timestamptz;
    lo timestamptz;
    hi timestamptz;
    created integer := 0;
    name text;
BEGIN
    IF months_ahead IS NULL OR months_ahead < 0 OR months_ahead > 1200 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 1200, not %', months_ahead
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Keep a few months ahead, say 3.';
    END IF;
    -- TimeZone is UTC here, so date_trunc() cuts UTC months.  Earlier months
    -- whose rows wait in the default partition get their partitions too: until
    -- then retention never drops those rows, and pg_dump 14 leaves them out.
    FOR month IN SELECT generate_series(date_trunc('month', now()), date_trunc('month', now()) + make_interval(months => months_ahead),
                                        interval '1 month')
                 UNION
                 SELECT DISTINCT date_trunc('month', logged_at) FROM rls_audit.statements_default
                 ORDER BY 1 LOOP
        name := format('statements_%s', to_char(month, 'YYYY_MM'));
        CONTINUE WHEN to_regclass(format('rls_audit.%I', name)) IS NOT NULL;
        -- Partitions made by an earlier version in the caller's zone end or start
        -- up to a day off a UTC month: meet them, so that neither a gap nor an
        -- overlap arises.
        lo := coalesce((SELECT max(upper_bound) FROM rls_audit._log_partitions()
                         WHERE upper_bound BETWEEN month - interval '2 days' AND month + interval '2 days'), month);
        hi := coalesce((SELECT min(lower_bound) FROM rls_audit._log_partitions()
                         WHERE lower_bound BETWEEN month + interval '1 month' - interval '2 days'
                                               AND month + interval '1 month' + interval '2 days'), month + interval '1 month');
        -- Another partition already holds (part of) this month: leave it be.
        CONTINUE WHEN lo >= hi OR EXISTS (SELECT FROM rls_audit._log_partitions()
                                           WHERE coalesce(lower_bound, '-infinity') < hi
                                             AND coalesce(upper_bound, 'infinity') > lo);
        IF EXISTS (SELECT FROM rls_audit.statements_default WHERE logged_at >= lo AND logged_at < hi) THEN
            -- Rows of this month already sit in the default partition: move them
            -- into a new table and attach that, since a new partition may not
            -- overlap rows of the default one.
            EXECUTE format('CREATE TABLE rls_audit.%I (LIKE rls_audit.statements INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMPRESSION)', name);
            EXECUTE format('WITH moved AS (DELETE FROM rls_audit.statements_default WHERE logged_at >= %L AND logged_at < %L '
                           'RETURNING *) INSERT INTO rls_audit.%I SELECT * FROM moved', lo, hi, name);
            EXECUTE format('ALTER TABLE rls_audit.statements ATTACH PARTITION rls_audit.%I FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
        ELSE
            EXECUTE format('CREATE TABLE rls_audit.%I PARTITION OF rls_audit.statements FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
        END IF;
        PERFORM rls_audit._index_partition(format('rls_audit.%I', name)::regclass);
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;
COMMENT ON FUNCTION rls_audit.ensure_partitions(integer) IS
'Create the monthly (UTC) partitions of rls_audit.statements from this month to months_ahead months on, and for earlier months whose rows wait in rls_audit.statements_default (moving them there); run it from a scheduled job.';

CREATE FUNCTION rls_audit.drop_partitions_before(cutoff timestamptz)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
AS $$
DECLARE
    part regclass;
    lo timestamptz;
    hi timestamptz;
    dropped integer := 0;
BEGIN
    IF cutoff IS NULL THEN
        RAISE EXCEPTION 'cutoff must not be NULL'
            USING ERRCODE = 'null_value_not_allowed', HINT = 'Pass the oldest time to keep, say now() - interval ''13 months''.';
    END IF;
    -- TimeZone is UTC here: the current month is a UTC month.  Its partition
    -- (and any later one) holds the trail being written, never old rows.
    IF cutoff > date_trunc('month', now()) THEN
        RAISE EXCEPTION 'cutoff is later than the start of the current month'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The cutoff is %s and the current month (UTC) started at %s. Retention drops only months that have ended; the current month''s partition holds the trail being written.',
                                  cutoff, date_trunc('month', now())),
                  HINT = 'Pass the oldest time to keep, say now() - interval ''13 months''.';
    END IF;
    FOR part, lo, hi IN SELECT p.part, p.lower_bound, p.upper_bound FROM rls_audit._log_partitions() p WHERE p.upper_bound <= cutoff LOOP
        EXECUTE format('DROP TABLE %I.%I', (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = part),
                       (SELECT relname FROM pg_class WHERE oid = part));
        -- The hash chains of the dropped months go with their entries; every
        -- other month's chains start from their own genesis and still verify.
        DELETE FROM rls_audit.seals s
         WHERE s.month::timestamp >= coalesce(date_trunc('month', lo), '-infinity') AND s.month::timestamp < hi;
        DELETE FROM rls_audit.chain_heads h
         WHERE h.month::timestamp >= coalesce(date_trunc('month', lo), '-infinity') AND h.month::timestamp < hi;
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;
COMMENT ON FUNCTION rls_audit.drop_partitions_before(timestamptz) IS
'Retention: drop every monthly partition whose rows are all older than cutoff, which may not be later than the start of the current UTC month. Never deletes single rows.';

-- Retention and partition upkeep are for an operator role: grant them explicitly.
REVOKE ALL ON FUNCTION rls_audit.ensure_partitions(integer), rls_audit.drop_partitions_before(timestamptz) FROM PUBLIC;
