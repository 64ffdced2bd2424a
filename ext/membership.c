/*-------------------------------------------------------------------------
 *
 * ext/membership.c
 *		rls.member_of(): whether the context's user has a membership row for
 *		a key, read without expanding the membership table's policies.
 *
 * A project policy that reads a membership table, and a membership policy
 * that reads the project table, expand into each other: PostgreSQL refuses
 * every query on either with "infinite recursion detected in policy".  This
 * function breaks the circle without raising anyone's rights.  It runs as
 * its caller (it is not SECURITY DEFINER) and reads only rows whose user
 * column holds the context's user, and only after checking that the
 * caller's own SELECT policies on the membership table admit every such row
 * (each one that applies has "user_column = rls.user_id()" as one of its
 * OR-branches).  So it answers nothing the caller could not read with a
 * plain SELECT; it merely skips the other branches of those policies, which
 * are what would recurse.
 *
 * No code a non-superuser can define runs here: the table is scanned with
 * genam's scan (no planner, so no index expression or predicate is folded
 * and no operator is looked up by name), through a plain btree index of
 * built-in operator families only, with the built-in equality functions of
 * int2, int4, int8 and uuid, which are the only column types accepted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/transam.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/primnodes.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "rewrite/rowsecurity.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

#include "django_rls.h"

PG_FUNCTION_INFO_V1(rls_member_of);

/* How one call site reads its membership table, worked out on its first call. */
typedef struct MemberLookup
{
	Oid			relid;
	NameData	key_column;
	NameData	user_column;
	AttrNumber	key_attno;
	AttrNumber	user_attno;
	Oid			key_type;
	Oid			user_type;
	Oid			index;			/* InvalidOid: a heap scan */
	bool		key_in_scan;	/* tested by the scan itself, else on each row */
	bool		user_in_scan;
	bool		user_first;		/* the index orders the user column before the key */
} MemberLookup;

static bool
IsKeyType(Oid type)
{
	return type == INT2OID || type == INT4OID || type == INT8OID || type == UUIDOID;
}

static RegProcedure
EqualityProc(Oid type)
{
	switch (type)
	{
		case INT2OID:
			return F_INT2EQ;
		case INT4OID:
			return F_INT4EQ;
		case INT8OID:
			return F_INT8EQ;
		case UUIDOID:
			return F_UUID_EQ;
	}
	elog(ERROR, "unexpected key type %u", type);
	return InvalidOid;			/* keep the compiler quiet */
}

static AttrNumber
KeyColumn(Relation rel, Name column, const char *role)
{
	AttrNumber	attno = get_attnum(RelationGetRelid(rel), NameStr(*column));
	Oid			type;

	if (attno == InvalidAttrNumber || attno < 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of %s does not exist", NameStr(*column), RelationGetRelationName(rel)),
				 errhint("Name the membership table's %s column.", role)));
	type = get_atttype(RelationGetRelid(rel), attno);
	if (!IsKeyType(type))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of %s has type %s, not smallint, integer, bigint or uuid",
						NameStr(*column), RelationGetRelationName(rel), format_type_be(type)),
				 errhint("rls.member_of() compares keys with built-in equality only; use a policy of your own for other key types.")));
	/* Column privileges add to the table's; pg_attribute_aclcheck() checks only the former. */
	if (pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_SELECT) != ACLCHECK_OK &&
		pg_attribute_aclcheck(RelationGetRelid(rel), attno, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for column \"%s\" of %s", NameStr(*column), RelationGetRelationName(rel)),
				 errhint("rls.member_of() reads only what its caller may SELECT; grant SELECT on the membership table.")));
	return attno;
}

static Oid
AccessorOid(const char *name)
{
	return LookupFuncName(list_make2(makeString("rls"), makeString(pstrdup(name))), 0, NULL, false);
}

/* Whether an operator's function is the built-in equality of two key types. */
static bool
IsKeyEquality(Oid opno)
{
	switch (get_opcode(opno))
	{
		case F_INT2EQ:
		case F_INT4EQ:
		case F_INT8EQ:
		case F_INT28EQ:
		case F_INT82EQ:
		case F_INT48EQ:
		case F_INT84EQ:
		case F_UUID_EQ:
			return true;
	}
	return false;
}

