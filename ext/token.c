/*-------------------------------------------------------------------------
 *
 * ext/token.c
 *		Signed context tokens: format, verification and rls.set_context_signed().
 *
 * A token is three dot-separated parts (docs/security.md is the reference):
 *
 *		v1.<payload>.<signature>
 *
 * <payload> is the base64url (no padding) encoding of a JSON object with the
 * members site, user, claims, iat, exp, iss and optionally seq and db;
 * <signature> is the base64url encoding of HMAC-SHA256 over "v1.<payload>"
 * under one of the keys in django_rls.signing_key_file.  The signature is
 * checked before the payload is decoded, so nothing but a key holder's bytes
 * ever reaches the JSON parser.  The context members are read by values.c,
 * exactly as an unsigned context's are.
 *
 * A token with seq is single-use: spending it spends number seq of issuer
 * iss (replay.c).  A token without seq is reusable: it is never accepted
 * alone, only as a use,
 *
 *		v1.<payload>.<signature>.<seq>.<time>.<mac>
 *
 * where <seq> is a number of issuer iss never spent before, <time> the Unix
 * time the use was made, both in decimal, and <mac> the base64url encoding of
 * HMAC-SHA256 over "<signature>.<seq>.<time>".  An application signs one
 * reusable token per context and lifetime, and computes only a short MAC per
 * statement; each backend verifies the token once (token_cache.c) and then
 * only the MAC.  Seen in a log, a use cannot be spent again, and the token it
 * holds cannot make a new use without a key.  A use's own time, not its
 * token's, tells whether it was made after the replay memory was created.
 * The MAC's input has its first dot after the 43 characters of a signature, a
 * token's signed part after "v1", so neither can stand for the other.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "common/sha2.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "django_rls.h"

#define TOKEN_VERSION_PREFIX "v1."
#define TOKEN_MAX_LEN 16384
/* A MAC: HMAC-SHA256 in unpadded base64url. */
#define MAC_TEXT_LEN 43
/* What a use adds to its token: ".<seq>.<time>.<mac>", numbers of at most 19 digits. */
#define USE_SUFFIX_MAX_LEN (1 + 19 + 1 + 19 + 1 + MAC_TEXT_LEN)

PG_FUNCTION_INFO_V1(rls_set_context_signed);

/* The members a token's payload and an unsigned context may have. */
static const char *const token_members[] = {"site", "user", "claims", "iat", "exp", "iss", "seq", "db"};

static int	max_token_lifetime = 300;

/* Where the parts of a token, or of a use of one, lie in its text. */
typedef struct TokenParts
{
	int			token_len;		/* "v1.<payload>.<signature>" */
	const char *signature;
	bool		is_use;
	int64		use_sequence;	/* a use's <seq> */
	int64		use_time;		/* a use's <time> */
	const char *mac;			/* a use's <mac>, MAC_TEXT_LEN characters */
} TokenParts;

void
RlsDefineTokenSettings(void)
{
	DefineCustomIntVariable(RLS_GUC_PREFIX ".max_token_lifetime",
							"Longest lifetime a signed context token may have.",
							"Tokens whose expiry lies further in the future are refused. The application's DJANGO_RLS[\"TOKEN_LIFETIME\"] must not exceed it.",
							&max_token_lifetime, 300, 1, 86400, PGC_SIGHUP,
							GUC_UNIT_S, NULL, NULL, NULL);
}

/* The longest lifetime a token, or a context forwarded to Citus workers, may have. */
int
RlsMaxTokenLifetime(void)
{
	return max_token_lifetime;
}

pg_noreturn static void ReportInvalidToken(const char *detail);
pg_noreturn static void ReportInvalidUse(const char *detail);

static void
ReportInvalidToken(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("invalid django_rls context token"),
			 errdetail_internal("%s", detail),
			 errhint("Tokens must be signed by the application with a key listed in django_rls.signing_key_file; docs/security.md describes the format.")));
}

static void
ReportInvalidUse(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("invalid use of a reusable django_rls context token"),
			 errdetail_internal("%s", detail),
			 errhint("Send a reusable token only as a use: the token, a sequence number of its issuer never used before, the time and their MAC, made by the application for one statement with a key listed in django_rls.signing_key_file (docs/security.md).")));
}

