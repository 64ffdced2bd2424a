/*-------------------------------------------------------------------------
 *
 * ext/audit_context.c
 *		The context each statement started with, for the audit trigger.
 *
 * The audit trigger fires when its statement ends, and by then the statement
 * may have changed the context: in
 *	 WITH u AS (UPDATE ...) SELECT (SELECT count(*) FROM u), rls.clear_context()
 * the rows were written with a context that is gone when the trigger reads
 * it.  So the executor hooks below take a snapshot of the context for every
 * query when it starts running, and while a query's AFTER triggers fire (in
 * ExecutorFinish) the capture reads that query's snapshot.  A query that a
 * function runs has its own snapshot, so a function that sets a context and
 * then writes is recorded with the context it wrote with.  COPY and TRUNCATE
 * fire their triggers outside the executor; the utility hook gives them the
 * snapshot taken when the command started.
 *
 * Snapshots live in a list kept in TopMemoryContext.  A query removes its own
 * at ExecutorEnd; queries that fail never get there, so an aborted
 * subtransaction drops the snapshots taken inside it (a released one hands
 * them to its parent), and the end of the transaction drops them all.  Which snapshot is firing is remembered by a
 * serial number, never by pointer, so a dropped snapshot cannot be read.
 *
 * When no snapshot applies (the library was loaded by the very statement
 * whose triggers fire), the statement started before any django_rls code ran
 * in this backend, so it started without a context: the capture records none.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "executor/executor.h"
#include "tcop/utility.h"
#include "utils/memutils.h"

#include "django_rls.h"

typedef struct StatementFrame
{
	struct StatementFrame *next;
	const void *owner;			/* the QueryDesc, or the utility's PlannedStmt */
	uint64		serial;
	int			nest_level;
	bool		ran;			/* refreshed at the first ExecutorRun */
	RlsStatementContext context;
} StatementFrame;

static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;
static ExecutorFinish_hook_type prev_executor_finish = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;

static StatementFrame *frames = NULL;	/* newest first */
static uint64 next_serial = 1;
static uint64 firing_serial = 0;	/* 0: no statement's triggers are firing */

static const char empty_claims[] = "";

static void
TakeSnapshot(RlsStatementContext *context)
{
	context->site = rls_current_site;
	context->user = rls_current_user;
	if (context->claims != NULL && context->claims != empty_claims)
		pfree(context->claims);
	if (rls_claims_setting == NULL || rls_claims_setting[0] == '\0')
		context->claims = (char *) empty_claims;
	else
		context->claims = MemoryContextStrdup(TopMemoryContext, rls_claims_setting);
}

static void
FreeFrame(StatementFrame *frame)
{
	if (frame->context.claims != empty_claims)
		pfree(frame->context.claims);
	pfree(frame);
}

static StatementFrame *
PushFrame(const void *owner)
{
	StatementFrame *frame = MemoryContextAllocZero(TopMemoryContext, sizeof(StatementFrame));

	frame->owner = owner;
	frame->serial = next_serial++;
	frame->nest_level = GetCurrentTransactionNestLevel();
	TakeSnapshot(&frame->context);
	frame->next = frames;
	frames = frame;
	return frame;
}

static StatementFrame *
FindFrame(const void *owner)
{
	StatementFrame *frame;

	for (frame = frames; frame != NULL; frame = frame->next)
		if (frame->owner == owner)
			return frame;
	return NULL;
}

/* Remove the frame of owner, if it is still there. */
static void
PopFrame(const void *owner)
{
	StatementFrame **link;

	for (link = &frames; *link != NULL; link = &(*link)->next)
	{
		if ((*link)->owner == owner)
		{
			StatementFrame *gone = *link;

			*link = gone->next;
			FreeFrame(gone);
			return;
		}
	}
}

/* Drop the frames taken at nest_level or deeper. */
static void
DropFramesFrom(int nest_level)
{
	StatementFrame **link = &frames;

	while (*link != NULL)
	{
		if ((*link)->nest_level >= nest_level)
		{
			StatementFrame *gone = *link;

			*link = gone->next;
			FreeFrame(gone);
		}
		else
			link = &(*link)->next;
	}
}

