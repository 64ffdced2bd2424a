-------------------------------------------------------------------------------
-- Retention: monthly partitions, created ahead and dropped whole
-------------------------------------------------------------------------------

CREATE FUNCTION rls_audit.ensure_partitions(months_ahead integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    month date;
    created integer := 0;
    name text;
BEGIN
    FOR month IN SELECT generate_series(date_trunc('month', now()), date_trunc('month', now()) + make_interval(months => months_ahead), '1 month')::date LOOP
        name := format('log_%s', to_char(month, 'YYYY_MM'));
        IF to_regclass(format('rls_audit.%I', name)) IS NULL THEN
            IF EXISTS (SELECT FROM rls_audit.log_default
                        WHERE logged_at >= month AND logged_at < month + interval '1 month') THEN
                -- Rows of this month already sit in the default partition: move them
                -- into a new table and attach that, since a new partition may not
                -- overlap rows of the default one.
                EXECUTE format('CREATE TABLE rls_audit.%I (LIKE rls_audit.log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
                EXECUTE format('WITH moved AS (DELETE FROM rls_audit.log_default WHERE logged_at >= %L AND logged_at < %L '
                               'RETURNING *) INSERT INTO rls_audit.%I SELECT * FROM moved',
                               month, month + interval '1 month', name);
                EXECUTE format('ALTER TABLE rls_audit.log ATTACH PARTITION rls_audit.%I FOR VALUES FROM (%L) TO (%L)',
                               name, month, month + interval '1 month');
            ELSE
                EXECUTE format('CREATE TABLE rls_audit.%I PARTITION OF rls_audit.log FOR VALUES FROM (%L) TO (%L)',
                               name, month, month + interval '1 month');
            END IF;
            PERFORM rls_audit._index_partition(format('rls_audit.%I', name)::regclass);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;
COMMENT ON FUNCTION rls_audit.ensure_partitions(integer) IS
'Create the monthly partitions of rls_audit.log up to months_ahead; run it from a scheduled job.';

CREATE FUNCTION rls_audit.drop_partitions_before(cutoff timestamptz)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.oid::regclass AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'rls_audit.log'::regclass
           AND c.oid <> 'rls_audit.log_default'::regclass
    LOOP
        IF substring(part.bound FROM 'TO \(''([^'']+)''\)')::timestamptz <= cutoff THEN
            EXECUTE format('DROP TABLE %s', part.name);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END
$$;
COMMENT ON FUNCTION rls_audit.drop_partitions_before(timestamptz) IS
'Retention: drop every monthly partition whose rows are all older than cutoff. Never deletes single rows.';

-- Retention and partition upkeep are for an operator role: grant them explicitly.
REVOKE ALL ON FUNCTION rls_audit.ensure_partitions(integer), rls_audit.drop_partitions_before(timestamptz) FROM PUBLIC;

