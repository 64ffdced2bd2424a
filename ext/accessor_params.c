/*-------------------------------------------------------------------------
 *
 * ext/accessor_params.c
 *		Evaluate the context accessors once per execution of a plan.
 *
 * A policy such as site_id = rls.site_id() would call the accessor once for
 * every row a scan reads.  Wrapping it as (SELECT rls.site_id()) makes it run
 * once, but hides the site from the planner, which folds a STABLE call into
 * its estimates (estimate_expression_value): each site gets its own row
 * counts and plan, and beside the application's own site_id = 42 the planner
 * merges the two equalities into a one-time check.  So the planner sees the
 * call, and the finished plan is rewritten instead: each call of an accessor
 * with constant arguments becomes a PARAM_EXEC parameter, and one initplan
 * attached to the top of the plan makes all the calls, one column each, and
 * sets all the parameters.  The executor runs an initplan once per
 * execution, when any of its values is first needed, and sets every
 * parameter of its setParam from its one row (ExecSetParamPlan): so one
 * execution reads the site, the user and the claims at the same moment,
 * under one context, even a cursor whose first FETCH needed only the site
 * and whose transaction changed the context before the next.  (One initplan
 * per call, as (SELECT rls.site_id()) would make, let such a cursor read the
 * user of the next context.)  A cached plan (a prepared statement, a generic
 * plan, PL/pgSQL) runs it again in every execution, so it follows a change
 * of context; a cursor reads the context once and keeps it until it is
 * closed.  An error an accessor raises (django_rls.strict) comes when the
 * plan first needs any of its accessors.
 *
 * Beside a query's own site_id = 42 the planner turns the policy into a
 * one-time check, $0 = 42, in a Result above the scan; above a btree index
 * scan that check becomes a second index key instead (see WithoutGate).
 *
 * Parallel workers never run initplans: a Gather sends its workers the
 * values listed in its initParam, which the leader evaluates first, so every
 * Gather lists these parameters.  Every node lists them in extParam as well,
 * so that EvalPlanQual rechecks evaluate them before copying their values.
 *
 * Left alone, where a call stays a call (slower, and read when reached,
 * outside the initplan's moment): custom scans (their providers own their
 * plans), a statement that is a Result without input (it evaluates its
 * expressions once anyway, and PL/pgSQL runs such a plan as a simple
 * expression only without initplans), partition pruning steps (run once per execution already, when
 * it starts: they can only leave out partitions, never add rows that the
 * scans' filters, which read the parameters, would not pass), and the few
 * node fields not handled below (MERGE's actions, table functions).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/stratnum.h"
#include "catalog/pg_am_d.h"
#include "catalog/pg_index.h"
#include "catalog/pg_language.h"
#include "catalog/pg_opclass.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "nodes/plannodes.h"
#include "optimizer/optimizer.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "django_rls.h"

/* The C functions whose calls become parameters. */
static const struct
{
	const char *symbol;
	PGFunction	function;
}			accessors[] =
{
	{"rls_site_id", rls_site_id},
	{"rls_user_id", rls_user_id},
	{"rls_site_uuid", rls_site_uuid},
	{"rls_user_uuid", rls_user_uuid},
	{"rls_claim", rls_claim},
	{"rls_context", rls_context},
};

/* Whether each function seen so far is one of the accessors, by OID. */
typedef struct AccessorCacheEntry
{
	Oid			funcid;
	bool		is_accessor;
} AccessorCacheEntry;

static HTAB *accessor_cache = NULL;
static bool accessor_cache_valid = false;

/* django_rls.accessor_initplans: off leaves every call in place. */
static bool accessor_initplans = true;

/* One distinct accessor call of a statement and the parameter it became. */
typedef struct AccessorParam
{
	FuncExpr   *call;
	int			paramid;
} AccessorParam;

typedef struct RewriteState
{
	PlannedStmt *stmt;
	List	   *params;			/* AccessorParam *, in order of creation */
	Bitmapset  *paramids;
	int			last_plan_node_id;
} RewriteState;

/*
 * Any change to pg_proc may drop a function and reuse its OID: forget
 * everything.  The table is rebuilt lazily, never from inside the callback.
 */
static void
ForgetAccessors(Datum arg, int cacheid, uint32 hashvalue)
{
	accessor_cache_valid = false;
}

