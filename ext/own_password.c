/*-------------------------------------------------------------------------
 *
 * ext/own_password.c
 *		A statement-bound or signing role cannot change its own password.
 *
 * PostgreSQL lets every role set its own password: ALTER ROLE CURRENT_USER
 * PASSWORD '...' is the one change a role without CREATEROLE may make to
 * itself.  For the application role that hands SQL injected into the
 * application's statements a password of its choosing: with it, the attacker
 * opens a session of its own (A3), where a statement-bound role without a key
 * accepts whatever context the attacker binds, and the application's next
 * connection fails (also with PASSWORD NULL).  So a non-superuser whose
 * session has django_rls.statement_bound or django_rls.require_signature on
 * is refused ALTER ROLE (or ALTER USER) ... PASSWORD of its own role, however
 * it is reached (a DO block, EXECUTE in a function).  Its password is set by
 * a superuser or a CREATEROLE administrator, as manage.py rls_roles does.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"

#include "django_rls.h"

static ProcessUtility_hook_type prev_process_utility_hook = NULL;

static bool
SetsPassword(AlterRoleStmt *stmt)
{
	ListCell   *option;

	foreach(option, stmt->options)
	{
		if (strcmp(((DefElem *) lfirst(option))->defname, "password") == 0)
			return true;
	}
	return false;
}

static void
RefuseOwnPassword(Node *parsetree)
{
	AlterRoleStmt *stmt;

	if (!IsA(parsetree, AlterRoleStmt))
		return;
	stmt = (AlterRoleStmt *) parsetree;
	if (!(rls_statement_bound || rls_require_signature) || superuser() || !SetsPassword(stmt))
		return;
	if (get_rolespec_oid(stmt->role, true) != GetUserId())
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("a django_rls statement-bound or signing role cannot change its own password"),
			 errdetail("A password chosen by SQL injected into the application's statements would give it a session of its own, where it binds its own context, and would lock the application out."),
			 errhint("Have a superuser or a CREATEROLE administrator run ALTER ROLE ... PASSWORD for this role.")));
}

static void
CheckUtility(PlannedStmt *pstmt, const char *query_string, bool read_only_tree,
			 ProcessUtilityContext context, ParamListInfo params,
			 QueryEnvironment *query_env, DestReceiver *dest, QueryCompletion *qc)
{
	RefuseOwnPassword(pstmt->utilityStmt);
	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, query_string, read_only_tree, context,
								  params, query_env, dest, qc);
	else
		standard_ProcessUtility(pstmt, query_string, read_only_tree, context,
								params, query_env, dest, qc);
}

void
RlsInstallOwnPasswordHook(void)
{
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = CheckUtility;
}
