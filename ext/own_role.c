/*-------------------------------------------------------------------------
 *
 * ext/own_role.c
 *		A statement-bound or signing role cannot change its own password or
 *		its own role defaults.
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
 * The same goes for the role's defaults: PostgreSQL lets a role ALTER ROLE
 * itself [IN DATABASE ...] SET (or RESET) any USERSET setting, which then
 * applies to every later session of the role, on every connection, whatever
 * site it serves: extra_float_digits rounding every site's floats as they are
 * read, statement_timeout = 1 or local_preload_libraries of a missing library
 * stopping every request, RESET of the search_path rls_roles pins.  Defaults
 * of a statement-bound or signing role are a superuser's to set.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/acl.h"

#include "django_rls.h"

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

static bool
IsOwnRole(RoleSpec *role)
{
	return role != NULL && get_rolespec_oid(role, true) == GetUserId();
}

/* Called by bound_role_utility.c for a non-superuser statement-bound or signing session. */
void
RlsRefuseOwnRoleChanges(Node *parsetree)
{
	if (IsA(parsetree, AlterRoleStmt) && SetsPassword((AlterRoleStmt *) parsetree) &&
		IsOwnRole(((AlterRoleStmt *) parsetree)->role))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("a django_rls statement-bound or signing role cannot change its own password"),
				 errdetail("A password chosen by SQL injected into the application's statements would give it a session of its own, where it binds its own context, and would lock the application out."),
				 errhint("Have a superuser or a CREATEROLE administrator run ALTER ROLE ... PASSWORD for this role.")));
	if (IsA(parsetree, AlterRoleSetStmt) && IsOwnRole(((AlterRoleSetStmt *) parsetree)->role))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("a django_rls statement-bound or signing role cannot change its own role defaults"),
				 errdetail("Defaults set by SQL injected into one request would apply to every later session of the role, whatever site it serves."),
				 errhint("Have a superuser run ALTER ROLE ... SET for this role; in a session, SET applies to that session only.")));
}