/*
 * Whether funcid is one of this library's accessors: a C function whose
 * symbol is one of ours and resolves to our own code.  Only superusers create
 * C functions, so nothing else can claim to be one.
 */
static bool
LookUpAccessor(Oid funcid)
{
	HeapTuple	tuple;
	Form_pg_proc proc;
	Datum		prosrc;
	bool		isnull;
	bool		candidate = false;
	FmgrInfo	finfo;

	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	if (!HeapTupleIsValid(tuple))
		return false;
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	if (proc->prolang == ClanguageId && !proc->proretset &&
		proc->provolatile == PROVOLATILE_STABLE)
	{
		prosrc = SysCacheGetAttr(PROCOID, tuple, Anum_pg_proc_prosrc, &isnull);
		if (!isnull)
		{
			char	   *symbol = TextDatumGetCString(prosrc);

			for (size_t i = 0; i < lengthof(accessors); i++)
				candidate |= strcmp(symbol, accessors[i].symbol) == 0;
			pfree(symbol);
		}
	}
	ReleaseSysCache(tuple);
	if (!candidate)
		return false;

	fmgr_info(funcid, &finfo);
	for (size_t i = 0; i < lengthof(accessors); i++)
		if (finfo.fn_addr == accessors[i].function)
			return true;
	return false;
}

static bool
IsAccessor(Oid funcid)
{
	AccessorCacheEntry *entry;
	bool		found;
	bool		is_accessor;

	/* Built-in functions are never ours. */
	if (funcid < FirstNormalObjectId)
		return false;
	if (!accessor_cache_valid || accessor_cache == NULL)
	{
		HASHCTL		ctl;

		if (accessor_cache != NULL)
			hash_destroy(accessor_cache);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(AccessorCacheEntry);
		ctl.hcxt = CacheMemoryContext;
		accessor_cache = hash_create("django_rls accessors", 16, &ctl,
									 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		accessor_cache_valid = true;
	}
	entry = hash_search(accessor_cache, &funcid, HASH_FIND, NULL);
	if (entry != NULL)
		return entry->is_accessor;

	/* The lookup may process invalidations; enter the answer afterwards. */
	is_accessor = LookUpAccessor(funcid);
	if (accessor_cache_valid)
	{
		entry = hash_search(accessor_cache, &funcid, HASH_ENTER, &found);
		entry->is_accessor = is_accessor;
	}
	return is_accessor;
}

/* An accessor call whose arguments are all constants (rls.claim('role')). */
static bool
IsReplaceableCall(Node *node)
{
	FuncExpr   *call;
	ListCell   *lc;

	if (!IsA(node, FuncExpr))
		return false;
	call = (FuncExpr *) node;
	if (call->funcretset)
		return false;
	foreach(lc, call->args)
		if (!IsA(lfirst(lc), Const))
			return false;
	return IsAccessor(call->funcid);
}

static bool
ContainsReplaceableCall(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsReplaceableCall(node))
		return true;
	return expression_tree_walker(node, ContainsReplaceableCall, context);
}

/* The parameter standing for a call: one per distinct call in a statement. */
static Param *
ParamForCall(RewriteState *state, FuncExpr *call)
{
	AccessorParam *known = NULL;
	ListCell   *lc;
	Param	   *param;

	foreach(lc, state->params)
	{
		AccessorParam *candidate = (AccessorParam *) lfirst(lc);

		if (equal(candidate->call, call))
		{
			known = candidate;
			break;
		}
	}
	if (known == NULL)
	{
		known = (AccessorParam *) palloc(sizeof(AccessorParam));
		known->call = copyObject(call);
		known->paramid = list_length(state->stmt->paramExecTypes);
		state->stmt->paramExecTypes = lappend_oid(state->stmt->paramExecTypes,
												  call->funcresulttype);
		state->params = lappend(state->params, known);
		state->paramids = bms_add_member(state->paramids, known->paramid);
	}

	param = makeNode(Param);
	param->paramkind = PARAM_EXEC;
	param->paramid = known->paramid;
	param->paramtype = call->funcresulttype;
	param->paramtypmod = -1;
	param->paramcollid = call->funccollid;
	param->location = call->location;
	return param;
}

static Node *
ReplaceCalls(Node *node, RewriteState *state)
{
	if (node == NULL)
		return NULL;
	if (IsReplaceableCall(node))
		return (Node *) ParamForCall(state, (FuncExpr *) node);
	return expression_tree_mutator(node, ReplaceCalls, state);
}

