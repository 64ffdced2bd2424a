/*-------------------------------------------------------------------------
 *
 * ext/django_rls.h
 *		Declarations shared between the files of the django_rls extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef DJANGO_RLS_H
#define DJANGO_RLS_H

#include "postgres.h"

#include "access/tupdesc.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "compat.h"

/* The prefix reserved for every setting the extension defines. */
#define RLS_GUC_PREFIX "django_rls"

/*
 * django_rls.c
 */
extern bool rls_loaded_at_startup;

/*
 * context.c
 */

/* What a context identifier (site or user) currently holds. */
typedef enum RlsIdKind
{
	RLS_ID_UNSET = 0,
	RLS_ID_INT,
	RLS_ID_UUID
} RlsIdKind;

typedef struct RlsId
{
	RlsIdKind	kind;
	int64		int_value;
	pg_uuid_t	uuid_value;
} RlsId;

extern RlsId rls_current_site;
extern RlsId rls_current_user;
extern char *rls_site_setting;
extern char *rls_user_setting;
extern char *rls_claims_setting;
extern uint64 rls_claims_generation;
extern bool rls_strict;
extern bool rls_require_signature;
extern bool rls_statement_bound;

extern void RlsDefineContextSettings(void);
extern void RlsCheckNotRestricted(const char *action);
extern void RlsCheckSetterAllowed(const char *function_name);
extern void RlsCheckScope(const char *function_name, bool is_local);
extern void RlsApplyContext(const char *site, const char *user,
							const char *claims, bool is_local);
extern bool RlsSetterActive(void);

/*
 * citus.c
 */

/* A context a Citus coordinator forwarded, verified (claims: "" for none). */
typedef struct RlsForwardedContext
{
	const RlsId *site;
	const RlsId *user;
	const char *claims;
} RlsForwardedContext;

extern bool rls_forwarded_present;
extern void RlsDefineCitusSettings(void);
extern void RlsReportCitusLibrary(void);
extern void RlsForwardContext(const char *site, const char *user, const char *claims);
extern const RlsForwardedContext *RlsForwardedCredential(RlsForwardedContext *result);

/*
 * own_role.c
 */
extern void RlsRefuseOwnRoleChanges(Node *parsetree);

/*
 * table_locks.c
 */
extern void RlsRefuseTableLocks(Node *parsetree);

/*
 * bound_role_utility.c
 */
extern void RlsInstallBoundRoleUtilityHook(void);

/*
 * bypassing_roles.c
 */
extern void RlsDefineBypassingRoleSettings(void);
extern void RlsCheckRoleLimitedByPolicies(void);

/*
 * accessors.c: the functions policies call, declared for accessor_params.c.
 */
extern PGDLLEXPORT Datum rls_site_id(PG_FUNCTION_ARGS);
extern PGDLLEXPORT Datum rls_user_id(PG_FUNCTION_ARGS);
extern PGDLLEXPORT Datum rls_site_uuid(PG_FUNCTION_ARGS);
extern PGDLLEXPORT Datum rls_user_uuid(PG_FUNCTION_ARGS);
extern PGDLLEXPORT Datum rls_claim(PG_FUNCTION_ARGS);
extern PGDLLEXPORT Datum rls_context(PG_FUNCTION_ARGS);

/*
 * accessor_params.c
 */
extern void RlsDefineAccessorParamSettings(void);
extern void RlsInstallAccessorParams(void);
extern void RlsEvaluateAccessorsOnce(PlannedStmt *stmt);
extern Query *RlsHideAccessorsFromEstimates(Query *parse);

/*
 * values.c
 */

/* A context ready for RlsApplyContext(): canonical texts, "" for none. */
typedef struct RlsContextValues
{
	char	   *site;
	char	   *user;
	char	   *claims;
} RlsContextValues;

extern bool RlsParseId(const char *value, RlsId *id);
extern char *RlsCanonicalId(const char *what, const char *value);
extern char *RlsCanonicalClaims(Datum claims);
extern char *RlsUnknownMember(Jsonb *object, const char *const *known, size_t nknown);
extern const char *RlsReadContextMembers(Jsonb *object, RlsContextValues *result);
extern const char *RlsContextMemberType(const char *member);
extern void RlsParseContextObject(const char *json, int len, RlsContextValues *result);

/*
 * token.c
 */
extern void RlsDefineTokenSettings(void);
extern void RlsVerifyToken(const char *token, int len, RlsContextValues *result);
extern int	RlsMaxTokenLifetime(void);

/*
 * token_cache.c
 */

