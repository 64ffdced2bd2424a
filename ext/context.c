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

#include "access/parallel.h"
#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "django_rls.h"

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
bool		rls_statement_bound = false;

/*
 * True only while RlsApplyContext() is setting the context.  Errors inside it
 * reset the flag through PG_FINALLY, so it can never stay open.
 */
static bool setter_active = false;

/* Whether RlsApplyContext() is setting the context right now (citus.c). */
bool
RlsSetterActive(void)
{
	return setter_active;
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
	if (!RlsParseId(*newval, &parsed))
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

	/*
	 * Set per role by a superuser (ALTER ROLE ... SET, which rls_roles does
	 * for the application role).  Values set at login become the reset
	 * value, so RESET ALL and DISCARD ALL put it back on rather than off.
	 * Off for roles nobody configured: a statement-bound role needs the
	 * library preloaded, and owners, maintenance roles and psql sessions
	 * set their context with the functions.  rls.problems reports an
	 * application role left unbound and unsigned.
	 */
	DefineCustomBoolVariable(RLS_GUC_PREFIX ".statement_bound",
							 "Accept a context from non-superusers only through the statement marker, never from the setter functions.",
							 "When on, rls.set_context() and rls.set_context_signed() refuse non-superusers; a client statement starting with /*django_rls:$1*/ is the only way to set a context.",
							 &rls_statement_bound, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);
}

/*
 * Refuse the setter functions to a statement-bound role.  SQL injected into
 * a statement the application sends can call a function, but cannot bind the
 * parameter of a statement the client sends: refusing the functions leaves
 * injected SQL no way to choose a context.
 */
void
RlsCheckSetterAllowed(const char *function_name)
{
	if (rls_statement_bound && !superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s() is disabled because django_rls.statement_bound is on for this role", function_name),
				 errdetail("A statement-bound role receives its context only from the /*django_rls:$1*/ marker of a statement the client binds, so SQL injected into the application's statements cannot choose one."),
				 errhint("Let the Django bridge carry the context (transaction scope, library preloaded), or have a superuser run ALTER ROLE ... RESET django_rls.statement_bound for a role that must call the setter functions.")));
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
 * values.c); "" clears a part.  Any value at all is refused to a role the
 * policies do not limit (bypassing_roles.c); clearing is always allowed.
 */
void
RlsApplyContext(const char *site, const char *user, const char *claims,
				bool is_local)
{
	GucAction	action = is_local ? GUC_ACTION_LOCAL : GUC_ACTION_SET;

	if (site[0] != '\0' || user[0] != '\0' || claims[0] != '\0')
		RlsCheckRoleLimitedByPolicies();
	setter_active = true;
	PG_TRY();
	{
		(void) set_config_option(RLS_GUC_PREFIX ".site", site, PGC_SUSET,
								 PGC_S_SESSION, action, true, ERROR, false);
		(void) set_config_option(RLS_GUC_PREFIX ".user", user, PGC_SUSET,
								 PGC_S_SESSION, action, true, ERROR, false);
		(void) set_config_option(RLS_GUC_PREFIX ".claims", claims, PGC_SUSET,
								 PGC_S_SESSION, action, true, ERROR, false);
		/* On a Citus coordinator, in a transaction block (citus.c). */
		RlsForwardContext(site, user, claims);
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

	RlsCheckSetterAllowed("rls.set_context");
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
 * scope it was set with.  Clearing is always allowed, statement-bound or not:
 * it can only take access away.
 */
Datum
rls_clear_context(PG_FUNCTION_ARGS)
{
	RlsApplyContext("", "", "", false);
	PG_RETURN_VOID();
}