/* An expression field rewritten, or left as it is when it has no call. */
static void *
Rewritten(void *expr, RewriteState *state)
{
	if (!ContainsReplaceableCall((Node *) expr, NULL))
		return expr;
	return ReplaceCalls((Node *) expr, state);
}

/* Rewrite the expressions of one plan node (not of its children). */
static void
RewriteNode(Plan *plan, RewriteState *state)
{
	/*
	 * A statement that is a Result without input evaluates its expressions
	 * once, and PL/pgSQL runs it as a simple expression only without
	 * initplans.  Elsewhere, as in the planner's own initplans of
	 * (SELECT rls.user_id()), its calls become parameters like any other, so
	 * that the one initplan is the only place a plan reads the context.
	 */
	if (plan == state->stmt->planTree && IsA(plan, Result) && plan->lefttree == NULL)
		return;

	plan->targetlist = Rewritten(plan->targetlist, state);
	plan->qual = Rewritten(plan->qual, state);

	switch (nodeTag(plan))
	{
		case T_Result:
			{
				Result	   *result = (Result *) plan;

				result->resconstantqual = Rewritten(result->resconstantqual, state);
			}
			break;
		case T_ModifyTable:
			{
				ModifyTable *modify = (ModifyTable *) plan;

				modify->withCheckOptionLists = Rewritten(modify->withCheckOptionLists, state);
				modify->returningLists = Rewritten(modify->returningLists, state);
				modify->onConflictSet = Rewritten(modify->onConflictSet, state);
				modify->onConflictWhere = Rewritten(modify->onConflictWhere, state);
			}
			break;
		case T_IndexScan:
			{
				IndexScan  *scan = (IndexScan *) plan;

				scan->indexqual = Rewritten(scan->indexqual, state);
				scan->indexqualorig = Rewritten(scan->indexqualorig, state);
				scan->indexorderby = Rewritten(scan->indexorderby, state);
				scan->indexorderbyorig = Rewritten(scan->indexorderbyorig, state);
			}
			break;
		case T_IndexOnlyScan:
			{
				IndexOnlyScan *scan = (IndexOnlyScan *) plan;

				scan->indexqual = Rewritten(scan->indexqual, state);
				scan->recheckqual = Rewritten(scan->recheckqual, state);
				scan->indexorderby = Rewritten(scan->indexorderby, state);
			}
			break;
		case T_BitmapIndexScan:
			{
				BitmapIndexScan *scan = (BitmapIndexScan *) plan;

				scan->indexqual = Rewritten(scan->indexqual, state);
				scan->indexqualorig = Rewritten(scan->indexqualorig, state);
			}
			break;
		case T_BitmapHeapScan:
			{
				BitmapHeapScan *scan = (BitmapHeapScan *) plan;

				scan->bitmapqualorig = Rewritten(scan->bitmapqualorig, state);
			}
			break;
		case T_TidScan:
			{
				TidScan    *scan = (TidScan *) plan;

				scan->tidquals = Rewritten(scan->tidquals, state);
			}
			break;
		case T_TidRangeScan:
			{
				TidRangeScan *scan = (TidRangeScan *) plan;

				scan->tidrangequals = Rewritten(scan->tidrangequals, state);
			}
			break;
		case T_NestLoop:
			{
				Join	   *join = (Join *) plan;

				join->joinqual = Rewritten(join->joinqual, state);
			}
			break;
		case T_MergeJoin:
			{
				MergeJoin  *join = (MergeJoin *) plan;

				join->join.joinqual = Rewritten(join->join.joinqual, state);
				join->mergeclauses = Rewritten(join->mergeclauses, state);
			}
			break;
		case T_HashJoin:
			{
				HashJoin   *join = (HashJoin *) plan;

				join->join.joinqual = Rewritten(join->join.joinqual, state);
				join->hashclauses = Rewritten(join->hashclauses, state);
				join->hashkeys = Rewritten(join->hashkeys, state);
			}
			break;
		case T_Hash:
			{
				Hash	   *hash = (Hash *) plan;

				hash->hashkeys = Rewritten(hash->hashkeys, state);
			}
			break;
		case T_FunctionScan:
			{
				FunctionScan *scan = (FunctionScan *) plan;

				scan->functions = Rewritten(scan->functions, state);
			}
			break;
		case T_ValuesScan:
			{
				ValuesScan *scan = (ValuesScan *) plan;

				scan->values_lists = Rewritten(scan->values_lists, state);
			}
			break;
		case T_Limit:
			{
				Limit	   *limit = (Limit *) plan;

				limit->limitOffset = Rewritten(limit->limitOffset, state);
				limit->limitCount = Rewritten(limit->limitCount, state);
			}
			break;
		case T_WindowAgg:
			{
				WindowAgg  *window = (WindowAgg *) plan;

				window->startOffset = Rewritten(window->startOffset, state);
				window->endOffset = Rewritten(window->endOffset, state);
			}
			break;
		default:
			break;
	}
}

