/*-------------------------------------------------------------------------
 *
 * ext/audit.c
 *		The audit trigger: records a statement's row changes with the context.
 *
 * rls_audit.capture() is an AFTER ... FOR EACH STATEMENT trigger with
 * transition tables.  Per statement it reads the transition tables, builds
 * one log row per changed row (row images and the UPDATE diff come from
 * audit_image.c, the context from audit_context.c), collects them in a
 * tuplestore and writes them with one INSERT ... SELECT from that tuplestore.
 *
 * Rights.  The function is not SECURITY DEFINER: reading the rows and
 * building the images runs with the rights of the role that wrote them.  Only
 * the INSERT into rls_audit.log runs as the log's owner, inside
 * SetUserIdAndSecContext(..., SECURITY_LOCAL_USERID_CHANGE |
 * SECURITY_RESTRICTED_OPERATION), and that INSERT runs only built-in code:
 * it names no function or operator, its source is a tuplestore of built-in
 * types exactly matching the log's columns (no coercion), and the log's
 * defaults, constraints, indexes and partition bounds are the extension's
 * own, on a table only its owner may change.  A dedicated INSERT-only role
 * would need a role per cluster created by CREATE EXTENSION, which an
 * extension should not do; the switch around the one statement gives the
 * same guarantee.
 *
 * Per table, a backend caches what the capture needs (columns and their
 * output functions, key, options, read rule).  A relcache invalidation of the
 * table (ALTER TABLE, DROP TABLE, rls_audit.enable() or set_read_rule()
 * changing options) frees the entry, so entries of dropped tables do not
 * accumulate.
 *
 * Reading.  Each log row records which rule lets the application role read
 * it (read_rule) and the row's own site and owner values before and after
 * the change (read_keys); rls_audit._may_read(), the log's policy, compares
 * them with the reader's context.  See docs/audit.md.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/skey.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inet.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/queryenvironment.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"
#include "utils/varlena.h"

#include "django_rls.h"

PG_FUNCTION_INFO_V1(rls_audit_capture);
PG_FUNCTION_INFO_V1(rls_audit_invalidate);
PG_FUNCTION_INFO_V1(rls_audit_invoking_role);
PG_FUNCTION_INFO_V1(rls_audit_may_read);

/* The columns of rls_audit.log the capture fills, in this order. */
#define LOG_COLUMNS "table_oid, table_name, operation, row_key, old_values, new_values, " \
	"changed_columns, site_id, site_uuid, user_id, user_uuid, claims, db_role, " \
	"application_name, client_addr, read_rule, read_keys"
#define LOG_NATTS 17
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
	int			ncolumns;
	RlsAuditColumn *columns;	/* by attribute number - 1; name NULL if dropped */
	int			nkey;
	AttrNumber *key;
	ReadRule	read_rule;
	int			site_att;		/* 0-based, or -1 */
	int			owner_att;
	bool		null_is_shared;
} AuditTable;

static HTAB *audit_tables = NULL;
static SPIPlanPtr insert_plan = NULL;
static TupleDesc log_desc = NULL;

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
 * The row of rls_audit.<config> for relid, copied, or NULL.  Read with a
 * table scan and a built-in equality function, never through SQL.
 */
