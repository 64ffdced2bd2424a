/*-------------------------------------------------------------------------
 *
 * ext/context.c
 *		The request context (site, user, claims) and the only code that sets it.
 *
 * The context lives in three settings, django_rls.site, django_rls.user and
 * django_rls.claims.  Keeping it in settings rather than in C statics gives
 * the semantics the context needs for free: SET LOCAL scoping, reversal on
 * ROLLBACK and ROLLBACK TO SAVEPOINT, and shipping to parallel workers.
 *
 * What makes the settings tamper-proof is their check hook: a non-empty value
 * is accepted only while this file's own setter is running (or while a
 * parallel worker copies the leader's values).  SET, set_config(), ALTER
 * ROLE/DATABASE ... SET, function SET clauses, configuration files and
 * placeholders set before the library loaded all reach the check hook and are
 * refused, even for a role that was granted SET on the parameter.  RESET ALL
 * and DISCARD ALL skip check hooks, but they can only restore the empty boot
 * value, so the worst they do is clear the context: fail closed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "access/parallel.h"
#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#include "django_rls.h"

/* Claims are meant for a handful of small values, not for documents. */
#define RLS_CLAIMS_MAX_LEN 8192

PG_FUNCTION_INFO_V1(rls_set_context);
PG_FUNCTION_INFO_V1(rls_clear_context);

/* Raw setting values, owned by the GUC machinery. */
char	   *rls_site_setting = NULL;
char	   *rls_user_setting = NULL;
char	   *rls_claims_setting = NULL;

/* Parsed copies, kept in step with the settings by the assign hooks. */
RlsId		rls_current_site;
RlsId		rls_current_user;

/* Bumped whenever django_rls.claims changes, so parsed claims can be cached. */
uint64		rls_claims_generation = 0;

bool		rls_strict = false;
bool		rls_require_signature = false;

/*
 * True only while RlsApplyContext() is setting the context.  Errors inside it
 * reset the flag through PG_FINALLY, so it can never stay open.
 */
static bool setter_active = false;