/*
 * The operator family of a btree index's column, or InvalidOid when the
 * index is not a btree.
 */
static Oid
BtreeColumnFamily(Oid indexid, AttrNumber column)
{
	HeapTuple	tuple;
	Datum		datum;
	bool		isnull;
	oidvector  *indclass;
	Oid			opclass = InvalidOid;
	Oid			family = InvalidOid;

	tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexid));
	if (!HeapTupleIsValid(tuple))
		return InvalidOid;
	datum = SysCacheGetAttr(INDEXRELID, tuple, Anum_pg_index_indclass, &isnull);
	if (!isnull)
	{
		indclass = (oidvector *) DatumGetPointer(datum);
		if (column >= 1 && column <= indclass->dim1)
			opclass = indclass->values[column - 1];
	}
	ReleaseSysCache(tuple);
	if (!OidIsValid(opclass))
		return InvalidOid;
	tuple = SearchSysCache1(CLAOID, ObjectIdGetDatum(opclass));
	if (!HeapTupleIsValid(tuple))
		return InvalidOid;
	if (((Form_pg_opclass) GETSTRUCT(tuple))->opcmethod == BTREE_AM_OID)
		family = ((Form_pg_opclass) GETSTRUCT(tuple))->opcfamily;
	ReleaseSysCache(tuple);
	return family;
}

/* The parameter and the constant of a one-time check "parameter = constant". */
static bool
SplitGateCheck(Node *check, RewriteState *state, Param **param, Const **constant)
{
	OpExpr	   *op;
	Node	   *left;
	Node	   *right;

	if (!IsA(check, OpExpr) || list_length(((OpExpr *) check)->args) != 2)
		return false;
	op = (OpExpr *) check;
	left = linitial(op->args);
	right = lsecond(op->args);
	if (IsA(right, Param))
	{
		Node	   *swap = left;

		left = right;
		right = swap;
	}
	if (!IsA(left, Param) || ((Param *) left)->paramkind != PARAM_EXEC ||
		!bms_is_member(((Param *) left)->paramid, state->paramids) ||
		!IsA(right, Const) || ((Const *) right)->constisnull)
		return false;
	*param = (Param *) left;
	*constant = (Const *) right;
	return true;
}

/*
 * Add "column = param" right after the index key "column = constant" of
 * indexqual (and its twin in indexqualorig, when there is one), where the
 * operator family of the index has an equality for the two types.
 */
static bool
AddIndexKey(Oid indexid, List **indexqual, List **indexqualorig,
			Param *param, Const *constant)
{
	int			position = 0;
	ListCell   *lc;

	foreach(lc, *indexqual)
	{
		OpExpr	   *key = (OpExpr *) lfirst(lc);
		Var		   *column;
		Oid			lefttype;
		Oid			righttype;
		Oid			family;
		Oid			opno;
		OpExpr	   *added;

		position++;
		if (!IsA(key, OpExpr) || list_length(key->args) != 2 ||
			!IsA(linitial(key->args), Var) || !equal(lsecond(key->args), constant))
			continue;
		column = (Var *) linitial(key->args);
		op_input_types(key->opno, &lefttype, &righttype);
		family = BtreeColumnFamily(indexid, column->varattno);
		if (!OidIsValid(family))
			return false;
		opno = get_opfamily_member(family, lefttype, param->paramtype, BTEqualStrategyNumber);
		if (!OidIsValid(opno))
			return false;

		added = (OpExpr *) make_opclause(opno, BOOLOID, false, (Expr *) copyObject(column),
										 (Expr *) copyObject(param), InvalidOid, key->inputcollid);
		added->opfuncid = get_opcode(opno);
		*indexqual = list_insert_nth(*indexqual, position, added);
		if (indexqualorig != NULL)
		{
			OpExpr	   *original = (OpExpr *) list_nth(*indexqualorig, position - 1);

			added = (OpExpr *) make_opclause(opno, BOOLOID, false, (Expr *) copyObject(linitial(original->args)),
											 (Expr *) copyObject(param), InvalidOid, key->inputcollid);
			added->opfuncid = get_opcode(opno);
			*indexqualorig = list_insert_nth(*indexqualorig, position, added);
		}
		return true;
	}
	return false;
}

