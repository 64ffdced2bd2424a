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
 * Only statements the client sent count, never queries run by functions, so
 * the marker gives no more power than calling the setter functions: a token
 * is still verified and spent once; an unsigned context is still refused when
 * signatures are required.  A signed token seen a second time within the
 * transaction that verified it (planning, then execution of the same
 * statement) is not spent again: the context it authorized is re-applied.
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
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "django_rls.h"

#define STATEMENT_MARKER "/*django_rls:$1*/"

static planner_hook_type prev_planner_hook = NULL;
static ExecutorStart_hook_type prev_executor_start_hook = NULL;

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

static void
OnTransactionEnd(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		ForgetAppliedContext();
}

/* The text of parameter $1, or an error saying what the marker needs. */
static char *
MarkerParameter(ParamListInfo params)
{
	ParamExternData *param;
	ParamExternData workspace;

	if (params == NULL || params->numParams < 1)
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
ApplyStatementContext(const char *source, ParamListInfo params)
{
	char	   *parameter;
	RlsContextValues context;

	if (source == NULL || strncmp(source, STATEMENT_MARKER, sizeof(STATEMENT_MARKER) - 1) != 0 ||
		debug_query_string == NULL || strcmp(source, debug_query_string) != 0 ||
		IsParallelWorker())
		return;

	parameter = MarkerParameter(params);
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
		RlsParseContextObject(parameter, strlen(parameter), &context);
	}
	RlsApplyContext(context.site, context.user, context.claims, true);
	RememberAppliedContext(parameter, &context);
}

static PlannedStmt *
PlanWithContext(Query *parse, const char *query_string, int cursor_options,
				ParamListInfo bound_params)
{
	/* A generic plan is made without parameters; the executor applies it. */
	if (bound_params != NULL)
		ApplyStatementContext(query_string, bound_params);
	if (prev_planner_hook)
		return prev_planner_hook(parse, query_string, cursor_options, bound_params);
	return standard_planner(parse, query_string, cursor_options, bound_params);
}

static void
StartWithContext(QueryDesc *query_desc, int eflags)
{
	ApplyStatementContext(query_desc->sourceText, query_desc->params);
	if (prev_executor_start_hook)
		prev_executor_start_hook(query_desc, eflags);
	else
		standard_ExecutorStart(query_desc, eflags);
}

void
RlsInstallStatementHooks(void)
{
	prev_planner_hook = planner_hook;
	planner_hook = PlanWithContext;
	prev_executor_start_hook = ExecutorStart_hook;
	ExecutorStart_hook = StartWithContext;
	RegisterXactCallback(OnTransactionEnd, NULL);
}
