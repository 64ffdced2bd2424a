/*-------------------------------------------------------------------------
 *
 * ext/audit_lookup.c
 *		rls_audit.statements_of(): the statement rows holding one row's entries.
 *
 * The audit trail is stored one row per statement chunk (rls_audit.statements)
 * and read through the per-row view rls_audit.log, which decides for each
 * entry who reads it.  A row's history would unnest every statement row of
 * its table unless the reader names the statement rows holding its key; this
 * function finds them through the GIN index on row_keys.
 *
 * The statement rows themselves are not granted to anybody: a chunk holds the
 * rows of many sites or owners, and its arrays would show all of them.  So the
 * lookup runs in two steps.  First, as the log's owner (inside a security-
 * restricted operation, running only the extension's own operator and
 * built-in functions), the statement rows holding the key and the read keys
 * of the key's own entries in them.  Then, as the caller, the ids of those
 * statement rows in which rls_audit._may_read() lets the caller read one of
 * the key's entries.  So the function tells a caller nothing about entries
 * it may not read, not even that they exist.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/uuid.h"

#include "django_rls.h"

PG_FUNCTION_INFO_V1(rls_audit_statements_of);

/*
 * As the log's owner: each entry of the key, with its statement's reader
 * columns.  A primary key is unique across a partition tree, and a write is
 * recorded under the table its statement named, so the whole tree's trail
 * ids are looked for (also those of a table renamed since).  The key is
 * compared as the row key index compares it, COLLATE "C".
 */
#define FIND_ENTRIES \
	"SELECT s.id, s.trail_id, s.read_rule, s.row_read_keys[p.n] " \
	"FROM rls_audit.statements s " \
	"CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.array_positions(s.row_keys, $2)) AS p(n) " \
	"WHERE s.trail_id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT r.trail_id FROM rls_audit.trails r " \
	"WHERE r.table_oid OPERATOR(pg_catalog.=) $1 OR r.table_oid OPERATOR(pg_catalog.=) ANY (ARRAY(" \
	"SELECT t.relid FROM pg_catalog.pg_partition_tree(" \
	"COALESCE(pg_catalog.pg_partition_root($1), $1)) t)))) " \
	"AND s.row_keys OPERATOR(rls_audit.@>) ARRAY[$2 COLLATE \"C\"]"

/* As the caller: the statements of the entries it may read. */
#define READABLE_STATEMENTS \
	"SELECT pg_catalog.array_agg(DISTINCT e.id) FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), " \
	"pg_catalog.unnest($3), pg_catalog.unnest($4)) AS e(id, trail, rule, keys) " \
	"WHERE rls_audit._may_read(e.trail, e.rule, e.keys::pg_catalog.text[])"

/* Both queries, prepared once per backend. */
static SPIPlanPtr find_plan = NULL;
static SPIPlanPtr readable_plan = NULL;

static SPIPlanPtr
Prepared(SPIPlanPtr *cached, const char *query, int nargs, Oid *types)
{
	if (*cached == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(query, nargs, types);

		if (plan == NULL)
			elog(ERROR, "could not prepare rls_audit.statements_of()'s query: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "could not keep rls_audit.statements_of()'s query");
		*cached = plan;
	}
	return *cached;
}

static Oid
StatementsOwner(void)
{
	Oid			nsp = get_namespace_oid("rls_audit", false);
	Oid			relid = get_relname_relid("statements", nsp);
	HeapTuple	tuple;
	Oid			owner;

	if (!OidIsValid(relid))
		elog(ERROR, "rls_audit.statements does not exist");
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/* FIND_ENTRIES as the statement rows' owner, in a security-restricted operation. */
static int
FindEntries(Datum *args, Oid *types)
{
	Oid			saved_user;
	int			saved_context;
	volatile int rc = 0;

	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(StatementsOwner(),
						   saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		rc = SPI_execute_plan(Prepared(&find_plan, FIND_ENTRIES, 2, types), args, NULL, true, 0);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_context);
	}
	PG_END_TRY();
	return rc;
}

/* Column i of row r of SPI_tuptable, copied into the caller's context. */
static Datum
ResultColumn(int r, int i, bool *isnull, MemoryContext cxt)
{
	Datum		value = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, i, isnull);
	MemoryContext old;
	Form_pg_attribute attr = TupleDescAttr(SPI_tuptable->tupdesc, i - 1);

	if (*isnull)
		return (Datum) 0;
	old = MemoryContextSwitchTo(cxt);
	value = datumCopy(value, attr->attbyval, attr->attlen);
	MemoryContextSwitchTo(old);
	return value;
}

