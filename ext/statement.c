/*-------------------------------------------------------------------------
 *
 * ext/statement.c
 *		A context carried by the statement it applies to.
 *
 * A client that runs each query in its own transaction (autocommit) would
 * otherwise send BEGIN, rls.set_context(), the query and COMMIT: four
 * statements for one.  Instead, a statement sent by the client whose text
 * starts with STATEMENT_MARKER (a comment holding "django_rls:$1") carries
 * its context in bound parameter $1, of type text: a signed token
 * (see token.c), or, unless django_rls.require_signature is on, a JSON object
 * {"site": ..., "user": ..., "claims": ...}.  The marker is a comment, so the
 * statement itself never reads $1.
 *
 * The context is applied transaction-locally, exactly as
 * rls.set_context(..., is_local => true) would: before the statement is
 * planned (so the planner's estimates see the site) and again before it runs
 * (a cached generic plan is not planned again).  It lasts until the end of
 * the statement's transaction: in autocommit, the statement alone.
 *
 * Only the statement the client itself bound through the extended query
 * protocol counts: the marker is honoured only together with the parameter
 * list that the client's Bind message created.  Text that merely looks like
 * the client's (current_query() run with EXECUTE ... USING in PL/pgSQL, a
 * PREPARE and EXECUTE in a simple-protocol message, SQL functions, SPI, a
 * statement of a multi-statement simple query) is ignored, because its
 * parameters were built by the server from values SQL chose.  See
 * IsClientBound() for how that is told apart.  A statement the client sent
 * with the marker but through the simple protocol (so without $1) is an
 * error.  Given that, the marker gives no more power than calling the setter
 * functions: a token is still verified and spent once; an unsigned context is
 * still refused when signatures are required.  A signed token seen a second
 * time within the transaction that verified it (planning, then execution of
 * the same statement) is not spent again: the context it authorized is
 * re-applied.
 *
 * Without preloading, the library is loaded by the first call of one of its
 * functions, which may come after this statement's planning or executor
 * start: the context it carries would be missed.  _PG_init() notes that case
 * (RlsNoteLateLoad) and the accessors refuse to answer until a context has
 * been applied (RlsCheckStatementContext), so the statement fails instead of
 * running without its context.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "optimizer/planner.h"
#include "tcop/pquery.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/portal.h"

#include "django_rls.h"

#define STATEMENT_MARKER "/*django_rls:$1*/"

static planner_hook_type prev_planner_hook = NULL;
static ExecutorStart_hook_type prev_executor_start_hook = NULL;
static ExecutorRun_hook_type prev_executor_run_hook = NULL;
static ExecutorFinish_hook_type prev_executor_finish_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

/*
 * How many planner, executor and utility calls are under way in this
 * backend.  Zero means that the code running is the top level of a client
 * message, not a query that user code (a function, a DO block, EXECUTE)
 * started.  Every hook restores it in PG_FINALLY, so errors cannot leave it
 * raised (and a transaction ended inside a procedure's CALL must not reset
 * it).
 */
static int	nesting_level = 0;

/*
 * The parameters of a client-bound utility statement (EXPLAIN, CREATE TABLE
 * AS ...) while it runs: the statement it plans and executes is nested, but
 * gets the very parameter list the client bound.
 */
static ParamListInfo utility_client_params = NULL;

/*
 * Set when the library was loaded in the middle of a statement carrying the
 * marker, cleared when a context is applied from a statement or the
 * transaction ends.
 */
static bool context_missed = false;

/*
 * The last context applied from a statement in the current transaction, kept
 * in TopMemoryContext and forgotten when the transaction ends.
 */
static char *applied_parameter = NULL;
static RlsContextValues applied_context;

static void
ForgetAppliedContext(void)
{
	if (applied_parameter == NULL)
		return;
	pfree(applied_parameter);
	pfree(applied_context.site);
	pfree(applied_context.user);
	pfree(applied_context.claims);
	applied_parameter = NULL;
}

static void
RememberAppliedContext(const char *parameter, const RlsContextValues *context)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	ForgetAppliedContext();
	applied_context.site = pstrdup(context->site);
	applied_context.user = pstrdup(context->user);
	applied_context.claims = pstrdup(context->claims);
	applied_parameter = pstrdup(parameter);
	MemoryContextSwitchTo(old);
}

/*
 * The last unsigned context (a JSON object) this backend parsed, and what it
 * parsed to, kept in TopMemoryContext across transactions.  Parsing is a pure
 * function of the parameter's bytes, so a client that sends the same context
 * statement after statement (autocommit) parses it once; everything else (the
 * checks of who may set a context, applying it) is done for every statement
 * as before.  Only a parse that succeeded is kept.  Signed tokens are never
 * kept here: each use differs, and each must be verified and spent.
 */
static char *parsed_parameter = NULL;
static RlsContextValues parsed_context;

