/*-------------------------------------------------------------------------
 *
 * ext/bypassing_roles.c
 *		Refuse a context to a role that row level security does not limit.
 *
 * A site that connects as a superuser, a BYPASSRLS role or the owner of its
 * tables would otherwise set a context and go on serving every tenant's
 * rows: the context only matters to policies, and policies do not apply to
 * such a role (an owner is held by FORCE ROW LEVEL SECURITY, but can switch
 * it off, or drop the policies, with one statement).  So setting a context
 * (the setter functions and the statement marker) fails for:
 *
 * - a current user or session user that is a superuser or has BYPASSRLS
 *   (the session user counts because RESET ROLE returns to it);
 * - a current user or session user that is a member of the owner of a table
 *   django_rls protects: one with a policy of django_rls's, known by its name,
 *   by the mark in its comment or by its reading the context through a
 *   function of schema rls (IsDjangoRlsPolicy), so that renaming the policies
 *   does not take the table out of sight.
 *
 * What it cannot see: ownership of tables no django_rls policy protects
 * (nothing to bypass there), and roles the session could SET ROLE to but has
 * not (the checks and rls.problems report those).  Clearing a context is
 * always allowed.
 *
 * A superuser can allow it for maintenance with
 * django_rls.allow_bypassing_roles (PGC_SUSET: SET in a superuser's session,
 * or ALTER ROLE ... SET for a maintenance role).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_policy.h"
#include "commands/comment.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "django_rls.h"

static bool allow_bypassing_roles = false;

/*
 * Which protected table a role owns (InvalidOid: none), for the last roles
 * asked about.  Any relcache invalidation (CREATE/DROP POLICY, ALTER TABLE
 * ... OWNER, DROP TABLE) or change of role membership empties it.
 */
typedef struct OwnerCacheEntry
{
	Oid			role;
	Oid			owned_table;
} OwnerCacheEntry;

#define OWNER_CACHE_SIZE 2

static OwnerCacheEntry owner_cache[OWNER_CACHE_SIZE];
static int	owner_cache_used = 0;
static bool callbacks_registered = false;

static void
ForgetOwnedTables(Datum arg, Oid relid)
{
	owner_cache_used = 0;
}

static void
ForgetOwnedTablesOnRoleChange(Datum arg, int cacheid, uint32 hashvalue)
{
	owner_cache_used = 0;
}

void
RlsDefineBypassingRoleSettings(void)
{
	DefineCustomBoolVariable(RLS_GUC_PREFIX ".allow_bypassing_roles",
							 "Let superusers, BYPASSRLS roles and owners of protected tables set a django_rls context.",
							 "Off by default, so that a site connected as a role that policies do not limit fails at its first context instead of serving every site's rows. A superuser may turn it on for maintenance.",
							 &allow_bypassing_roles, false, PGC_SUSET, 0,
							 NULL, NULL, NULL);
}

/*
 * Whether a policy is django_rls's: named as rls_apply names the permissive
 * policy every protected table has (rls_base_select, or rls_base on a table
 * protected before rls_base_<command> replaced it), carrying the mark
 * rls._ensure_policy() leaves in its comment (ALTER POLICY ... RENAME keeps
 * it), or reading the context through a function of schema rls (renaming the
 * policy and stripping its comment keep that dependency).  The owner of the
 * table can do all three, so the name alone let an owner who renamed
 * rls_base_select set a context again.
 */
static bool
IsDjangoRlsPolicy(HeapTuple policy, Oid rls_schema)
{
	Form_pg_policy form = (Form_pg_policy) GETSTRUCT(policy);
	const char *name = NameStr(form->polname);
	char	   *comment;
	Relation	depend;
	SysScanDesc scan;
	ScanKeyData keys[2];
	HeapTuple	tuple;
	bool		reads_context = false;

	if (strcmp(name, "rls_base_select") == 0 || strcmp(name, "rls_base") == 0)
		return true;
	comment = GetComment(form->oid, PolicyRelationId, 0);
	if (comment != NULL && strncmp(comment, "django_rls ", strlen("django_rls ")) == 0)
		return true;
	if (!OidIsValid(rls_schema))
		return false;
	depend = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&keys[0], Anum_pg_depend_classid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(PolicyRelationId));
	ScanKeyInit(&keys[1], Anum_pg_depend_objid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(form->oid));
	scan = systable_beginscan(depend, DependDependerIndexId, true, NULL, 2, keys);
	while (!reads_context && HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tuple);

		reads_context = dep->refclassid == ProcedureRelationId &&
			get_func_namespace(dep->refobjid) == rls_schema;
	}
	systable_endscan(scan);
	table_close(depend, AccessShareLock);
	return reads_context;
}

