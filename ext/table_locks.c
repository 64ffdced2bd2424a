/*-------------------------------------------------------------------------
 *
 * ext/table_locks.c
 *		A statement-bound or signing role cannot lock a whole table against
 *		other sites' requests.
 *
 * LOCK TABLE needs only UPDATE, DELETE or TRUNCATE on the table for every
 * mode, and the application role has UPDATE and DELETE on the tables it
 * serves.  A table lock is not row level: LOCK TABLE testapp_note IN ACCESS
 * EXCLUSIVE MODE, injected into one site's request, stops every other site's
 * reads and writes of that table until the request's transaction ends (SHARE
 * and stronger stop their writes), and row level security has no say.  So a
 * non-superuser whose session has django_rls.statement_bound or
 * django_rls.require_signature on is refused LOCK in any mode stronger than
 * ROW EXCLUSIVE, however it is reached (a DO block, EXECUTE in a function).
 * ACCESS SHARE, ROW SHARE and ROW EXCLUSIVE stay allowed: they conflict only
 * with the modes maintenance takes, as the role's own SELECT, SELECT ... FOR
 * UPDATE and writes do anyway.  A request serialises its own site's work
 * with row locks (SELECT ... FOR UPDATE of its rows) or advisory locks keyed
 * by its site.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/lockdefs.h"
#include "tcop/utility.h"
#include "utils/acl.h"

#include "django_rls.h"

static ProcessUtility_hook_type prev_process_utility_hook = NULL;

static void
RefuseTableLocks(Node *parsetree)
{
	if (!IsA(parsetree, LockStmt) || ((LockStmt *) parsetree)->mode <= RowExclusiveLock)
		return;
	if (!(rls_statement_bound || rls_require_signature) || superuser())
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("a django_rls statement-bound or signing role cannot LOCK a table in a mode stronger than ROW EXCLUSIVE"),
			 errdetail("A table lock is not row level: it would stop every other site's requests on the table until this transaction ends."),
			 errhint("Lock the site's own rows with SELECT ... FOR UPDATE, or take pg_advisory_xact_lock() on a key that includes the site.")));
}

static void
CheckUtility(PlannedStmt *pstmt, const char *query_string, bool read_only_tree,
			 ProcessUtilityContext context, ParamListInfo params,
			 QueryEnvironment *query_env, DestReceiver *dest, QueryCompletion *qc)
{
	RefuseTableLocks(pstmt->utilityStmt);
	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, query_string, read_only_tree, context,
								  params, query_env, dest, qc);
	else
		standard_ProcessUtility(pstmt, query_string, read_only_tree, context,
								params, query_env, dest, qc);
}

void
RlsInstallTableLockHook(void)
{
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = CheckUtility;
}