static HeapTuple
ConfigRow(const char *config, Oid relid, TupleDesc *desc)
{
	Oid			cfgid = AuditRelation(config);
	Relation	cfg = table_open(cfgid, AccessShareLock);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	ScanKeyData key;
	TableScanDesc scan;
	HeapTuple	tuple;

	ScanKeyInit(&key, AuditAttribute(cfgid, "table_oid"), BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
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
			RlsAuditColumnInit(&table->columns[i], attr, cxt);
	}
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

/* The descriptor of the rows the capture collects: LOG_COLUMNS, with the log's types. */
static TupleDesc
LogDescriptor(void)
{
	static const Oid types[LOG_NATTS] = {
		OIDOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TEXTARRAYOID,
		INT8OID, UUIDOID, INT8OID, UUIDOID, JSONBOID, NAMEOID, TEXTOID, INETOID,
		TEXTOID, TEXTARRAYOID
	};
	static const char *const names[LOG_NATTS] = {
		"table_oid", "table_name", "operation", "row_key", "old_values", "new_values",
		"changed_columns", "site_id", "site_uuid", "user_id", "user_uuid", "claims", "db_role",
		"application_name", "client_addr", "read_rule", "read_keys"
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

/* What every log row of one statement shares. */
typedef struct StatementValues
{
	Datum		values[LOG_NATTS];
	bool		nulls[LOG_NATTS];
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
					const RlsStatementContext *context)
{
	const char *application = GetConfigOption("application_name", true, false);
	LOCAL_FCINFO(fcinfo, 0);
	Datum		addr;

	memset(sv->nulls, true, sizeof(sv->nulls));
	sv->values[0] = ObjectIdGetDatum(table->relid);
	sv->values[1] = CStringGetTextDatum(table->name);
	sv->values[2] = CStringGetTextDatum(operation);
	sv->nulls[0] = sv->nulls[1] = sv->nulls[2] = false;
	SetId(&context->site, sv, 7, 8);
	SetId(&context->user, sv, 9, 10);
	if (context->claims[0] != '\0')
	{
		sv->values[11] = DirectFunctionCall1(jsonb_in, CStringGetDatum(context->claims));
		sv->nulls[11] = false;
	}
	sv->values[12] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetOuterUserId(), false)));
	sv->nulls[12] = false;
	if (application != NULL)
	{
		sv->values[13] = CStringGetTextDatum(application);
		sv->nulls[13] = false;
	}
	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	addr = inet_client_addr(fcinfo);
	if (!fcinfo->isnull)
	{
		sv->values[14] = addr;
		sv->nulls[14] = false;
	}
	if (table->read_rule != READ_NONE)
	{
		sv->values[15] = CStringGetTextDatum(read_rule_names[table->read_rule]);
		sv->nulls[15] = false;
	}
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

/* The read keys of an entry about the rows in a and b (either may be NULL). */
static Datum
ReadKeys(AuditTable *table, TupleTableSlot *a, TupleTableSlot *b, bool *isnull)
{
	Datum		keys[2];
	int			n = 0;
	char	   *ka = a != NULL ? ReadKey(table, a) : NULL;
	char	   *kb = b != NULL ? ReadKey(table, b) : NULL;

	if (ka != NULL)
		keys[n++] = CStringGetTextDatum(ka);
	if (kb != NULL && (ka == NULL || strcmp(ka, kb) != 0))
		keys[n++] = CStringGetTextDatum(kb);
	*isnull = (n == 0);
	if (n == 0)
		return (Datum) 0;
	return PointerGetDatum(construct_array(keys, n, TEXTOID, -1, false, TYPALIGN_INT));
}

static void
PutEntry(Tuplestorestate *rows, StatementValues *sv, AuditTable *table, char *row_key,
		 Jsonb *old_values, Jsonb *new_values, Datum changed, bool changed_null,
		 TupleTableSlot *read_a, TupleTableSlot *read_b)
{
	Datum		values[LOG_NATTS];
	bool		nulls[LOG_NATTS];

	memcpy(values, sv->values, sizeof(values));
	memcpy(nulls, sv->nulls, sizeof(nulls));
	values[3] = row_key != NULL ? CStringGetTextDatum(row_key) : (Datum) 0;
	nulls[3] = (row_key == NULL);
	values[4] = JsonbPGetDatum(old_values);
	nulls[4] = (old_values == NULL);
	values[5] = JsonbPGetDatum(new_values);
	nulls[5] = (new_values == NULL);
	values[6] = changed;
	nulls[6] = changed_null;
	if (table->read_rule != READ_NONE)
		values[16] = ReadKeys(table, read_a, read_b, &nulls[16]);
	tuplestore_putvalues(rows, LogDescriptor(), values, nulls);
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
CaptureRows(Tuplestorestate *rows, StatementValues *sv, AuditTable *table,
			Tuplestorestate *store, TupleTableSlot *slot, bool inserted, MemoryContext rowcxt)
{
	int64		count = 0;

	RewindTransitionTable(store);
	while (NextRow(store, slot))
	{
		MemoryContext old = MemoryContextSwitchTo(rowcxt);
		Jsonb	   *image = RlsAuditRowImage(table->columns, table->ncolumns, slot, NULL);

		PutEntry(rows, sv, table, RlsAuditKeyText(table->columns, table->key, table->nkey, slot),
				 inserted ? NULL : image, inserted ? image : NULL, (Datum) 0, true, slot, NULL);
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
CaptureUpdates(Tuplestorestate *rows, StatementValues *sv, AuditTable *table,
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
		Datum		changed_array;
		int			i;

		if (!has_old && !has_new)
			break;
		old = MemoryContextSwitchTo(rowcxt);
		if (has_old != has_new)
		{
			/* Never expected; record the unpaired row whole rather than lose it. */
			TupleTableSlot *slot = has_old ? old_slot : new_slot;
			Jsonb	   *image = RlsAuditRowImage(table->columns, table->ncolumns, slot, NULL);

			PutEntry(rows, sv, table, RlsAuditKeyText(table->columns, table->key, table->nkey, slot),
					 has_old ? image : NULL, has_old ? NULL : image, (Datum) 0, true, slot, NULL);
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
				changed_array = PointerGetDatum(construct_array(names, nchanged, TEXTOID, -1, false, TYPALIGN_INT));
				if (!key_changed)
				{
					PutEntry(rows, sv, table,
							 RlsAuditKeyText(table->columns, table->key, table->nkey, new_slot),
							 RlsAuditRowImage(table->columns, table->ncolumns, old_slot, changed),
							 RlsAuditRowImage(table->columns, table->ncolumns, new_slot, changed),
							 changed_array, false, old_slot, new_slot);
					count++;
				}
				else
				{
					PutEntry(rows, sv, table,
							 RlsAuditKeyText(table->columns, table->key, table->nkey, old_slot),
							 RlsAuditRowImage(table->columns, table->ncolumns, old_slot, NULL), NULL,
							 changed_array, false, old_slot, new_slot);
					PutEntry(rows, sv, table,
							 RlsAuditKeyText(table->columns, table->key, table->nkey, new_slot),
							 NULL, RlsAuditRowImage(table->columns, table->ncolumns, new_slot, NULL),
							 changed_array, false, old_slot, new_slot);
					count += 2;
				}
			}
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(rowcxt);
	}
	return count;
}

static Oid
LogOwner(void)
{
	Oid			relid = AuditRelation("log");
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * INSERT the collected rows into rls_audit.log as the log's owner, with
 * security-restricted operation: the statement names no function, operator
 * or cast, and reads only the tuplestore (see the file header).
 */
static void
WriteLog(Tuplestorestate *rows, int64 count)
{
	EphemeralNamedRelation enr = palloc0(sizeof(EphemeralNamedRelationData));
	Oid			saved_user;
	int			saved_context;
	int			rc = 0;

	enr->md.name = CAPTURED_RELATION;
	enr->md.reliddesc = InvalidOid;
	enr->md.tupdesc = LogDescriptor();
	enr->md.enrtype = ENR_NAMED_TUPLESTORE;
	enr->md.enrtuples = (double) count;
	enr->reldata = rows;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed in rls_audit.capture()");
	if (SPI_register_relation(enr) != SPI_OK_REL_REGISTER)
		elog(ERROR, "could not register the captured audit rows");

	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(LogOwner(),
						   saved_context | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		if (insert_plan == NULL)
		{
			SPIPlanPtr	plan = SPI_prepare("INSERT INTO rls_audit.log (" LOG_COLUMNS ") SELECT " LOG_COLUMNS
										   " FROM " CAPTURED_RELATION, 0, NULL);

			if (plan == NULL)
				elog(ERROR, "could not prepare the audit insert: %s", SPI_result_code_string(SPI_result));
			if (SPI_keepplan(plan) != 0)
				elog(ERROR, "could not keep the audit insert");
			insert_plan = plan;
		}
		rc = SPI_execute_plan(insert_plan, NULL, NULL, false, 0);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_context);
	}
	PG_END_TRY();
	if (rc != SPI_OK_INSERT)
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
Capture(TriggerData *trigdata, AuditTable *table, const RlsStatementContext *context)
{
	Relation	rel = trigdata->tg_relation;
	int			operation = trigdata->tg_event & TRIGGER_EVENT_OPMASK;
	StatementValues sv;
	Tuplestorestate *rows = tuplestore_begin_heap(false, false, work_mem);
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "django_rls audit row",
												 ALLOCSET_DEFAULT_SIZES);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	TupleTableSlot *other = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsMinimalTuple);
	int64		count = 0;

	InitStatementValues(&sv, table, OperationName(operation), context);
	if (operation == TRIGGER_EVENT_TRUNCATE)
	{
		sv.nulls[15] = true;	/* no row, so no reader but the owner */
		PutEntry(rows, &sv, table, NULL, NULL, NULL, (Datum) 0, true, NULL, NULL);
		count = 1;
	}
	else if (operation == TRIGGER_EVENT_INSERT)
		count = CaptureRows(rows, &sv, table, trigdata->tg_newtable, slot, true, rowcxt);
	else if (operation == TRIGGER_EVENT_DELETE)
		count = CaptureRows(rows, &sv, table, trigdata->tg_oldtable, slot, false, rowcxt);
	else
		count = CaptureUpdates(rows, &sv, table, trigdata->tg_oldtable, trigdata->tg_newtable,
							   slot, other, rowcxt);

	if (count > 0)
		WriteLog(rows, count);
	ExecDropSingleTupleTableSlot(slot);
	ExecDropSingleTupleTableSlot(other);
	MemoryContextDelete(rowcxt);
	tuplestore_end(rows);
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
	PG_TRY();
	{
		Capture(trigdata, table, &context);
	}
	PG_FINALLY();
	{
		ReleaseAuditTable(relid);
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

/*
 * rls_audit._invoking_role(): the role that called, which a SECURITY DEFINER
 * function does not see as current_user.
 */
Datum
rls_audit_invoking_role(PG_FUNCTION_ARGS)
{
	return DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetOuterUserId(), false)));
}

/* What rls_audit._may_read() knows about the last table it looked at, per call site. */
typedef struct ReaderTable
{
	Oid			user;
	char	   *name;
	bool		exists;
	bool		is_owner;
	bool		may_select;
} ReaderTable;

static void
LookUpReaderTable(ReaderTable *reader, const char *name)
{
	char	   *copy = pstrdup(name);
	List	   *parts;
	Oid			nsp;
	Oid			relid = InvalidOid;

	reader->exists = false;
	reader->is_owner = false;
	reader->may_select = false;
	/* Only names the capture wrote (always schema-qualified) count. */
	if (!SplitIdentifierString(copy, '.', &parts) || list_length(parts) != 2)
		return;
	nsp = get_namespace_oid((char *) linitial(parts), true);
	if (OidIsValid(nsp))
		relid = get_relname_relid((char *) lsecond(parts), nsp);
	if (OidIsValid(relid))
	{
		HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));

		if (HeapTupleIsValid(tuple))
		{
			reader->exists = true;
			reader->is_owner = has_privs_of_role(reader->user, ((Form_pg_class) GETSTRUCT(tuple))->relowner);
			ReleaseSysCache(tuple);
			reader->may_select = pg_class_aclcheck(relid, reader->user, ACL_SELECT) == ACLCHECK_OK;
		}
	}
}