static void
ParseUnsignedContext(const char *parameter, RlsContextValues *context)
{
	MemoryContext old;

	if (parsed_parameter != NULL && strcmp(parameter, parsed_parameter) == 0)
	{
		*context = parsed_context;
		return;
	}
	RlsParseContextObject(parameter, strlen(parameter), context);
	if (parsed_parameter != NULL)
	{
		pfree(parsed_parameter);
		pfree(parsed_context.site);
		pfree(parsed_context.user);
		pfree(parsed_context.claims);
		parsed_parameter = NULL;
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	parsed_context.site = pstrdup(context->site);
	parsed_context.user = pstrdup(context->user);
	parsed_context.claims = pstrdup(context->claims);
	parsed_parameter = pstrdup(parameter);
	MemoryContextSwitchTo(old);
}

static void
OnTransactionEnd(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		ForgetAppliedContext();
		context_missed = false;
	}
}

static bool
StartsWithMarker(const char *text)
{
	return text != NULL && strncmp(text, STATEMENT_MARKER, sizeof(STATEMENT_MARKER) - 1) == 0;
}

/*
 * Whether (source, params) is the statement the client bound with a Bind
 * message, as opposed to one user code started with parameters of its own.
 *
 * exec_bind_message() builds the parameter list from the client's values and
 * plans the statement at once, with debug_query_string pointing at the very
 * string the planner gets and no portal running yet; the list then becomes
 * the portal's portalParams, and exec_execute_message() runs that portal at
 * the top level.  Every other source of parameters (EXECUTE of a prepared
 * statement, PL/pgSQL, SPI, SQL functions) builds a list of its own, and runs
 * nested inside a planner, executor or utility call.
 */
static bool
IsClientBound(const char *source, ParamListInfo params, bool planning)
{
	if (params == NULL || source == NULL || debug_query_string == NULL ||
		IsParallelWorker())
		return false;
	if (params == utility_client_params)
		return strcmp(source, debug_query_string) == 0;
	if (nesting_level != 0)
		return false;
	if (ActivePortal == NULL)
		return planning && source == debug_query_string;
	return params == ActivePortal->portalParams &&
		ActivePortal->sourceText != NULL &&
		strcmp(source, ActivePortal->sourceText) == 0 &&
		strcmp(source, debug_query_string) == 0;
}

/*
 * A statement the client sent through the simple protocol cannot carry a
 * context: refuse it, rather than let the marker be silently ignored.
 */
static void
RefuseUnboundMarker(const char *source, ParamListInfo params)
{
	if (nesting_level == 0 && params == NULL && StartsWithMarker(source) &&
		debug_query_string != NULL && strcmp(source, debug_query_string) == 0 &&
		!IsParallelWorker())
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_PARAMETER),
				 errmsg("statement starts with the django_rls context marker but has no bound parameter $1"),
				 errdetail("The marker counts only on a statement the client binds through the extended query protocol."),
				 errhint("Send the context as parameter $1 (text) with the extended query protocol, or remove the " STATEMENT_MARKER " comment.")));
}

/* The text of parameter $1, or an error saying what the marker needs. */
static char *
MarkerParameter(ParamListInfo params)
{
	ParamExternData *param;
	ParamExternData workspace;

	if (params->numParams < 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_PARAMETER),
				 errmsg("statement starts with the django_rls context marker but has no bound parameter $1"),
				 errhint("Send the context as parameter $1 (text) with the extended query protocol, or remove the " STATEMENT_MARKER " comment.")));
	param = params->paramFetch != NULL ?
		params->paramFetch(params, 1, false, &workspace) : &params->params[0];
	if (param->isnull || param->ptype != TEXTOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("django_rls context parameter $1 must be non-null text"),
				 errhint("Bind $1 as type text: a signed token, or {\"site\": ..., \"user\": ..., \"claims\": ...}.")));
	return TextDatumGetCString(param->value);
}

/*
 * Apply the context a client statement carries, if it carries one.  source is
 * the statement's text: only the text the client sent (debug_query_string;
 * the portal holds a copy of it) counts, never a query run inside a function.
 */
static void
ApplyStatementContext(const char *source, ParamListInfo params, bool planning)
{
	char	   *parameter;
	RlsContextValues context;

	if (!StartsWithMarker(source))
		return;
	RefuseUnboundMarker(source, params);
	if (!IsClientBound(source, params, planning))
		return;

	parameter = MarkerParameter(params);
	context_missed = false;
	if (applied_parameter != NULL && strcmp(parameter, applied_parameter) == 0)
	{
		/* Planned, now executed; or restored after ROLLBACK TO SAVEPOINT. */
		if (strcmp(rls_site_setting, applied_context.site) != 0 ||
			strcmp(rls_user_setting, applied_context.user) != 0 ||
			strcmp(rls_claims_setting, applied_context.claims) != 0)
			RlsApplyContext(applied_context.site, applied_context.user, applied_context.claims, true);
		return;
	}

	RlsCheckNotRestricted("set a django_rls context");
	if (strncmp(parameter, "v1.", 3) == 0)
		RlsVerifyToken(parameter, strlen(parameter), &context);
	else
	{
		if (rls_require_signature && !superuser())
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("unsigned django_rls contexts are refused because django_rls.require_signature is on"),
					 errdetail("Only a context signed with the server's key is accepted from this role."),
					 errhint("Send a token signed by the application (DJANGO_RLS[\"SIGNING_KEY\"]) as parameter $1.")));
		ParseUnsignedContext(parameter, &context);
	}
	RlsApplyContext(context.site, context.user, context.claims, true);
	RememberAppliedContext(parameter, &context);
}

