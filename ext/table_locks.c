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

#include "nodes/parsenodes.h"
#include "storage/lockdefs.h"

#include "django_rls.h"

/* Called by bound_role_utility.c for a non-superuser statement-bound or signing session. */
void
RlsRefuseTableLocks(Node *parsetree)
{
	if (!IsA(parsetree, LockStmt) || ((LockStmt *) parsetree)->mode <= RowExclusiveLock)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("a django_rls statement-bound or signing role cannot LOCK a table in a mode stronger than ROW EXCLUSIVE"),
			 errdetail("A table lock is not row level: it would stop every other site's requests on the table until this transaction ends."),
			 errhint("Lock the site's own rows with SELECT ... FOR UPDATE, or take pg_advisory_xact_lock() on a key that includes the site.")));
}