/*
 * The target list of a Result that only passes its input's columns on,
 * expressed over that input's own columns; NIL (and false) otherwise.
 *
 * A scan whose target list differs from its tuple's columns projects every
 * row, which the scan under the Result did not: the Result did.  So when the
 * Result passes on the first columns of its input in order (none at all for
 * count(*)) and its parent reads its input's columns by number only
 * (widen), the scan keeps its own target list, the Result's entries first
 * and the rest as junk, and returns its rows as they are, as the planner's
 * own plan for the query without the policy does.
 */
static bool
ComposeTargetList(List *upper, List *lower, bool widen, List **result)
{
	ListCell   *lc;
	bool		prefix = true;

	*result = NIL;
	foreach(lc, upper)
	{
		TargetEntry *entry = (TargetEntry *) lfirst(lc);
		TargetEntry *composed;
		Var		   *var = (Var *) entry->expr;

		if (!IsA(var, Var) || var->varno != OUTER_VAR || var->varattno < 1 ||
			var->varattno > list_length(lower))
			return false;
		prefix &= var->varattno == list_length(*result) + 1;
		composed = flatCopyTargetEntry(entry);
		composed->expr = copyObject(((TargetEntry *) list_nth(lower, var->varattno - 1))->expr);
		*result = lappend(*result, composed);
	}
	if (widen && prefix)
		for_each_from(lc, lower, list_length(upper))
		{
			TargetEntry *junk = flatCopyTargetEntry((TargetEntry *) lfirst(lc));

			junk->resno = list_length(*result) + 1;
			junk->ressortgroupref = 0;
			junk->resjunk = true;
			*result = lappend(*result, junk);
		}
	return true;
}

/*
 * The planner merges the query's own site_id = 42 with the policy's
 * site_id = rls.site_id() into one equivalence class: the scan looks up
 * site_id = 42 and a Result above it checks rls.site_id() = 42 once.  That
 * Result still hands every row on, which costs a fast index scan more than a
 * per-row filter would.  When every one-time check of such a Result is
 * "parameter = constant" and the index scan right below looks up "column =
 * that constant" in a btree, the checks become index keys "column =
 * parameter" and the Result goes: btree compares two keys on one column once,
 * when the scan starts, keeping one key when they agree and reading nothing
 * when they differ, which is what the one-time check did.  The scan then
 * returns the Result's columns itself.
 */
