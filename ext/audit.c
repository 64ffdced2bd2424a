/*-------------------------------------------------------------------------
 *
 * ext/audit.c
 *		The audit trigger: records a statement's row changes with the context.
 *
 * rls_audit.capture() is an AFTER ... FOR EACH STATEMENT trigger with
 * transition tables.  Per statement it reads the transition tables, builds
 * one entry per changed row (row images and the UPDATE diff come from
 * audit_image.c, the context from audit_context.c), collects the entries in
 * statement rows of rls_audit.statements (chunks of at most CHUNK_ROWS
 * entries, as parallel arrays, with the statement's own columns once), and
 * inserts each into the partition of its month itself, with its index
 * entries (OpenLogWriter()); with the hash chain on, it digests each and
 * seals them (RlsAuditSealDirect(), audit_chain.c).  A log changed from what the
 * extension made (a CHECK constraint, a trigger, other columns) is written
 * with an INSERT ... SELECT from a tuplestore instead, every
 * CHUNKS_PER_WRITE statement rows and at the end.  Readers read the per-row
 * view rls_audit.log (sql/install/21_audit_view.sql).
 *
 * Rights.  The function is not SECURITY DEFINER: reading the rows and
 * building the images runs with the rights of the role that wrote them.  Only
 * the INSERT into rls_audit.statements runs as the log's owner, inside
 * SetUserIdAndSecContext(..., SECURITY_LOCAL_USERID_CHANGE |
 * SECURITY_RESTRICTED_OPERATION) (so do the capture's own heap and index
 * inserts, and the seal), and that INSERT runs only built-in code:
 * it names no function or operator, its source is a tuplestore of built-in
 * types exactly matching the log's columns (no coercion), and the log's
 * defaults, constraints, indexes and partition bounds are the extension's
 * own, on a table only its owner may change.  A dedicated INSERT-only role
 * would need a role per cluster created by CREATE EXTENSION, which an
 * extension should not do; the switch around the one statement gives the
 * same guarantee.
 *
 * Per table, a backend caches what the capture needs (columns and their
 * output functions, key, options, read rule, trail id).  A relcache invalidation of the
 * table (ALTER TABLE, DROP TABLE, rls_audit.enable() or set_read_rule()
 * changing options) frees the entry, so entries of dropped tables do not
 * accumulate.
 *
 * Reading.  Each log row records the table's trail id (rls_audit.trails),
 * which rule lets the application role read it (read_rule) and the row's own
 * site and owner values before and after the change (read_keys);
 * rls_audit._may_read(), the log's policy, finds the table by the trail id
 * (never by the recorded name, which another table may take), lets its owner
 * read, and compares the keys with the context of a reader that the table's
 * row level security constrains as it constrains its policies' roles.  See
 * docs/audit.md.
 *
 * Administration.  rls_audit.enable(), disable() and set_read_rule() are
 * rls_audit_admin() below: an ownership check on the role calling, then the
 * internal SECURITY DEFINER function that does the work.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/gin_private.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/skey.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_language.h"
#include "catalog/pg_policy.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "pgtime.h"
#include "parser/parse_func.h"
#include "partitioning/partbounds.h"
#include "partitioning/partdesc.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/bytea.h"
#include "utils/float.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inet.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/partcache.h"
#include "utils/pg_locale.h"
#include "utils/queryenvironment.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"
#include "utils/varlena.h"
#include "utils/xml.h"
#include "utils/xid8.h"

#include "django_rls.h"

PG_FUNCTION_INFO_V1(rls_audit_capture);
PG_FUNCTION_INFO_V1(rls_audit_invalidate);
PG_FUNCTION_INFO_V1(rls_audit_admin);
PG_FUNCTION_INFO_V1(rls_audit_may_read);

/*
 * The columns of rls_audit.statements the capture fills, in this order: the
 * statement's own, then its rows' arrays (LOG_FIRST_ROW_ATT on).
 */
#define LOG_COLUMNS "table_oid, table_name, operation, site_id, site_uuid, user_id, user_uuid, " \
	"claims, db_role, application_name, client_addr, read_rule, read_keys, trail_id, " \
	"row_keys, old_values, new_values, changed_columns, row_read_keys"
#define LOG_NATTS 19
#define LOG_FIRST_ROW_ATT 14
/* At most this many changed rows per statement row (positions 1..CHUNK_ROWS < 1024). */
#define CHUNK_ROWS 1000

/*
 * Statement rows collected before they are written: a few megabytes, so that
 * the tuplestore between capture and insert stays in memory (under the
 * default work_mem) instead of spilling a large statement's images to disk.
 */
#define CHUNKS_PER_WRITE 8
#define CAPTURED_RELATION "rls_audit_captured"

/* Read rules: which of the row's values a reader's context must match. */
typedef enum ReadRule
{
	READ_NONE = 0,				/* the application role reads nothing */
	READ_SITE,
	READ_OWNER,
	READ_SITE_OWNER
} ReadRule;

static const char *const read_rule_names[] = {NULL, "site", "owner", "site_owner"};

typedef struct AuditTable
{
	Oid			relid;			/* hash key */
	MemoryContext cxt;
	int			in_use;			/* captures running with this entry */
	bool		valid;
	char	   *name;			/* schema-qualified, quoted as needed */
	pg_uuid_t	trail_id;		/* the table's identity in the trail */
	int			ncolumns;
	RlsAuditColumn *columns;	/* by attribute number - 1; name NULL if dropped */
	int			nimage;
	int		   *image_order;	/* the live columns (0-based) in jsonb's key order */
	int			nkey;
	AttrNumber *key;
	ReadRule	read_rule;
	int			site_att;		/* 0-based, or -1 */
	int			owner_att;
	bool		null_is_shared;
	bool		prints_by_path;	/* a column's text may depend on search_path */
} AuditTable;

static HTAB *audit_tables = NULL;

struct StatementValues;
static void WriteLog(struct StatementValues *sv);
static void ForgetLogLayout(void);
static void OpenLogWriter(struct StatementValues *sv);
static void InsertStatementRow(struct StatementValues *sv, Datum *values, bool *nulls);
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr sealed_insert_plan = NULL;
static bool audit_chain = false;
static TupleDesc log_desc = NULL;

/*
 * Where each column of rls_audit.statements comes from when the capture
 * inserts its statement rows itself (InsertStatementRow()): an index into
 * LOG_COLUMNS, or one of the columns the log's defaults fill.
 */
#define LOG_SOURCE_ID (-1)
#define LOG_SOURCE_LOGGED_AT (-2)
#define LOG_SOURCE_XACT_STARTED_AT (-3)
#define LOG_SOURCE_XACT_ID (-4)
#define LOG_MAX_ATTS (LOG_NATTS + 4)

/*
 * What the capture knows of rls_audit.statements, per backend: its oid and
 * owner, and whether its columns are exactly the ones the capture fills
 * itself (then it inserts without SQL, see OpenLogWriter()).  Forgotten at a
 * relcache invalidation of the log (ALTER TABLE, a new owner, an extension
 * update).
 */
typedef struct LogLayout
{
	Oid			relid;			/* InvalidOid: not looked up yet */
	Oid			owner;
	bool		direct;			/* the columns are those InsertStatementRow() fills */
	Oid			id_sequence;	/* the identity sequence of id */
	int			natts;
	int			source[LOG_MAX_ATTS];	/* by attribute number - 1 */
	bool		sealable;		/* every column rls_audit._entry_digest() prints is there */
	int			digest_source[LOG_MAX_ATTS - 1];	/* the attribute (0-based) of each */
} LogLayout;

/*
 * The columns rls_audit._entry_digest() (sql/install/26_audit_chain.sql)
 * prints as the text of a row of them, in its order: every column but id.
 */
#define DIGEST_NATTS (LOG_MAX_ATTS - 1)
static const char *const digest_names[DIGEST_NATTS] = {
	"logged_at", "xact_started_at", "xact_id", "table_oid", "table_name", "operation",
	"site_id", "site_uuid", "user_id", "user_uuid", "claims", "db_role", "application_name",
	"client_addr", "read_rule", "read_keys", "trail_id", "row_keys", "old_values", "new_values",
	"changed_columns", "row_read_keys"
};
static Oid	digest_types[DIGEST_NATTS];	/* InvalidOid: not looked up yet */
static FmgrInfo digest_output[DIGEST_NATTS];
static StringInfoData digest_text;
static SPIPlanPtr seal_plan = NULL;

static LogLayout log_layout;

/*
 * What the capture resolved about the partition its statement rows go to,
 * kept per backend across statements (docs/audit.md, "Cost"): the partition,
 * the range of logged_at it holds (from the log's partition bounds), and its
 * indexes with their IndexInfo, the states of their partial-index predicates
 * and expressions prepared once.  Every statement still takes the lock of the
 * log, the partition and each index (held to the end of the transaction, so
 * that a later statement of it finds them taken: CloseLogWriter()), and
 * opens them (closed at the end of the statement); the shape is only used
 * when it is still valid after those locks (which take the invalidations
 * other sessions committed).  Any relcache invalidation of the log, the
 * partition or one of its indexes, or of everything (InvalidOid), marks it
 * invalid (InvalidateLogWriterShape()): a new, dropped, detached or attached
 * partition, an index created, dropped or rebuilt, a trigger, rule, CHECK
 * constraint or row security change, ALTER TABLE, and the local replay of the
 * invalidations of a transaction that rolled back.  The next statement then
 * decides again, from the relcache, whether it can insert itself at all
 * (OpenLogWriter()) and builds the shape again.  Freed only when no
 * statement uses it (writer_depth).
 */
typedef struct LogWriterShape
{
	MemoryContext cxt;
	bool		valid;
	Oid			log_relid;
	Oid			partition;
	bool		has_lower;		/* logged_at >= lower */
	bool		has_upper;		/* logged_at < upper */
	Datum		lower;
	Datum		upper;
	FmgrInfo	cmp;			/* the partition key's comparison function */
	Oid			collation;
	bool		plain;			/* runs no function that resolves names (PathFree()) */
	int			nindexes;
	Oid		   *index_oids;
	IndexInfo **index_info;
	bool	   *gin;			/* a GIN index: its GinState (ii_AmCache) is kept too */
} LogWriterShape;

static LogWriterShape *writer_shape = NULL;

/* Captures using writer_shape now (a capture inside another's is not expected, but safe). */
static int	writer_depth = 0;

/* Counts relcache invalidations: a shape built while one arrived is not kept. */
static uint64 writer_invalidations = 0;

static void
InvalidateLogWriterShape(Oid relid)
{
	int			i;

	writer_invalidations++;
	if (writer_shape == NULL || !writer_shape->valid)
		return;
	if (relid == InvalidOid || relid == writer_shape->log_relid || relid == writer_shape->partition)
	{
		writer_shape->valid = false;
		return;
	}
	for (i = 0; i < writer_shape->nindexes; i++)
		if (writer_shape->index_oids[i] == relid)
			writer_shape->valid = false;
}

/* The columns CompareImageOrder() sorts the indexes of. */
static RlsAuditColumn *image_order_columns = NULL;

/* Two column indexes by their names, in jsonb's order of object keys. */
static int
CompareImageOrder(const void *a, const void *b)
{
	const char *x = image_order_columns[*(const int *) a].name;
	const char *y = image_order_columns[*(const int *) b].name;
	size_t		xlen = strlen(x);
	size_t		ylen = strlen(y);

	if (xlen != ylen)
		return xlen < ylen ? -1 : 1;
	return memcmp(x, y, xlen);
}

static void
FreeAuditTable(AuditTable *table)
{
	bool		found;

	MemoryContextDelete(table->cxt);
	hash_search(audit_tables, &table->relid, HASH_REMOVE, &found);
}

/* Free the entries of a table (or of all tables) unless a capture is using them. */
static void
InvalidateAuditTables(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	AuditTable *table;

	if (relid == InvalidOid || relid == log_layout.relid)
		ForgetLogLayout();
	InvalidateLogWriterShape(relid);
	if (audit_tables == NULL)
		return;
	hash_seq_init(&status, audit_tables);
	while ((table = (AuditTable *) hash_seq_search(&status)) != NULL)
	{
		if (relid != InvalidOid && table->relid != relid)
			continue;
		if (table->in_use > 0)
			table->valid = false;
		else
			FreeAuditTable(table);
	}
}

static Oid
AuditRelation(const char *name)
{
	Oid			relid = get_relname_relid(name, get_namespace_oid("rls_audit", false));

	if (!OidIsValid(relid))
		elog(ERROR, "rls_audit.%s is missing", name);
	return relid;
}