static bool
IsUserColumn(Node *node, AttrNumber user_attno)
{
	while (node && IsA(node, RelabelType))
		node = (Node *) ((RelabelType *) node)->arg;
	return node && IsA(node, Var) && ((Var *) node)->varno == 1 &&
		((Var *) node)->varlevelsup == 0 && ((Var *) node)->varattno == user_attno;
}

static bool
IsUserAccessor(Node *node, Oid user_id, Oid user_uuid)
{
	return node && IsA(node, FuncExpr) && ((FuncExpr *) node)->args == NIL &&
		(((FuncExpr *) node)->funcid == user_id || ((FuncExpr *) node)->funcid == user_uuid);
}

/* Whether a policy expression is, or ORs in, "user_column = rls.user_id()" (or user_uuid()). */
static bool
AdmitsOwnRows(Node *qual, AttrNumber user_attno, Oid user_id, Oid user_uuid)
{
	if (qual == NULL)
		return false;
	if (IsA(qual, BoolExpr) && ((BoolExpr *) qual)->boolop == OR_EXPR)
	{
		ListCell   *cell;

		foreach(cell, ((BoolExpr *) qual)->args)
			if (AdmitsOwnRows(lfirst(cell), user_attno, user_id, user_uuid))
				return true;
		return false;
	}
	if (IsA(qual, OpExpr) && list_length(((OpExpr *) qual)->args) == 2 &&
		IsKeyEquality(((OpExpr *) qual)->opno))
	{
		Node	   *left = linitial(((OpExpr *) qual)->args);
		Node	   *right = lsecond(((OpExpr *) qual)->args);

		return (IsUserColumn(left, user_attno) && IsUserAccessor(right, user_id, user_uuid)) ||
			(IsUserColumn(right, user_attno) && IsUserAccessor(left, user_id, user_uuid));
	}
	return false;
}

static bool
IsTrue(Node *qual)
{
	return qual && IsA(qual, Const) && !((Const *) qual)->constisnull &&
		((Const *) qual)->consttype == BOOLOID && DatumGetBool(((Const *) qual)->constvalue);
}

static bool
PolicyAppliesTo(RowSecurityPolicy *policy, Oid role)
{
	Datum	   *roles;
	int			count;

	deconstruct_array(policy->roles, OIDOID, sizeof(Oid), true, TYPALIGN_INT, &roles, NULL, &count);
	for (int i = 0; i < count; i++)
		if (DatumGetObjectId(roles[i]) == ACL_ID_PUBLIC || has_privs_of_role(role, DatumGetObjectId(roles[i])))
			return true;
	return false;
}

/*
 * Refuse unless every row this function may read (user column = the
 * context's user) is one the calling role may SELECT itself: every
 * restrictive SELECT policy that applies admits such rows, and so does at
 * least one permissive one.
 */
static void
CheckOwnRowsVisible(Relation rel, AttrNumber user_attno, Name user_column)
{
	Oid			role = GetUserId();
	Oid			user_id = AccessorOid("user_id");
	Oid			user_uuid = AccessorOid("user_uuid");
	bool		permitted = false;
	const char *refusing = NULL;
	ListCell   *cell;

	if (check_enable_rls(RelationGetRelid(rel), InvalidOid, true) == RLS_NONE)
		return;					/* the role reads every row of the table anyway */
	if (rel->rd_rsdesc != NULL)
	{
		foreach(cell, rel->rd_rsdesc->policies)
		{
			RowSecurityPolicy *policy = lfirst(cell);
			bool		admits;

			if ((policy->polcmd != '*' && policy->polcmd != ACL_SELECT_CHR) || !PolicyAppliesTo(policy, role))
				continue;
			admits = AdmitsOwnRows((Node *) policy->qual, user_attno, user_id, user_uuid);
			if (policy->permissive)
				permitted = permitted || admits || IsTrue((Node *) policy->qual);
			else if (!admits && refusing == NULL)
				refusing = policy->policy_name;
		}
	}
	if (refusing != NULL || !permitted)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the policies of %s do not show role %s the rows whose \"%s\" is its user",
						RelationGetRelationName(rel), GetUserNameFromId(role, false), NameStr(*user_column)),
				 refusing ? errdetail("Policy \"%s\" has no OR-branch \"%s = rls.user_id()\"; rls.member_of() reads only rows its caller may read itself.",
									  refusing, NameStr(*user_column))
				 : errdetail("No permissive SELECT policy admits them; rls.member_of() reads only rows its caller may read itself."),
				 errhint("Protect the membership table with Members() (a user's own memberships are always visible), or give each of its SELECT policies the branch \"%s = rls.user_id() OR ...\".",
						 NameStr(*user_column))));
}

