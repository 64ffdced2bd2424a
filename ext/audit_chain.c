/*-------------------------------------------------------------------------
 *
 * ext/audit_chain.c
 *		The audit hash chain's seal, written by the capture itself.
 *
 * With django_rls.audit_chain on, rls_audit.capture() (audit.c) seals the
 * statement rows it inserted: it appends one seal to the chain of their site
 * and month.  This file does what rls_audit._seal()
 * (sql/install/26_audit_chain.sql) does, with the same results byte for
 * byte, without SQL: it finds the chain's head in rls_audit.chain_heads by
 * its primary key, locks it, computes the next seal (SHA-256, as
 * rls_audit._seal_value() and _chain_genesis()), updates the head and inserts
 * the seal into rls_audit.seals, with their index entries.  The PL/pgSQL call
 * cost about 190,000 instructions per statement (docs/audit.md, "Cost").
 *
 * Concurrency, as the INSERT ... ON CONFLICT DO UPDATE of _seal():
 *   - the head is found in the latest snapshot and locked (FOR NO KEY UPDATE);
 *     a writer holding it makes this one wait.  In READ COMMITTED the lock
 *     follows the head to its newest version; in REPEATABLE READ and
 *     SERIALIZABLE a head changed after the transaction's snapshot is a
 *     serialization failure (40001), as ON CONFLICT DO UPDATE reports it;
 *   - a missing head is inserted in a subtransaction: when another writer
 *     created the same head meanwhile, its unique violation is caught and the
 *     head looked up again (the subtransaction is paid once per chain and
 *     month, not per statement).
 *
 * Rights: everything runs as the log's owner with
 * SECURITY_RESTRICTED_OPERATION, as the capture's own insert does.  Only
 * built-in code runs: the tables' primary key indexes.  When a superuser
 * changed either table (a trigger, rule, CHECK constraint, forced row level
 * security, other columns), RlsAuditSealDirect() returns false and the
 * capture calls rls_audit._seal() through SQL instead, so that whatever was
 * added still applies.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/cryptohash.h"
#include "common/sha2.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "port/pg_bswap.h"
#include "utils/array.h"
#include "storage/bufmgr.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

#include "compat.h"
#include "django_rls.h"

/* The two tables, looked up once per backend and forgotten at their invalidation. */
static Oid	heads_relid = InvalidOid;
static Oid	seals_relid = InvalidOid;
static bool invalidation_registered = false;

/*
 * Where this backend last left a chain's head: a head is updated at every
 * seal, and its versions pile up in one HOT chain until the page is pruned,
 * which the primary key lookup walks (about 30,000 instructions a seal when
 * one backend writes the chain).  The next seal of the same chain first
 * looks at that place; a version there that the latest snapshot sees and
 * that holds the same month and chain is the head the index would find.
 * Anything else (another backend sealed the chain since, the page was
 * pruned, the table rewritten) falls back to the index.
 */
static DateADT last_head_month;
static char *last_head_chain = NULL;
static ItemPointerData last_head_tid;

static void
ForgetLastHead(void)
{
	if (last_head_chain != NULL)
		pfree(last_head_chain);
	last_head_chain = NULL;
}

static void
RememberLastHead(DateADT month, const char *chain, ItemPointer tid)
{
	ForgetLastHead();
	last_head_month = month;
	last_head_chain = MemoryContextStrdup(TopMemoryContext, chain);
	last_head_tid = *tid;
}

static void
ForgetChainTables(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == heads_relid || relid == seals_relid)
	{
		heads_relid = InvalidOid;
		seals_relid = InvalidOid;
		ForgetLastHead();
	}
}

static void
LookUpChainTables(void)
{
	Oid			schema;

	if (OidIsValid(heads_relid) && OidIsValid(seals_relid))
		return;
	if (!invalidation_registered)
	{
		CacheRegisterRelcacheCallback(ForgetChainTables, (Datum) 0);
		invalidation_registered = true;
	}
	schema = get_namespace_oid("rls_audit", false);
	heads_relid = get_relname_relid("chain_heads", schema);
	seals_relid = get_relname_relid("seals", schema);
	if (!OidIsValid(heads_relid) || !OidIsValid(seals_relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the audit hash chain's tables rls_audit.chain_heads and rls_audit.seals are missing"),
				 errhint("Reinstall the django_rls extension, or turn django_rls.audit_chain off.")));
}

/*
 * Whether a table is as the extension made it: exactly these column types
 * in this order, no trigger, rule or CHECK constraint, no forced row level
 * security (the owner is otherwise exempt from its policies).
 */