static AttrNumber
AuditAttribute(Oid relid, const char *name)
{
	AttrNumber	att = get_attnum(relid, name);

	if (att == InvalidAttrNumber)
		elog(ERROR, "column %s of the audit configuration is missing", name);
	return att;
}

/*
 * The row of rls_audit.<config> whose column attname equals value (compared
 * with the built-in equality function eqproc), copied, or NULL.  Read with a
 * table scan, never through SQL, under the latest snapshot (the capture: a
 * configuration committed since the statement started counts), or under the
 * active one where a new snapshot cannot be taken (a policy, which runs in
 * parallel workers too).
 */
static HeapTuple
ConfigRowBy(const char *config, const char *attname, RegProcedure eqproc, Datum value, TupleDesc *desc,
			bool latest)
{
	Oid			cfgid = AuditRelation(config);
	Relation	cfg = table_open(cfgid, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(latest ? GetLatestSnapshot() : GetActiveSnapshot());
	ScanKeyData key;
	TableScanDesc scan;
	HeapTuple	tuple;

	ScanKeyInit(&key, AuditAttribute(cfgid, attname), BTEqualStrategyNumber, eqproc, value);
	scan = table_beginscan(cfg, snapshot, 1, &key);
	tuple = heap_getnext(scan, ForwardScanDirection);
	if (tuple != NULL)
		tuple = heap_copytuple(tuple);
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	*desc = CreateTupleDescCopy(RelationGetDescr(cfg));
	table_close(cfg, AccessShareLock);
	return tuple;
}

/* The row of rls_audit.<config> for relid, copied, or NULL. */
static HeapTuple
ConfigRow(const char *config, Oid relid, TupleDesc *desc)
{
	return ConfigRowBy(config, "table_oid", F_OIDEQ, ObjectIdGetDatum(relid), desc, true);
}

/*
 * The trail id of a table (rls_audit.trails): what its entries are recorded
 * under, whatever the table is called later and whatever oid a restore gives
 * it.
 */
static void
LoadTrailId(AuditTable *table, Relation rel)
{
	TupleDesc	desc;
	HeapTuple	row = ConfigRow("trails", table->relid, &desc);
	bool		isnull = true;
	Datum		value = (Datum) 0;

	if (row != NULL)
		value = heap_getattr(row, AuditAttribute(AuditRelation("trails"), "trail_id"), desc, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("audited table \"%s\" has no trail id", RelationGetRelationName(rel)),
				 errdetail("The table is registered in rls_audit.audited_tables but not in rls_audit.trails."),
				 errhint("Call rls_audit.enable() for the table again.")));
	table->trail_id = *DatumGetUUIDP(value);
}

/* Mark the columns named in a text[] attribute of a config row. */
static void
MarkColumns(AuditTable *table, HeapTuple row, TupleDesc desc, Oid cfgid, const char *attname,
			bool masked)
{
	bool		isnull;
	Datum		value = heap_getattr(row, AuditAttribute(cfgid, attname), desc, &isnull);
	Datum	   *names;
	int			nnames;
	int			i;
	int			j;

	if (isnull)
		return;
	deconstruct_array(DatumGetArrayTypeP(value), TEXTOID, -1, false, TYPALIGN_INT,
					  &names, NULL, &nnames);
	for (i = 0; i < nnames; i++)
	{
		char	   *name = TextDatumGetCString(names[i]);

		for (j = 0; j < table->ncolumns; j++)
		{
			if (table->columns[j].name != NULL && strcmp(table->columns[j].name, name) == 0)
			{
				if (masked)
					table->columns[j].masked = true;
				else
					table->columns[j].excluded = true;
			}
		}
	}
}

/* The 0-based attribute of a read-rule column, or -1 when it cannot hold a context key. */
static int
ReadColumn(AuditTable *table, HeapTuple row, TupleDesc desc, Oid cfgid, const char *attname)
{
	bool		isnull;
	Datum		value = heap_getattr(row, AuditAttribute(cfgid, attname), desc, &isnull);
	int			i;

	if (isnull)
		return -1;
	for (i = 0; i < table->ncolumns; i++)
	{
		RlsAuditColumn *column = &table->columns[i];

		if (column->name != NULL && strcmp(column->name, NameStr(*DatumGetName(value))) == 0 &&
			(column->type == INT2OID || column->type == INT4OID || column->type == INT8OID ||
			 column->type == UUIDOID))
			return i;
	}
	return -2;					/* named, but gone or of another type: fail closed */
}

static void
LoadReadRule(AuditTable *table)
{
	TupleDesc	desc;
	HeapTuple	row = ConfigRow("read_rules", table->relid, &desc);
	Oid			cfgid = AuditRelation("read_rules");
	bool		isnull;
	Datum		shared;

	table->read_rule = READ_NONE;
	table->site_att = -1;
	table->owner_att = -1;
	if (row == NULL)
		return;
	table->site_att = ReadColumn(table, row, desc, cfgid, "site_column");
	table->owner_att = ReadColumn(table, row, desc, cfgid, "owner_column");
	shared = heap_getattr(row, AuditAttribute(cfgid, "null_is_shared"), desc, &isnull);
	table->null_is_shared = !isnull && DatumGetBool(shared);
	if (table->site_att == -2 || table->owner_att == -2)
		table->read_rule = READ_NONE;
	else if (table->site_att >= 0 && table->owner_att >= 0)
		table->read_rule = READ_SITE_OWNER;
	else if (table->site_att >= 0)
		table->read_rule = READ_SITE;
	else if (table->owner_att >= 0)
		table->read_rule = READ_OWNER;
	if (table->read_rule == READ_SITE_OWNER)
		table->null_is_shared = false;
}

/*
 * The search_path.  The capture runs with the writer's (rls_audit.capture()
 * has no SET clause: fmgr_security_definer() around every call, the clause
 * set, and AtEOXact_GUC() over every setting at its end were about 10,000
 * instructions of an audited single-row statement), and pins it to
 * PINNED_SEARCH_PATH, inside a GUC nest level, where a name could be
 * resolved through it (docs/audit.md, "Design notes"):
 * - row images and read keys of a table with a column whose type's output
 *   may print names qualified or not by what the path makes visible (reg*
 *   types, and anything not known to print without it: PrintsWithoutPath());
 * - with the hash chain on (the seal, and its rls_audit._seal() fallback);
 * - the INSERT statement the capture falls back to (WriteLog()), whose plan
 *   and whatever a superuser added to the log (CHECK constraints,
 *   triggers) would otherwise resolve names through the writer's path, as
 *   the log's owner;
 * - the capture's own insert, whenever it builds the partition's shape, and
 *   for every statement whose shape is not plain (PathFree(): an index
 *   expression, a predicate or support function, or the partition key's
 *   comparison, in a language other than C or internal, such as an SQL
 *   function a superuser's partial index calls).
 * Everything else the capture runs names nothing: built-in output functions
 * of the types below, the log's own B-tree and GIN code on built-in types
 * and the extension's operator class, and the predicates IS NOT NULL.
 */
#define PINNED_SEARCH_PATH "pg_catalog, pg_temp"

/* A (base) type whose output function resolves no name, whatever the search_path. */
static bool
PrintsWithoutPath(Oid type)
{
	switch (type)
	{
		case BOOLOID:
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case FLOAT4OID:
		case FLOAT8OID:
		case NUMERICOID:
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
		case NAMEOID:
		case CHAROID:
		case DATEOID:
		case TIMEOID:
		case TIMETZOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
		case INTERVALOID:
		case UUIDOID:
		case JSONOID:
		case JSONBOID:
		case BYTEAOID:
		case INETOID:
		case CIDROID:
			return true;
		default:
			return false;
	}
}

/* Whether a function is in C or internal, which look no name up through search_path. */
static bool
FunctionInC(Oid function)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(function));
	bool		in_c;

	if (!HeapTupleIsValid(tuple))
		return false;
	in_c = ((Form_pg_proc) GETSTRUCT(tuple))->prolang == ClanguageId ||
		((Form_pg_proc) GETSTRUCT(tuple))->prolang == INTERNALlanguageId;
	ReleaseSysCache(tuple);
	return in_c;
}

static bool
NotInC(Oid function, void *context)
{
	return !FunctionInC(function);
}

/* Whether an expression calls a function (or an operator's) that is not in C or internal. */
static bool
CallsNotInC(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (check_functions_in_node(node, NotInC, context))
		return true;
	return expression_tree_walker(node, CallsNotInC, context);
}

/* Open a GUC nest level with PINNED_SEARCH_PATH; returns the level to close with AtEOXact_GUC(true, level). */
static int
PinSearchPath(void)
{
	int			level = NewGUCNestLevel();

	(void) set_config_option("search_path", PINNED_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * The cached description of an audited table, pinned until
 * ReleaseAuditTable().  Not inlined into the caller's PG_TRY block.
 */
static pg_noinline AuditTable *
AcquireAuditTable(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	AuditTable *table;
	bool		found;
	TupleDesc	tupdesc = RelationGetDescr(rel);
	TupleDesc	cfgdesc;
	HeapTuple	cfgrow;
	Oid			cfgid;
	MemoryContext cxt;
	MemoryContext old;
	Oid			pkindex;
	int			i;

	if (audit_tables == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(Oid);
		info.entrysize = sizeof(AuditTable);
		audit_tables = hash_create("django_rls audited tables", 64, &info, HASH_ELEM | HASH_BLOBS);
		CacheRegisterRelcacheCallback(InvalidateAuditTables, (Datum) 0);
	}

	table = (AuditTable *) hash_search(audit_tables, &relid, HASH_FIND, NULL);
	if (table != NULL && (table->valid || table->in_use > 0))
	{
		/* A stale entry still in use stays as it is until released. */
		table->in_use++;
		return table;
	}
	if (table != NULL)
		FreeAuditTable(table);

	cfgid = AuditRelation("audited_tables");
	cfgrow = ConfigRow("audited_tables", relid, &cfgdesc);
	if (cfgrow == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s is not audited", RelationGetRelationName(rel)),
				 errdetail("The table has an rls_audit trigger but no entry in rls_audit.audited_tables."),
				 errhint("Call rls_audit.enable() for the table, or drop the stray rls_audit trigger.")));
	pkindex = RlsPrimaryKeyIndex(rel);
	if (!OidIsValid(pkindex))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("audited table \"%s\" has no primary key", RelationGetRelationName(rel)),
				 errhint("The audit trail identifies rows by primary key; add one.")));

	/*
	 * Build the entry in its own context before it enters the hash table, so
	 * that an error half way leaves nothing behind.
	 */
	cxt = AllocSetContextCreate(CacheMemoryContext, "django_rls audit table", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	table = palloc0(sizeof(AuditTable));
	table->relid = relid;
	table->cxt = cxt;
	table->name = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											 RelationGetRelationName(rel));
	MemoryContextSetIdentifier(cxt, table->name);
	table->ncolumns = tupdesc->natts;
	table->columns = palloc0(sizeof(RlsAuditColumn) * tupdesc->natts);
	for (i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(tupdesc, i);

		if (!attr->attisdropped)
		{
			RlsAuditColumnInit(&table->columns[i], attr, cxt);
			table->prints_by_path |= !PrintsWithoutPath(table->columns[i].type);
		}
	}
	/*
	 * A jsonb object's keys are stored sorted (shorter first, then by bytes),
	 * and pushJsonbValue() sorts them when the object ends: pushed in that
	 * order already, the sort only checks that they are (a seventh of the
	 * capture's time in a bulk DELETE went into sorting every image's keys).
	 */
	table->image_order = palloc(sizeof(int) * tupdesc->natts);
	for (i = 0; i < tupdesc->natts; i++)
		if (table->columns[i].name != NULL)
			table->image_order[table->nimage++] = i;
	image_order_columns = table->columns;
	qsort(table->image_order, table->nimage, sizeof(int), CompareImageOrder);
	MarkColumns(table, cfgrow, cfgdesc, cfgid, "excluded_columns", false);
	MarkColumns(table, cfgrow, cfgdesc, cfgid, "masked_columns", true);
	{
		Relation	index = index_open(pkindex, AccessShareLock);

		table->nkey = index->rd_index->indnkeyatts;
		table->key = palloc(sizeof(AttrNumber) * table->nkey);
		for (i = 0; i < table->nkey; i++)
			table->key[i] = index->rd_index->indkey.values[i];
		index_close(index, AccessShareLock);
	}
	LoadReadRule(table);
	LoadTrailId(table, rel);
	MemoryContextSwitchTo(old);

	{
		AuditTable *entry = (AuditTable *) hash_search(audit_tables, &relid, HASH_ENTER, &found);

		*entry = *table;
		entry->valid = true;
		entry->in_use = 1;
		return entry;
	}
}

