/*-------------------------------------------------------------------------
 *
 * ext/audit_lookup.c
 *		rls_audit.statements_of(): the statement rows holding one row's entries;
 *		rls_audit.newest_statements(): those holding a reader's newest entries;
 *		rls_audit.count_entries() and rls_audit.entry_times(): how many entries a
 *		reader may read, and the first and last one's time.
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
 * it may not read, not even that they exist.  newest_statements() (below)
 * reads the same way: the statement rows as their owner, the entries'
 * readers as the caller; so do count_entries() and entry_times().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
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
	"AND s.row_keys OPERATOR(rls_audit.@>) ARRAY[$2 COLLATE pg_catalog.\"C\"]"

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

/*
 * rls_audit.newest_statements(): the statement rows holding the caller's
 * newest entries.
 *
 * rls_audit.log is a security_barrier view, and PostgreSQL plans such a view
 * for full retrieval whenever the reader's query sorts: a site's latest 50
 * entries, asked for with ORDER BY logged_at DESC, id DESC LIMIT 50, read and
 * sorted every statement row of the site.  This function walks the statement
 * rows newest first instead (logged_at, then id, descending: the view's own
 * order), through the (user_id, logged_at), (site_id, logged_at) or
 * logged_at indexes, as the log's owner, and counts the entries of each that
 * the caller may read (rls_audit._may_read(), as the caller, exactly as the
 * view decides), until it has count of them.  It returns the ids of the statement rows holding
 * readable entries up to there, which the reader puts into the view's
 * statement_id (a condition that reaches the id index behind the barrier),
 * with the same conditions and its own ORDER BY and LIMIT.
 *
 * The conditions it takes are those on a statement row's own columns (every
 * entry of a statement row shares them): each one given (not NULL) must hold.
 * A reader whose query has any other condition must not narrow it this way.
 */
PG_FUNCTION_INFO_V1(rls_audit_newest_statements);

/* rls_audit._may_read() (ext/audit.c), the view's condition on each entry. */
extern PGDLLEXPORT Datum rls_audit_may_read(PG_FUNCTION_ARGS);

#define NEWEST_FILTERS 9

/*
 * The conditions of rls_audit.newest_statements(): condition i is on argument
 * newest_arguments[i] (0 is the count), and its type is newest_types[i].  In
 * the order an index is chosen by: the user's, then the site's; the time
 * bounds (which bound any of the indexes) are the last two.
 */
#define NEWEST_BOUNDS 7
static const int newest_arguments[NEWEST_FILTERS] = {3, 4, 1, 2, 5, 6, 7, 8, 9};
static const char *const newest_conditions[NEWEST_FILTERS] = {
	"s.user_id OPERATOR(pg_catalog.=) $%d",
	"s.user_uuid OPERATOR(pg_catalog.=) $%d",
	"s.site_id OPERATOR(pg_catalog.=) $%d",
	"s.site_uuid OPERATOR(pg_catalog.=) $%d",
	"s.table_name OPERATOR(pg_catalog.=) $%d",
	"s.operation OPERATOR(pg_catalog.=) $%d",
	"s.db_role OPERATOR(pg_catalog.=) $%d",
	"s.logged_at OPERATOR(pg_catalog.>=) $%d",
	"s.logged_at OPERATOR(pg_catalog.<) $%d",
};
static const Oid newest_types[NEWEST_FILTERS] = {
	INT8OID, UUIDOID, INT8OID, UUIDOID, TEXTOID, TEXTOID, NAMEOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
};

/* Statement rows read per query: the first batch, and at most. */
#define NEWEST_FIRST_BATCH 64
#define NEWEST_MAX_BATCH 4096

/* rls_audit._may_read(trail, rule, keys), called as the view calls it. */
static bool
MayRead(FmgrInfo *may_read, Datum trail, bool trail_null, Datum rule, bool rule_null,
		Datum keys, bool keys_null)
{
	LOCAL_FCINFO(call, 3);
	Datum		result;

	InitFunctionCallInfoData(*call, may_read, 3, InvalidOid, NULL, NULL);
	call->args[0].value = trail;
	call->args[0].isnull = trail_null;
	call->args[1].value = rule;
	call->args[1].isnull = rule_null;
	call->args[2].value = keys;
	call->args[2].isnull = keys_null;
	result = FunctionCallInvoke(call);
	return !call->isnull && DatumGetBool(result);
}

/*
 * Whether entries a and b of a statement row have the same read keys, as
 * text; both NULL (or past the array's end) is the same too.
 */