static int
Base64UrlValue(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

/*
 * Decode unpadded base64url into a palloc'd buffer.  Returns the decoded
 * length, or -1 for a character outside the alphabet, an impossible length or
 * non-zero trailing bits (so that every byte string has exactly one encoding).
 */
static int
Base64UrlDecode(const char *src, int len, uint8 **dst)
{
	uint8	   *out;
	uint32		bits = 0;
	int			nbits = 0;
	int			outlen = 0;
	int			i;

	if (len % 4 == 1)
		return -1;
	out = (uint8 *) palloc(len * 3 / 4 + 1);
	for (i = 0; i < len; i++)
	{
		int			v = Base64UrlValue(src[i]);

		if (v < 0)
			return -1;
		bits = (bits << 6) | (uint32) v;
		nbits += 6;
		if (nbits >= 8)
		{
			nbits -= 8;
			out[outlen++] = (uint8) (bits >> nbits);
			bits &= (1U << nbits) - 1;
		}
	}
	if (bits != 0)
		return -1;
	*dst = out;
	return outlen;
}

/* Read a JSON number member as an integer, or report the token invalid. */
static int64
IntegerMember(JsonbValue *value, const char *name)
{
	char	   *text;
	char	   *end;
	int64		result;

	if (value == NULL || value->type != jbvNumeric)
		ReportInvalidToken(psprintf("The payload member \"%s\" must be an integer.", name));
	text = DatumGetCString(DirectFunctionCall1(numeric_out,
											   NumericGetDatum(value->val.numeric)));
	errno = 0;
	result = strtoi64(text, &end, 10);
	if (errno != 0 || *end != '\0' || end == text)
		ReportInvalidToken(psprintf("The payload member \"%s\" must be an integer.", name));
	return result;
}

/*
 * The signed payload as jsonb, or the token reported invalid (28000, as every
 * other failure of a token) when jsonb refuses the text: bad JSON, or a
 * \u0000 or unpaired surrogate escape jsonb cannot store.  Only parsing runs
 * inside the PG_TRY (no lock, buffer or other resource is taken there), and the
 * caught error is replaced at once by the token's.
 */
static Jsonb *
PayloadJsonb(char *text)
{
	MemoryContext cxt = CurrentMemoryContext;
	Jsonb	   *volatile payload = NULL;

	PG_TRY();
	{
		payload = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
	}
	PG_CATCH();
	{
		ErrorData  *error;

		MemoryContextSwitchTo(cxt);
		error = CopyErrorData();
		FlushErrorState();
		ReportInvalidToken(psprintf("The payload is not JSON that PostgreSQL can store: %s", error->message));
	}
	PG_END_TRY();
	return payload;
}

static JsonbValue *
Member(Jsonb *payload, const char *name, JsonbValue *buf)
{
	return getKeyJsonValueFromContainer(&payload->root, name, strlen(name), buf);
}

static bool
ValidIssuer(const char *issuer, int len)
{
	int			i;

	if (len < RLS_ISSUER_MIN_LEN || len > RLS_ISSUER_MAX_LEN)
		return false;
	for (i = 0; i < len; i++)
		if (Base64UrlValue(issuer[i]) < 0)
			return false;
	return true;
}

/*
 * Read one of a use's numbers, from *cursor up to the next dot (which *cursor
 * is left after): positive decimal without sign or leading zeros.
 */
static int64
UseNumber(const char **cursor, const char *end, const char *what)
{
	const char *dot = memchr(*cursor, '.', end - *cursor);
	const char *digit;
	int64		result = 0;

	if (dot == NULL)
		ReportInvalidUse("A use ends with \".<seq>.<time>.<mac>\" after the token's signature.");
	for (digit = *cursor; digit < dot; digit++)
	{
		if (*digit < '0' || *digit > '9' || (digit == *cursor && *digit == '0') ||
			result > (PG_INT64_MAX - (*digit - '0')) / 10)
			break;
		result = result * 10 + (*digit - '0');
	}
	if (digit < dot || result == 0)
		ReportInvalidUse(psprintf("The use's %s must be a positive decimal integer of at most 63 bits, without sign or leading zeros.",
								  what));
	*cursor = dot + 1;
	return result;
}

/*
 * Split a token, or a use of one, into its parts, checking only its length
 * and layout.
 */
static void
SplitToken(const char *text, int len, TokenParts *parts)
{
	int			prefix_len = strlen(TOKEN_VERSION_PREFIX);
	const char *end = text + len;
	const char *payload_end;
	const char *signature_end;
	const char *cursor;

	if (len > TOKEN_MAX_LEN + USE_SUFFIX_MAX_LEN)
		ReportInvalidToken(psprintf("The token is longer than %d bytes.", TOKEN_MAX_LEN));
	if (len < prefix_len || memcmp(text, TOKEN_VERSION_PREFIX, prefix_len) != 0)
		ReportInvalidToken("The token does not start with \"" TOKEN_VERSION_PREFIX "\".");
	payload_end = memchr(text + prefix_len, '.', len - prefix_len);
	if (payload_end == NULL)
		ReportInvalidToken("The token has no signature part.");
	parts->signature = payload_end + 1;
	signature_end = memchr(parts->signature, '.', end - parts->signature);
	parts->is_use = signature_end != NULL;
	parts->token_len = (parts->is_use ? signature_end : end) - text;
	if (parts->token_len > TOKEN_MAX_LEN)
		ReportInvalidToken(psprintf("The token is longer than %d bytes.", TOKEN_MAX_LEN));
	if (!parts->is_use)
		return;

	cursor = signature_end + 1;
	parts->use_sequence = UseNumber(&cursor, end, "sequence number");
	parts->use_time = UseNumber(&cursor, end, "time");
	parts->mac = cursor;
	if (end - parts->mac != MAC_TEXT_LEN)
		ReportInvalidUse("The use's MAC is not 43 characters of base64url.");
}

/*
 * Check a use's MAC, HMAC-SHA256 over "<signature>.<seq>.<time>", before
 * anything else of it is decoded or looked up.
 */
static void
CheckUseMac(const TokenParts *parts)
{
	uint8	   *mac;

	if (Base64UrlDecode(parts->mac, MAC_TEXT_LEN, &mac) != PG_SHA256_DIGEST_LENGTH)
		ReportInvalidUse("The use's MAC is not 43 characters of base64url.");
	if (!RlsSignatureMatches(parts->signature, (parts->mac - 1) - parts->signature, mac))
		ReportInvalidUse("The use's MAC does not match any key in django_rls.signing_key_file for its token, sequence number and time.");
}

/*
 * Check the signature, then decode and check the payload.  Every failure
 * raises an error; on return the token is authentic but it has not
 * been spent yet.
 */
static void
ParseToken(const char *token, int len, RlsVerifiedToken *result)
{
	const char *payload_start;
	const char *dot;
	uint8	   *signature;
	uint8	   *payload_bytes;
	int			payload_len;
	Jsonb	   *payload;
	JsonbValue	buf;
	JsonbValue *value;
	int			prefix_len = strlen(TOKEN_VERSION_PREFIX);
	char	   *unknown;
	const char *wrong;

	payload_start = token + prefix_len;
	dot = memchr(payload_start, '.', len - prefix_len);
	if (Base64UrlDecode(dot + 1, len - (dot + 1 - token), &signature) != PG_SHA256_DIGEST_LENGTH)
		ReportInvalidToken("The signature is not 32 bytes of base64url.");
	if (!RlsSignatureMatches(token, dot - token, signature))
		ReportInvalidToken("The signature does not match any key in django_rls.signing_key_file.");

	payload_len = Base64UrlDecode(payload_start, dot - payload_start, &payload_bytes);
	if (payload_len < 0)
		ReportInvalidToken("The payload is not base64url.");
	payload = PayloadJsonb(pnstrdup((char *) payload_bytes, payload_len));
	if (!JB_ROOT_IS_OBJECT(payload))
		ReportInvalidToken("The payload is not a JSON object.");
	unknown = RlsUnknownMember(payload, token_members, lengthof(token_members));
	if (unknown != NULL)
		ReportInvalidToken(psprintf("The payload has an unknown member \"%s\".", unknown));

	wrong = RlsReadContextMembers(payload, &result->context);
	if (wrong != NULL)
		ReportInvalidToken(psprintf("The payload member \"%s\" must be %s.", wrong, RlsContextMemberType(wrong)));
	result->issued_at = IntegerMember(Member(payload, "iat", &buf), "iat");
	result->expires_at = IntegerMember(Member(payload, "exp", &buf), "exp");

	value = Member(payload, "iss", &buf);
	if (value == NULL || value->type != jbvString ||
		!ValidIssuer(value->val.string.val, value->val.string.len))
		ReportInvalidToken(psprintf("The payload member \"iss\" must be %d to %d base64url characters.",
									RLS_ISSUER_MIN_LEN, RLS_ISSUER_MAX_LEN));
	result->issuer = pnstrdup(value->val.string.val, value->val.string.len);

	/* Without seq the token is reusable, and spent only through uses. */
	result->sequence = 0;
	value = Member(payload, "seq", &buf);
	if (value != NULL)
	{
		result->sequence = IntegerMember(value, "seq");
		if (result->sequence < 1)
			ReportInvalidToken("The payload member \"seq\" must be a positive integer.");
	}

	value = Member(payload, "db", &buf);
	if (value != NULL)
	{
		char	   *dbname = get_database_name(MyDatabaseId);

		if (value->type != jbvString ||
			strlen(dbname) != (size_t) value->val.string.len ||
			memcmp(dbname, value->val.string.val, value->val.string.len) != 0)
			ReportInvalidToken("The token was signed for another database.");
	}
}

/*
 * Refuse tokens that are expired or too long-lived, and a token or use made
 * (at made_at) before the replay memory was created.
 */
static void
CheckTokenTimes(const RlsVerifiedToken *token, const TokenParts *parts, int64 now)
{
	int64		made_at = parts->is_use ? parts->use_time : token->issued_at;
	int64		initialized = RlsReplayInitializedAt();

	if (token->expires_at <= now)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("django_rls context token has expired"),
				 errdetail("It expired %lld seconds ago.", (long long) (now - token->expires_at)),
				 errhint("Sign a fresh token for every statement or transaction, and keep the clocks of the application and database servers in sync.")));
	if (token->expires_at - now > max_token_lifetime)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("django_rls context token lives too long"),
				 errdetail("It expires in %lld seconds; django_rls.max_token_lifetime allows %d.",
						   (long long) (token->expires_at - now), max_token_lifetime),
				 errhint("Sign tokens with a shorter lifetime (DJANGO_RLS[\"TOKEN_LIFETIME\"]), or check the application server's clock.")));
	if (token->issued_at > token->expires_at)
		ReportInvalidToken("The token was issued after it expired (iat > exp).");

	/*
	 * Spent tokens are remembered in shared memory, which a restart or the
	 * reinitialisation after a backend crash empties.  A token issued, or a
	 * use made, before then or within the same second (times have a
	 * resolution of one second) might have been spent already.  A reusable
	 * token is never spent itself: only its uses' times count.
	 */
	if (made_at <= initialized)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("django_rls context token was issued before the server's replay memory was initialised"),
				 errdetail("The server restarted or recovered from a crash at Unix time %lld and cannot tell whether the %s was used before.",
						   (long long) initialized, parts->is_use ? "use" : "token"),
				 errhint(parts->is_use ? "Make a new use of the token." : "Sign a fresh token.")));
}