static void
ReleaseAuditTable(Oid relid)
{
	AuditTable *table = (AuditTable *) hash_search(audit_tables, &relid, HASH_FIND, NULL);

	if (table == NULL)
		return;
	table->in_use--;
	if (table->in_use <= 0 && !table->valid)
		FreeAuditTable(table);
}

/* The descriptor of the statement rows the capture collects: LOG_COLUMNS, with their types. */
static TupleDesc
LogDescriptor(void)
{
	static const Oid types[LOG_NATTS] = {
		OIDOID, TEXTOID, TEXTOID, INT8OID, UUIDOID, INT8OID, UUIDOID, JSONBOID, NAMEOID,
		TEXTOID, INETOID, TEXTOID, TEXTARRAYOID, UUIDOID,
		TEXTARRAYOID, JSONBARRAYOID, JSONBARRAYOID, TEXTARRAYOID, TEXTARRAYOID
	};
	static const char *const names[LOG_NATTS] = {
		"table_oid", "table_name", "operation", "site_id", "site_uuid", "user_id", "user_uuid",
		"claims", "db_role", "application_name", "client_addr", "read_rule", "read_keys", "trail_id",
		"row_keys", "old_values", "new_values", "changed_columns", "row_read_keys"
	};
	MemoryContext old;
	int			i;

	if (log_desc != NULL)
		return log_desc;
	old = MemoryContextSwitchTo(TopMemoryContext);
	log_desc = CreateTemplateTupleDesc(LOG_NATTS);
	for (i = 0; i < LOG_NATTS; i++)
		TupleDescInitEntry(log_desc, (AttrNumber) (i + 1), names[i], types[i], -1, 0);
	MemoryContextSwitchTo(old);
	return log_desc;
}

/*
 * One statement's capture: what its statement rows share, and the chunk of
 * rows being collected (arrays built in chunkcxt, flushed into rows as one
 * statement row every CHUNK_ROWS rows and at the end).
 */
typedef struct StatementValues
{
	Datum		values[LOG_NATTS];
	bool		nulls[LOG_NATTS];
	MemoryContext cxt;			/* the capture's: the writer below lives there */
	Tuplestorestate *rows;		/* the INSERT statement's rows, or NULL */
	int64		statements;		/* statement rows in rows, not yet written */
	bool		path_pinned;	/* search_path is PINNED_SEARCH_PATH for the whole capture */
	int			path_level;		/* the GUC nest level PinWriterPath() opened, or -1 */
	/* The capture's own insert (OpenLogWriter()), decided at the first statement row. */
	bool		decided;
	bool		direct;
	Relation	log;
	Relation	partition;
	LogWriterShape *shape;		/* the partition's, cached or this statement's own */
	bool		shape_cached;	/* shape is writer_shape, counted in writer_depth */
	EState	   *estate;
	ResultRelInfo *partition_info;
	TupleTableSlot *log_slot;
	LogLayout	layout;			/* the log's, when the writer opened it */
	bool		sealing;		/* the hash chain is on: seal the rows at the end */
	ArrayBuildState *seal_ids;
	StringInfoData seal_digests;
	MemoryContext chunkcxt;
	int			nrows;
	ArrayBuildState *row_keys;
	ArrayBuildState *old_values;
	ArrayBuildState *new_values;
	ArrayBuildState *changed_columns;
	ArrayBuildState *row_read_keys;
	bool		any_old;
	bool		any_new;
	bool		any_changed;
	bool		any_read_keys;
	List	   *read_keys;		/* distinct read keys of the chunk, char * */
} StatementValues;

static void
SetId(const RlsId *id, StatementValues *sv, int int_index, int uuid_index)
{
	sv->nulls[int_index] = true;
	sv->nulls[uuid_index] = true;
	if (id->kind == RLS_ID_INT)
	{
		sv->values[int_index] = Int64GetDatum(id->int_value);
		sv->nulls[int_index] = false;
	}
	else if (id->kind == RLS_ID_UUID)
	{
		pg_uuid_t  *copy = palloc(sizeof(pg_uuid_t));

		*copy = id->uuid_value;
		sv->values[uuid_index] = UUIDPGetDatum(copy);
		sv->nulls[uuid_index] = false;
	}
}

static void
InitStatementValues(StatementValues *sv, AuditTable *table, const char *operation,
					const RlsStatementContext *context, bool path_pinned)
{
	const char *application = GetConfigOption("application_name", true, false);
	LOCAL_FCINFO(fcinfo, 0);
	Datum		addr;

	memset(sv->nulls, true, sizeof(sv->nulls));
	sv->values[0] = ObjectIdGetDatum(table->relid);
	sv->values[1] = CStringGetTextDatum(table->name);
	sv->values[2] = CStringGetTextDatum(operation);
	sv->nulls[0] = sv->nulls[1] = sv->nulls[2] = false;
	{
		pg_uuid_t  *trail = palloc(sizeof(pg_uuid_t));

		*trail = table->trail_id;
		sv->values[13] = UUIDPGetDatum(trail);
	}
	sv->nulls[13] = false;
	SetId(&context->site, sv, 3, 4);
	SetId(&context->user, sv, 5, 6);
	if (context->claims[0] != '\0')
	{
		sv->values[7] = DirectFunctionCall1(jsonb_in, CStringGetDatum(context->claims));
		sv->nulls[7] = false;
	}
	sv->values[8] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetOuterUserId(), false)));
	sv->nulls[8] = false;
	if (application != NULL)
	{
		sv->values[9] = CStringGetTextDatum(application);
		sv->nulls[9] = false;
	}
	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	addr = inet_client_addr(fcinfo);
	if (!fcinfo->isnull)
	{
		sv->values[10] = addr;
		sv->nulls[10] = false;
	}
	if (table->read_rule != READ_NONE)
	{
		sv->values[11] = CStringGetTextDatum(read_rule_names[table->read_rule]);
		sv->nulls[11] = false;
	}
	sv->cxt = CurrentMemoryContext;
	sv->rows = NULL;
	sv->statements = 0;
	sv->path_pinned = path_pinned;
	sv->path_level = -1;
	sv->decided = false;
	sv->direct = false;
	sv->sealing = false;
	sv->chunkcxt = AllocSetContextCreate(CurrentMemoryContext, "django_rls audit chunk",
										 ALLOCSET_DEFAULT_SIZES);
	sv->nrows = 0;
}

/*
 * The key a reader's context must match to read this row's entries (see
 * rls_audit._may_read()), "*" when everyone may, or NULL when no one may.
 */
static char *
ReadKey(AuditTable *table, TupleTableSlot *slot)
{
	char	   *site = NULL;
	char	   *owner = NULL;

	if (table->site_att >= 0 && !slot->tts_isnull[table->site_att])
		site = RlsAuditValueText(&table->columns[table->site_att], slot->tts_values[table->site_att]);
	if (table->owner_att >= 0 && !slot->tts_isnull[table->owner_att])
		owner = RlsAuditValueText(&table->columns[table->owner_att], slot->tts_values[table->owner_att]);
	switch (table->read_rule)
	{
		case READ_NONE:
			return NULL;
		case READ_SITE:
			return site != NULL ? site : (table->null_is_shared ? "*" : NULL);
		case READ_OWNER:
			return owner != NULL ? owner : (table->null_is_shared ? "*" : NULL);
		case READ_SITE_OWNER:
			return site != NULL && owner != NULL ? psprintf("%s %s", site, owner) : NULL;
	}
	return NULL;
}

/*
 * The read keys of an entry about the rows in a and b (either may be NULL),
 * added to the chunk's distinct keys; *n set to how many (0, 1 or 2).
 */
static void
ReadKeys(StatementValues *sv, AuditTable *table, TupleTableSlot *a, TupleTableSlot *b,
		 char **keys, int *n)
{
	char	   *ka = a != NULL ? ReadKey(table, a) : NULL;
	char	   *kb = b != NULL ? ReadKey(table, b) : NULL;
	int			i;

	*n = 0;
	if (ka != NULL)
		keys[(*n)++] = ka;
	if (kb != NULL && (ka == NULL || strcmp(ka, kb) != 0))
		keys[(*n)++] = kb;
	for (i = 0; i < *n; i++)
	{
		ListCell   *lc;
		bool		known = false;

		/* Newest first: a chunk's rows mostly share their keys. */
		foreach(lc, sv->read_keys)
		{
			if (strcmp((char *) lfirst(lc), keys[i]) == 0)
			{
				known = true;
				break;
			}
		}
		if (!known)
		{
			MemoryContext old = MemoryContextSwitchTo(sv->chunkcxt);

			sv->read_keys = lcons(pstrdup(keys[i]), sv->read_keys);
			MemoryContextSwitchTo(old);
		}
	}
}

/*
 * The text of a one-dimensional text[] of these (non-NULL) elements, as
 * array_out prints it: an element is double-quoted when it is empty, reads
 * NULL, or holds a brace, comma, double quote, backslash or white space, and
 * a double quote or backslash in it is escaped with a backslash.
 */
static char *
TextArrayText(Datum *elements, int n)
{
	StringInfoData out;
	int			i;

	initStringInfo(&out);
	appendStringInfoChar(&out, '{');
	for (i = 0; i < n; i++)
	{
		char	   *element = TextDatumGetCString(elements[i]);
		bool		quote = element[0] == '\0' || pg_strcasecmp(element, "NULL") == 0;
		const char *c;

		for (c = element; *c != '\0' && !quote; c++)
			quote = strchr("{},\"\\ \t\n\r\v\f", *c) != NULL;
		if (i > 0)
			appendStringInfoChar(&out, ',');
		if (quote)
			appendStringInfoChar(&out, '"');
		for (c = element; *c != '\0'; c++)
		{
			if (*c == '"' || *c == '\\')
				appendStringInfoChar(&out, '\\');
			appendStringInfoChar(&out, *c);
		}
		if (quote)
			appendStringInfoChar(&out, '"');
	}
	appendStringInfoChar(&out, '}');
	return out.data;
}