static bool
SameKeys(Datum *elems, bool *elem_nulls, int nelems, int64 a, int64 b)
{
	bool		a_null = a >= nelems || elem_nulls[a];
	bool		b_null = b >= nelems || elem_nulls[b];

	if (a_null || b_null)
		return a_null && b_null;
	return VARSIZE_ANY_EXHDR(DatumGetPointer(elems[a])) == VARSIZE_ANY_EXHDR(DatumGetPointer(elems[b])) &&
		memcmp(VARDATA_ANY(DatumGetPointer(elems[a])), VARDATA_ANY(DatumGetPointer(elems[b])),
			   VARSIZE_ANY_EXHDR(DatumGetPointer(elems[a]))) == 0;
}

/*
 * How many entries of one statement row the caller may read, counting at most
 * up to wanted.  As the view: entry i's read keys are row_read_keys[i] as a
 * text[] (NULL past the array's end).  A role that reads an entry whatever its
 * keys (the table's owner, a role that bypasses row level security) reads
 * them all.
 */
static int64
ReadableEntries(FmgrInfo *may_read, HeapTuple row, TupleDesc desc, int64 wanted)
{
	bool		trail_null,
				rule_null,
				keys_null,
				count_null;
	Datum		trail = SPI_getbinval(row, desc, 3, &trail_null);
	Datum		rule = SPI_getbinval(row, desc, 4, &rule_null);
	Datum		keys = SPI_getbinval(row, desc, 5, &keys_null);
	int64		entries = DatumGetInt32(SPI_getbinval(row, desc, 6, &count_null));
	bool		union_null;
	Datum		union_keys = SPI_getbinval(row, desc, 7, &union_null);
	Datum	   *elems = NULL;
	bool	   *elem_nulls = NULL;
	int			nelems = 0;
	int64		readable = 0;
	int64		i;
	bool		last_readable = false;

	if (count_null || entries <= 0)
		return 0;
	if (MayRead(may_read, trail, trail_null, rule, rule_null, (Datum) 0, true))
		return entries;
	/*
	 * read_keys is the union of the rows' read keys, and _may_read() is true
	 * when one of the keys it is given matches: if none of the union does, no
	 * entry's does (a chunk of another site, or owner, is passed over without
	 * parsing its 1,000 keys).  A statement row of one entry is checked by
	 * that entry's keys alone.
	 */
	if (entries > 1 && !MayRead(may_read, trail, trail_null, rule, rule_null, union_keys, union_null))
		return 0;
	if (!keys_null)
		deconstruct_array(DatumGetArrayTypeP(keys), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &elem_nulls, &nelems);
	for (i = 0; i < entries && readable < wanted; i++)
	{
		bool		null = i >= nelems || elem_nulls[i];
		Datum		entry_keys = (Datum) 0;

		/*
		 * An entry with the same keys as the one before (as text: every row
		 * of a chunk of one site, say) is read or not as that one is:
		 * _may_read() decides by the keys, the statement's columns and the
		 * caller, which one call of this function does not change.
		 */
		if (i > 0 && SameKeys(elems, elem_nulls, nelems, i - 1, i))
		{
			if (last_readable)
				readable++;
			continue;
		}
		if (!null)
			entry_keys = OidInputFunctionCall(F_ARRAY_IN, TextDatumGetCString(elems[i]), TEXTOID, -1);
		last_readable = MayRead(may_read, trail, trail_null, rule, rule_null, entry_keys, null);
		if (last_readable)
			readable++;
	}
	return readable;
}

/* A batch of statement rows in order, as the statement rows' owner. */
static int
NewestBatch(const char *query, int nargs, Oid *types, Datum *args, char *nulls)
{
	Oid			saved_user;
	int			saved_context;
	volatile int rc = 0;

	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(StatementsOwner(),
						   saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		rc = SPI_execute_with_args(query, nargs, types, args, nulls, true, 0);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_context);
	}
	PG_END_TRY();
	return rc;
}

/* What a walk over the statement rows found. */
typedef struct Walk
{
	int64		found;			/* readable entries counted (at most the number wanted) */
	Datum	   *ids;			/* the statement rows holding them, in the walk's order (if collected) */
	int			nids;
	bool		any;			/* whether a statement row held one */
	Datum		first_at;		/* then: the first such statement row's logged_at */
} Walk;

