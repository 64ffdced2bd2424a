/*-------------------------------------------------------------------------
 *
 * ext/compat.h
 *		Every PostgreSQL version difference django_rls depends on.
 *
 * The extension supports PostgreSQL 14 to 18.  Each shim below names the
 * release that introduced the API it papers over, so that a shim can be
 * deleted as soon as the oldest supported release has the API itself.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DJANGO_RLS_COMPAT_H
#define DJANGO_RLS_COMPAT_H

#include "postgres.h"

#if PG_VERSION_NUM < 140000
#error "django_rls requires PostgreSQL 14 or later"
#endif

/*
 * PostgreSQL 18 replaced pg_attribute_noreturn(), written after a
 * declaration, with pg_noreturn, written before it.  GCC and Clang accept the
 * attribute in front as well, so older releases spell pg_noreturn with it.
 */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

/* PostgreSQL 15 added strtoi64(); int64 is long long on every 64-bit target. */
#if PG_VERSION_NUM < 150000
#define strtoi64(str, endptr, base) ((int64) strtoll((str), (endptr), (base)))
#endif

/*
 * PostgreSQL 15 made placeholders under a reserved prefix an error; older
 * releases only warn about them, which is still the best they offer.
 */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(prefix) EmitWarningsOnPlaceholders(prefix)
#endif

/*
 * PostgreSQL 15 added shmem_request_hook; before it, shared memory and
 * LWLock tranches are requested straight from _PG_init.
 */
#if PG_VERSION_NUM >= 150000
#define RLS_HAVE_SHMEM_REQUEST_HOOK 1
#endif

/*
 * GUC_ALLOW_IN_PARALLEL arrived in PostgreSQL 15; older releases do not check
 * for it, so defining it as no flag at all keeps the behaviour identical.
 */
#ifndef GUC_ALLOW_IN_PARALLEL
#define GUC_ALLOW_IN_PARALLEL 0
#endif

/*
 * HMAC-SHA256 through the pg_hmac_* API (PostgreSQL 14 and later); false on
 * failure instead of raising.
 */
#include "common/hmac.h"
#include "common/sha2.h"

static inline bool
RlsHmacSha256(const uint8 *key, size_t keylen, const uint8 *data, size_t datalen,
			  uint8 *out)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
	bool		ok;

	if (ctx == NULL)
		return false;
	ok = pg_hmac_init(ctx, key, keylen) == 0 &&
		pg_hmac_update(ctx, data, datalen) == 0 &&
		pg_hmac_final(ctx, out, PG_SHA256_DIGEST_LENGTH) == 0;
	pg_hmac_free(ctx);
	return ok;
}

/*
 * PostgreSQL 16 exported guc_malloc() for check hooks' "extra" data, which
 * lives in the GUC memory context and is released with guc_free(); before it,
 * the GUC machinery releases extra data with plain free().  A check hook that
 * refuses a value releases what it allocated with RlsGucFree().
 */
#if PG_VERSION_NUM >= 160000
#define RlsGucMalloc(size) guc_malloc(LOG, (size))
#define RlsGucFree(ptr) guc_free(ptr)
#else
#define RlsGucMalloc(size) malloc(size)
#define RlsGucFree(ptr) free(ptr)
#endif

/* PostgreSQL 18 records the extension's name and version in the module. */
#if PG_VERSION_NUM >= 180000
#define RLS_MODULE_MAGIC PG_MODULE_MAGIC_EXT(.name = "django_rls", .version = DJANGO_RLS_VERSION)
#else
#define RLS_MODULE_MAGIC PG_MODULE_MAGIC
#endif

/*
 * PostgreSQL 18 dropped ExecutorRun()'s execute_once argument; statement.c
 * and audit_context.c both wrap ExecutorRun.
 */
#if PG_VERSION_NUM >= 180000
#define RLS_EXECUTOR_RUN_PARAMS QueryDesc *query_desc, ScanDirection direction, uint64 count
#define RLS_EXECUTOR_RUN_ARGS query_desc, direction, count
#else
#define RLS_EXECUTOR_RUN_PARAMS QueryDesc *query_desc, ScanDirection direction, uint64 count, bool execute_once
#define RLS_EXECUTOR_RUN_ARGS query_desc, direction, count, execute_once
#endif

/*
 * PostgreSQL 18 made RelationGetPrimaryKeyIndex() return a deferrable primary
 * key only when asked to.  Older releases never return one (their index list
 * skips indexes that are not immediate), so asking for none keeps every
 * release alike: the audit trail identifies rows by an immediate key only.
 */
#if PG_VERSION_NUM >= 180000
#define RlsPrimaryKeyIndex(rel) RelationGetPrimaryKeyIndex((rel), false)
#else
#define RlsPrimaryKeyIndex(rel) RelationGetPrimaryKeyIndex(rel)
#endif

/*
 * PostgreSQL 17 made getIdentitySequence() take the relation instead of its
 * oid.
 */
#if PG_VERSION_NUM >= 170000
#define RlsIdentitySequence(rel, attnum) getIdentitySequence((rel), (attnum), false)
#else
#define RlsIdentitySequence(rel, attnum) getIdentitySequence(RelationGetRelid(rel), (attnum), false)
#endif

/*
 * PostgreSQL 16 added ExecInsertIndexTuples()'s onlySummarizing argument
 * (false: every index, as an INSERT does).  audit.c inserts the log's index
 * entries for a row it inserted, without update, speculation or arbiters.
 */
#if PG_VERSION_NUM >= 160000
#define RlsInsertIndexTuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL, false)
#else
#define RlsInsertIndexTuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL)
#endif

/*
 * PostgreSQL 16 made table_tuple_update()'s report of which indexes need an
 * entry for the new row version a TU_UpdateIndexes (none, all, or only the
 * summarizing ones) where it was a bool.  audit_chain.c updates a chain head
 * and inserts the index entries the update needs.
 */
#if PG_VERSION_NUM >= 160000
#define RlsUpdateIndexes TU_UpdateIndexes
#define RlsUpdateNeedsIndexes(u) ((u) != TU_None)
#define RlsInsertIndexTuplesForUpdate(rri, slot, estate, u) \
	ExecInsertIndexTuples((rri), (slot), (estate), true, false, NULL, NIL, (u) == TU_Summarizing)
#else
#define RlsUpdateIndexes bool
#define RlsUpdateNeedsIndexes(u) (u)
#define RlsInsertIndexTuplesForUpdate(rri, slot, estate, u) \
	ExecInsertIndexTuples((rri), (slot), (estate), true, false, NULL, NIL)
#endif

/*
 * PostgreSQL 17 shows an initplan's outputs as (InitPlan 1).col1 in EXPLAIN
 * and names the initplan just "InitPlan 1"; older releases show $0 and name
 * it "InitPlan 1 (returns $0,$1)".  Initplans made by accessor_params.c
 * follow the convention of the running release.
 */
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"

static inline char *
RlsInitPlanName(int plan_id, List *set_params)
{
#if PG_VERSION_NUM >= 170000
	return psprintf("InitPlan %d", plan_id);
#else
	StringInfoData name;
	ListCell   *lc;

	initStringInfo(&name);
	appendStringInfo(&name, "InitPlan %d (returns ", plan_id);
	foreach(lc, set_params)
		appendStringInfo(&name, "%s$%d", lc == list_head(set_params) ? "" : ",", lfirst_int(lc));
	appendStringInfoChar(&name, ')');
	return name.data;
#endif
}

#endif							/* DJANGO_RLS_COMPAT_H */