static bool
PlainChainTable(Relation rel, const Oid *types, int ntypes)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->trigdesc != NULL || rel->rd_rules != NULL ||
		rel->rd_rel->relforcerowsecurity || desc->natts != ntypes ||
		(desc->constr != NULL && desc->constr->num_check > 0))
		return false;
	for (i = 0; i < ntypes; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || att->atttypid != types[i] || att->attgenerated != '\0')
			return false;
	}
	return true;
}

static void
Sha256(pg_cryptohash_ctx *ctx, const uint8 *const *parts, const size_t *lengths, int nparts, uint8 *out)
{
	int			i;

	/* pg_cryptohash_error() is PostgreSQL 15's. */
	if (pg_cryptohash_init(ctx) < 0)
		elog(ERROR, "could not initialize SHA-256 for an audit seal");
	for (i = 0; i < nparts; i++)
		if (pg_cryptohash_update(ctx, parts[i], lengths[i]) < 0)
			elog(ERROR, "could not compute the SHA-256 of an audit seal");
	if (pg_cryptohash_final(ctx, out, PG_SHA256_DIGEST_LENGTH) < 0)
		elog(ERROR, "could not finish the SHA-256 of an audit seal");
}

static void
PutBigEndian32(StringInfo buf, uint32 value)
{
	uint32		net = pg_hton32(value);

	appendBinaryStringInfo(buf, (const char *) &net, 4);
}

/*
 * The seal following previous for the seq-th seal of a chain, as
 * rls_audit._seal_value(): sha256(previous || int8send(seq) ||
 * array_send(statement_ids) || digests).  array_send() of a one-dimensional
 * bigint[] without NULLs: ndim, has-nulls flag, element type, length, lower
 * bound, then each element's length (8) and big-endian value.
 */
static void
SealValue(pg_cryptohash_ctx *ctx, const uint8 *previous, size_t previous_len, int64 seq,
		  ArrayType *ids, const uint8 *digests, size_t digests_len, uint8 *out)
{
	StringInfoData sent;
	uint64		seq_net = pg_hton64((uint64) seq);
	Datum	   *id;
	int			n;
	const uint8 *parts[4];
	size_t		lengths[4];
	int			i;

	Assert(ARR_NDIM(ids) == 1 && !ARR_HASNULL(ids) && ARR_ELEMTYPE(ids) == INT8OID);
	deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &id, NULL, &n);
	initStringInfo(&sent);
	PutBigEndian32(&sent, 1);
	PutBigEndian32(&sent, 0);
	PutBigEndian32(&sent, INT8OID);
	PutBigEndian32(&sent, (uint32) n);
	PutBigEndian32(&sent, (uint32) ARR_LBOUND(ids)[0]);
	for (i = 0; i < n; i++)
	{
		uint64		value = pg_hton64((uint64) DatumGetInt64(id[i]));

		PutBigEndian32(&sent, 8);
		appendBinaryStringInfo(&sent, (const char *) &value, 8);
	}
	parts[0] = previous;
	lengths[0] = previous_len;
	parts[1] = (const uint8 *) &seq_net;
	lengths[1] = 8;
	parts[2] = (const uint8 *) sent.data;
	lengths[2] = sent.len;
	parts[3] = digests;
	lengths[3] = digests_len;
	Sha256(ctx, parts, lengths, 4, out);
	pfree(sent.data);
	pfree(id);
}

/* rls_audit._chain_genesis(): sha256('django_rls audit chain ' || to_char(month, 'YYYY-MM') || ' ' || chain). */
static void
Genesis(pg_cryptohash_ctx *ctx, DateADT month, const char *chain, uint8 *out)
{
	int			year;
	int			mon;
	int			mday;
	char	   *text;
	const uint8 *parts[1];
	size_t		lengths[1];

	j2date(month + POSTGRES_EPOCH_JDATE, &year, &mon, &mday);
	if (year <= 0)
		elog(ERROR, "audit chain month out of range");
	text = psprintf("django_rls audit chain %04d-%02d %s", year, mon, chain);
	parts[0] = (const uint8 *) text;
	lengths[0] = strlen(text);
	Sha256(ctx, parts, lengths, 1, out);
	pfree(text);
}

static bytea *
MakeBytea(const uint8 *data, size_t len)
{
	bytea	   *result = palloc(VARHDRSZ + len);

	SET_VARSIZE(result, VARHDRSZ + len);
	memcpy(VARDATA(result), data, len);
	return result;
}

