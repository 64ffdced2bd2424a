/*-------------------------------------------------------------------------
 *
 * ext/bound_role_utility.c
 *		The one utility-statement hook that applies the refusals a
 *		statement-bound or signing role meets: changes to its own role
 *		(own_role.c) and table locks that would stop other sites
 *		(table_locks.c).
 *
 * Both refusals concern the same sessions, those of a non-superuser with
 * django_rls.statement_bound or django_rls.require_signature on, so that test
 * is made here, once per utility statement, and every other session passes
 * straight on to the next hook.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "tcop/utility.h"

#include "django_rls.h"

static ProcessUtility_hook_type prev_process_utility_hook = NULL;

static void
CheckUtility(PlannedStmt *pstmt, const char *query_string, bool read_only_tree,
			 ProcessUtilityContext context, ParamListInfo params,
			 QueryEnvironment *query_env, DestReceiver *dest, QueryCompletion *qc)
{
	if ((rls_statement_bound || rls_require_signature) && !superuser())
	{
		RlsRefuseOwnRoleChanges(pstmt->utilityStmt);
		RlsRefuseTableLocks(pstmt->utilityStmt);
	}
	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, query_string, read_only_tree, context,
								  params, query_env, dest, qc);
	else
		standard_ProcessUtility(pstmt, query_string, read_only_tree, context,
								params, query_env, dest, qc);
}

void
RlsInstallBoundRoleUtilityHook(void)
{
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = CheckUtility;
}
