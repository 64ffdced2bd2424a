/*-------------------------------------------------------------------------
 *
 * ext/accessors.c
 *		Functions that policies call to read the request context.
 *
 * Policies call these once per row on a sequential scan, so they read the
 * values parsed by the settings' assign hooks and do no parsing of their own.
 * They are STABLE, never IMMUTABLE: an IMMUTABLE accessor would be folded
 * into cached plans, and a prepared statement would keep serving the first
 * tenant's rows after the context changed.  They are PARALLEL SAFE because
 * the settings they read are copied into every parallel worker.  Each first
 * checks that no context carried by the running statement was missed
 * (statement.c), so that a missing preload is an error, not a wrong answer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "django_rls.h"

PG_FUNCTION_INFO_V1(rls_site_id);
PG_FUNCTION_INFO_V1(rls_user_id);
PG_FUNCTION_INFO_V1(rls_site_uuid);
PG_FUNCTION_INFO_V1(rls_user_uuid);
PG_FUNCTION_INFO_V1(rls_site_id_lenient);
PG_FUNCTION_INFO_V1(rls_site_uuid_lenient);
PG_FUNCTION_INFO_V1(rls_claim);
PG_FUNCTION_INFO_V1(rls_context);

/* Parsed claims, rebuilt only when django_rls.claims changes. */
static MemoryContext claims_context = NULL;
static Jsonb *claims_cache = NULL;
static uint64 claims_cache_generation = 0;

pg_noreturn static void ReportMissing(const char *what);

/*
 * The context a Citus coordinator forwarded, verified at first use (citus.c),
 * or NULL.  Out of line, and filled into a static rather than a local: the
 * accessors below stay free of any local whose address is taken, which
 * -fstack-protector-strong would guard with a canary in every call, on every
 * server.  A policy that calls rls.site_id() per row
 * (django_rls.accessor_initplans = off) paid 12 instructions a call for the
 * local and its check, 27 against 15 (bench/read_instructions.py, docs/benchmarks.md).
 */
static pg_noinline const RlsForwardedContext *
Forwarded(void)
{
	static RlsForwardedContext result;

	return RlsForwardedCredential(&result);
}

/* The context policies read: the local one, or on a Citus worker the forwarded one. */
static inline const RlsId *
ContextSite(void)
{
	const RlsForwardedContext *forwarded;

	if (unlikely(rls_forwarded_present) && (forwarded = Forwarded()) != NULL)
		return forwarded->site;
	return &rls_current_site;
}

static inline const RlsId *
ContextUser(void)
{
	const RlsForwardedContext *forwarded;

	if (unlikely(rls_forwarded_present) && (forwarded = Forwarded()) != NULL)
		return forwarded->user;
	return &rls_current_user;
}

static inline const char *
ContextClaims(void)
{
	const RlsForwardedContext *forwarded;

	if (unlikely(rls_forwarded_present) && (forwarded = Forwarded()) != NULL)
		return forwarded->claims;
	return rls_claims_setting;
}

pg_noreturn static void ReportWrongKind(const char *what, const char *holds, const char *wanted, const char *use);

static void
ReportMissing(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("no %s is set in the django_rls context", what),
			 errdetail("django_rls.strict is on, so a policy that needs the %s raises instead of matching no rows.", what),
			 errhint("Call rls.set_context() first, or run the code inside django_rls.context() or the middleware.")));
}

static void
ReportWrongKind(const char *what, const char *holds, const char *wanted, const char *use)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATATYPE_MISMATCH),
			 errmsg("the django_rls %s is %s, not %s", what, holds, wanted),
			 errhint("Use %s to read it, and compare it with a column of the same type.", use)));
}

/*
 * Shared body of the integer accessors: NULL when unset (or an error in strict
 * mode), an error when the identifier is a UUID.
 */
static inline Datum
IdAsInt64(const RlsId *(*context_id) (void), const char *what, const char *uuid_accessor,
		  FunctionCallInfo fcinfo)
{
	const RlsId *id;

	RlsCheckStatementContext();
	id = context_id();
	if (id->kind == RLS_ID_INT)
		PG_RETURN_INT64(id->int_value);
	if (id->kind == RLS_ID_UUID)
		ReportWrongKind(what, "a UUID", "an integer", uuid_accessor);
	if (rls_strict)
		ReportMissing(what);
	PG_RETURN_NULL();
}

static inline Datum
IdAsUuid(const RlsId *(*context_id) (void), const char *what, const char *int_accessor,
		 FunctionCallInfo fcinfo)
{
	pg_uuid_t  *result;
	const RlsId *id;

	RlsCheckStatementContext();
	id = context_id();
	if (id->kind == RLS_ID_UUID)
	{
		result = (pg_uuid_t *) palloc(sizeof(pg_uuid_t));
		*result = id->uuid_value;
		PG_RETURN_UUID_P(result);
	}
	if (id->kind == RLS_ID_INT)
		ReportWrongKind(what, "an integer", "a UUID", int_accessor);
	if (rls_strict)
		ReportMissing(what);
	PG_RETURN_NULL();
}