/* What one seal writes, and the relations it writes them to. */
typedef struct ChainWrite
{
	Relation	heads;
	Relation	seals;
	ResultRelInfo *heads_info;
	ResultRelInfo *seals_info;
	EState	   *estate;
	TupleTableSlot *head_slot;	/* the locked head */
	TupleTableSlot *new_slot;	/* a row to write to chain_heads */
	Relation	pkey;			/* chain_heads' primary key (month, chain) */
} ChainWrite;

/* Whether the head this backend last wrote is still the head of (month, chain) in snapshot. */
static bool
LastHeadHolds(ChainWrite *w, Snapshot snapshot, DateADT month, text *chain)
{
	bool		isnull;
	text	   *found;

	if (last_head_chain == NULL || last_head_month != month ||
		strlen(last_head_chain) != VARSIZE_ANY_EXHDR(chain) ||
		memcmp(last_head_chain, VARDATA_ANY(chain), VARSIZE_ANY_EXHDR(chain)) != 0 ||
		ItemPointerGetBlockNumber(&last_head_tid) >= RelationGetNumberOfBlocks(w->heads))
		return false;
	if (!table_tuple_fetch_row_version(w->heads, &last_head_tid, snapshot, w->head_slot))
		return false;
	found = DatumGetTextPP(slot_getattr(w->head_slot, 2, &isnull));
	return DatumGetDateADT(slot_getattr(w->head_slot, 1, &isnull)) == month &&
		VARSIZE_ANY_EXHDR(found) == VARSIZE_ANY_EXHDR(chain) &&
		memcmp(VARDATA_ANY(found), VARDATA_ANY(chain), VARSIZE_ANY_EXHDR(chain)) == 0;
}

/* Find the head of (month, chain) in snapshot; false when there is none. */
static bool
FindHead(ChainWrite *w, Snapshot snapshot, DateADT month, text *chain, ItemPointer tid)
{
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found = false;

	if (LastHeadHolds(w, snapshot, month, chain))
	{
		*tid = last_head_tid;
		return true;
	}
	ScanKeyEntryInitialize(&keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid, InvalidOid,
						   F_DATE_EQ, DateADTGetDatum(month));
	ScanKeyEntryInitialize(&keys[1], 0, 2, BTEqualStrategyNumber, InvalidOid, w->pkey->rd_indcollation[1],
						   F_TEXTEQ, PointerGetDatum(chain));
	scan = systable_beginscan(w->heads, RelationGetRelid(w->pkey), true, snapshot, 2, keys);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		*tid = tuple->t_self;
		found = true;
	}
	systable_endscan(scan);
	return found;
}

static pg_noreturn void
ConcurrentUpdate(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access due to concurrent update"),
			 errdetail("Another transaction sealed the same audit hash chain after this transaction's snapshot was taken."),
			 errhint("Retry the transaction.")));
}

/*
 * Lock the head at tid and store it in w->head_slot: true when locked, false
 * when it was deleted meanwhile (READ COMMITTED: look it up again).
 */
static bool
LockHead(ChainWrite *w, Snapshot snapshot, ItemPointer tid)
{
	TM_FailureData tmfd;
	TM_Result	result;
	bool		xact_snapshot = IsolationUsesXactSnapshot();

	result = table_tuple_lock(w->heads, tid, snapshot, w->head_slot, GetCurrentCommandId(false),
							  LockTupleNoKeyExclusive, LockWaitBlock,
							  xact_snapshot ? 0 : TUPLE_LOCK_FLAG_FIND_LAST_VERSION, &tmfd);
	switch (result)
	{
		case TM_Ok:

			/*
			 * A head the statement's snapshot does not see was sealed by
			 * another transaction after it, unless this transaction wrote it
			 * itself (as ON CONFLICT DO UPDATE checks it).
			 */
			if (xact_snapshot &&
				!table_tuple_satisfies_snapshot(w->heads, w->head_slot, GetActiveSnapshot()))
			{
				bool		isnull;
				TransactionId xmin = DatumGetTransactionId(slot_getsysattr(w->head_slot,
																		   MinTransactionIdAttributeNumber,
																		   &isnull));

				if (!TransactionIdIsCurrentTransactionId(xmin))
					ConcurrentUpdate();
			}
			return true;
		case TM_Updated:
		case TM_Deleted:
			if (xact_snapshot)
				ConcurrentUpdate();
			return false;
		default:
			elog(ERROR, "unexpected result %d locking an audit chain head", (int) result);
	}
	return false;
}

