/*-------------------------------------------------------------------------
 *
 * ext/citus.c
 *		Carrying the context from a Citus coordinator to its workers.
 *
 * On a Citus cluster the shard queries run in worker backends that the
 * coordinator opens, where the context set on the coordinator does not exist.
 * Citus forwards one thing to them: the text of a SET LOCAL statement run in
 * a transaction block on the coordinator while citus.propagate_set_commands
 * is 'local' (to the worker connections already open, and to every one the
 * transaction opens later, before its distributed transaction id is assigned).
 *
 * So on a Citus coordinator, in a transaction block, the setter
 * (RlsApplyContext) also runs SET LOCAL django_rls.forwarded = '<credential>'
 * through SPI, where Citus's utility hook forwards it.  The credential is
 *
 *		c1.<mac>.<exp>.<initiator>.<number>.<stamp>.<site>.<user>.<claims>
 *
 * <mac> is HMAC-SHA256 (64 hexadecimal digits) under the first key of
 * django_rls.signing_key_file over "c1.<exp>...<claims>", a NUL byte and the
 * database's name; <exp> the Unix time it expires (django_rls.max_token_lifetime
 * after it was made); <initiator>, <number> and <stamp> the coordinator's
 * distributed transaction id (the setter has Citus assign one first); then the
 * canonical context (values.c: ids without dots, claims last).  The prefix
 * keeps it apart from a token's signed part ("v1.") and a use's MAC input.
 *
 * Who may set it:
 *	- the coordinator's own setter (the value is marked own, and never read);
 *	- on a Citus worker (local group id above 0), SET or SET LOCAL in a
 *	  transaction, which is how Citus delivers it; the value is only parsed;
 *	- a parallel worker copying its leader's value.
 * Anything else (the coordinator, a server without Citus, ALTER ROLE ... SET,
 * connection options, files) is refused by the check hook.
 *
 * A worker verifies it when a policy first reads the context in a
 * transaction (the distributed transaction id is assigned only after the SET
 * on a new connection): the MAC under any key of its own key file for its own
 * database, the expiry, and that its current distributed transaction is the
 * one named.  Any failure is an error, never a silently different context.
 * A worker backend that holds a forwarded credential and a local context as
 * well (a setter call that a query pushed down to the shards) raises an
 * error; the coordinator's own backends (and their parallel workers, which
 * copy both) read their local one.
 *
 * Without a key on the coordinator the setter forwards c1.nokey, and a worker
 * reading it raises an error that says what to configure; without a key on
 * the worker, the same.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "access/parallel.h"
#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "django_rls.h"

#define CREDENTIAL_PREFIX "c1."
#define CREDENTIAL_NO_KEY "c1.nokey"
#define MAC_HEX_LEN (2 * PG_SHA256_DIGEST_LENGTH)
#define CONFIGURE_HINT "Point django_rls.signing_key_file on the coordinator and on every worker at a file holding the same key (docs/scale-out.md), and reload the servers."

/* What a credential says, parsed by the check hook; GUC-owned "extra". */
typedef struct Credential
{
	bool		own;			/* made by this backend's own setter */
	bool		no_key;			/* the coordinator had no key */
	int64		expires_at;
	int32		initiator;
	int64		number;
	TimestampTz stamp;
	RlsId		site;
	RlsId		user;
	int			mac_offset;		/* where <mac> starts in text */
	int			rest_offset;	/* where "<exp>..." starts in text */
	int			claims_offset;	/* where <claims> starts in text */
	char		text[FLEXIBLE_ARRAY_MEMBER];
} Credential;

static char *forwarded_setting = NULL;
static const Credential *forwarded = NULL;

/* True when a credential from elsewhere is set (see RlsForwardedCredential). */
bool		rls_forwarded_present = false;

/* Verified in this transaction; cleared by a new value and at transaction end. */
static bool forwarded_verified = false;

/* Citus's own functions, found in its library once it is known to be loaded. */
typedef int32 (*LocalGroupIdFunction) (void);
typedef void (*EnsureTransactionIdFunction) (void);
static LocalGroupIdFunction citus_local_group_id = NULL;
static EnsureTransactionIdFunction citus_ensure_transaction_id = NULL;

/* Reported to the client (django_rls.citus): the Citus library is loaded. */
static bool citus_library_setting = false;

/* Whether Citus has defined its settings here, i.e. its library is loaded. */
static bool
CitusLibraryPresent(void)
{
	return GetConfigOption("citus.version", true, false) != NULL &&
		(GetConfigOptionFlags("citus.version", true) & GUC_CUSTOM_PLACEHOLDER) == 0;
}