static void
OnTransactionEnd(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
	{
		DropFramesFrom(0);
		firing_serial = 0;
	}
}

static void
OnSubtransactionEnd(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	StatementFrame *frame;
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_ABORT_SUB)
		DropFramesFrom(level);
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		/* A portal opened inside a released savepoint now belongs to the parent. */
		for (frame = frames; frame != NULL; frame = frame->next)
			if (frame->nest_level >= level)
				frame->nest_level = level - 1;
	}
}

static void
StartQuery(QueryDesc *queryDesc, int eflags)
{
	if (!IsParallelWorker())
	{
		/* A frame left under this address by a query that never ended is stale. */
		PopFrame(queryDesc);
		PushFrame(queryDesc);
	}
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * The context a query writes with is the one in force when it starts
 * running: between ExecutorStart and the first ExecutorRun (a portal bound
 * now and executed later) the context may still change, and the rows are
 * then written, and checked by policies, with the later one.
 */
static void
RunQuery(RLS_EXECUTOR_RUN_PARAMS)
{
	StatementFrame *frame = IsParallelWorker() ? NULL : FindFrame(query_desc);

	if (frame != NULL && !frame->ran)
	{
		TakeSnapshot(&frame->context);
		frame->ran = true;
	}
	if (prev_executor_run)
		prev_executor_run(RLS_EXECUTOR_RUN_ARGS);
	else
		standard_ExecutorRun(RLS_EXECUTOR_RUN_ARGS);
}

static void
FinishQuery(QueryDesc *queryDesc)
{
	StatementFrame *frame = FindFrame(queryDesc);
	uint64		outer = firing_serial;

	firing_serial = frame != NULL ? frame->serial : 0;
	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		firing_serial = outer;
	}
	PG_END_TRY();
}

static void
EndQuery(QueryDesc *queryDesc)
{
	PopFrame(queryDesc);
	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

/* COPY and TRUNCATE fire AFTER triggers of their own, outside the executor. */
static void
RunUtility(PlannedStmt *pstmt, const char *query_string, bool read_only_tree,
		   ProcessUtilityContext context, ParamListInfo params,
		   QueryEnvironment *query_env, DestReceiver *dest, QueryCompletion *qc)
{
	uint64		outer = firing_serial;
	volatile bool pushed = false;

	if (!IsParallelWorker() && IsTransactionState() &&
		(IsA(pstmt->utilityStmt, CopyStmt) || IsA(pstmt->utilityStmt, TruncateStmt)))
	{
		firing_serial = PushFrame(pstmt)->serial;
		pushed = true;
	}
	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, query_string, read_only_tree, context,
								 params, query_env, dest, qc);
		else
			standard_ProcessUtility(pstmt, query_string, read_only_tree, context,
									params, query_env, dest, qc);
	}
	PG_FINALLY();
	{
		firing_serial = outer;
	}
	PG_END_TRY();
	if (pushed)
		PopFrame(pstmt);
}

/*
 * The context the statement whose AFTER triggers are firing started with.
 * Returns false when there is none (see the file header): the caller then
 * records no context.
 */
bool
RlsFiringStatementContext(RlsStatementContext *result)
{
	StatementFrame *frame;

	if (firing_serial != 0)
	{
		for (frame = frames; frame != NULL; frame = frame->next)
		{
			if (frame->serial == firing_serial)
			{
				*result = frame->context;
				return true;
			}
		}
	}
	memset(result, 0, sizeof(RlsStatementContext));
	result->site.kind = RLS_ID_UNSET;
	result->user.kind = RLS_ID_UNSET;
	result->claims = (char *) empty_claims;
	return false;
}

/*
 * Installed before statement.c's hooks, so that statement.c's ExecutorStart
 * (which applies a context the statement carries) runs first and the
 * snapshot sees that context.
 */
void
RlsInstallAuditContextHooks(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = StartQuery;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = RunQuery;
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = FinishQuery;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = EndQuery;
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = RunUtility;
	RegisterXactCallback(OnTransactionEnd, NULL);
	RegisterSubXactCallback(OnSubtransactionEnd, NULL);
}