/* Update the locked head to (seq, seal), with its index entries if the update was not HOT. */
static void
UpdateHead(ChainWrite *w, Datum month, Datum chain, int64 seq, bytea *seal)
{
	TupleTableSlot *slot = w->new_slot;
	TM_FailureData tmfd;
	LockTupleMode lockmode;
	RlsUpdateIndexes update_indexes;
	TM_Result	result;

	ExecClearTuple(slot);
	slot->tts_values[0] = month;
	slot->tts_values[1] = chain;
	slot->tts_values[2] = Int64GetDatum(seq);
	slot->tts_values[3] = PointerGetDatum(seal);
	memset(slot->tts_isnull, 0, 4 * sizeof(bool));
	ExecStoreVirtualTuple(slot);
	result = table_tuple_update(w->heads, &w->head_slot->tts_tid, slot, GetCurrentCommandId(true),
								GetActiveSnapshot(), InvalidSnapshot, true, &tmfd, &lockmode, &update_indexes);
	if (result != TM_Ok)
		elog(ERROR, "could not update the locked audit chain head: result %d", (int) result);
	RememberLastHead(DatumGetDateADT(month), TextDatumGetCString(chain), &slot->tts_tid);
	if (RlsUpdateNeedsIndexes(update_indexes) && w->heads_info->ri_NumIndices > 0)
		(void) RlsInsertIndexTuplesForUpdate(w->heads_info, slot, w->estate, update_indexes);
}

/*
 * Insert the first head of (month, chain) in a subtransaction: true when
 * inserted, false when another transaction inserted the same head first (its
 * unique violation is caught; look the head up again).
 */
static bool
InsertHead(ChainWrite *w, Datum month, Datum chain, bytea *seal)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	TupleTableSlot *slot = w->new_slot;
	volatile bool inserted = true;

	ExecClearTuple(slot);
	slot->tts_values[0] = month;
	slot->tts_values[1] = chain;
	slot->tts_values[2] = Int64GetDatum(1);
	slot->tts_values[3] = PointerGetDatum(seal);
	memset(slot->tts_isnull, 0, 4 * sizeof(bool));
	ExecStoreVirtualTuple(slot);

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		table_tuple_insert(w->heads, slot, GetCurrentCommandId(true), 0, NULL);
		if (w->heads_info->ri_NumIndices > 0)
			(void) RlsInsertIndexTuples(w->heads_info, slot, w->estate);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		RememberLastHead(DatumGetDateADT(month), TextDatumGetCString(chain), &slot->tts_tid);
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(cxt);
		error = CopyErrorData();
		if (error->sqlerrcode != ERRCODE_UNIQUE_VIOLATION)
		{
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(cxt);
			CurrentResourceOwner = owner;
			ReThrowError(error);
		}
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		FreeErrorData(error);
		inserted = false;
	}
	PG_END_TRY();
	return inserted;
}

static void
InsertSeal(ChainWrite *w, Datum month, Datum chain, int64 seq, ArrayType *ids, bytea *digests, bytea *seal)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(w->seals), &TTSOpsVirtual);

	slot->tts_values[0] = month;
	slot->tts_values[1] = chain;
	slot->tts_values[2] = Int64GetDatum(seq);
	slot->tts_values[3] = PointerGetDatum(ids);
	slot->tts_values[4] = PointerGetDatum(digests);
	slot->tts_values[5] = PointerGetDatum(seal);
	memset(slot->tts_isnull, 0, 6 * sizeof(bool));
	ExecStoreVirtualTuple(slot);
	table_tuple_insert(w->seals, slot, GetCurrentCommandId(true), 0, NULL);
	if (w->seals_info->ri_NumIndices > 0)
		(void) RlsInsertIndexTuples(w->seals_info, slot, w->estate);
	ExecDropSingleTupleTableSlot(slot);
}

static ResultRelInfo *
OpenForInsert(Relation rel)
{
	ResultRelInfo *info = makeNode(ResultRelInfo);

	InitResultRelInfo(info, rel, 0, NULL, 0);
	ExecOpenIndices(info, false);
	return info;
}

/*
 * Append one seal to the chain (month, chain): the statement rows ids (a
 * one-dimensional bigint[] in id order) and their digests (32 bytes each).
 * Called as the log's owner, security-restricted (the caller switches).
 * False, having written nothing, when either table is not as the extension
 * made it: the caller seals through rls_audit._seal() instead.
 */