/*
 * Walk the statement rows matching every condition among fcinfo's arguments
 * base .. base + 8 (newest_statements()' site_id .. logged_before, in its
 * order), newest first (or oldest first: logged_at, then id), as their owner,
 * counting the entries the caller may read (rls_audit._may_read(), as the
 * caller, exactly as the view decides) until there are wanted of them.
 *
 * The query's WHERE has one equality an index finds (the user's, else the
 * site's: the (user_id, logged_at) and (site_id, logged_at) indexes) and the
 * time bounds; every other condition is a column the rows are checked by
 * here.  The planner would estimate the statement rows of a site and a user
 * as if the two were independent, find a few where there are thousands (a
 * user's rows are all of their site), and sort them all rather than walk an
 * index in order.  No column of the row images is read.
 */
static void
WalkStatements(FunctionCallInfo fcinfo, int base, bool oldest_first, int64 wanted, bool collect, Walk *walk)
{
	MemoryContext cxt = CurrentMemoryContext;
	FmgrInfo	may_read;
	StringInfoData conditions;
	StringInfoData checked;
	bool		indexed = false;
	char	   *query;
	char	   *continued;
	Datum		args[NEWEST_FILTERS + 2];
	Oid			types[NEWEST_FILTERS + 2];
	char		nulls[NEWEST_FILTERS + 2];
	int			nargs = 0;
	int			batch = NEWEST_FIRST_BATCH;
	int			maxids = 64;
	bool		more = true;
	bool		first = true;
	const char *direction = oldest_first ? "ASC" : "DESC";
	const char *on_or_past = oldest_first ? ">=" : "<=";
	const char *past = oldest_first ? ">" : "<";
	MemoryContext rowcxt;
	int			i;

	walk->found = 0;
	walk->ids = NULL;
	walk->nids = 0;
	walk->any = false;
	walk->first_at = (Datum) 0;

	initStringInfo(&conditions);
	initStringInfo(&checked);
	appendStringInfoString(&checked, "true");
	for (i = 0; i < NEWEST_FILTERS; i++)
	{
		int			arg = base + newest_arguments[i] - 1;
		bool		in_where = i >= NEWEST_BOUNDS || !indexed;

		if (PG_ARGISNULL(arg))
			continue;
		args[nargs] = PG_GETARG_DATUM(arg);
		types[nargs] = newest_types[i];
		nulls[nargs] = ' ';
		nargs++;
		appendStringInfoString(in_where ? &conditions : &checked, " AND ");
		appendStringInfo(in_where ? &conditions : &checked, newest_conditions[i], nargs);
		if (i < NEWEST_BOUNDS)
			indexed = true;
	}
	/*
	 * In order; after the first batch, on from the last statement row read.
	 * The batch size is part of the text, so that the planner plans for it
	 * (the indexes, not a sort of them all).
	 */
	query = psprintf("SELECT s.id, s.logged_at, s.trail_id, s.read_rule, s.row_read_keys, "
					 "pg_catalog.cardinality(s.row_keys), s.read_keys, (%s) FROM rls_audit.statements s WHERE true%s",
					 checked.data, conditions.data);
	continued = psprintf("%s AND s.logged_at OPERATOR(pg_catalog.%s) $%d "
						 "AND (s.logged_at OPERATOR(pg_catalog.%s) $%d OR s.id OPERATOR(pg_catalog.%s) $%d)",
						 query, on_or_past, nargs + 1, past, nargs + 1, past, nargs + 2);
	types[nargs] = TIMESTAMPTZOID;
	nulls[nargs] = ' ';
	types[nargs + 1] = INT8OID;
	nulls[nargs + 1] = ' ';

	memset(&may_read, 0, sizeof(may_read));
	may_read.fn_addr = rls_audit_may_read;
	may_read.fn_oid = InvalidOid;
	may_read.fn_nargs = 3;
	may_read.fn_strict = false;
	may_read.fn_retset = false;
	may_read.fn_mcxt = cxt;

	if (collect)
		walk->ids = MemoryContextAlloc(cxt, sizeof(Datum) * maxids);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed in rls_audit's walk over the statement rows");
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "rls_audit statement row", ALLOCSET_DEFAULT_SIZES);
	while (walk->found < wanted && more)
	{
		int			rc;
		uint64		r;

		rc = NewestBatch(psprintf("%s ORDER BY s.logged_at %s, s.id %s LIMIT %d", first ? query : continued,
								  direction, direction, batch),
						 first ? nargs : nargs + 2, types, args, nulls);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "rls_audit could not read the log's statement rows: %s", SPI_result_code_string(rc));
		more = SPI_processed == (uint64) batch;
		for (r = 0; r < SPI_processed && walk->found < wanted; r++)
		{
			HeapTuple	row = SPI_tuptable->vals[r];
			bool		isnull;
			bool		matches = DatumGetBool(SPI_getbinval(row, SPI_tuptable->tupdesc, 8, &isnull)) && !isnull;
			MemoryContext old = MemoryContextSwitchTo(rowcxt);
			int64		readable = matches ? ReadableEntries(&may_read, row, SPI_tuptable->tupdesc,
															 wanted - walk->found) : 0;

			MemoryContextSwitchTo(old);
			MemoryContextReset(rowcxt);

			if (readable > 0)
			{
				if (!walk->any)
				{
					walk->any = true;
					walk->first_at = SPI_getbinval(row, SPI_tuptable->tupdesc, 2, &isnull);
				}
				if (collect)
				{
					if (walk->nids == maxids)
					{
						maxids *= 2;
						walk->ids = repalloc(walk->ids, sizeof(Datum) * maxids);
					}
					walk->ids[walk->nids++] = SPI_getbinval(row, SPI_tuptable->tupdesc, 1, &isnull);
				}
				walk->found += readable;
			}
			if (r == SPI_processed - 1)
			{
				args[nargs] = SPI_getbinval(row, SPI_tuptable->tupdesc, 2, &isnull);
				args[nargs + 1] = SPI_getbinval(row, SPI_tuptable->tupdesc, 1, &isnull);
			}
		}
		SPI_freetuptable(SPI_tuptable);
		first = false;
		batch = Min(batch * 4, NEWEST_MAX_BATCH);
	}
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed in rls_audit's walk over the statement rows");
}