/*
 * The token a use holds, verified: by this backend before (token_cache.c),
 * or now.
 */
static void
UsedToken(const char *text, const TokenParts *parts, RlsVerifiedToken *result)
{
	if (RlsTokenCacheLookup(text, parts->token_len, RlsSigningKeysGeneration(), result))
		return;
	ParseToken(text, parts->token_len, result);
	if (result->sequence == 0)
		RlsTokenCacheStore(text, parts->token_len, RlsSigningKeysGeneration(), result);
}

/*
 * Verify a signed token, or a use of a reusable one, and spend it.  Every
 * failure raises an error; on return *result holds the canonical context the
 * token authorizes.
 */
void
RlsVerifyToken(const char *text, int len, RlsContextValues *result)
{
	TokenParts	parts;
	RlsVerifiedToken token;
	int64		sequence;
	int64		now;

	if (!RlsSigningKeyConfigured())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("no django_rls signing key is configured"),
				 errhint("Point django_rls.signing_key_file at a file holding the key (postgresql.conf or ALTER SYSTEM) and reload the server.")));
	if (!RlsReplayAvailable())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("signed django_rls contexts need django_rls in shared_preload_libraries"),
				 errdetail("Replay protection keeps spent tokens in shared memory, which only a preloaded library can reserve."),
				 errhint("Add django_rls to shared_preload_libraries in postgresql.conf and restart the server.")));

	SplitToken(text, len, &parts);
	if (parts.is_use)
	{
		CheckUseMac(&parts);
		UsedToken(text, &parts, &token);
		if (token.sequence != 0)
			ReportInvalidUse("The token has its own \"seq\": it is single-use and is sent alone, without \".<seq>.<time>.<mac>\".");
		sequence = parts.use_sequence;
	}
	else
	{
		ParseToken(text, parts.token_len, &token);
		if (token.sequence == 0)
			ReportInvalidUse("The token has no \"seq\": it is reusable, and accepted only as a use (\"<token>.<seq>.<time>.<mac>\"), never alone.");
		sequence = token.sequence;
	}

	now = (int64) timestamptz_to_time_t(GetCurrentTimestamp());
	CheckTokenTimes(&token, &parts, now);
	switch (RlsReplaySpend(token.issuer, sequence, token.expires_at, now))
	{
		case RLS_REPLAY_FRESH:
			break;
		case RLS_REPLAY_SPENT:
			if (parts.is_use)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
						 errmsg("django_rls context token has already been used"),
						 errdetail("This use (number %lld of its issuer) was accepted before; every use is accepted once, on any connection to this server.",
								   (long long) sequence),
						 errhint("Send a new use (the issuer's next sequence number, with its MAC) with every statement or transaction.")));
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("django_rls context token has already been used"),
					 errdetail("Every token is accepted once, on any connection to this server."),
					 errhint("Sign a new token (with the next sequence number) for every statement or transaction.")));
			break;
		case RLS_REPLAY_TOO_OLD:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("django_rls context token arrived after %d newer tokens of its issuer", RLS_REPLAY_WINDOW),
					 errdetail("The server cannot tell a token that far behind its issuer's newest from a replayed one."),
					 errhint("Sign the token, or make the use, right before sending it; retry with a fresh one.")));
			break;
		case RLS_REPLAY_FULL:
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("too many django_rls token issuers"),
					 errdetail("Tokens of django_rls.replay_issuers other issuers (signing processes) have not expired yet; tokens of known issuers are still accepted."),
					 errhint("Raise django_rls.replay_issuers (needs a restart) to the number of application processes that sign tokens.")));
			break;
	}
	*result = token.context;
}

/*
 * rls.set_context_signed(token text, is_local boolean)
 */
Datum
rls_set_context_signed(PG_FUNCTION_ARGS)
{
	text	   *token_text;
	bool		is_local = PG_ARGISNULL(1) ? true : PG_GETARG_BOOL(1);
	RlsContextValues context;

	/*
	 * Not STRICT: a NULL token must not pass for "nothing to do", which would
	 * leave whatever context was set before in force.
	 */
	RlsCheckSetterAllowed("rls.set_context_signed");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("django_rls context token must not be null"),
				 errdetail("rls.set_context_signed() sets a context only from a signed token."),
				 errhint("Sign a token with the application's key, or call rls.clear_context() to clear the context.")));
	token_text = PG_GETARG_TEXT_PP(0);
	RlsCheckScope("rls.set_context_signed", is_local);
	RlsVerifyToken(VARDATA_ANY(token_text), VARSIZE_ANY_EXHDR(token_text), &context);
	RlsApplyContext(context.site, context.user, context.claims, is_local);
	PG_RETURN_VOID();
}