/*
 * rls_audit.statements_of(tbl regclass, row_key text) RETURNS bigint[]: the
 * statement rows holding entries of row_key in tbl's partition tree that the
 * caller may read.  Declared LEAKPROOF: it raises no error that depends on its
 * arguments or on what it reads, and it returns only what the caller may read
 * anyway, so the planner may use it in a condition on rls_audit.log that it
 * moves below the view's barrier (where it reaches the id index).
 */
Datum
rls_audit_statements_of(PG_FUNCTION_ARGS)
{
	MemoryContext cxt = CurrentMemoryContext;
	Datum		args[4];
	Oid			types[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	Datum	   *ids = NULL;
	bool	   *id_nulls = NULL;
	Datum	   *trails = NULL;
	bool	   *trail_nulls = NULL;
	Datum	   *rules = NULL;
	bool	   *rule_nulls = NULL;
	Datum	   *keys = NULL;
	bool	   *key_nulls = NULL;
	int			n = 0;
	int			dims[1];
	int			lbs[1] = {1};
	int			rc;
	Datum		result = (Datum) 0;
	bool		result_null = true;
	int			r;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed in rls_audit.statements_of()");

	args[0] = PG_GETARG_DATUM(0);
	args[1] = PG_GETARG_DATUM(1);
	types[0] = REGCLASSOID;
	types[1] = TEXTOID;
	rc = FindEntries(args, types);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "rls_audit.statements_of() could not read the log: %s", SPI_result_code_string(rc));

	n = (int) SPI_processed;
	if (n > 0)
	{
		ids = palloc(sizeof(Datum) * n);
		id_nulls = palloc(sizeof(bool) * n);
		trails = palloc(sizeof(Datum) * n);
		trail_nulls = palloc(sizeof(bool) * n);
		rules = palloc(sizeof(Datum) * n);
		rule_nulls = palloc(sizeof(bool) * n);
		keys = palloc(sizeof(Datum) * n);
		key_nulls = palloc(sizeof(bool) * n);
		for (r = 0; r < n; r++)
		{
			ids[r] = ResultColumn(r, 1, &id_nulls[r], CurrentMemoryContext);
			trails[r] = ResultColumn(r, 2, &trail_nulls[r], CurrentMemoryContext);
			rules[r] = ResultColumn(r, 3, &rule_nulls[r], CurrentMemoryContext);
			keys[r] = ResultColumn(r, 4, &key_nulls[r], CurrentMemoryContext);
		}
		dims[0] = n;
		args[0] = PointerGetDatum(construct_md_array(ids, id_nulls, 1, dims, lbs, INT8OID, 8, true, TYPALIGN_DOUBLE));
		args[1] = PointerGetDatum(construct_md_array(trails, trail_nulls, 1, dims, lbs, UUIDOID, UUID_LEN, false,
													 TYPALIGN_CHAR));
		args[2] = PointerGetDatum(construct_md_array(rules, rule_nulls, 1, dims, lbs, TEXTOID, -1, false,
													 TYPALIGN_INT));
		args[3] = PointerGetDatum(construct_md_array(keys, key_nulls, 1, dims, lbs, TEXTOID, -1, false,
													 TYPALIGN_INT));
		types[0] = INT8ARRAYOID;
		types[1] = UUIDARRAYOID;
		types[2] = TEXTARRAYOID;
		types[3] = TEXTARRAYOID;
		rc = SPI_execute_plan(Prepared(&readable_plan, READABLE_STATEMENTS, 4, types), args, nulls, true, 1);
		if (rc != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "rls_audit.statements_of() could not check the entries: %s", SPI_result_code_string(rc));
		result = ResultColumn(0, 1, &result_null, cxt);
	}
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed in rls_audit.statements_of()");
	if (result_null)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(INT8OID));
	PG_RETURN_DATUM(result);
}