static bool
IsHexDigit(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int
HexValue(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return c - 'A' + 10;
}

/*
 * Parse a decimal 64-bit integer with an optional sign and no surrounding
 * text.  Returns false on anything else, including overflow.
 */
static bool
ParseInt64(const char *s, int64 *result)
{
	bool		negative = false;
	uint64		magnitude = 0;
	const char *p = s;

	if (*p == '+' || *p == '-')
		negative = (*p++ == '-');
	if (*p == '\0')
		return false;
	for (; *p; p++)
	{
		if (*p < '0' || *p > '9')
			return false;
		if (magnitude > (PG_UINT64_MAX - (*p - '0')) / 10)
			return false;
		magnitude = magnitude * 10 + (*p - '0');
	}
	if (negative)
	{
		if (magnitude > (uint64) PG_INT64_MAX + 1)
			return false;
		*result = (magnitude == (uint64) PG_INT64_MAX + 1) ? PG_INT64_MIN : -(int64) magnitude;
	}
	else
	{
		if (magnitude > (uint64) PG_INT64_MAX)
			return false;
		*result = (int64) magnitude;
	}
	return true;
}

/*
 * Parse a UUID in one of exactly two forms: 8-4-4-4-12 hexadecimal digits
 * with hyphens, or 32 hexadecimal digits without any; either may be enclosed
 * in braces.  Hand-written because check hooks must not throw.
 * django_rls/state.py's normalize_id accepts the same forms, and
 * tests/id_vectors.json holds the cases both are tested against.
 */
static bool
ParseUuid(const char *s, pg_uuid_t *result)
{
	const char *p = s;
	size_t		len = strlen(s);
	bool		hyphens;
	int			i;

	if (len >= 2 && s[0] == '{' && s[len - 1] == '}')
	{
		p++;
		len -= 2;
	}
	if (len == 36)
		hyphens = true;
	else if (len == 32)
		hyphens = false;
	else
		return false;
	for (i = 0; i < UUID_LEN; i++)
	{
		/* Hyphens only before bytes 4, 6, 8 and 10: 8-4-4-4-12 digits. */
		if (hyphens && (i == 4 || i == 6 || i == 8 || i == 10))
		{
			if (*p != '-')
				return false;
			p++;
		}
		if (!IsHexDigit(p[0]) || !IsHexDigit(p[1]))
			return false;
		result->data[i] = (unsigned char) (HexValue(p[0]) << 4 | HexValue(p[1]));
		p += 2;
	}
	return true;
}

/*
 * Parse a context identifier.  A UUID form is tried first, so that 32 digits
 * that happen to be all decimal are a UUID, never an integer.
 */
static bool
ParseId(const char *value, RlsId *id)
{
	memset(id, 0, sizeof(RlsId));
	if (value == NULL || value[0] == '\0')
	{
		id->kind = RLS_ID_UNSET;
		return true;
	}
	if (ParseUuid(value, &id->uuid_value))
	{
		id->kind = RLS_ID_UUID;
		return true;
	}
	if (ParseInt64(value, &id->int_value))
	{
		id->kind = RLS_ID_INT;
		return true;
	}
	return false;
}

/*
 * Refuse a non-empty context value unless it comes from our own setter or is
 * being copied into a parallel worker from its leader.
 */
static bool
CheckContextSource(const char *newval)
{
	if (newval == NULL || newval[0] == '\0')
		return true;
	if (setter_active || InitializingParallelWorker)
		return true;
	GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
	GUC_check_errmsg("the django_rls context can only be set by rls.set_context() or rls.set_context_signed()");
	GUC_check_errdetail("SET, set_config(), ALTER ROLE/DATABASE ... SET, function SET clauses and configuration files cannot change it.");
	GUC_check_errhint("Call rls.set_context() inside a transaction, or let the Django middleware do it.");
	return false;
}

static bool
CheckIdSetting(char **newval, void **extra, GucSource source)
{
	RlsId		parsed;
	RlsId	   *copy;

	if (!CheckContextSource(*newval))
		return false;
	if (!ParseId(*newval, &parsed))
	{
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("A context identifier must be a 64-bit integer or a UUID.");
		return false;
	}
	copy = (RlsId *) RlsGucMalloc(sizeof(RlsId));
	if (copy == NULL)
		return false;
	*copy = parsed;
	*extra = copy;
	return true;
}

static void
AssignSite(const char *newval, void *extra)
{
	rls_current_site = *(RlsId *) extra;
}

static void
AssignUser(const char *newval, void *extra)
{
	rls_current_user = *(RlsId *) extra;
}

static bool
CheckClaimsSetting(char **newval, void **extra, GucSource source)
{
	return CheckContextSource(*newval);
}

static void
AssignClaims(const char *newval, void *extra)
{
	rls_claims_generation++;
}

void
RlsDefineContextSettings(void)
{
	/*
	 * The context settings are PGC_SUSET so that ordinary privilege checks
	 * already stop non-superusers; the check hook then stops everyone else,
	 * superusers and holders of SET privileges included.  They are never
	 * read from files and never set inside security-restricted operations.
	 */
	const int	context_flags = GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE |
		GUC_DISALLOW_IN_AUTO_FILE | GUC_NOT_WHILE_SEC_REST;

	DefineCustomStringVariable(RLS_GUC_PREFIX ".site",
							   "Site of the current django_rls context.",
							   "Set only by rls.set_context() and rls.set_context_signed(); read it with rls.site_id() or rls.site_uuid().",
							   &rls_site_setting, "", PGC_SUSET, context_flags,
							   CheckIdSetting, AssignSite, NULL);
	DefineCustomStringVariable(RLS_GUC_PREFIX ".user",
							   "User of the current django_rls context.",
							   "Set only by rls.set_context() and rls.set_context_signed(); read it with rls.user_id() or rls.user_uuid().",
							   &rls_user_setting, "", PGC_SUSET, context_flags,
							   CheckIdSetting, AssignUser, NULL);
	DefineCustomStringVariable(RLS_GUC_PREFIX ".claims",
							   "Claims (a JSON object) of the current django_rls context.",
							   "Set only by rls.set_context() and rls.set_context_signed(); read it with rls.claim(key).",
							   &rls_claims_setting, "", PGC_SUSET, context_flags,
							   CheckClaimsSetting, AssignClaims, NULL);

	/*
	 * Strict mode only turns "no rows" into an error, so it is no security
	 * boundary and any role may choose it for its own session.
	 */
	DefineCustomBoolVariable(RLS_GUC_PREFIX ".strict",
							 "Raise an error when a policy reads a context value that is not set.",
							 "When off, a missing value reads as NULL, so policies match no rows.",
							 &rls_strict, false, PGC_USERSET, 0,
							 NULL, NULL, NULL);

	/*
	 * A superuser-only switch: ALTER DATABASE/ROLE ... SET or the server
	 * configuration can turn it on, and only a superuser can turn it off.
	 */
	DefineCustomBoolVariable(RLS_GUC_PREFIX ".require_signature",
							 "Make rls.set_context() refuse non-superusers, so the context can only come from a signed token.",
							 NULL,
							 &rls_require_signature, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);
}

/*
 * Return the canonical text of a site or user identifier: the decimal form of
 * an integer or the lower-case hyphenated form of a UUID.  NULL and the empty
 * string mean "not set" and come back as "".
 */
char *
RlsCanonicalId(const char *what, const char *value)
{
	RlsId		id;

	if (!ParseId(value, &id))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s identifier \"%s\"", what, value),
				 errdetail("A context identifier must be a 64-bit decimal integer, or a UUID as 8-4-4-4-12 or 32 hexadecimal digits."),
				 errhint("Pass the primary key of the %s, such as '42' or 'a8098c1a-f86e-11da-bd1a-00112444be1e'.", what)));
	switch (id.kind)
	{
		case RLS_ID_INT:
			return psprintf(INT64_FORMAT, id.int_value);
		case RLS_ID_UUID:
			return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&id.uuid_value)));
		case RLS_ID_UNSET:
			break;
	}
	return pstrdup("");
}