/* Write the chunk collected so far as one statement row, and start the next. */
static void
FlushChunk(StatementValues *sv)
{
	Datum		values[LOG_NATTS];
	bool		nulls[LOG_NATTS];
	MemoryContext old;

	if (sv->nrows == 0)
		return;
	old = MemoryContextSwitchTo(sv->chunkcxt);
	memcpy(values, sv->values, sizeof(values));
	memcpy(nulls, sv->nulls, sizeof(nulls));
	if (sv->read_keys != NIL)
	{
		int			n = list_length(sv->read_keys);
		Datum	   *keys = palloc(sizeof(Datum) * n);
		int			i = 0;
		ListCell   *lc;

		/* In the order first met (the list is newest first). */
		foreach(lc, sv->read_keys)
			keys[n - 1 - i++] = CStringGetTextDatum((char *) lfirst(lc));
		values[12] = PointerGetDatum(construct_array(keys, n, TEXTOID, -1, false, TYPALIGN_INT));
		nulls[12] = false;
	}
	values[14] = makeArrayResult(sv->row_keys, sv->chunkcxt);
	nulls[14] = false;
	values[15] = sv->any_old ? makeArrayResult(sv->old_values, sv->chunkcxt) : (Datum) 0;
	nulls[15] = !sv->any_old;
	values[16] = sv->any_new ? makeArrayResult(sv->new_values, sv->chunkcxt) : (Datum) 0;
	nulls[16] = !sv->any_new;
	values[17] = sv->any_changed ? makeArrayResult(sv->changed_columns, sv->chunkcxt) : (Datum) 0;
	nulls[17] = !sv->any_changed;
	values[18] = sv->any_read_keys ? makeArrayResult(sv->row_read_keys, sv->chunkcxt) : (Datum) 0;
	nulls[18] = !sv->any_read_keys;
	if (!sv->decided)
		OpenLogWriter(sv);
	if (sv->direct)
		InsertStatementRow(sv, values, nulls);
	else
	{
		if (sv->rows == NULL)
		{
			MemoryContextSwitchTo(sv->cxt);
			sv->rows = tuplestore_begin_heap(false, false, work_mem);
			MemoryContextSwitchTo(sv->chunkcxt);
		}
		tuplestore_putvalues(sv->rows, LogDescriptor(), values, nulls);
		sv->statements++;
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(sv->chunkcxt);
	sv->nrows = 0;
	sv->read_keys = NIL;
	if (sv->statements >= CHUNKS_PER_WRITE)
	{
		WriteLog(sv);
		tuplestore_clear(sv->rows);
		sv->statements = 0;
	}
}

/*
 * initArrayResult() for text or jsonb elements, without looking their type
 * up: both are varlena, int-aligned and passed by reference.  The lookups
 * (five per statement row) were about 1,500 instructions of an audited
 * single-row statement.
 */
static ArrayBuildState *
VarlenaArrayBuild(Oid element_type, MemoryContext cxt)
{
	ArrayBuildState *astate = MemoryContextAlloc(cxt, sizeof(ArrayBuildState));

	Assert(element_type == TEXTOID || element_type == JSONBOID);
	astate->mcontext = cxt;
	astate->private_cxt = false;
	astate->alen = 8;
	astate->dvalues = MemoryContextAlloc(cxt, astate->alen * sizeof(Datum));
	astate->dnulls = MemoryContextAlloc(cxt, astate->alen * sizeof(bool));
	astate->nelems = 0;
	astate->element_type = element_type;
	astate->typlen = -1;
	astate->typbyval = false;
	astate->typalign = TYPALIGN_INT;
	return astate;
}

/* Add one changed row to the chunk (in the current, per-row, memory context). */
static void
PutEntry(StatementValues *sv, AuditTable *table, char *row_key,
		 Jsonb *old_values, Jsonb *new_values, Datum *changed, int nchanged,
		 TupleTableSlot *read_a, TupleTableSlot *read_b)
{
	char	   *keys[2];
	int			nkeys = 0;
	Datum		text_keys[2];
	int			i;

	if (sv->nrows == 0)
	{
		sv->row_keys = VarlenaArrayBuild(TEXTOID, sv->chunkcxt);
		sv->old_values = VarlenaArrayBuild(JSONBOID, sv->chunkcxt);
		sv->new_values = VarlenaArrayBuild(JSONBOID, sv->chunkcxt);
		sv->changed_columns = VarlenaArrayBuild(TEXTOID, sv->chunkcxt);
		sv->row_read_keys = VarlenaArrayBuild(TEXTOID, sv->chunkcxt);
		sv->any_old = sv->any_new = sv->any_changed = sv->any_read_keys = false;
		sv->read_keys = NIL;
	}
	accumArrayResult(sv->row_keys, row_key != NULL ? CStringGetTextDatum(row_key) : (Datum) 0,
					 row_key == NULL, TEXTOID, sv->chunkcxt);
	accumArrayResult(sv->old_values, JsonbPGetDatum(old_values), old_values == NULL, JSONBOID, sv->chunkcxt);
	sv->any_old |= (old_values != NULL);
	accumArrayResult(sv->new_values, JsonbPGetDatum(new_values), new_values == NULL, JSONBOID, sv->chunkcxt);
	sv->any_new |= (new_values != NULL);
	accumArrayResult(sv->changed_columns,
					 changed != NULL ? CStringGetTextDatum(TextArrayText(changed, nchanged)) : (Datum) 0,
					 changed == NULL, TEXTOID, sv->chunkcxt);
	sv->any_changed |= (changed != NULL);
	if (table->read_rule != READ_NONE && (read_a != NULL || read_b != NULL))
		ReadKeys(sv, table, read_a, read_b, keys, &nkeys);
	for (i = 0; i < nkeys; i++)
		text_keys[i] = CStringGetTextDatum(keys[i]);
	accumArrayResult(sv->row_read_keys,
					 nkeys > 0 ? CStringGetTextDatum(TextArrayText(text_keys, nkeys)) : (Datum) 0,
					 nkeys == 0, TEXTOID, sv->chunkcxt);
	sv->any_read_keys |= (nkeys > 0);
	if (++sv->nrows >= CHUNK_ROWS)
		FlushChunk(sv);
}

/* Position a transition table at its start, with a read pointer of our own. */
static void
RewindTransitionTable(Tuplestorestate *store)
{
	int			pointer = tuplestore_alloc_read_pointer(store, EXEC_FLAG_REWIND);

	tuplestore_select_read_pointer(store, pointer);
	tuplestore_rescan(store);
}

static bool
NextRow(Tuplestorestate *store, TupleTableSlot *slot)
{
	if (!tuplestore_gettupleslot(store, true, false, slot))
		return false;
	slot_getallattrs(slot);
	return true;
}

/* One entry per row of an INSERT (new rows) or a DELETE (old rows). */
static int64
CaptureRows(StatementValues *sv, AuditTable *table,
			Tuplestorestate *store, TupleTableSlot *slot, bool inserted, MemoryContext rowcxt)
{
	int64		count = 0;

	RewindTransitionTable(store);
	while (NextRow(store, slot))
	{
		MemoryContext old = MemoryContextSwitchTo(rowcxt);
		Jsonb	   *image = RlsAuditRowImage(table->columns, table->image_order, table->nimage, slot, NULL);

		PutEntry(sv, table, RlsAuditKeyText(table->columns, table->key, table->nkey, slot),
				 inserted ? NULL : image, inserted ? image : NULL, NULL, 0, slot, NULL);
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
		count++;
	}
	return count;
}

/*
 * UPDATE: the old and new transition tables hold the rows in the same order,
 * one old and one new per updated row.  An entry holds the changed columns
 * only; a row whose key changed gets two entries, one under each key, with
 * the whole row on its side.  Rows whose logged columns did not change write
 * nothing.
 */
static int64
CaptureUpdates(StatementValues *sv, AuditTable *table,
			   Tuplestorestate *old_store, Tuplestorestate *new_store,
			   TupleTableSlot *old_slot, TupleTableSlot *new_slot, MemoryContext rowcxt)
{
	int64		count = 0;
	bool	   *changed = palloc(sizeof(bool) * table->ncolumns);
	Datum	   *names = palloc(sizeof(Datum) * table->ncolumns);

	RewindTransitionTable(old_store);
	RewindTransitionTable(new_store);
	for (;;)
	{
		bool		has_old = NextRow(old_store, old_slot);
		bool		has_new = NextRow(new_store, new_slot);
		MemoryContext old;
		int			nchanged = 0;
		bool		key_changed = false;
		int			i;

		if (!has_old && !has_new)
			break;
		old = MemoryContextSwitchTo(rowcxt);
		if (has_old != has_new)
		{
			/* Never expected; record the unpaired row whole rather than lose it. */
			TupleTableSlot *slot = has_old ? old_slot : new_slot;
			Jsonb	   *image = RlsAuditRowImage(table->columns, table->image_order, table->nimage, slot, NULL);

			PutEntry(sv, table, RlsAuditKeyText(table->columns, table->key, table->nkey, slot),
					 has_old ? image : NULL, has_old ? NULL : image, NULL, 0, slot, NULL);
			count++;
		}
		else
		{
			for (i = 0; i < table->ncolumns; i++)
			{
				RlsAuditColumn *column = &table->columns[i];

				changed[i] = column->name != NULL && !column->excluded &&
					!RlsAuditValuesEqual(column, old_slot->tts_values[i], old_slot->tts_isnull[i],
										 new_slot->tts_values[i], new_slot->tts_isnull[i]);
				if (changed[i])
					names[nchanged++] = CStringGetTextDatum(column->name);
			}
			for (i = 0; i < table->nkey; i++)
				key_changed |= changed[table->key[i] - 1];
			if (nchanged > 0)
			{
				if (!key_changed)
				{
					PutEntry(sv, table,
							 RlsAuditKeyText(table->columns, table->key, table->nkey, new_slot),
							 RlsAuditRowImage(table->columns, table->image_order, table->nimage, old_slot, changed),
							 RlsAuditRowImage(table->columns, table->image_order, table->nimage, new_slot, changed),
							 names, nchanged, old_slot, new_slot);
					count++;
				}
				else
				{
					PutEntry(sv, table,
							 RlsAuditKeyText(table->columns, table->key, table->nkey, old_slot),
							 RlsAuditRowImage(table->columns, table->image_order, table->nimage, old_slot, NULL), NULL,
							 names, nchanged, old_slot, new_slot);
					PutEntry(sv, table,
							 RlsAuditKeyText(table->columns, table->key, table->nkey, new_slot),
							 NULL, RlsAuditRowImage(table->columns, table->image_order, table->nimage, new_slot, NULL),
							 names, nchanged, old_slot, new_slot);
					count += 2;
				}
			}
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
	}
	return count;
}

static void
ForgetLogLayout(void)
{
	memset(&log_layout, 0, sizeof(log_layout));
}

/*
 * Look up rls_audit.statements once per backend (until its next relcache
 * invalidation): its owner, and whether the capture can insert its rows
 * itself: every column one that LOG_COLUMNS names with its type, or id (an
 * identity column), logged_at, xact_started_at or xact_id (filled as their
 * defaults fill them), and the table partitioned by range on logged_at.
 */
static void
LoadLogLayout(void)
{
	static const struct
	{
		const char *name;
		Oid			type;
		int			source;
	}			filled[] = {
		{"id", INT8OID, LOG_SOURCE_ID},
		{"logged_at", TIMESTAMPTZOID, LOG_SOURCE_LOGGED_AT},
		{"xact_started_at", TIMESTAMPTZOID, LOG_SOURCE_XACT_STARTED_AT},
		{"xact_id", XID8OID, LOG_SOURCE_XACT_ID},
	};
	TupleDesc	given = LogDescriptor();
	LogLayout	layout;
	Relation	rel;
	TupleDesc	desc;
	PartitionKey key;
	AttrNumber	logged_at = InvalidAttrNumber;
	int			i;
	int			j;

	if (OidIsValid(log_layout.relid))
		return;
	memset(&layout, 0, sizeof(layout));
	layout.relid = AuditRelation("statements");
	rel = table_open(layout.relid, AccessShareLock);
	desc = RelationGetDescr(rel);
	layout.owner = rel->rd_rel->relowner;
	layout.direct = rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE && desc->natts == LOG_MAX_ATTS;
	layout.natts = desc->natts;
	for (i = 0; i < desc->natts && layout.direct; i++)
	{
		Form_pg_attribute attr = TupleDescAttr(desc, i);
		bool		known = false;

		if (attr->attisdropped || attr->attgenerated != '\0')
		{
			layout.direct = false;
			break;
		}
		for (j = 0; j < LOG_NATTS && !known; j++)
		{
			if (strcmp(NameStr(attr->attname), NameStr(TupleDescAttr(given, j)->attname)) == 0 &&
				attr->atttypid == TupleDescAttr(given, j)->atttypid)
			{
				layout.source[i] = j;
				known = true;
			}
		}
		for (j = 0; j < (int) lengthof(filled) && !known; j++)
		{
			if (strcmp(NameStr(attr->attname), filled[j].name) == 0 && attr->atttypid == filled[j].type &&
				(filled[j].source == LOG_SOURCE_ID ? attr->attidentity == ATTRIBUTE_IDENTITY_ALWAYS : attr->atthasdef))
			{
				layout.source[i] = filled[j].source;
				known = true;
				if (filled[j].source == LOG_SOURCE_ID)
					layout.id_sequence = RlsIdentitySequence(rel, attr->attnum);
				else if (filled[j].source == LOG_SOURCE_LOGGED_AT)
					logged_at = attr->attnum;
			}
		}
		layout.direct = known;
	}
	layout.sealable = layout.direct;
	for (i = 0; i < DIGEST_NATTS && layout.sealable; i++)
	{
		layout.digest_source[i] = -1;
		for (j = 0; j < desc->natts; j++)
			if (strcmp(NameStr(TupleDescAttr(desc, j)->attname), digest_names[i]) == 0)
				layout.digest_source[i] = j;
		layout.sealable = layout.digest_source[i] >= 0;
	}
	if (layout.direct)
	{
		key = RelationGetPartitionKey(rel);
		layout.direct = key->strategy == PARTITION_STRATEGY_RANGE && key->partnatts == 1 &&
			key->partattrs[0] == logged_at && OidIsValid(layout.id_sequence);
	}
	table_close(rel, AccessShareLock);
	log_layout = layout;
}

static Oid
LogOwner(void)
{
	LoadLogLayout();
	return log_layout.owner;
}

/* No CHECK constraint, rule or trigger, which only the INSERT statement runs. */
static bool
PlainLogTable(Relation rel)
{
	TupleConstr *constr = rel->rd_att->constr;

	return rel->trigdesc == NULL && rel->rd_rules == NULL && (constr == NULL || constr->num_check == 0);
}

/* The partition's columns are the parent's, in the same places. */
static bool
SameColumns(TupleDesc parent, TupleDesc partition)
{
	int			i;

	if (parent->natts != partition->natts)
		return false;
	for (i = 0; i < parent->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(parent, i);
		Form_pg_attribute b = TupleDescAttr(partition, i);

		if (a->attisdropped != b->attisdropped || a->atttypid != b->atttypid ||
			b->attgenerated != '\0' || strcmp(NameStr(a->attname), NameStr(b->attname)) != 0)
			return false;
	}
	return true;
}

/* Whether logged_at falls in the range of the shape's partition. */
static bool
ShapeHolds(const LogWriterShape *shape, Datum logged_at)
{
	if (shape->has_lower &&
		DatumGetInt32(FunctionCall2Coll((FmgrInfo *) &shape->cmp, shape->collation, logged_at, shape->lower)) < 0)
		return false;
	if (shape->has_upper &&
		DatumGetInt32(FunctionCall2Coll((FmgrInfo *) &shape->cmp, shape->collation, logged_at, shape->upper)) >= 0)
		return false;
	return true;
}

/*
 * Pin the search_path for the rest of this capture (see PinSearchPath()),
 * unless it is already; Capture() closes the level at its end.
 */
static void
PinWriterPath(StatementValues *sv)
{
	if (sv->path_pinned)
		return;
	sv->path_level = PinSearchPath();
	sv->path_pinned = true;
}

/* Free a shape, unless it is writer_shape and a capture uses it. */
static void
FreeLogWriterShape(LogWriterShape *shape)
{
	if (shape == NULL)
		return;
	if (shape == writer_shape)
	{
		if (writer_depth > 0)
			return;
		writer_shape = NULL;
	}
	MemoryContextDelete(shape->cxt);
}

/*
 * The partition of the statement's month, found from the log's partition
 * bounds as the executor's tuple routing finds it, with the range of
 * logged_at between the bounds around it (so that the next statements find
 * it without searching).  InvalidOid when the log has no leaf partition for
 * logged_at (the INSERT statement then reports it).
 */
static Oid
FindLogPartition(Relation log, Datum logged_at, LogWriterShape *shape)
{
	PartitionKey key = RelationGetPartitionKey(log);
	PartitionDesc parts = RelationGetPartitionDesc(log, true);
	PartitionBoundInfo bounds = parts->boundinfo;
	bool		equal = false;
	int			offset;
	int			index;

	if (bounds == NULL)
		return InvalidOid;
	/* The bound at offset is the greatest not above logged_at; the next one ends its partition. */
	offset = partition_range_datum_bsearch(key->partsupfunc, key->partcollation, bounds, 1, &logged_at, &equal);
	index = bounds->indexes[offset + 1];
	if (index < 0)
		index = bounds->default_index;
	if (index < 0 || !parts->is_leaf[index])
		return InvalidOid;

	fmgr_info_copy(&shape->cmp, &key->partsupfunc[0], shape->cxt);
	shape->collation = key->partcollation[0];
	shape->plain &= FunctionInC(key->partsupfunc[0].fn_oid);
	shape->has_lower = offset >= 0;
	shape->has_upper = offset + 1 < bounds->ndatums;
	/* MINVALUE below and MAXVALUE above bound nothing; a bound of another kind is searched every time. */
	if (shape->has_lower && bounds->kind[offset][0] != PARTITION_RANGE_DATUM_VALUE)
	{
		if (bounds->kind[offset][0] != PARTITION_RANGE_DATUM_MINVALUE)
			shape->valid = false;
		shape->has_lower = false;
	}
	if (shape->has_upper && bounds->kind[offset + 1][0] != PARTITION_RANGE_DATUM_VALUE)
	{
		if (bounds->kind[offset + 1][0] != PARTITION_RANGE_DATUM_MAXVALUE)
			shape->valid = false;
		shape->has_upper = false;
	}
	if (shape->has_lower)
		shape->lower = datumCopy(bounds->datums[offset][0], key->parttypbyval[0], key->parttyplen[0]);
	if (shape->has_upper)
		shape->upper = datumCopy(bounds->datums[offset + 1][0], key->parttypbyval[0], key->parttyplen[0]);
	return parts->oids[index];
}

/*
 * Open the partition's indexes (RowExclusiveLock, as ExecOpenIndices() does)
 * into *opened (palloc'd in the current context, from the one index list
 * looked up) and build what inserting into them needs, in the shape's context: their
 * IndexInfo, as ExecOpenIndices() builds it, and the states of their
 * partial-index predicates and expressions, which ExecInsertIndexTuples()
 * would otherwise prepare for every statement.  False, with the indexes
 * closed, when an index is deferred or an exclusion constraint (the INSERT
 * statement checks those).
 */
static bool
BuildIndexShapes(Relation partition, LogWriterShape *shape, Relation **opened)
{
	List	   *oids = RelationGetIndexList(partition);
	Relation   *indexes = palloc(sizeof(Relation) * (list_length(oids) + 1));
	ListCell   *lc;
	int			n = 0;
	int			i;

	*opened = indexes;
	shape->nindexes = list_length(oids);
	shape->index_oids = MemoryContextAlloc(shape->cxt, sizeof(Oid) * (shape->nindexes + 1));
	shape->index_info = MemoryContextAlloc(shape->cxt, sizeof(IndexInfo *) * (shape->nindexes + 1));
	shape->gin = MemoryContextAllocZero(shape->cxt, sizeof(bool) * (shape->nindexes + 1));
	foreach(lc, oids)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);
		MemoryContext old = MemoryContextSwitchTo(shape->cxt);
		IndexInfo  *info = BuildIndexInfo(index);

		indexes[n] = index;
		shape->index_oids[n] = RelationGetRelid(index);
		shape->index_info[n] = info;
		shape->gin[n] = index->rd_rel->relam == GIN_AM_OID;
		n++;
		if (!index->rd_index->indimmediate || info->ii_ExclusionOps != NULL)
		{
			MemoryContextSwitchTo(old);
			for (i = 0; i < n; i++)
				index_close(indexes[i], RowExclusiveLock);
			list_free(oids);
			return false;
		}
		/* What the insert runs of the index: its support functions, predicate and expressions. */
		for (i = 1; i <= index->rd_index->indnkeyatts; i++)
		{
			int			proc;

			for (proc = 1; proc <= index->rd_indam->amsupport; proc++)
			{
				Oid			support = index_getprocid(index, i, proc);

				if (OidIsValid(support))
					shape->plain &= FunctionInC(support);
			}
		}
		if (info->ii_Expressions != NIL || CallsNotInC((Node *) info->ii_Predicate, NULL))
			shape->plain = false;
		if (info->ii_Predicate != NIL)
			info->ii_PredicateState = ExecInitQual((List *) expression_planner((Expr *) info->ii_Predicate), NULL);
		if (info->ii_Expressions != NIL)
		{
			ListCell   *e;

			info->ii_ExpressionsState = NIL;
			foreach(e, info->ii_Expressions)
				info->ii_ExpressionsState = lappend(info->ii_ExpressionsState,
													ExecInitExpr(expression_planner((Expr *) lfirst(e)), NULL));
		}
		MemoryContextSwitchTo(old);
	}
	list_free(oids);
	return true;
}