/* Whether an index column is a plain column of the table, ordered by a built-in btree family of its type. */
static bool
PlainIndexColumn(Relation index, int column, AttrNumber attno, Oid type)
{
	return index->rd_index->indkey.values[column] == attno &&
		index->rd_opfamily[column] < FirstNormalObjectId &&
		index->rd_opcintype[column] == type;
}

/* A valid btree index without expressions or predicate that leads with the key or the user column, if any. */
static void
ChooseIndex(Relation rel, MemberLookup *lookup)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *cell;
	int			best = 0;

	lookup->index = InvalidOid;
	lookup->key_in_scan = lookup->user_in_scan = true;
	lookup->user_first = false;
	foreach(cell, indexes)
	{
		Relation	index = index_open(lfirst_oid(cell), AccessShareLock);
		Form_pg_index form = index->rd_index;
		int			nkeys = IndexRelationGetNumberOfKeyAttributes(index);
		bool		has_key = false;
		bool		has_user = false;
		bool		user_first = false;
		int			score;

		if (index->rd_rel->relam == BTREE_AM_OID && form->indisvalid && form->indisready && form->indislive &&
			heap_attisnull(index->rd_indextuple, Anum_pg_index_indexprs, NULL) &&
			heap_attisnull(index->rd_indextuple, Anum_pg_index_indpred, NULL))
		{
			for (int i = 0; i < nkeys && i < 2; i++)
			{
				has_key = has_key || PlainIndexColumn(index, i, lookup->key_attno, lookup->key_type);
				if (!has_user && PlainIndexColumn(index, i, lookup->user_attno, lookup->user_type))
				{
					has_user = true;
					user_first = !has_key;
				}
			}
			/* Leading with the key or the user column is what makes the scan short; both is best. */
			if (!PlainIndexColumn(index, 0, lookup->key_attno, lookup->key_type) &&
				!PlainIndexColumn(index, 0, lookup->user_attno, lookup->user_type))
				has_key = has_user = false;
			score = (has_key ? 1 : 0) + (has_user ? 1 : 0);
			if (score > best)
			{
				best = score;
				lookup->index = RelationGetRelid(index);
				lookup->key_in_scan = has_key;
				lookup->user_in_scan = has_user;
				lookup->user_first = user_first;
			}
		}
		index_close(index, NoLock);
	}
	list_free(indexes);
}

static MemberLookup *
PrepareLookup(FunctionCallInfo fcinfo, Relation rel, Name key_column, Name user_column)
{
	MemberLookup *lookup = (MemberLookup *) fcinfo->flinfo->fn_extra;
	Oid			argtype;

	if (lookup != NULL && lookup->relid == RelationGetRelid(rel) &&
		namestrcmp(&lookup->key_column, NameStr(*key_column)) == 0 &&
		namestrcmp(&lookup->user_column, NameStr(*user_column)) == 0)
		return lookup;

	if (rel->rd_rel->relkind != RELKIND_RELATION || RELATION_IS_OTHER_TEMP(rel))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("%s is not a plain table of this session", RelationGetRelationName(rel)),
				 errhint("rls.member_of() reads a plain table (not a view, a partitioned or foreign table, or another session's temporary table).")));
	if (lookup == NULL)
		lookup = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(MemberLookup));
	lookup->relid = RelationGetRelid(rel);
	namestrcpy(&lookup->key_column, NameStr(*key_column));
	namestrcpy(&lookup->user_column, NameStr(*user_column));
	lookup->key_attno = KeyColumn(rel, key_column, "key");
	lookup->user_attno = KeyColumn(rel, user_column, "user");
	lookup->key_type = get_atttype(lookup->relid, lookup->key_attno);
	lookup->user_type = get_atttype(lookup->relid, lookup->user_attno);
	argtype = get_fn_expr_argtype(fcinfo->flinfo, 3);
	if (argtype != lookup->key_type)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("rls.member_of() got a key of type %s for column \"%s\" of type %s",
						format_type_be(argtype), NameStr(*key_column), format_type_be(lookup->key_type)),
				 errhint("Pass the key as the column's type (a foreign key's column has its target's type).")));
	CheckOwnRowsVisible(rel, lookup->user_attno, user_column);
	ChooseIndex(rel, lookup);
	return lookup;
}