/*
 * Switch django_rls.citus on when the Citus library is loaded.  Called from
 * _PG_init: Citus can only be loaded through shared_preload_libraries, and
 * only before any library that installs hooks, as this one does ("Citus has
 * to be loaded first"), so it is loaded by then or never in this server, and
 * the answer never changes in a backend.  It does not say whether the current
 * database has the citus extension (a client treats "on" as "maybe a
 * coordinator").
 */
void
RlsReportCitusLibrary(void)
{
	if (!citus_library_setting && CitusLibraryPresent())
		SetConfigOption(RLS_GUC_PREFIX ".citus", "on", PGC_INTERNAL, PGC_S_OVERRIDE);
}

/* Whether the Citus library is loaded in this backend (never unloaded). */
static bool
CitusLoaded(void)
{
	static bool loaded = false;

	if (loaded)
		return true;
	if (!CitusLibraryPresent())
		return false;
	citus_local_group_id = (LocalGroupIdFunction)
		load_external_function("citus", "GetLocalGroupId", true, NULL);
	citus_ensure_transaction_id = (EnsureTransactionIdFunction)
		load_external_function("citus", "EnsureDistributedTransactionId", true, NULL);
	loaded = true;
	return true;
}

/*
 * This node's Citus group in the current database: 0 on the coordinator, a
 * positive number on a worker, -1 without Citus (library or extension).
 */
static int32
CitusGroup(void)
{
	if (!CitusLoaded() || !IsTransactionState() ||
		!OidIsValid(get_extension_oid("citus", true)))
		return -1;
	return citus_local_group_id();
}

/* The distributed transaction id Citus holds for this backend (number 0: none). */
static void
CurrentDistributedTransaction(int32 *initiator, int64 *number, TimestampTz *stamp)
{
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT initiator_node_identifier, transaction_number, transaction_stamp "
					"FROM pg_catalog.get_current_transaction_id()", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read the Citus distributed transaction id");
	*initiator = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	*number = isnull ? 0 : DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (isnull)
		*number = 0;
	*stamp = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull));
	if (isnull)
		*stamp = 0;
	SPI_finish();
}

/* What the MAC covers: "c1." + rest, a NUL byte, the database's name. */
static char *
SignedInput(const char *rest, size_t rest_len, size_t *len)
{
	char	   *dbname = get_database_name(MyDatabaseId);
	size_t		prefix_len = strlen(CREDENTIAL_PREFIX);
	size_t		db_len = strlen(dbname);
	char	   *input = palloc(prefix_len + rest_len + 1 + db_len);

	memcpy(input, CREDENTIAL_PREFIX, prefix_len);
	memcpy(input + prefix_len, rest, rest_len);
	input[prefix_len + rest_len] = '\0';
	memcpy(input + prefix_len + rest_len + 1, dbname, db_len);
	*len = prefix_len + rest_len + 1 + db_len;
	return input;
}

/* Read a decimal integer of text[*pos..] up to the next dot; false when malformed. */
static bool
Field(const char *text, int *pos, int64 *result)
{
	const char *start = text + *pos;
	const char *dot = strchr(start, '.');
	char	   *copy;
	char	   *end;

	if (dot == NULL || dot == start || dot - start > 20)
		return false;
	copy = pnstrdup(start, dot - start);
	errno = 0;
	*result = strtoi64(copy, &end, 10);
	if (errno != 0 || *end != '\0')
		return false;
	*pos = (dot - text) + 1;
	return true;
}

/* An id field (possibly empty) up to the next dot. */
static bool
IdField(const char *text, int *pos, RlsId *id)
{
	const char *start = text + *pos;
	const char *dot = strchr(start, '.');

	if (dot == NULL || !RlsParseId(pnstrdup(start, dot - start), id))
		return false;
	*pos = (dot - text) + 1;
	return true;
}