/*
 * A partial B-tree index of the kept shape is opened (and locked) only once
 * a statement row satisfies its predicate (OpenPartialIndexes()): the
 * (site_uuid, logged_at) and (user_uuid, logged_at) indexes take no entry
 * from a deployment with integer ids, nor the integer ones from one with
 * uuids, nor the user's from a statement without a user, and opening,
 * locking and releasing each was about 2,500 instructions of every
 * statement.  Not opening an index the statement does not write to is safe
 * while it holds the partition's lock: what it knows of the index (its
 * predicate, expressions, IndexInfo) cannot change under the same oid, the
 * index cannot be dropped (DROP INDEX locks the table first, and
 * CONCURRENTLY waits for the table's lockers before it stops inserts), and
 * an index made concurrently becomes ready for inserts only after the
 * transactions holding the table's lock end.  A GIN index is always opened:
 * its kept GinState describes the relation opened at the statement's start.
 */
static bool
LazyIndex(const LogWriterShape *shape, int i)
{
	return shape->index_info[i]->ii_Predicate != NIL && !shape->gin[i];
}

/*
 * Open the partial indexes not opened yet (LazyIndex()) whose predicate the
 * statement row in slot, just inserted, satisfies; ExecInsertIndexTuples()
 * passes over the ones left closed (NULL).  Runs as the log's owner,
 * security-restricted, as the predicates' evaluation there does.
 */
static void
OpenPartialIndexes(StatementValues *sv, TupleTableSlot *slot)
{
	ResultRelInfo *info = sv->partition_info;
	ExprContext *econtext = NULL;
	int			i;

	for (i = 0; i < info->ri_NumIndices; i++)
	{
		IndexInfo  *index_info = info->ri_IndexRelationInfo[i];

		if (info->ri_IndexRelationDescs[i] != NULL)
			continue;
		Assert(index_info->ii_PredicateState != NULL);
		if (econtext == NULL)
		{
			econtext = GetPerTupleExprContext(sv->estate);
			econtext->ecxt_scantuple = slot;
		}
		if (ExecQual(index_info->ii_PredicateState, econtext))
			info->ri_IndexRelationDescs[i] = index_open(sv->shape->index_oids[i], RowExclusiveLock);
	}
}

/*
 * Decide how this statement's rows are written, at its first statement row.
 *
 * Directly (sv->direct): the capture forms each statement row itself, puts
 * it into the partition of the statement's month (found from the log's
 * partition bounds, as the executor's tuple routing finds it) and inserts
 * its index entries, as the log's owner.  That is what the INSERT statement
 * does for a log made as sql/install/21_audit_base.sql and 21_audit_log.sql
 * make it, without SPI, a plan's revalidation and executor start-up, partition routing's
 * set-up and the tuplestore: the fixed cost of an audited single-row
 * statement (docs/audit.md, "Cost").  The defaults it fills are the log's:
 * id from its identity sequence, logged_at = statement_timestamp(),
 * xact_started_at = transaction_timestamp(), xact_id = pg_current_xact_id().
 * What it resolves about the partition and its indexes is kept across
 * statements (LogWriterShape); every statement still locks and opens the
 * log, the partition and each index.
 *
 * With the hash chain on, it also digests each statement row as
 * rls_audit._entry_digest() does (RowDigest()) and seals them at the end
 * (Seal()).
 *
 * Otherwise through the INSERT statement (WriteLog()), when the log is not
 * as the extension made it: other columns, a CHECK constraint, a rule or a
 * trigger on the log or the partition, FORCE ROW LEVEL SECURITY, a partition
 * with other columns or an index that is deferred or an exclusion
 * constraint.  Whatever a superuser added to the log then still applies.
 * Those conditions on the log are checked at every statement; those on the
 * partition and its indexes whenever the shape is built, which every
 * invalidation of them makes happen again.
 */