/*
 * Validate claims and return their canonical text ("" for none).  JSON null
 * counts as no claims.
 */
char *
RlsCanonicalClaims(Datum claims)
{
	Jsonb	   *jb = DatumGetJsonbP(claims);
	char	   *text;

	if (JB_ROOT_IS_SCALAR(jb))
	{
		JsonbValue	scalar;

		if (JsonbExtractScalar(&jb->root, &scalar) && scalar.type == jbvNull)
			return pstrdup("");
	}
	if (!JB_ROOT_IS_OBJECT(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("django_rls claims must be a JSON object"),
				 errhint("Pass claims like '{\"role\": \"editor\"}', or NULL for none.")));
	text = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
	if (strlen(text) > RLS_CLAIMS_MAX_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("django_rls claims are too large"),
				 errdetail("The claims take %zu bytes; the limit is %d.", strlen(text), RLS_CLAIMS_MAX_LEN),
				 errhint("Keep claims to a few small values and look larger data up in tables.")));
	return text;
}

/*
 * Refuse to set a context from code that maintenance commands run.  action
 * completes "cannot ... within a security-restricted operation".
 */
void
RlsCheckNotRestricted(const char *action)
{
	if (InSecurityRestrictedOperation())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot %s within a security-restricted operation", action),
				 errdetail("Maintenance commands such as VACUUM, ANALYZE and REFRESH MATERIALIZED VIEW run user code in a security-restricted operation."),
				 errhint("Set the context from the application, not from index expressions or other code run by maintenance commands.")));
}

/*
 * Refuse a transaction-scoped context outside a transaction block, where it
 * would vanish at the end of the very statement that set it, and any context
 * in a security-restricted operation.  Called before anything else is done,
 * so that a signed token is not spent on a call that cannot succeed.
 */
void
RlsCheckScope(const char *function_name, bool is_local)
{
	if (is_local && !IsTransactionBlock())
		ereport(ERROR,
				(errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
				 errmsg("%s() with is_local => true must run inside a transaction block", function_name),
				 errdetail("A transaction-scoped context would be cleared as soon as this statement ends."),
				 errhint("Run BEGIN first (in Django, transaction.atomic()), or pass is_local => false for a session-scoped context.")));
	RlsCheckNotRestricted(psprintf("call %s()", function_name));
}

/*
 * Set the whole context at once.  Values must already be canonical (see
 * RlsCanonicalId and RlsCanonicalClaims); "" clears a part.
 */
void
RlsApplyContext(const char *site, const char *user, const char *claims,
				bool is_local)
{
	GucAction	action = is_local ? GUC_ACTION_LOCAL : GUC_ACTION_SET;

	setter_active = true;
	PG_TRY();
	{
		(void) set_config_option(RLS_GUC_PREFIX ".site", site, PGC_SUSET,
								 PGC_S_SESSION, action, true, ERROR, false);
		(void) set_config_option(RLS_GUC_PREFIX ".user", user, PGC_SUSET,
								 PGC_S_SESSION, action, true, ERROR, false);
		(void) set_config_option(RLS_GUC_PREFIX ".claims", claims, PGC_SUSET,
								 PGC_S_SESSION, action, true, ERROR, false);
	}
	PG_FINALLY();
	{
		setter_active = false;
	}
	PG_END_TRY();
}

/*
 * rls.set_context(site text, "user" text, claims jsonb, is_local boolean)
 */
Datum
rls_set_context(PG_FUNCTION_ARGS)
{
	bool		is_local = PG_ARGISNULL(3) ? true : PG_GETARG_BOOL(3);
	char	   *site;
	char	   *user;
	char	   *claims;

	RlsCheckScope("rls.set_context", is_local);
	if (rls_require_signature && !superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("rls.set_context() is disabled because django_rls.require_signature is on"),
				 errdetail("Only a context signed with the server's key is accepted from this role."),
				 errhint("Call rls.set_context_signed() with a token signed by the application (DJANGO_RLS[\"SIGNING_KEY\"]).")));

	site = RlsCanonicalId("site", PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0)));
	user = RlsCanonicalId("user", PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)));
	claims = PG_ARGISNULL(2) ? "" : RlsCanonicalClaims(PG_GETARG_DATUM(2));

	RlsApplyContext(site, user, claims, is_local);
	PG_RETURN_VOID();
}

/*
 * rls.clear_context() clears the context for the rest of the session, whatever
 * scope it was set with.  Clearing is always allowed: it can only take access
 * away.
 */
Datum
rls_clear_context(PG_FUNCTION_ARGS)
{
	RlsApplyContext("", "", "", false);
	PG_RETURN_VOID();
}