static PlannedStmt *
PlanNested(Query *parse, const char *query_string, int cursor_options,
		   ParamListInfo bound_params)
{
	PlannedStmt *result;

	nesting_level++;
	PG_TRY();
	{
		if (prev_planner_hook)
			result = prev_planner_hook(parse, query_string, cursor_options, bound_params);
		else
			result = standard_planner(parse, query_string, cursor_options, bound_params);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
	RlsEvaluateAccessorsOnce(result);
	return result;
}

static PlannedStmt *
PlanWithContext(Query *parse, const char *query_string, int cursor_options,
				ParamListInfo bound_params)
{
	/*
	 * A generic plan is made without parameters; the executor applies the
	 * context.  Its estimates must not take the accessors for NULL.
	 */
	if (bound_params != NULL)
		ApplyStatementContext(query_string, bound_params, true);
	else if (nesting_level == 0 && StartsWithMarker(query_string))
		return PlanNested(RlsHideAccessorsFromEstimates(parse), query_string,
						  cursor_options, bound_params);
	return PlanNested(parse, query_string, cursor_options, bound_params);
}

static void
StartWithContext(QueryDesc *query_desc, int eflags)
{
	ApplyStatementContext(query_desc->sourceText, query_desc->params, false);
	nesting_level++;
	PG_TRY();
	{
		if (prev_executor_start_hook)
			prev_executor_start_hook(query_desc, eflags);
		else
			standard_ExecutorStart(query_desc, eflags);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
}

static void
RunNested(RLS_EXECUTOR_RUN_PARAMS)
{
	nesting_level++;
	PG_TRY();
	{
		if (prev_executor_run_hook)
			prev_executor_run_hook(RLS_EXECUTOR_RUN_ARGS);
		else
			standard_ExecutorRun(RLS_EXECUTOR_RUN_ARGS);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
}

static void
FinishNested(QueryDesc *query_desc)
{
	nesting_level++;
	PG_TRY();
	{
		if (prev_executor_finish_hook)
			prev_executor_finish_hook(query_desc);
		else
			standard_ExecutorFinish(query_desc);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
}

static void
UtilityNested(PlannedStmt *pstmt, const char *query_string, bool read_only_tree,
			  ProcessUtilityContext context, ParamListInfo params,
			  QueryEnvironment *query_env, DestReceiver *dest, QueryCompletion *qc)
{
	ParamListInfo saved_params = utility_client_params;

	RefuseUnboundMarker(query_string, params);
	if (IsClientBound(query_string, params, false))
		utility_client_params = params;
	nesting_level++;
	PG_TRY();
	{
		if (prev_process_utility_hook)
			prev_process_utility_hook(pstmt, query_string, read_only_tree, context,
									  params, query_env, dest, qc);
		else
			standard_ProcessUtility(pstmt, query_string, read_only_tree, context,
									params, query_env, dest, qc);
	}
	PG_FINALLY();
	{
		nesting_level--;
		utility_client_params = saved_params;
	}
	PG_END_TRY();
}

/*
 * Called by _PG_init() when the library is loaded after the server started
 * this session: if that happens inside a statement carrying the marker, the
 * hooks came too late for it.
 */
void
RlsNoteLateLoad(void)
{
	if (StartsWithMarker(debug_query_string) && IsTransactionState())
		context_missed = true;
}

/*
 * Refuse to read the context while a statement's carried context was missed
 * (see RlsNoteLateLoad).  While a Bind message is being planned no portal
 * runs yet and the value only feeds estimates; the executor hook applies the
 * context before the statement runs, so that case is let through.
 */
void
RlsCheckStatementContext(void)
{
	if (likely(!context_missed))
		return;
	if (ActivePortal == NULL && !IsParallelWorker())
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("django_rls was loaded too late to apply the context this statement carries"),
			 errdetail("The library was not preloaded, so it was loaded by the first call of one of its functions, after the statement had started."),
			 errhint("Add django_rls to shared_preload_libraries (or session_preload_libraries) and restart or reconnect; until then set the context with rls.set_context() before the statement.")));
}

void
RlsInstallStatementHooks(void)
{
	prev_planner_hook = planner_hook;
	planner_hook = PlanWithContext;
	prev_executor_start_hook = ExecutorStart_hook;
	ExecutorStart_hook = StartWithContext;
	prev_executor_run_hook = ExecutorRun_hook;
	ExecutorRun_hook = RunNested;
	prev_executor_finish_hook = ExecutorFinish_hook;
	ExecutorFinish_hook = FinishNested;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = UtilityNested;
	RegisterXactCallback(OnTransactionEnd, NULL);
}