static void
OpenLogWriter(StatementValues *sv)
{
	MemoryContext old = MemoryContextSwitchTo(sv->cxt);
	Relation	log;
	Relation	partition = NULL;
	Relation   *indexes = NULL;
	LogWriterShape *shape = writer_shape;
	Datum		logged_at = TimestampTzGetDatum(GetCurrentStatementStartTimestamp());
	Oid			partition_oid;
	uint64		invalidations;
	ResultRelInfo *info;
	int			i;

	sv->decided = true;
	sv->direct = false;
	LoadLogLayout();
	log = table_open(log_layout.relid, RowExclusiveLock);

	/*
	 * Opening the log may have taken an invalidation that forgot the layout:
	 * look it up again under the lock, which keeps its columns as they are
	 * until the transaction ends, and keep a copy for this statement (an
	 * invalidation taken later, at a lock the insert takes, forgets the
	 * backend's layout but not the copy).
	 */
	LoadLogLayout();
	sv->layout = log_layout;
	if (sv->layout.relid != RelationGetRelid(log) || !sv->layout.direct ||
		(audit_chain && !sv->layout.sealable) ||
		!PlainLogTable(log) || log->rd_rel->relforcerowsecurity)
	{
		table_close(log, NoLock);
		MemoryContextSwitchTo(old);
		return;
	}

	/*
	 * The kept shape, if the locks of the partition and of each index (which
	 * take what other sessions committed) leave it valid.
	 */
	if (shape != NULL && shape->valid && !shape->plain)
		PinWriterPath(sv);
	if (shape != NULL && shape->valid && shape->log_relid == RelationGetRelid(log) &&
		ShapeHolds(shape, logged_at))
	{
		partition = table_open(shape->partition, RowExclusiveLock);
		if (shape->valid)
		{
			indexes = palloc(sizeof(Relation) * (shape->nindexes + 1));
			for (i = 0; i < shape->nindexes; i++)
				indexes[i] = LazyIndex(shape, i) ? NULL : index_open(shape->index_oids[i], RowExclusiveLock);
			if (shape->valid)
			{
				sv->shape_cached = true;
				writer_depth++;
				goto ready;
			}
			for (i = 0; i < shape->nindexes; i++)
				if (indexes[i] != NULL)
					index_close(indexes[i], RowExclusiveLock);
		}
		table_close(partition, NoLock);
		partition = NULL;
	}

	/* Resolve the partition and its indexes again, into a new shape. */
	PinWriterPath(sv);
	invalidations = writer_invalidations;
	if (writer_depth == 0)
		FreeLogWriterShape(writer_shape);
	{
		/* Under the statement's context until kept: an error half way leaves nothing behind. */
		MemoryContext cxt = AllocSetContextCreate(sv->cxt, "django_rls audit log writer", ALLOCSET_SMALL_SIZES);

		shape = MemoryContextAllocZero(cxt, sizeof(LogWriterShape));
		shape->cxt = cxt;
	}
	shape->log_relid = RelationGetRelid(log);
	shape->valid = true;
	shape->plain = true;
	partition_oid = FindLogPartition(log, logged_at, shape);
	if (!OidIsValid(partition_oid))
		goto fallback;
	shape->partition = partition_oid;
	partition = table_open(partition_oid, RowExclusiveLock);
	if (partition->rd_rel->relkind != RELKIND_RELATION || !PlainLogTable(partition) ||
		!SameColumns(RelationGetDescr(log), RelationGetDescr(partition)))
		goto fallback;
	if (!BuildIndexShapes(partition, shape, &indexes))
		goto fallback;

	/*
	 * An invalidation taken while the shape was built may be one of the
	 * partition's (an index made concurrently): use the shape for this
	 * statement, which holds the locks it was built under, and build it again
	 * for the next.
	 */
	if (writer_invalidations != invalidations)
		shape->valid = false;
	if (writer_depth == 0)
	{
		/* Keep it for the next statements. */
		MemoryContextSetParent(shape->cxt, CacheMemoryContext);
		writer_shape = shape;
		sv->shape_cached = true;
		writer_depth++;
	}
	else
		sv->shape_cached = false;

ready:
	info = makeNode(ResultRelInfo);
	InitResultRelInfo(info, partition, 0, NULL, 0);
	info->ri_NumIndices = shape->nindexes;
	info->ri_IndexRelationDescs = indexes;
	info->ri_IndexRelationInfo = shape->index_info;
	/*
	 * An index AM's insert state (ii_AmCache) lives and dies with the
	 * statement, except GIN's: its GinState (the index's support functions
	 * and tuple descriptors, 10,000 instructions to set up) is kept in the
	 * shape, as long as it describes the relation just opened (an
	 * invalidation of the index would have given the shape up anyway).
	 */
	for (i = 0; i < shape->nindexes; i++)
	{
		IndexInfo  *index_info = shape->index_info[i];

		if (shape->gin[i])
		{
			GinState   *gin = (GinState *) index_info->ii_AmCache;

			if (gin != NULL && (gin->index != indexes[i] || gin->origTupdesc != RelationGetDescr(indexes[i])))
				index_info->ii_AmCache = NULL;
			index_info->ii_Context = shape->cxt;
		}
		else
		{
			index_info->ii_AmCache = NULL;
			index_info->ii_Context = sv->cxt;
		}
	}
	sv->direct = true;
	sv->shape = shape;
	sv->sealing = audit_chain;
	if (sv->sealing)
	{
		sv->seal_ids = initArrayResult(INT8OID, sv->cxt, false);
		initStringInfo(&sv->seal_digests);
	}
	sv->log = log;
	sv->partition = partition;
	sv->partition_info = info;
	sv->estate = CreateExecutorState();
	sv->log_slot = MakeSingleTupleTableSlot(RelationGetDescr(partition), &TTSOpsVirtual);
	MemoryContextSwitchTo(old);
	return;

fallback:
	if (partition != NULL)
		table_close(partition, NoLock);
	table_close(log, NoLock);
	MemoryContextDelete(shape->cxt);
	MemoryContextSwitchTo(old);
}

/*
 * Append the SHA-256 digest of a statement row, as rls_audit._entry_digest()
 * computes it: sha256(convert_to(ROW(every column but id)::text, 'UTF8')).
 * The text is the one record_out() prints for that row, written here
 * without forming the row: '(', the columns' texts separated by ',', ')'; a
 * NULL prints nothing; a value that is empty or holds a double quote, a
 * backslash, a parenthesis, a comma or white space is double-quoted, with
 * its double quotes and backslashes doubled.  The capture runs under
 * TimeZone UTC and DateStyle ISO (PinOutputSettings()), as the SQL digest is
 * taken and verify() takes it again (tests/test_audit_chain.py compares the
 * two).
 */
static void
RowDigest(const LogLayout *layout, TupleTableSlot *slot, StringInfo digests)
{
	StringInfo	buf = &digest_text;
	char	   *utf8;
	uint8		digest[PG_SHA256_DIGEST_LENGTH];
	pg_cryptohash_ctx *ctx;
	int			i;

	for (i = 0; i < DIGEST_NATTS; i++)
	{
		Oid			type = TupleDescAttr(slot->tts_tupleDescriptor, layout->digest_source[i])->atttypid;

		if (digest_types[i] != type)
		{
			Oid			output;
			bool		varlena;

			digest_types[i] = InvalidOid;
			getTypeOutputInfo(type, &output, &varlena);
			fmgr_info_cxt(output, &digest_output[i], TopMemoryContext);
			digest_types[i] = type;
		}
	}
	if (buf->data == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		initStringInfo(buf);
		MemoryContextSwitchTo(old);
	}
	resetStringInfo(buf);
	appendStringInfoChar(buf, '(');
	for (i = 0; i < DIGEST_NATTS; i++)
	{
		const char *value;
		const char *c;
		bool		quote;

		if (i > 0)
			appendStringInfoChar(buf, ',');
		if (slot->tts_isnull[layout->digest_source[i]])
			continue;
		value = OutputFunctionCall(&digest_output[i], slot->tts_values[layout->digest_source[i]]);
		quote = value[0] == '\0';
		for (c = value; *c != '\0' && !quote; c++)
			quote = *c == '"' || *c == '\\' || *c == '(' || *c == ')' || *c == ',' || isspace((unsigned char) *c);
		if (quote)
			appendStringInfoChar(buf, '"');
		for (c = value; *c != '\0'; c++)
		{
			if (*c == '"' || *c == '\\')
				appendStringInfoCharMacro(buf, *c);
			appendStringInfoCharMacro(buf, *c);
		}
		if (quote)
			appendStringInfoChar(buf, '"');
	}
	appendStringInfoChar(buf, ')');
	utf8 = pg_server_to_any(buf->data, buf->len, PG_UTF8);
	ctx = pg_cryptohash_create(PG_SHA256);
	if (ctx == NULL || pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) utf8, strlen(utf8)) < 0 ||
		pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute the digest of an audit statement row");
	pg_cryptohash_free(ctx);
	appendBinaryStringInfo(digests, (const char *) digest, sizeof(digest));
	/* Kept for the next row, unless a large statement row grew it. */
	if (buf->maxlen > 65536)
	{
		pfree(buf->data);
		buf->data = NULL;
	}
}

/* RlsAuditSealDirect() as the log's owner, security-restricted. */
static bool
SealDirectAsOwner(Oid owner, DateADT month, const char *chain, ArrayType *ids, const uint8 *digests, size_t len)
{
	Oid			saved_user;
	int			saved_context;
	volatile bool sealed = false;

	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(owner, saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		sealed = RlsAuditSealDirect(month, chain, ids, digests, len);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_context);
	}
	PG_END_TRY();
	return sealed;
}

/*
 * Seal the statement rows this statement wrote, as the log's owner,
 * security-restricted, with their ids in id order and their digests: by
 * RlsAuditSealDirect() (audit_chain.c), or, when a superuser changed the
 * chain's tables, one rls_audit._seal() call (sql/install/26_audit_chain.sql),
 * which has the same results.  A statement's rows share one chain: the site
 * is the statement's, and the month that of statement_timestamp().
 */
static void
Seal(StatementValues *sv, Datum site_id, bool site_id_null, Datum site_uuid, bool site_uuid_null)
{
	Datum		args[4];
	struct pg_tm tm;
	fsec_t		fsec;
	char	   *chain;
	bytea	   *digests;
	Oid			saved_user;
	int			saved_context;
	bool		sealed;
	volatile int rc = 0;

	if (timestamp2tm(GetCurrentStatementStartTimestamp(), NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "statement timestamp out of range");
	args[0] = DateADTGetDatum(date2j(tm.tm_year, tm.tm_mon, 1) - POSTGRES_EPOCH_JDATE);
	if (!site_id_null)
		chain = DatumGetCString(DirectFunctionCall1(int8out, site_id));
	else if (!site_uuid_null)
		chain = DatumGetCString(DirectFunctionCall1(uuid_out, site_uuid));
	else
		chain = "";
	args[2] = makeArrayResult(sv->seal_ids, CurrentMemoryContext);

	sealed = SealDirectAsOwner(sv->layout.owner, DatumGetDateADT(args[0]), chain, DatumGetArrayTypeP(args[2]),
							   (const uint8 *) sv->seal_digests.data, sv->seal_digests.len);
	if (sealed)
		return;

	args[1] = CStringGetTextDatum(chain);
	digests = palloc(VARHDRSZ + sv->seal_digests.len);
	SET_VARSIZE(digests, VARHDRSZ + sv->seal_digests.len);
	memcpy(VARDATA(digests), sv->seal_digests.data, sv->seal_digests.len);
	args[3] = PointerGetDatum(digests);
	PinWriterPath(sv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed in rls_audit.capture()");
	if (seal_plan == NULL)
	{
		Oid			types[4] = {DATEOID, TEXTOID, INT8ARRAYOID, BYTEAOID};
		SPIPlanPtr	plan = SPI_prepare("SELECT rls_audit._seal($1, $2, $3, $4)", 4, types);

		if (plan == NULL)
			elog(ERROR, "could not prepare the audit seal: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "could not keep the audit seal");
		seal_plan = plan;
	}
	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(sv->layout.owner,
						   saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		rc = SPI_execute_plan(seal_plan, args, NULL, false, 0);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_context);
	}
	PG_END_TRY();
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "rls_audit.capture() could not seal the audit log: %s", SPI_result_code_string(rc));
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed in rls_audit.capture()");
}

/* Insert one statement row (values and nulls as LOG_COLUMNS) into the partition OpenLogWriter() opened. */
static void
InsertStatementRow(StatementValues *sv, Datum *values, bool *nulls)
{
	TupleTableSlot *slot = sv->log_slot;
	TupleDesc	desc = slot->tts_tupleDescriptor;
	Oid			saved_user;
	int			saved_context;
	int			i;

	ExecClearTuple(slot);
	for (i = 0; i < sv->layout.natts; i++)
	{
		Datum		value = (Datum) 0;
		bool		isnull = false;

		switch (sv->layout.source[i])
		{
			case LOG_SOURCE_ID:
				value = Int64GetDatum(nextval_internal(sv->layout.id_sequence, false));
				break;
			case LOG_SOURCE_LOGGED_AT:
				value = TimestampTzGetDatum(GetCurrentStatementStartTimestamp());
				break;
			case LOG_SOURCE_XACT_STARTED_AT:
				value = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
				break;
			case LOG_SOURCE_XACT_ID:
				value = FullTransactionIdGetDatum(GetTopFullTransactionId());
				break;
			default:
				value = values[sv->layout.source[i]];
				isnull = nulls[sv->layout.source[i]];
				break;
		}
		if (isnull && TupleDescAttr(desc, i)->attnotnull)
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("null value in column \"%s\" of relation \"%s\" violates not-null constraint",
							NameStr(TupleDescAttr(desc, i)->attname), RelationGetRelationName(sv->partition)),
					 errhint("The audit log's columns were changed; restore them as the extension made them.")));
		slot->tts_values[i] = value;
		slot->tts_isnull[i] = isnull;
	}
	ExecStoreVirtualTuple(slot);

	/* As the log's owner, security-restricted: only the log's own index code runs here. */
	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(sv->layout.owner,
						   saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		table_tuple_insert(sv->partition, slot, GetCurrentCommandId(true), 0, NULL);
		if (sv->partition_info->ri_NumIndices > 0)
		{
			OpenPartialIndexes(sv, slot);
			(void) RlsInsertIndexTuples(sv->partition_info, slot, sv->estate);
		}
		ResetPerTupleExprContext(sv->estate);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_context);
	}
	PG_END_TRY();
	if (sv->sealing)
	{
		for (i = 0; i < sv->layout.natts; i++)
			if (sv->layout.source[i] == LOG_SOURCE_ID)
				accumArrayResult(sv->seal_ids, slot->tts_values[i], false, INT8OID, sv->cxt);
		RowDigest(&sv->layout, slot, &sv->seal_digests);
	}
}