/*
 * What a token says once its signature and payload are verified: the context
 * it authorizes, its times, its issuer, and its sequence number (0 for a
 * reusable token, which is spent only through uses).
 */
typedef struct RlsVerifiedToken
{
	RlsContextValues context;
	int64		issued_at;
	int64		expires_at;
	char	   *issuer;
	int64		sequence;
} RlsVerifiedToken;

extern bool RlsTokenCacheLookup(const char *token, int len, uint64 keys_generation,
								RlsVerifiedToken *result);
extern void RlsTokenCacheStore(const char *token, int len, uint64 keys_generation,
							   const RlsVerifiedToken *verified);

/*
 * statement.c
 */
extern void RlsInstallStatementHooks(void);
extern void RlsNoteLateLoad(void);
extern void RlsCheckStatementContext(void);

/*
 * audit.c
 */
extern void RlsDefineAuditSettings(void);

/*
 * audit_chain.c
 */
#include "utils/array.h"
#include "utils/date.h"
extern bool RlsAuditSealDirect(DateADT month, const char *chain, ArrayType *ids,
							   const uint8 *digests, size_t digests_len);

/*
 * audit_context.c
 */

/* The context a statement started with (claims: canonical text, "" for none). */
typedef struct RlsStatementContext
{
	RlsId		site;
	RlsId		user;
	char	   *claims;
} RlsStatementContext;

extern void RlsInstallAuditContextHooks(void);
extern bool RlsFiringStatementContext(RlsStatementContext *result);

/*
 * audit_image.c
 */

/* How a column's values become JSON in a row image. */
typedef enum RlsJsonKind
{
	RLS_JSON_TEXT = 0,			/* a string from the type's output function */
	RLS_JSON_BOOL,
	RLS_JSON_INTEGER,
	RLS_JSON_FLOAT,
	RLS_JSON_NUMERIC,
	RLS_JSON_DATETIME,
	RLS_JSON_JSON,
	RLS_JSON_JSONB
} RlsJsonKind;

typedef struct RlsAuditColumn
{
	char	   *name;
	Oid			type;			/* the column's type, a domain's base type resolved */
	int16		typlen;
	bool		typbyval;
	RlsJsonKind kind;
	FmgrInfo	output;			/* the type's output function */
	bool		excluded;		/* never in the log */
	bool		masked;			/* named in changed_columns, never with values */
} RlsAuditColumn;

extern void RlsAuditColumnInit(RlsAuditColumn *column, Form_pg_attribute attr,
							   MemoryContext cxt);
extern bool RlsAuditValuesEqual(RlsAuditColumn *column, Datum a, bool a_null,
								Datum b, bool b_null);
extern char *RlsAuditValueText(RlsAuditColumn *column, Datum value);
extern Jsonb *RlsAuditRowImage(RlsAuditColumn *columns, const int *order,
							   int norder, TupleTableSlot *slot, const bool *only);
extern char *RlsAuditKeyText(RlsAuditColumn *columns, const AttrNumber *key,
							 int nkey, TupleTableSlot *slot);

/*
 * keys.c
 */
extern void RlsDefineKeySettings(void);
extern bool RlsSigningKeyConfigured(void);
extern bool RlsSignatureMatches(const char *signed_part, size_t signed_len,
								const uint8 *signature);
extern uint64 RlsSigningKeysGeneration(void);
extern void RlsSign(const char *data, size_t len, uint8 *mac);

/*
 * replay.c
 */

/* An issuer id is 16 to 64 base64url characters (16 random bytes encoded). */
#define RLS_ISSUER_MIN_LEN 16
#define RLS_ISSUER_MAX_LEN 64
/* How far behind an issuer's newest accepted token a token may arrive. */
#define RLS_REPLAY_WINDOW 4096

typedef enum RlsReplayResult
{
	RLS_REPLAY_FRESH,			/* accepted and now spent */
	RLS_REPLAY_SPENT,			/* used before */
	RLS_REPLAY_TOO_OLD,			/* behind the issuer's window */
	RLS_REPLAY_FULL				/* a new issuer, and no room for one */
} RlsReplayResult;

extern void RlsDefineReplaySettings(void);
extern void RlsReplayShmemRequest(void);
extern void RlsReplayShmemStartup(void);
extern bool RlsReplayAvailable(void);
extern int64 RlsReplayInitializedAt(void);
extern RlsReplayResult RlsReplaySpend(const char *issuer, int64 sequence,
									  int64 expires_at, int64 now);
extern void RlsReplayUsage(int64 *used, int64 *capacity);

#endif							/* DJANGO_RLS_H */