/* Parse a credential's layout (nothing is verified); false when malformed. */
static bool
ParseCredential(const char *text, Credential *cred)
{
	int			pos = strlen(CREDENTIAL_PREFIX);
	int64		initiator;
	int64		stamp;
	int			i;

	memset(cred, 0, offsetof(Credential, text));
	if (strcmp(text, CREDENTIAL_NO_KEY) == 0)
	{
		cred->no_key = true;
		return true;
	}
	if (strncmp(text, CREDENTIAL_PREFIX, pos) != 0 || strlen(text) < (size_t) pos + MAC_HEX_LEN + 1)
		return false;
	cred->mac_offset = pos;
	for (i = 0; i < MAC_HEX_LEN; i++)
	{
		char		c = text[pos + i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return false;
	}
	pos += MAC_HEX_LEN;
	if (text[pos] != '.')
		return false;
	cred->rest_offset = ++pos;
	if (!Field(text, &pos, &cred->expires_at) ||
		!Field(text, &pos, &initiator) || initiator < 0 || initiator > PG_INT32_MAX ||
		!Field(text, &pos, &cred->number) || cred->number <= 0 ||
		!Field(text, &pos, &stamp) ||
		!IdField(text, &pos, &cred->site) ||
		!IdField(text, &pos, &cred->user))
		return false;
	cred->initiator = (int32) initiator;
	cred->stamp = (TimestampTz) stamp;
	cred->claims_offset = pos;
	return true;
}

static bool
RefuseForwarded(const char *message, const char *hint)
{
	GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
	GUC_check_errmsg("%s", message);
	GUC_check_errhint("%s", hint);
	return false;
}

static bool
CheckForwarded(char **newval, void **extra, GucSource source)
{
	const char *value = *newval;
	size_t		len;
	Credential *cred;

	if (value == NULL || value[0] == '\0')
		return true;
	len = strlen(value);
	cred = (Credential *) RlsGucMalloc(offsetof(Credential, text) + len + 1);
	if (cred == NULL)
		return false;
	memset(cred, 0, offsetof(Credential, text));
	memcpy(cred->text, value, len + 1);
	if (RlsSetterActive())
	{
		cred->own = true;
		*extra = cred;
		return true;
	}
	if (!InitializingParallelWorker)
	{
		if (source != PGC_S_SESSION || !IsTransactionState() || CitusGroup() <= 0)
		{
			RlsGucFree(cred);
			return RefuseForwarded("django_rls.forwarded can only be set by the django_rls setter on a Citus coordinator, which forwards it to the workers",
								   "Set the context with rls.set_context() on the coordinator, in a transaction block.");
		}
	}
	if (!ParseCredential(value, cred))
	{
		RlsGucFree(cred);
		GUC_check_errcode(ERRCODE_INVALID_PARAMETER_VALUE);
		GUC_check_errdetail("The value is not a context credential made by a django_rls coordinator.");
		GUC_check_errhint("Set the context with rls.set_context() on the coordinator, in a transaction block.");
		return false;
	}
	*extra = cred;
	return true;
}

static void
AssignForwarded(const char *newval, void *extra)
{
	forwarded = (const Credential *) extra;
	rls_forwarded_present = forwarded != NULL && !forwarded->own;
	forwarded_verified = false;
	rls_claims_generation++;
}

static void
ForgetVerification(XactEvent event, void *arg)
{
	forwarded_verified = false;
}

void
RlsDefineCitusSettings(void)
{
	DefineCustomStringVariable(RLS_GUC_PREFIX ".forwarded",
							   "The django_rls context a Citus coordinator forwards to its workers.",
							   "Set only by the setter on a Citus coordinator (SET LOCAL, forwarded by Citus) and verified on the workers.",
							   &forwarded_setting, "", PGC_USERSET,
							   GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE |
							   GUC_DISALLOW_IN_AUTO_FILE | GUC_NOT_WHILE_SEC_REST,
							   CheckForwarded, AssignForwarded, NULL);
	RegisterXactCallback(ForgetVerification, NULL);

	/*
	 * Reported at connection start, so the Django bridge learns for free
	 * whether an autocommit query may need a transaction of its own to reach
	 * the workers (django_rls/database.py).  PGC_INTERNAL: no client, role or
	 * file can set it where the library is loaded; where it is not, a setting
	 * of this name is a placeholder, which is never reported, and the bridge
	 * asks the catalog instead.
	 */
	DefineCustomBoolVariable(RLS_GUC_PREFIX ".citus",
							 "Whether the Citus library is loaded in this server.",
							 "On: autocommit statements of a client may reach Citus workers, which get the context only from a transaction block.",
							 &citus_library_setting, false, PGC_INTERNAL,
							 GUC_REPORT | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							 NULL, NULL, NULL);
}

static void
ToHex(const uint8 *bytes, int len, char *out)
{
	static const char digits[] = "0123456789abcdef";
	int			i;

	for (i = 0; i < len; i++)
	{
		out[2 * i] = digits[bytes[i] >> 4];
		out[2 * i + 1] = digits[bytes[i] & 0xf];
	}
	out[2 * len] = '\0';
}

/*
 * Called by RlsApplyContext() while its setter flag is up, with the canonical
 * context it has just set: on a Citus coordinator in a transaction block,
 * forward it to the workers.
 */
void
RlsForwardContext(const char *site, const char *user, const char *claims)
{
	const char *value;
	char	   *statement;

	if (!IsTransactionBlock() || IsParallelWorker() || CitusGroup() != 0)
		return;
	if (site[0] == '\0' && user[0] == '\0' && claims[0] == '\0')
	{
		if (forwarded_setting == NULL || forwarded_setting[0] == '\0')
			return;
		value = "";
	}
	else if (!RlsSigningKeyConfigured())
		value = CREDENTIAL_NO_KEY;
	else
	{
		int32		initiator;
		int64		number;
		TimestampTz stamp;
		int64		expires_at;
		char	   *rest;
		char	   *input;
		size_t		input_len;
		uint8		mac[PG_SHA256_DIGEST_LENGTH];
		char		mac_hex[MAC_HEX_LEN + 1];

		if (citus_ensure_transaction_id == NULL)
			elog(ERROR, "Citus's EnsureDistributedTransactionId() was not found");
		citus_ensure_transaction_id();
		CurrentDistributedTransaction(&initiator, &number, &stamp);
		if (number == 0)
			elog(ERROR, "Citus assigned no distributed transaction id");
		expires_at = (int64) timestamptz_to_time_t(GetCurrentTimestamp()) + RlsMaxTokenLifetime();
		rest = psprintf(INT64_FORMAT ".%d." INT64_FORMAT "." INT64_FORMAT ".%s.%s.%s",
						expires_at, initiator, number, (int64) stamp, site, user, claims);
		input = SignedInput(rest, strlen(rest), &input_len);
		RlsSign(input, input_len, mac);
		ToHex(mac, PG_SHA256_DIGEST_LENGTH, mac_hex);
		value = psprintf(CREDENTIAL_PREFIX "%s.%s", mac_hex, rest);
	}

	/* Transaction-local, like the SET LOCAL it lets through. */
	(void) set_config_option("citus.propagate_set_commands", "local", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, ERROR, false);
	statement = psprintf("SET LOCAL " RLS_GUC_PREFIX ".forwarded = %s", quote_literal_cstr(value));
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(statement, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not forward the django_rls context to the Citus workers");
	SPI_finish();
}

pg_noreturn static void RefuseCredential(const char *detail);

static void
RefuseCredential(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("invalid django_rls context forwarded by a Citus coordinator"),
			 errdetail_internal("%s", detail),
			 errhint("Set the context with rls.set_context() through the coordinator, in a transaction block; a context forwarded to a worker is valid only in the distributed transaction it was made for.")));
}