static Plan *
WithoutGate(Plan *plan, Plan *parent, RewriteState *state)
{
	Result	   *gate = (Result *) plan;
	Plan	   *scan;
	Oid			indexid;
	List	  **indexqual;
	List	  **indexqualorig = NULL;
	List	   *targetlist;
	List	   *keys;
	List	   *keys_orig = NIL;
	ListCell   *lc;

	if (!IsA(plan, Result) || plan->lefttree == NULL || plan->qual != NIL ||
		plan->initPlan != NIL || gate->resconstantqual == NULL ||
		!IsA(gate->resconstantqual, List))
		return plan;
	scan = plan->lefttree;
	switch (nodeTag(scan))
	{
		case T_IndexScan:
			indexid = ((IndexScan *) scan)->indexid;
			indexqual = &((IndexScan *) scan)->indexqual;
			indexqualorig = &((IndexScan *) scan)->indexqualorig;
			break;
		case T_IndexOnlyScan:
			indexid = ((IndexOnlyScan *) scan)->indexid;
			indexqual = &((IndexOnlyScan *) scan)->indexqual;
			break;
		case T_BitmapHeapScan:
			/* A lossy page's recheck needs no key: no page comes when the keys differ. */
			if (scan->lefttree == NULL || !IsA(scan->lefttree, BitmapIndexScan))
				return plan;
			indexid = ((BitmapIndexScan *) scan->lefttree)->indexid;
			indexqual = &((BitmapIndexScan *) scan->lefttree)->indexqual;
			indexqualorig = &((BitmapIndexScan *) scan->lefttree)->indexqualorig;
			break;
		default:
			return plan;
	}
	/* An Agg reads its input's columns by number (the planner's own CP_LABEL_TLIST). */
	if (!ComposeTargetList(plan->targetlist, scan->targetlist,
						   parent != NULL && IsA(parent, Agg), &targetlist))
		return plan;

	/* Work on copies, so that a check that cannot move leaves the plan as it was. */
	keys = list_copy(*indexqual);
	if (indexqualorig != NULL)
		keys_orig = list_copy(*indexqualorig);
	foreach(lc, (List *) gate->resconstantqual)
	{
		Param	   *param;
		Const	   *constant;

		if (!SplitGateCheck((Node *) lfirst(lc), state, &param, &constant) ||
			!AddIndexKey(indexid, &keys, indexqualorig != NULL ? &keys_orig : NULL,
						 param, constant))
			return plan;
	}
	*indexqual = keys;
	if (indexqualorig != NULL)
		*indexqualorig = keys_orig;
	scan->targetlist = targetlist;
	return scan;
}

static void
FoldGates(Plan **slot, Plan *parent, RewriteState *state)
{
	Plan	   *plan = *slot;
	ListCell   *lc;

	if (plan == NULL || IsA(plan, CustomScan))
		return;
	plan = *slot = WithoutGate(plan, parent, state);
	FoldGates(&plan->lefttree, plan, state);
	FoldGates(&plan->righttree, plan, state);
	switch (nodeTag(plan))
	{
		case T_Append:
			foreach(lc, ((Append *) plan)->appendplans)
				FoldGates((Plan **) &lfirst(lc), plan, state);
			break;
		case T_MergeAppend:
			foreach(lc, ((MergeAppend *) plan)->mergeplans)
				FoldGates((Plan **) &lfirst(lc), plan, state);
			break;
		case T_SubqueryScan:
			FoldGates(&((SubqueryScan *) plan)->subplan, plan, state);
			break;
		default:
			break;
	}
}

/* Every plan node's children, custom scans' included. */
static List *
ChildPlans(Plan *plan)
{
	List	   *children = NIL;

	if (plan->lefttree != NULL)
		children = lappend(children, plan->lefttree);
	if (plan->righttree != NULL)
		children = lappend(children, plan->righttree);
	switch (nodeTag(plan))
	{
		case T_Append:
			children = list_concat(children, ((Append *) plan)->appendplans);
			break;
		case T_MergeAppend:
			children = list_concat(children, ((MergeAppend *) plan)->mergeplans);
			break;
		case T_BitmapAnd:
			children = list_concat(children, ((BitmapAnd *) plan)->bitmapplans);
			break;
		case T_BitmapOr:
			children = list_concat(children, ((BitmapOr *) plan)->bitmapplans);
			break;
		case T_SubqueryScan:
			children = lappend(children, ((SubqueryScan *) plan)->subplan);
			break;
		case T_CustomScan:
			children = list_concat(children, ((CustomScan *) plan)->custom_plans);
			break;
		default:
			break;
	}
	return children;
}

static void
RewriteTree(Plan *plan, RewriteState *state)
{
	ListCell   *lc;

	if (plan == NULL || IsA(plan, CustomScan))
		return;
	RewriteNode(plan, state);
	foreach(lc, ChildPlans(plan))
		RewriteTree((Plan *) lfirst(lc), state);
}

/*
 * List the parameters in every node's extParam and allParam and every
 * Gather's initParam, and find the highest plan node id.
 */
static void
PublishParams(Plan *plan, RewriteState *state)
{
	ListCell   *lc;

	if (plan == NULL)
		return;
	plan->extParam = bms_union(plan->extParam, state->paramids);
	plan->allParam = bms_union(plan->allParam, state->paramids);
	if (IsA(plan, Gather))
		((Gather *) plan)->initParam = bms_union(((Gather *) plan)->initParam, state->paramids);
	else if (IsA(plan, GatherMerge))
		((GatherMerge *) plan)->initParam = bms_union(((GatherMerge *) plan)->initParam, state->paramids);
	state->last_plan_node_id = Max(state->last_plan_node_id, plan->plan_node_id);
	foreach(lc, ChildPlans(plan))
		PublishParams((Plan *) lfirst(lc), state);
}