/*
 * A protected table role is a member of the owner of, or InvalidOid.  Every
 * policy is read, but only those of tables the role owns are looked at
 * further, so for a role that owns no table (the application role) the cost
 * is one owner look-up per table with policies, as it was per rls_base_select.
 */
static Oid
FindOwnedProtectedTable(Oid role)
{
	Relation	policies;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			owned = InvalidOid;
	Oid			rls_schema = get_namespace_oid("rls", true);
	Oid			last_table = InvalidOid;
	bool		last_owned = false;

	policies = table_open(PolicyRelationId, AccessShareLock);
	scan = systable_beginscan(policies, InvalidOid, false, NULL, 0, NULL);
	while (!OidIsValid(owned) && HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Oid			relid = ((Form_pg_policy) GETSTRUCT(tuple))->polrelid;

		if (relid != last_table)
		{
			HeapTuple	classtuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));

			last_table = relid;
			last_owned = false;
			if (!HeapTupleIsValid(classtuple))
				continue;
			last_owned = is_member_of_role(role, ((Form_pg_class) GETSTRUCT(classtuple))->relowner);
			ReleaseSysCache(classtuple);
		}
		if (last_owned && IsDjangoRlsPolicy(tuple, rls_schema))
			owned = relid;
	}
	systable_endscan(scan);
	table_close(policies, AccessShareLock);
	return owned;
}

static Oid
OwnedProtectedTable(Oid role)
{
	int			i;
	Oid			owned;

	if (!callbacks_registered)
	{
		CacheRegisterRelcacheCallback(ForgetOwnedTables, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHMEMMEMROLE, ForgetOwnedTablesOnRoleChange, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHOID, ForgetOwnedTablesOnRoleChange, (Datum) 0);
		callbacks_registered = true;
	}
	for (i = 0; i < owner_cache_used; i++)
		if (owner_cache[i].role == role)
			return owner_cache[i].owned_table;
	owned = FindOwnedProtectedTable(role);
	if (owner_cache_used == OWNER_CACHE_SIZE)
		owner_cache_used = 0;
	owner_cache[owner_cache_used].role = role;
	owner_cache[owner_cache_used].owned_table = owned;
	owner_cache_used++;
	return owned;
}

/* Why role bypasses row level security, or NULL when policies limit it. */
static char *
BypassReason(Oid role)
{
	Oid			owned;

	if (superuser_arg(role))
		return pstrdup("is a superuser");
	if (has_bypassrls_privilege(role))
		return pstrdup("has BYPASSRLS");
	owned = OwnedProtectedTable(role);
	if (OidIsValid(owned))
	{
		char	   *name = get_rel_name(owned);
		char	   *schema = get_namespace_name(get_rel_namespace(owned));

		if (name == NULL || schema == NULL)
			return pstrdup("owns a table django_rls protects");
		return psprintf("owns %s, a table django_rls protects, and can switch its row level security off",
						quote_qualified_identifier(schema, name));
	}
	return NULL;
}

static pg_noreturn void
RefuseRole(const char *which, Oid role, const char *reason)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("django_rls refuses to set a context for role \"%s\", which row level security does not limit",
					GetUserNameFromId(role, false)),
			 errdetail("The %s \"%s\" %s, so the policies would not filter its queries and it would see every site's rows.",
					   which, GetUserNameFromId(role, false), reason),
			 errhint("Connect the application as a role that is NOSUPERUSER NOBYPASSRLS and owns no protected table (manage.py rls_roles creates one). For maintenance, a superuser can SET django_rls.allow_bypassing_roles = on, or ALTER ROLE ... SET it for a maintenance role.")));
}

/*
 * Refuse to set a context when the current user or the session user bypasses
 * row level security, unless django_rls.allow_bypassing_roles is on.
 */
void
RlsCheckRoleLimitedByPolicies(void)
{
	Oid			current = GetUserId();
	Oid			session = GetSessionUserId();
	char	   *reason;

	if (allow_bypassing_roles)
		return;
	reason = BypassReason(current);
	if (reason != NULL)
		RefuseRole("current user", current, reason);
	if (session != current)
	{
		reason = BypassReason(session);
		if (reason != NULL)
			RefuseRole("session user", session, reason);
	}
}