/*
 * The forwarded credential, verified, when policies should read it: one is
 * set from elsewhere.  NULL otherwise.
 */
const RlsForwardedContext *
RlsForwardedCredential(RlsForwardedContext *result)
{
	const Credential *cred = forwarded;

	if (cred == NULL || cred->own)
		return NULL;
	if (rls_current_site.kind != RLS_ID_UNSET || rls_current_user.kind != RLS_ID_UNSET ||
		(rls_claims_setting != NULL && rls_claims_setting[0] != '\0'))
	{
		/* A parallel worker of the coordinator copies both: its leader reads the local one. */
		if (IsParallelWorker())
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("a django_rls context was set on this Citus worker beside the one the coordinator forwarded"),
				 errdetail("A worker backend of a distributed transaction reads only the context the coordinator forwards."),
				 errhint("Set the context on the coordinator only, in a transaction block.")));
	}
	if (!forwarded_verified)
	{
		int32		initiator;
		int64		number;
		TimestampTz stamp;
		uint8		mac[PG_SHA256_DIGEST_LENGTH];
		char	   *input;
		size_t		input_len;
		int64		now;
		int			i;

		if (cred->no_key)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the Citus coordinator has no django_rls signing key, so the context cannot reach this worker"),
					 errdetail("The coordinator forwards the context to the workers signed with a key of django_rls.signing_key_file."),
					 errhint(CONFIGURE_HINT)));
		if (!RlsSigningKeyConfigured())
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("this Citus worker has no django_rls signing key, so it cannot accept the context the coordinator forwards"),
					 errdetail("The worker verifies the forwarded context with a key of django_rls.signing_key_file."),
					 errhint(CONFIGURE_HINT)));
		for (i = 0; i < PG_SHA256_DIGEST_LENGTH; i++)
		{
			char		pair[3] = {cred->text[cred->mac_offset + 2 * i], cred->text[cred->mac_offset + 2 * i + 1], '\0'};

			mac[i] = (uint8) strtol(pair, NULL, 16);
		}
		input = SignedInput(cred->text + cred->rest_offset, strlen(cred->text + cred->rest_offset), &input_len);
		if (!RlsSignatureMatches(input, input_len, mac))
			RefuseCredential("Its MAC does not match any key of this worker's django_rls.signing_key_file for this database.");
		now = (int64) timestamptz_to_time_t(GetCurrentTimestamp());
		if (cred->expires_at <= now)
			RefuseCredential(psprintf("It expired %lld seconds ago.", (long long) (now - cred->expires_at)));
		CurrentDistributedTransaction(&initiator, &number, &stamp);
		if (number == 0)
			RefuseCredential("This backend is not in a distributed transaction of Citus.");
		if (initiator != cred->initiator || number != cred->number || stamp != cred->stamp)
			RefuseCredential("It was made for another distributed transaction.");
		forwarded_verified = true;
	}
	result->site = &cred->site;
	result->user = &cred->user;
	result->claims = cred->text + cred->claims_offset;
	return result;
}