/*
 * Close what OpenLogWriter() opened; the locks stay until the transaction
 * ends, the indexes' too.  ExecCloseIndices() would release the indexes'
 * locks: about 8,000 instructions for seven indexes at every statement, and
 * the next statement of the transaction would take them again.  The
 * partition's lock, held to the end anyway, already conflicts with every
 * lock that one of its indexes' would (REINDEX, DROP INDEX and ALTER INDEX
 * lock the table first, and CREATE or DROP INDEX CONCURRENTLY wait for the
 * table's lockers), so holding the indexes' blocks nothing more; the
 * planner keeps the index locks of an UPDATE's or DELETE's target the same
 * way.
 */
static void
CloseLogWriter(StatementValues *sv)
{
	int			i;

	if (!sv->direct)
		return;
	for (i = 0; i < sv->partition_info->ri_NumIndices; i++)
		if (sv->partition_info->ri_IndexRelationDescs[i] != NULL)
			index_close(sv->partition_info->ri_IndexRelationDescs[i], NoLock);
	for (i = 0; i < sv->shape->nindexes; i++)
		if (!sv->shape->gin[i])
			sv->shape->index_info[i]->ii_AmCache = NULL;
	if (sv->shape_cached)
		writer_depth--;
	sv->shape = NULL;
	ExecDropSingleTupleTableSlot(sv->log_slot);
	FreeExecutorState(sv->estate);
	table_close(sv->partition, NoLock);
	table_close(sv->log, NoLock);
	sv->direct = false;
	/* As SPI does after a write: later commands see the rows. */
	CommandCounterIncrement();
	if (sv->sealing)
	{
		sv->sealing = false;
		Seal(sv, sv->values[3], sv->nulls[3], sv->values[4], sv->nulls[4]);
	}
}

/*
 * The statement writing the collected rows.  With the hash chain on, the
 * same INSERT also appends each chain's share of the rows to it
 * (rls_audit._seal(), sql/install/26_audit_chain.sql), once per chain in
 * (month, chain) order, so that statements lock the chain heads they share
 * in the same order.
 */
static SPIPlanPtr
LogInsertPlan(bool sealed)
{
	SPIPlanPtr *cached = sealed ? &sealed_insert_plan : &insert_plan;

	if (*cached == NULL)
	{
		const char *query = sealed
			? "WITH e AS (INSERT INTO rls_audit.statements AS l (" LOG_COLUMNS ") SELECT " LOG_COLUMNS
			" FROM " CAPTURED_RELATION
			" RETURNING l.id, rls_audit._chain_month(l.logged_at) AS month,"
			" rls_audit._chain_of(l.site_id, l.site_uuid) AS chain, rls_audit._entry_digest(l) AS digest)"
			" SELECT rls_audit._seal(e.month, e.chain, array_agg(e.id ORDER BY e.id),"
			" string_agg(e.digest, ''::bytea ORDER BY e.id))"
			" FROM e GROUP BY e.month, e.chain ORDER BY e.month, e.chain"
			: "INSERT INTO rls_audit.statements (" LOG_COLUMNS ") SELECT " LOG_COLUMNS " FROM " CAPTURED_RELATION;
		SPIPlanPtr	plan = SPI_prepare(query, 0, NULL);

		if (plan == NULL)
			elog(ERROR, "could not prepare the audit insert: %s", SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "could not keep the audit insert");
		*cached = plan;
	}
	return *cached;
}

/*
 * INSERT the collected statement rows into rls_audit.statements as the log's owner, with
 * security-restricted operation: the statement names no function, operator
 * or cast but the extension's own (the chain's, when it is on), and reads
 * only the tuplestore (see the file header).
 */
static void
WriteLog(StatementValues *sv)
{
	Tuplestorestate *rows = sv->rows;
	int64		count = sv->statements;
	EphemeralNamedRelation enr = palloc0(sizeof(EphemeralNamedRelationData));
	Oid			saved_user;
	int			saved_context;
	int			rc = 0;
	bool		sealed = audit_chain;

	enr->md.name = CAPTURED_RELATION;
	enr->md.reliddesc = InvalidOid;
	enr->md.tupdesc = LogDescriptor();
	enr->md.enrtype = ENR_NAMED_TUPLESTORE;
	enr->md.enrtuples = (double) count;
	enr->reldata = rows;

	PinWriterPath(sv);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed in rls_audit.capture()");
	if (SPI_register_relation(enr) != SPI_OK_REL_REGISTER)
		elog(ERROR, "could not register the captured audit rows");

	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(LogOwner(),
						   saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		rc = SPI_execute_plan(LogInsertPlan(sealed), NULL, NULL, false, 0);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_context);
	}
	PG_END_TRY();
	if (rc != (sealed ? SPI_OK_SELECT : SPI_OK_INSERT))
		elog(ERROR, "rls_audit.capture() could not write the audit log: %s", SPI_result_code_string(rc));
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed in rls_audit.capture()");
}

static const char *
OperationName(int operation)
{
	switch (operation)
	{
		case TRIGGER_EVENT_INSERT:
			return "INSERT";
		case TRIGGER_EVENT_UPDATE:
			return "UPDATE";
		case TRIGGER_EVENT_DELETE:
			return "DELETE";
		default:
			return "TRUNCATE";
	}
}

static void
Capture(TriggerData *trigdata, AuditTable *table, const RlsStatementContext *context, bool path_pinned)
{
	Relation	rel = trigdata->tg_relation;
	int			operation = trigdata->tg_event & TRIGGER_EVENT_OPMASK;
	StatementValues sv;
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "django_rls audit row",
												 ALLOCSET_DEFAULT_SIZES);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	TupleTableSlot *other = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	int64		count = 0;

	InitStatementValues(&sv, table, OperationName(operation), context, path_pinned);
	if (operation == TRIGGER_EVENT_TRUNCATE)
	{
		sv.nulls[11] = true;	/* no row, so no reader but the owner */
		PutEntry(&sv, table, NULL, NULL, NULL, NULL, 0, NULL, NULL);
		count = 1;
	}
	else if (operation == TRIGGER_EVENT_INSERT)
		count = CaptureRows(&sv, table, trigdata->tg_newtable, slot, true, rowcxt);
	else if (operation == TRIGGER_EVENT_DELETE)
		count = CaptureRows(&sv, table, trigdata->tg_oldtable, slot, false, rowcxt);
	else
		count = CaptureUpdates(&sv, table, trigdata->tg_oldtable, trigdata->tg_newtable,
							   slot, other, rowcxt);
	FlushChunk(&sv);
	CloseLogWriter(&sv);
	if (sv.statements > 0)
		WriteLog(&sv);
	if (sv.path_level >= 0)
		AtEOXact_GUC(true, sv.path_level);

	if (count > 0)
	{

		/*
		 * A transaction that wrote audit rows commits as durably as the
		 * server, database and role say: a synchronous_commit = off that the
		 * session set itself (an earlier request on a pooled connection,
		 * say) would let a crash lose the commit, and its trail, after the
		 * client was told it happened.  The value RESET would restore is put
		 * back for this transaction only (a LOCAL setting outlives the SET
		 * clauses of this function's own call and ends with the
		 * transaction); where an operator configured off, off stays.
		 */
		if (synchronous_commit == SYNCHRONOUS_COMMIT_OFF)
		{
			const char *configured = GetConfigOptionResetString("synchronous_commit");

			if (configured != NULL && strcmp(configured, "off") != 0)
				(void) set_config_option("synchronous_commit", configured, PGC_USERSET, PGC_S_SESSION,
										 GUC_ACTION_LOCAL, true, 0, false);
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	ExecDropSingleTupleTableSlot(other);
	MemoryContextDelete(rowcxt);
	MemoryContextDelete(sv.chunkcxt);
	if (sv.rows != NULL)
		tuplestore_end(sv.rows);
}

/*
 * The settings that change what a built-in output function prints, with the
 * value the capture prints under: floats (and everything printing them:
 * geometric types, arrays, composites, domains), date and time types and
 * their ranges, intervals, timestamptz (its zone), bytea, money, xml and the
 * reg* types.  DateStyle's order does not change ISO output, so PostgreSQL's
 * default order is kept and a default session needs no change.
 */
static const char *const pinned_settings[][2] = {
	{"extra_float_digits", "1"},
	{"DateStyle", "ISO, MDY"},
	{"IntervalStyle", "postgres"},
	{"TimeZone", "UTC"},
	{"bytea_output", "hex"},
	{"lc_monetary", "C"},
	{"xmlbinary", "base64"},
	{"xmloption", "content"},
	{"quote_all_identifiers", "off"},
};

/*
 * Whether a setting (the i-th of pinned_settings, in its order) already prints as its
 * pinned value does, read from the variable the setting assigns rather than
 * looked up by name (the nine lookups were about 6,000 instructions of every
 * audited statement): any positive extra_float_digits (each prints floats
 * shortest-exact, as 1 does), ISO dates in either field order (the order
 * does not change ISO output), for TimeZone any zone at a fixed offset of
 * zero (ISO output prints the offset, never the zone's name), for
 * lc_monetary a C locale by another name (their monetary conventions are
 * C's), and otherwise the pinned value itself.
 */
static bool
AlreadyPinned(int i)
{
	long int	offset;

	switch (i)
	{
		case 0:
			return extra_float_digits > 0;
		case 1:
			return DateStyle == USE_ISO_DATES;
		case 2:
			return IntervalStyle == INTSTYLE_POSTGRES;
		case 3:
			return session_timezone != NULL && pg_get_timezone_offset(session_timezone, &offset) && offset == 0;
		case 4:
			return bytea_output == BYTEA_OUTPUT_HEX;
		case 5:
			return locale_monetary != NULL &&
				(strcmp(locale_monetary, "C") == 0 || pg_strcasecmp(locale_monetary, "POSIX") == 0 ||
				 pg_strcasecmp(locale_monetary, "C.UTF-8") == 0 || pg_strcasecmp(locale_monetary, "C.utf8") == 0);
		case 6:
			return xmlbinary == XMLBINARY_BASE64;
		case 7:
			return xmloption == XMLOPTION_CONTENT;
		case 8:
			return !quote_all_identifiers;
	}
	return false;
}

/*
 * Give every output setting its pinned value for the capture's run, so that
 * neither the images nor the UPDATE diff (which compares printed texts where
 * bytes differ) depend on the writer's session, and the search_path too
 * when asked (PinSearchPath()).  Only settings that differ are set (the
 * search_path whenever asked), inside a GUC nest level of their own: the level to close with
 * AtEOXact_GUC(true, level), or -1 when nothing was set.  An error closes it
 * with the (sub)transaction, as for a function's SET clauses.
 */
static int
PinOutputSettings(bool search_path)
{
	int			level = -1;
	int			i;

	if (search_path)
		level = PinSearchPath();

	StaticAssertStmt(lengthof(pinned_settings) == 9, "AlreadyPinned() checks pinned_settings by position");
	for (i = 0; i < (int) lengthof(pinned_settings); i++)
	{
		if (AlreadyPinned(i))
			continue;
		if (level < 0)
			level = NewGUCNestLevel();
		(void) set_config_option(pinned_settings[i][0], pinned_settings[i][1], PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	}
	return level;
}

/*
 * rls_audit.capture(): AFTER INSERT/UPDATE/DELETE/TRUNCATE ... FOR EACH STATEMENT.
 */
Datum
rls_audit_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	int			operation;
	RlsStatementContext context;
	AuditTable *table;
	Oid			relid;
	volatile int depth;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("rls_audit.capture() must be called as a trigger"),
				 errhint("Use rls_audit.enable(table) to audit a table.")));
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) || !TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("rls_audit.capture() must fire AFTER ... FOR EACH STATEMENT"),
				 errhint("Use rls_audit.enable(table) to create the audit triggers.")));

	rel = trigdata->tg_relation;
	relid = RelationGetRelid(rel);
	operation = trigdata->tg_event & TRIGGER_EVENT_OPMASK;

	/*
	 * Temporary tables belong to one session and can be created by any role
	 * with TEMP: the trail never records them.
	 */
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("temporary table \"%s\" cannot be audited", RelationGetRelationName(rel)),
				 errdetail("The audit trail records only permanent tables."),
				 errhint("Drop the rls_audit trigger from the temporary table.")));
	if ((operation == TRIGGER_EVENT_INSERT && trigdata->tg_newtable == NULL) ||
		(operation == TRIGGER_EVENT_DELETE && trigdata->tg_oldtable == NULL) ||
		(operation == TRIGGER_EVENT_UPDATE && (trigdata->tg_oldtable == NULL || trigdata->tg_newtable == NULL)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("rls_audit trigger on \"%s\" has no transition tables", RelationGetRelationName(rel)),
				 errhint("Use rls_audit.enable(table) to create the audit triggers.")));

	/* A statement whose carried context was missed must not be recorded as context-free. */
	RlsCheckStatementContext();
	(void) RlsFiringStatementContext(&context);
	if (rls_strict && context.site.kind == RLS_ID_UNSET && context.user.kind == RLS_ID_UNSET)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no django_rls context is set for a write to audited table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("django_rls.strict is on, so audited writes need a site or a user."),
				 errhint("Run the write inside django_rls.context() or a request, or turn django_rls.strict off.")));

	table = AcquireAuditTable(rel);
	depth = writer_depth;
	PG_TRY();
	{
		/* The search_path for the whole capture when its images or the chain need it (PinSearchPath()). */
		bool		path_pinned = table->prints_by_path || audit_chain;
		int			level = PinOutputSettings(path_pinned);

		Capture(trigdata, table, &context, path_pinned);
		if (level >= 0)
			AtEOXact_GUC(true, level);
	}
	PG_FINALLY();
	{
		ReleaseAuditTable(relid);
		/* An error leaves the kept log writer's shape free to be replaced. */
		writer_depth = depth;
	}
	PG_END_TRY();
	return PointerGetDatum(NULL);
}