bool
RlsAuditSealDirect(DateADT month, const char *chain_name, ArrayType *ids, const uint8 *digests, size_t digests_len)
{
	static const Oid head_types[] = {DATEOID, TEXTOID, INT8OID, BYTEAOID};
	static const Oid seal_types[] = {DATEOID, TEXTOID, INT8OID, INT8ARRAYOID, BYTEAOID, BYTEAOID};
	ChainWrite	w;
	Datum		month_datum = DateADTGetDatum(month);
	text	   *chain = cstring_to_text(chain_name);
	Datum		chain_datum = PointerGetDatum(chain);
	bytea	   *digests_bytea = MakeBytea(digests, digests_len);
	pg_cryptohash_ctx *ctx;
	uint8		seal[PG_SHA256_DIGEST_LENGTH];
	bytea	   *seal_bytea = NULL;
	int64		seq = 0;
	Oid			heads;
	Oid			seals;
	int			i;

	/*
	 * Copies: opening a table takes invalidations, which may forget the
	 * looked-up oids (an oid of a table dropped meanwhile fails to open).
	 */
	LookUpChainTables();
	heads = heads_relid;
	seals = seals_relid;
	w.heads = table_open(heads, RowExclusiveLock);
	w.seals = table_open(seals, RowExclusiveLock);
	if (!PlainChainTable(w.heads, head_types, lengthof(head_types)) ||
		!PlainChainTable(w.seals, seal_types, lengthof(seal_types)))
	{
		table_close(w.seals, NoLock);
		table_close(w.heads, NoLock);
		return false;
	}
	w.estate = CreateExecutorState();
	w.heads_info = OpenForInsert(w.heads);
	w.seals_info = OpenForInsert(w.seals);
	w.pkey = NULL;
	(void) RelationGetIndexList(w.heads);	/* sets rd_pkindex */
	for (i = 0; i < w.heads_info->ri_NumIndices; i++)
	{
		Relation	index = w.heads_info->ri_IndexRelationDescs[i];

		if (RelationGetRelid(index) == w.heads->rd_pkindex && index->rd_index->indnkeyatts == 2 &&
			index->rd_index->indkey.values[0] == 1 && index->rd_index->indkey.values[1] == 2 &&
			RelationGetIndexExpressions(index) == NIL)
			w.pkey = index;
	}
	if (w.pkey == NULL)
	{
		ExecCloseIndices(w.heads_info);
		ExecCloseIndices(w.seals_info);
		FreeExecutorState(w.estate);
		table_close(w.seals, NoLock);
		table_close(w.heads, NoLock);
		return false;
	}
	w.head_slot = table_slot_create(w.heads, NULL);
	w.new_slot = MakeSingleTupleTableSlot(RelationGetDescr(w.heads), &TTSOpsVirtual);
	ctx = pg_cryptohash_create(PG_SHA256);
	if (ctx == NULL)
		elog(ERROR, "out of memory");

	for (;;)
	{
		Snapshot	latest = RegisterSnapshot(GetLatestSnapshot());
		ItemPointerData tid;
		bool		found = FindHead(&w, latest, month, chain, &tid);
		bool		done = false;

		if (found && LockHead(&w, latest, &tid))
		{
			bool		isnull;
			int64		previous_seq = DatumGetInt64(slot_getattr(w.head_slot, 3, &isnull));
			bytea	   *previous = DatumGetByteaPP(slot_getattr(w.head_slot, 4, &isnull));

			seq = previous_seq + 1;
			SealValue(ctx, (const uint8 *) VARDATA_ANY(previous), VARSIZE_ANY_EXHDR(previous), seq,
					  ids, digests, digests_len, seal);
			seal_bytea = MakeBytea(seal, sizeof(seal));
			UpdateHead(&w, month_datum, chain_datum, seq, seal_bytea);
			done = true;
		}
		else if (!found)
		{
			uint8		genesis[PG_SHA256_DIGEST_LENGTH];

			seq = 1;
			Genesis(ctx, month, chain_name, genesis);
			SealValue(ctx, genesis, sizeof(genesis), seq, ids, digests, digests_len, seal);
			seal_bytea = MakeBytea(seal, sizeof(seal));
			done = InsertHead(&w, month_datum, chain_datum, seal_bytea);
		}
		UnregisterSnapshot(latest);
		if (done)
			break;
		CHECK_FOR_INTERRUPTS();
	}
	InsertSeal(&w, month_datum, chain_datum, seq, ids, digests_bytea, seal_bytea);

	pg_cryptohash_free(ctx);
	ExecDropSingleTupleTableSlot(w.head_slot);
	ExecDropSingleTupleTableSlot(w.new_slot);
	ExecCloseIndices(w.heads_info);
	ExecCloseIndices(w.seals_info);
	FreeExecutorState(w.estate);
	table_close(w.seals, NoLock);
	table_close(w.heads, NoLock);
	/* As SPI does after a write: the next seal of this transaction sees this one's head. */
	CommandCounterIncrement();
	return true;
}