/*
 * One initplan for all the parameters, attached to the top plan node: a
 * Result whose columns are the calls, one per parameter, in the order of its
 * setParam.  The executor sets every parameter of an initplan's setParam from
 * its one row when any of them is first needed, so one execution of the plan
 * reads every accessor at the same moment, under one context.
 */
static void
AttachInitPlan(RewriteState *state)
{
	PlannedStmt *stmt = state->stmt;
	Plan	   *top = stmt->planTree;
	Result	   *result = makeNode(Result);
	SubPlan    *subplan = makeNode(SubPlan);
	FuncExpr   *first = ((AccessorParam *) linitial(state->params))->call;
	List	   *set_params = NIL;
	int			width = 0;
	ListCell   *lc;

	foreach(lc, state->params)
	{
		AccessorParam *known = (AccessorParam *) lfirst(lc);

		result->plan.targetlist = lappend(result->plan.targetlist,
										  makeTargetEntry((Expr *) known->call,
														  list_length(result->plan.targetlist) + 1,
														  NULL, false));
		width += get_typavgwidth(known->call->funcresulttype, -1);
		set_params = lappend_int(set_params, known->paramid);
	}
	result->plan.startup_cost = 0;
	result->plan.total_cost = cpu_operator_cost * list_length(state->params);
	result->plan.plan_rows = 1;
	result->plan.plan_width = width;
	result->plan.parallel_safe = false;
	result->plan.plan_node_id = ++state->last_plan_node_id;
	stmt->subplans = lappend(stmt->subplans, result);

	subplan->subLinkType = EXPR_SUBLINK;
	subplan->plan_id = list_length(stmt->subplans);
	subplan->plan_name = RlsInitPlanName(subplan->plan_id, set_params);
	subplan->firstColType = first->funcresulttype;
	subplan->firstColTypmod = -1;
	subplan->firstColCollation = first->funccollid;
	subplan->parallel_safe = false;
	subplan->setParam = set_params;
	subplan->startup_cost = result->plan.total_cost;
	subplan->per_call_cost = 0;
	top->initPlan = lappend(top->initPlan, subplan);

	/* The top node sets these parameters itself: they are not external to it. */
	top->extParam = bms_difference(top->extParam, state->paramids);
}

/*
 * Replace the accessor calls of a finished plan with parameters evaluated
 * once per execution (see the file header).  Called by the planner hook.
 */
void
RlsEvaluateAccessorsOnce(PlannedStmt *stmt)
{
	RewriteState state = {0};
	List	   *planner_subplans;
	ListCell   *lc;

	if (!accessor_initplans || stmt->commandType == CMD_UTILITY || stmt->planTree == NULL)
		return;
	state.stmt = stmt;
	planner_subplans = list_copy(stmt->subplans);
	RewriteTree(stmt->planTree, &state);
	foreach(lc, planner_subplans)
		RewriteTree((Plan *) lfirst(lc), &state);
	if (state.params == NIL)
		return;

	FoldGates(&stmt->planTree, NULL, &state);
	foreach(lc, planner_subplans)
		FoldGates((Plan **) &lfirst(lc), NULL, &state);
	stmt->subplans = list_copy(planner_subplans);
	PublishParams(stmt->planTree, &state);
	foreach(lc, planner_subplans)
		PublishParams((Plan *) lfirst(lc), &state);
	AttachInitPlan(&state);
}

/*
 * A superuser's switch, for comparing plans and timings with the calls left
 * in place; it changes how fast a policy runs, never what it lets through.
 */
void
RlsDefineAccessorParamSettings(void)
{
	DefineCustomBoolVariable(RLS_GUC_PREFIX ".accessor_initplans",
							 "Evaluate the context accessors in a plan once per execution, through initplans.",
							 "When off, plans call the accessors wherever the planner put them, once per row on a scan's filter.",
							 &accessor_initplans, true, PGC_SUSET, 0,
							 NULL, NULL, NULL);
}

void
RlsInstallAccessorParams(void)
{
	CacheRegisterSyscacheCallback(PROCOID, ForgetAccessors, (Datum) 0);
}