/*
 * rls_audit._invalidate(regclass): every backend rebuilds its description of
 * the table at its next audited write (the invalidation is sent at commit).
 */
Datum
rls_audit_invalidate(PG_FUNCTION_ARGS)
{
	CacheInvalidateRelcacheByRelid(PG_GETARG_OID(0));
	PG_RETURN_VOID();
}

static char *
QualifiedName(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), get_rel_name(relid));
}

/*
 * rls_audit.enable(), disable() and set_read_rule(): check that the role that
 * called owns the table, then run the internal SECURITY DEFINER function of
 * the same name with a leading underscore (rls_audit._enable, ...).
 *
 * The role that called is GetUserId() here, because these functions are not
 * SECURITY DEFINER themselves: inside another role's SECURITY DEFINER
 * function (or a trigger function of it) that is the definer, as PostgreSQL
 * confines such code, never the session's role.  The internal functions are
 * revoked from PUBLIC, so no SQL reaches them; fmgr calls them here without
 * an EXECUTE check, and their SECURITY DEFINER switch is fmgr's own.
 */
Datum
rls_audit_admin(PG_FUNCTION_ARGS)
{
	Oid			fn = fcinfo->flinfo->fn_oid;
	char	   *name = get_func_name(fn);
	Oid		   *argtypes;
	int			nargs;
	Oid			internal;
	Oid			relid;
	HeapTuple	tuple;
	Oid			owner;
	FmgrInfo	flinfo;
	Datum		result;
	int			i;

	LOCAL_FCINFO(inner, 4);

	(void) get_func_signature(fn, &argtypes, &nargs);
	if (nargs < 1 || nargs > 4 || argtypes[0] != REGCLASSOID ||
		get_func_namespace(fn) != get_namespace_oid("rls_audit", false))
		elog(ERROR, "rls_audit_admin called as %s", name);
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the table passed to rls_audit.%s() must not be NULL", name),
				 errhint("Name an existing table.")));
	relid = PG_GETARG_OID(0);
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid),
				 errhint("Name an existing table.")));
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	if (!has_privs_of_role(GetUserId(), owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 strcmp(name, "set_read_rule") == 0 ?
				 errmsg("permission denied to set the audit read rule of %s", QualifiedName(relid)) :
				 errmsg("permission denied to audit %s", QualifiedName(relid)),
				 errdetail("The role calling is %s; inside a SECURITY DEFINER function that is the function's owner.",
						   GetUserNameFromId(GetUserId(), false)),
				 errhint("Only the table's owner can change its auditing.")));

	internal = LookupFuncName(list_make2(makeString("rls_audit"), makeString(psprintf("_%s", name))),
							  nargs, argtypes, false);
	fmgr_info(internal, &flinfo);
	InitFunctionCallInfoData(*inner, &flinfo, nargs, fcinfo->fncollation, NULL, NULL);
	for (i = 0; i < nargs; i++)
	{
		inner->args[i].value = PG_GETARG_DATUM(i);
		inner->args[i].isnull = PG_ARGISNULL(i);
	}
	result = FunctionCallInvoke(inner);
	if (inner->isnull)
		PG_RETURN_NULL();
	return result;
}

/* What rls_audit._may_read() knows about one trail, for one reader. */
typedef struct ReaderTable
{
	pg_uuid_t	trail_id;		/* hash key */
	bool		is_owner;
	bool		may_read;		/* row level security constrains the reader as its policies' roles */
} ReaderTable;

/* Per call site (one query's policy): the trails looked up so far, for one reader. */
typedef struct ReaderCache
{
	Oid			user;
	bool		bypasses;		/* user bypasses row level security */
	HTAB	   *tables;
} ReaderCache;

/*
 * Whether the table's row level security shows user what it shows the roles
 * its policies name: the table has row level security and every policy that
 * applies to SELECT (FOR SELECT or FOR ALL) applies to user (names PUBLIC or
 * a role whose privileges user has), one of them permissive.  A table
 * without row level security shows user every row, so the read rule's subset
 * of its entries is never more.  Anything else (policies for other roles
 * only, a mix, none) and user reads no entry.
 */
static bool
PoliciesConstrainReader(Oid relid, bool rowsecurity, Oid user)
{
	Relation	pol;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		all_apply = true;
	bool		permissive = false;

	if (!rowsecurity)
		return true;
	pol = table_open(PolicyRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_policy_polrelid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(pol, PolicyPolrelidPolnameIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Form_pg_policy form = (Form_pg_policy) GETSTRUCT(tuple);
		bool		isnull;
		Datum		roles;
		Datum	   *oids;
		int			n;
		int			i;
		bool		applies = false;

		if (form->polcmd != ACL_SELECT_CHR && form->polcmd != '*')
			continue;
		roles = heap_getattr(tuple, Anum_pg_policy_polroles, RelationGetDescr(pol), &isnull);
		if (!isnull)
		{
			deconstruct_array(DatumGetArrayTypeP(roles), OIDOID, sizeof(Oid), true, TYPALIGN_INT,
							  &oids, NULL, &n);
			for (i = 0; i < n && !applies; i++)
				applies = DatumGetObjectId(oids[i]) == ACL_ID_PUBLIC ||
					has_privs_of_role(user, DatumGetObjectId(oids[i]));
		}
		if (!applies)
			all_apply = false;
		else if (form->polpermissive)
			permissive = true;
	}
	systable_endscan(scan);
	table_close(pol, AccessShareLock);
	return all_apply && permissive;
}

static void
LookUpReaderTable(ReaderTable *reader, Oid user)
{
	TupleDesc	desc;
	HeapTuple	row;
	bool		isnull;
	Datum		value;
	HeapTuple	tuple;
	Form_pg_class rel;
	Oid			relid;

	reader->is_owner = false;
	reader->may_read = false;
	row = ConfigRowBy("trails", "trail_id", F_UUID_EQ, UUIDPGetDatum(&reader->trail_id), &desc, false);
	if (row == NULL)
		return;					/* the table was dropped: only bypassing roles read */
	value = heap_getattr(row, AuditAttribute(AuditRelation("trails"), "table_oid"), desc, &isnull);
	if (isnull)
		return;
	relid = DatumGetObjectId(value);
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		return;
	rel = (Form_pg_class) GETSTRUCT(tuple);
	reader->is_owner = has_privs_of_role(user, rel->relowner);
	reader->may_read = !reader->is_owner &&
		DatumGetBool(DirectFunctionCall3(has_schema_privilege_id_id, ObjectIdGetDatum(user),
										 ObjectIdGetDatum(rel->relnamespace),
										 CStringGetTextDatum("USAGE"))) &&
		pg_class_aclcheck(relid, user, ACL_SELECT) == ACLCHECK_OK &&
		PoliciesConstrainReader(relid, rel->relrowsecurity, user);
	ReleaseSysCache(tuple);
}

/*
 * rls_audit._may_read(trail_id, read_rule, read_keys): the policy of
 * rls_audit.log.  An entry is about the table its trail id names now
 * (rls_audit.trails), whatever that table is called and whatever oid it has,
 * never about another table that took its old name.  The owner of the table
 * (and anyone with its privileges) reads every entry about it; another role
 * needs USAGE on the table's schema, SELECT on the table, row level security
 * that constrains it as it constrains the roles the table's policies name,
 * and a context that the entry's read rule matches against the row's own
 * values.
 */
Datum
rls_audit_may_read(PG_FUNCTION_ARGS)
{
	ReaderCache *cache = (ReaderCache *) fcinfo->flinfo->fn_extra;
	ReaderTable *reader;
	pg_uuid_t  *trail;
	char	   *rule;
	char	   *wanted;
	ArrayType  *keys;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			nelems;
	int			i;

	if (cache == NULL)
	{
		cache = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(ReaderCache));
		fcinfo->flinfo->fn_extra = cache;
	}
	if (cache->tables == NULL || cache->user != GetUserId())
	{
		HASHCTL		info;

		if (cache->tables != NULL)
			hash_destroy(cache->tables);
		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(pg_uuid_t);
		info.entrysize = sizeof(ReaderTable);
		info.hcxt = fcinfo->flinfo->fn_mcxt;
		cache->tables = hash_create("django_rls audit readers", 16, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		cache->user = GetUserId();
		cache->bypasses = has_bypassrls_privilege(cache->user);
	}

	/*
	 * Roles that bypass row level security read every entry, also those of
	 * dropped tables: rls_audit.log is a view that reads its table as its
	 * owner, so it asks this function what its table's policy would have
	 * left to the policy system.
	 */
	if (cache->bypasses)
		PG_RETURN_BOOL(true);
	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	trail = PG_GETARG_UUID_P(0);
	reader = (ReaderTable *) hash_search(cache->tables, trail, HASH_FIND, NULL);
	if (reader == NULL)
	{
		ReaderTable found;

		/* Looked up before it enters the cache, so that an error leaves nothing half made. */
		found.trail_id = *trail;
		LookUpReaderTable(&found, cache->user);
		reader = (ReaderTable *) hash_search(cache->tables, trail, HASH_ENTER, NULL);
		*reader = found;
	}
	if (reader->is_owner)
		PG_RETURN_BOOL(true);
	if (!reader->may_read || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_BOOL(false);

	rule = TextDatumGetCString(PG_GETARG_DATUM(1));
	if (strcmp(rule, "site") == 0)
		wanted = rls_site_setting;
	else if (strcmp(rule, "owner") == 0)
		wanted = rls_user_setting;
	else if (strcmp(rule, "site_owner") == 0)
		wanted = (rls_site_setting[0] != '\0' && rls_user_setting[0] != '\0') ?
			psprintf("%s %s", rls_site_setting, rls_user_setting) : "";
	else
		PG_RETURN_BOOL(false);

	keys = PG_GETARG_ARRAYTYPE_P(2);
	deconstruct_array(keys, TEXTOID, -1, false, TYPALIGN_INT, &elems, &elem_nulls, &nelems);
	for (i = 0; i < nelems; i++)
	{
		char	   *key;

		if (elem_nulls[i])
			continue;
		key = TextDatumGetCString(elems[i]);
		if (strcmp(key, "*") == 0 || (wanted != NULL && wanted[0] != '\0' && strcmp(key, wanted) == 0))
			PG_RETURN_BOOL(true);
	}
	PG_RETURN_BOOL(false);
}

/*
 * django_rls.audit_chain: seal every audited statement's entries into the
 * log's hash chains.  Superuser-only, so that the application role cannot
 * write entries the chain does not cover (rls_audit.verify() would report
 * them as inserted); set it in the server configuration or with ALTER
 * DATABASE ... SET.
 */
void
RlsDefineAuditSettings(void)
{
	DefineCustomBoolVariable(RLS_GUC_PREFIX ".audit_chain",
							 "Seal the audit log's entries into per-site, per-month hash chains as they are written.",
							 "rls_audit.verify() then reports the first edited, deleted, inserted or reordered entry.",
							 &audit_chain, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);
}
