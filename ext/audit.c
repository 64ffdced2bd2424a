/*-------------------------------------------------------------------------
 *
 * ext/audit.c
 *		The audit trigger: records a statement's row changes with the context.
 *
 * rls_audit.capture() is an AFTER ... FOR EACH STATEMENT trigger with
 * transition tables.  Per statement it runs one INSERT ... SELECT over the
 * transition table(s), so the per-row cost is that of set-based SQL rather
 * than of a trigger call per row.  The statement text comes from
 * rls_audit._capture_sql() and is prepared once per table and operation in
 * each backend; a relcache invalidation of the table (ALTER TABLE, or
 * rls_audit.enable() changing options) makes the next statement rebuild it.
 *
 * The function is SECURITY DEFINER, owned by the extension owner, so the
 * application role can have its writes logged without being able to write
 * the log itself.  The database role recorded is the "outer" role, which a
 * SECURITY DEFINER call does not change.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "django_rls.h"

PG_FUNCTION_INFO_V1(rls_audit_capture);
PG_FUNCTION_INFO_V1(rls_audit_invalidate);
PG_FUNCTION_INFO_V1(rls_audit_invoking_role);

#define CAPTURE_NARGS 6

typedef struct CaptureKey
{
	Oid			relid;
	int			operation;		/* a TRIGGER_EVENT_* value */
} CaptureKey;

typedef struct CapturePlan
{
	CaptureKey	key;
	SPIPlanPtr	plan;
	bool		valid;
} CapturePlan;

static HTAB *capture_plans = NULL;

/* Mark the prepared statements of a table (or of all tables) stale. */
static void
InvalidateCapturePlans(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	CapturePlan *entry;

	if (capture_plans == NULL)
		return;
	hash_seq_init(&status, capture_plans);
	while ((entry = (CapturePlan *) hash_seq_search(&status)) != NULL)
	{
		if (relid == InvalidOid || entry->key.relid == relid)
			entry->valid = false;
	}
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

/* The prepared INSERT ... SELECT for this table and operation; SPI must be connected. */
static SPIPlanPtr
CapturePlanFor(Oid relid, int operation)
{
	static const Oid argtypes[CAPTURE_NARGS] = {INT8OID, UUIDOID, INT8OID, UUIDOID, JSONBOID, NAMEOID};
	CaptureKey	key;
	CapturePlan *entry;
	bool		found;
	Datum		args[2];
	Oid			types[2] = {REGCLASSOID, TEXTOID};
	char	   *sql;
	SPIPlanPtr	plan;

	if (capture_plans == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(CaptureKey);
		info.entrysize = sizeof(CapturePlan);
		capture_plans = hash_create("django_rls audit plans", 64, &info, HASH_ELEM | HASH_BLOBS);
		CacheRegisterRelcacheCallback(InvalidateCapturePlans, (Datum) 0);
	}

	memset(&key, 0, sizeof(key));
	key.relid = relid;
	key.operation = operation;
	entry = (CapturePlan *) hash_search(capture_plans, &key, HASH_ENTER, &found);
	if (found && entry->valid)
		return entry->plan;
	if (found && entry->plan != NULL)
		SPI_freeplan(entry->plan);
	entry->plan = NULL;
	entry->valid = false;

	args[0] = ObjectIdGetDatum(relid);
	args[1] = CStringGetTextDatum(OperationName(operation));
	if (SPI_execute_with_args("SELECT rls_audit._capture_sql($1, $2)", 2, types, args, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not build the audit statement for relation %u", relid);
	sql = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

	plan = SPI_prepare(sql, CAPTURE_NARGS, (Oid *) argtypes);
	if (plan == NULL)
		elog(ERROR, "could not prepare the audit statement for relation %u: %s", relid,
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "could not keep the audit statement for relation %u", relid);
	entry->plan = plan;
	entry->valid = true;
	return plan;
}

static void
SetIdArgs(const RlsId *id, Datum *values, char *nulls, int int_index, int uuid_index)
{
	nulls[int_index] = 'n';
	nulls[uuid_index] = 'n';
	if (id->kind == RLS_ID_INT)
	{
		values[int_index] = Int64GetDatum(id->int_value);
		nulls[int_index] = ' ';
	}
	else if (id->kind == RLS_ID_UUID)
	{
		pg_uuid_t  *copy = palloc(sizeof(pg_uuid_t));

		*copy = id->uuid_value;
		values[uuid_index] = UUIDPGetDatum(copy);
		nulls[uuid_index] = ' ';
	}
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
	Datum		values[CAPTURE_NARGS];
	char		nulls[CAPTURE_NARGS];
	int			rc;

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
	operation = trigdata->tg_event & TRIGGER_EVENT_OPMASK;

	if (rls_strict && rls_current_site.kind == RLS_ID_UNSET && rls_current_user.kind == RLS_ID_UNSET)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("no django_rls context is set for a write to audited table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("django_rls.strict is on, so audited writes need a site or a user."),
				 errhint("Run the write inside django_rls.context() or a request, or turn django_rls.strict off.")));

	SetIdArgs(&rls_current_site, values, nulls, 0, 1);
	SetIdArgs(&rls_current_user, values, nulls, 2, 3);
	if (rls_claims_setting != NULL && rls_claims_setting[0] != '\0')
	{
		values[4] = DirectFunctionCall1(jsonb_in, CStringGetDatum(rls_claims_setting));
		nulls[4] = ' ';
	}
	else
		nulls[4] = 'n';
	values[5] = DirectFunctionCall1(namein, CStringGetDatum(GetUserNameFromId(GetOuterUserId(), false)));
	nulls[5] = ' ';

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed in rls_audit.capture()");
	if (operation != TRIGGER_EVENT_TRUNCATE && SPI_register_trigger_data(trigdata) != SPI_OK_TD_REGISTER)
		elog(ERROR, "could not register the transition tables of \"%s\"", RelationGetRelationName(rel));

	rc = SPI_execute_plan(CapturePlanFor(RelationGetRelid(rel), operation), values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "rls_audit.capture() could not write the audit log: %s", SPI_result_code_string(rc));

	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed in rls_audit.capture()");
	return PointerGetDatum(NULL);
}

/*
 * rls_audit._invalidate(regclass): every backend rebuilds its statements for
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