Datum
rls_site_id(PG_FUNCTION_ARGS)
{
	return IdAsInt64(ContextSite, "site", "rls.site_uuid()", fcinfo);
}

Datum
rls_user_id(PG_FUNCTION_ARGS)
{
	return IdAsInt64(ContextUser, "user", "rls.user_uuid()", fcinfo);
}

Datum
rls_site_uuid(PG_FUNCTION_ARGS)
{
	return IdAsUuid(ContextSite, "site", "rls.site_id()", fcinfo);
}

Datum
rls_user_uuid(PG_FUNCTION_ARGS)
{
	return IdAsUuid(ContextUser, "user", "rls.user_id()", fcinfo);
}

/*
 * The same values, but NULL instead of an error when the identifier has the
 * other type: for policies over tables that hold both kinds, such as the
 * audit log.
 */
Datum
rls_site_id_lenient(PG_FUNCTION_ARGS)
{
	const RlsId *site;

	RlsCheckStatementContext();
	site = ContextSite();
	if (site->kind != RLS_ID_INT)
		PG_RETURN_NULL();
	PG_RETURN_INT64(site->int_value);
}

Datum
rls_site_uuid_lenient(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *result;
	const RlsId *site;

	RlsCheckStatementContext();
	site = ContextSite();
	if (site->kind != RLS_ID_UUID)
		PG_RETURN_NULL();
	result = (pg_uuid_t *) palloc(sizeof(pg_uuid_t));
	*result = site->uuid_value;
	PG_RETURN_UUID_P(result);
}

/* The current claims as jsonb, or NULL when none are set. */
static Jsonb *
CurrentClaims(void)
{
	MemoryContext oldcontext;
	const char *text;

	RlsCheckStatementContext();
	text = ContextClaims();
	if (text == NULL || text[0] == '\0')
		return NULL;
	if (claims_cache != NULL && claims_cache_generation == rls_claims_generation)
		return claims_cache;

	if (claims_context == NULL)
		claims_context = AllocSetContextCreate(TopMemoryContext,
											   "django_rls claims",
											   ALLOCSET_SMALL_SIZES);
	MemoryContextReset(claims_context);
	claims_cache = NULL;

	oldcontext = MemoryContextSwitchTo(claims_context);
	claims_cache = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
													  CStringGetDatum(text)));
	MemoryContextSwitchTo(oldcontext);
	claims_cache_generation = rls_claims_generation;
	return claims_cache;
}

/*
 * rls.claim(key text) returns one claim as text, like the ->> operator: NULL
 * for a missing key or a JSON null, JSON text for objects and arrays.
 */
Datum
rls_claim(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(0);
	Jsonb	   *claims = CurrentClaims();
	JsonbValue	vbuf;
	JsonbValue *value;

	if (claims == NULL)
	{
		if (rls_strict)
			ReportMissing("claim");
		PG_RETURN_NULL();
	}

	value = getKeyJsonValueFromContainer(&claims->root, VARDATA_ANY(key),
										 VARSIZE_ANY_EXHDR(key), &vbuf);
	if (value == NULL)
		PG_RETURN_NULL();

	switch (value->type)
	{
		case jbvNull:
			PG_RETURN_NULL();
		case jbvString:
			PG_RETURN_TEXT_P(cstring_to_text_with_len(value->val.string.val,
													  value->val.string.len));
		case jbvNumeric:
			PG_RETURN_TEXT_P(cstring_to_text(DatumGetCString(DirectFunctionCall1(numeric_out,
																				 NumericGetDatum(value->val.numeric)))));
		case jbvBool:
			PG_RETURN_TEXT_P(cstring_to_text(value->val.boolean ? "true" : "false"));
		case jbvBinary:
			PG_RETURN_TEXT_P(cstring_to_text(JsonbToCString(NULL,
															value->val.binary.data,
															value->val.binary.len)));
		default:
			elog(ERROR, "unexpected jsonb value type %d in django_rls claims", (int) value->type);
	}
	PG_RETURN_NULL();
}

static void
AppendId(StringInfo buf, const char *key, const RlsId *id)
{
	appendStringInfo(buf, "\"%s\": ", key);
	switch (id->kind)
	{
		case RLS_ID_INT:
			appendStringInfo(buf, INT64_FORMAT, id->int_value);
			break;
		case RLS_ID_UUID:
			appendStringInfo(buf, "\"%s\"",
							 DatumGetCString(DirectFunctionCall1(uuid_out,
																 UUIDPGetDatum(&id->uuid_value))));
			break;
		case RLS_ID_UNSET:
			appendStringInfoString(buf, "null");
			break;
	}
}

/*
 * rls.context() shows the whole context as jsonb, for debugging:
 * {"site": 42, "user": "<uuid>", "claims": {...}}, with null for unset parts.
 */
Datum
rls_context(PG_FUNCTION_ARGS)
{
	StringInfoData buf;
	const char *claims;

	RlsCheckStatementContext();
	claims = ContextClaims();
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	AppendId(&buf, "site", ContextSite());
	appendStringInfoString(&buf, ", ");
	AppendId(&buf, "user", ContextUser());
	appendStringInfo(&buf, ", \"claims\": %s}",
					 (claims && claims[0]) ? claims : "null");
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}