/*
 * rls_audit._may_read(table_name, read_rule, read_keys): the policy of
 * rls_audit.log.  The owner of the table (and anyone with its privileges)
 * reads every entry about it; another role needs SELECT on the table and a
 * context that the entry's read rule matches against the row's own values.
 */
Datum
rls_audit_may_read(PG_FUNCTION_ARGS)
{
	ReaderTable *reader = (ReaderTable *) fcinfo->flinfo->fn_extra;
	char	   *name;
	char	   *rule;
	char	   *wanted;
	ArrayType  *keys;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			nelems;
	int			i;

	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	name = TextDatumGetCString(PG_GETARG_DATUM(0));
	if (reader == NULL)
	{
		reader = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(ReaderTable));
		fcinfo->flinfo->fn_extra = reader;
	}
	if (reader->name == NULL || reader->user != GetUserId() || strcmp(reader->name, name) != 0)
	{
		if (reader->name != NULL)
			pfree(reader->name);
		reader->name = MemoryContextStrdup(fcinfo->flinfo->fn_mcxt, name);
		reader->user = GetUserId();
		LookUpReaderTable(reader, name);
	}
	if (!reader->exists)
		PG_RETURN_BOOL(false);
	if (reader->is_owner)
		PG_RETURN_BOOL(true);
	if (!reader->may_select || PG_ARGISNULL(1) || PG_ARGISNULL(2))
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