/* The context's user as a value of the user column's type; false when no row can hold it. */
static bool
ContextUser(MemberLookup *lookup, Datum *value)
{
	int64		id = rls_current_user.int_value;

	if (lookup->user_type == UUIDOID)
	{
		pg_uuid_t  *copy;

		if (rls_current_user.kind == RLS_ID_INT)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("the django_rls user is an integer, not a UUID"),
					 errhint("Column \"%s\" holds UUIDs: set the user as a UUID.", NameStr(lookup->user_column))));
		copy = palloc(sizeof(pg_uuid_t));
		memcpy(copy, &rls_current_user.uuid_value, sizeof(pg_uuid_t));
		*value = UUIDPGetDatum(copy);
		return true;
	}
	if (rls_current_user.kind == RLS_ID_UUID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("the django_rls user is a UUID, not an integer"),
				 errhint("Column \"%s\" holds integers: set the user as an integer.", NameStr(lookup->user_column))));
	if (lookup->user_type == INT2OID)
	{
		if (id < PG_INT16_MIN || id > PG_INT16_MAX)
			return false;
		*value = Int16GetDatum((int16) id);
	}
	else if (lookup->user_type == INT4OID)
	{
		if (id < PG_INT32_MIN || id > PG_INT32_MAX)
			return false;
		*value = Int32GetDatum((int32) id);
	}
	else
		*value = Int64GetDatum(id);
	return true;
}

/* Whether a row's column equals a value of the column's type (for a column the scan does not test). */
static bool
ColumnEquals(HeapTuple tuple, TupleDesc desc, AttrNumber attno, Oid type, Datum value)
{
	bool		isnull;
	Datum		stored = heap_getattr(tuple, attno, desc, &isnull);

	if (isnull)
		return false;
	return DatumGetBool(OidFunctionCall2Coll(EqualityProc(type), InvalidOid, stored, value));
}

Datum
rls_member_of(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Name		key_column = PG_GETARG_NAME(1);
	Name		user_column = PG_GETARG_NAME(2);
	Datum		key = PG_GETARG_DATUM(3);
	Relation	rel;
	MemberLookup *lookup;
	Datum		user;
	ScanKeyData keys[2];
	int			nkeys = 0;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found = false;

	RlsCheckStatementContext();
	rel = table_open(relid, AccessShareLock);
	lookup = PrepareLookup(fcinfo, rel, key_column, user_column);
	if (rls_current_user.kind == RLS_ID_UNSET)
	{
		table_close(rel, NoLock);
		if (rls_strict)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("no user is set in the django_rls context"),
					 errdetail("django_rls.strict is on, so a policy that needs the user raises instead of matching no rows."),
					 errhint("Call rls.set_context() first, or run the code inside django_rls.context() or the middleware.")));
		PG_RETURN_BOOL(false);
	}
	if (!ContextUser(lookup, &user))
	{
		table_close(rel, NoLock);
		PG_RETURN_BOOL(false);
	}

	/* A btree scan wants its keys in the order of the index columns. */
	if (lookup->user_in_scan && lookup->user_first)
		ScanKeyInit(&keys[nkeys++], lookup->user_attno, BTEqualStrategyNumber,
					EqualityProc(lookup->user_type), user);
	if (lookup->key_in_scan)
		ScanKeyInit(&keys[nkeys++], lookup->key_attno, BTEqualStrategyNumber,
					EqualityProc(lookup->key_type), key);
	if (lookup->user_in_scan && !lookup->user_first)
		ScanKeyInit(&keys[nkeys++], lookup->user_attno, BTEqualStrategyNumber,
					EqualityProc(lookup->user_type), user);
	scan = systable_beginscan(rel, lookup->index, OidIsValid(lookup->index),
							  GetActiveSnapshot(), nkeys, keys);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		if (!lookup->key_in_scan &&
			!ColumnEquals(tuple, RelationGetDescr(rel), lookup->key_attno, lookup->key_type, key))
			continue;
		if (!lookup->user_in_scan &&
			!ColumnEquals(tuple, RelationGetDescr(rel), lookup->user_attno, lookup->user_type, user))
			continue;
		found = true;
		break;
	}
	systable_endscan(scan);
	table_close(rel, NoLock);
	PG_RETURN_BOOL(found);
}