/*
 * rls_audit.newest_statements(count, site_id, site_uuid, user_id, user_uuid,
 * table_name, operation, db_role, logged_from, logged_before) RETURNS
 * bigint[]: the statement rows, newest first, holding the caller's count
 * newest readable entries among those matching every condition given.
 */
Datum
rls_audit_newest_statements(PG_FUNCTION_ARGS)
{
	Walk		walk;

	if (PG_ARGISNULL(0) || PG_GETARG_INT32(0) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rls_audit.newest_statements() needs a count of entries of 0 or more"),
				 errhint("Pass how many of the newest entries the query reads: its OFFSET plus its LIMIT.")));
	WalkStatements(fcinfo, 1, false, PG_GETARG_INT32(0), true, &walk);
	PG_RETURN_ARRAYTYPE_P(construct_array(walk.ids, walk.nids, INT8OID, 8, true, TYPALIGN_DOUBLE));
}

/*
 * rls_audit.count_entries(up_to, site_id, site_uuid, user_id, user_uuid,
 * table_name, operation, db_role, logged_from, logged_before) RETURNS bigint:
 * how many entries of rls_audit.log the caller may read among those whose
 * statement columns match every condition given, counting at most up_to
 * (NULL: all).  What count(*) of the view with those conditions returns, or
 * up_to if that is more, without unnesting the row images or sorting.
 */
PG_FUNCTION_INFO_V1(rls_audit_count_entries);

Datum
rls_audit_count_entries(PG_FUNCTION_ARGS)
{
	Walk		walk;
	int64		up_to = PG_ARGISNULL(0) ? PG_INT64_MAX : PG_GETARG_INT64(0);

	if (up_to < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rls_audit.count_entries() needs a limit of 0 or more, or NULL"),
				 errhint("Pass how many entries are worth counting (a paginator's limit plus one), or NULL to count them all.")));
	WalkStatements(fcinfo, 1, false, up_to, false, &walk);
	PG_RETURN_INT64(walk.found);
}

/*
 * rls_audit.entry_times(site_id, site_uuid, user_id, user_uuid, table_name,
 * operation, db_role, logged_from, logged_before, OUT oldest, OUT newest): the
 * min(logged_at) and max(logged_at) of the entries of rls_audit.log the caller
 * may read among those matching every condition given (both NULL if none):
 * the first statement row with a readable entry from either end of the
 * indexes, not every entry sorted.
 */
PG_FUNCTION_INFO_V1(rls_audit_entry_times);

Datum
rls_audit_entry_times(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[2] = {(Datum) 0, (Datum) 0};
	bool		nulls[2] = {true, true};
	Walk		walk;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "rls_audit.entry_times() must return a record of two timestamps");
	desc = BlessTupleDesc(desc);
	WalkStatements(fcinfo, 0, false, 1, false, &walk);
	if (walk.any)
	{
		values[1] = walk.first_at;
		nulls[1] = false;
		WalkStatements(fcinfo, 0, true, 1, false, &walk);
		if (walk.any)
		{
			values[0] = walk.first_at;
			nulls[0] = false;
		}
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
