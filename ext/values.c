/*-------------------------------------------------------------------------
 *
 * ext/values.c
 *		Reading context values: ids, claims and the JSON object that holds them.
 *
 * Every way a context reaches the server (rls.set_context(), a signed token,
 * an unsigned context carried by a statement) ends here, so that each accepts
 * exactly the same values and turns them into the same canonical text:
 *
 *	- an id is "" (none), a UUID as 8-4-4-4-12 or 32 hexadecimal digits,
 *	  optionally in braces, or a decimal 64-bit integer with an optional sign.
 *	  The UUID forms are tried first, so 32 decimal digits are a UUID.
 *	  django_rls/state.py's parse_id_text follows the same rules, and
 *	  tests/id_vectors.json holds the cases both are tested against;
 *	- claims are a JSON object of at most RLS_CLAIMS_MAX_LEN bytes as text, or
 *	  JSON null for none;
 *	- a context object has the members site, user and claims, each optional.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "django_rls.h"

/* Claims are meant for a handful of small values, not for documents. */
#define RLS_CLAIMS_MAX_LEN 8192

static const char *const context_members[] = {"site", "user", "claims"};

static bool
IsHexDigit(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int
HexValue(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return c - 'A' + 10;
}

/*
 * Parse a decimal 64-bit integer with an optional sign and no surrounding
 * text.  Returns false on anything else, including overflow.
 */
static bool
ParseInt64(const char *s, int64 *result)
{
	bool		negative = false;
	uint64		magnitude = 0;
	const char *p = s;

	if (*p == '+' || *p == '-')
		negative = (*p++ == '-');
	if (*p == '\0')
		return false;
	for (; *p; p++)
	{
		if (*p < '0' || *p > '9')
			return false;
		if (magnitude > (PG_UINT64_MAX - (*p - '0')) / 10)
			return false;
		magnitude = magnitude * 10 + (*p - '0');
	}
	if (negative)
	{
		if (magnitude > (uint64) PG_INT64_MAX + 1)
			return false;
		*result = (magnitude == (uint64) PG_INT64_MAX + 1) ? PG_INT64_MIN : -(int64) magnitude;
	}
	else
	{
		if (magnitude > (uint64) PG_INT64_MAX)
			return false;
		*result = (int64) magnitude;
	}
	return true;
}

/*
 * Parse a UUID in one of exactly two forms: 8-4-4-4-12 hexadecimal digits
 * with hyphens, or 32 hexadecimal digits without any; either may be enclosed
 * in braces.
 */
static bool
ParseUuid(const char *s, pg_uuid_t *result)
{
	const char *p = s;
	size_t		len = strlen(s);
	bool		hyphens;
	int			i;

	if (len >= 2 && s[0] == '{' && s[len - 1] == '}')
	{
		p++;
		len -= 2;
	}
	if (len == 36)
		hyphens = true;
	else if (len == 32)
		hyphens = false;
	else
		return false;
	for (i = 0; i < UUID_LEN; i++)
	{
		/* Hyphens only before bytes 4, 6, 8 and 10: 8-4-4-4-12 digits. */
		if (hyphens && (i == 4 || i == 6 || i == 8 || i == 10))
		{
			if (*p != '-')
				return false;
			p++;
		}
		if (!IsHexDigit(p[0]) || !IsHexDigit(p[1]))
			return false;
		result->data[i] = (unsigned char) (HexValue(p[0]) << 4 | HexValue(p[1]));
		p += 2;
	}
	return true;
}

/*
 * Parse a context id; NULL and "" mean none.  Returns false for anything
 * else that is not an id.  Never raises an error: check hooks call it.
 */
bool
RlsParseId(const char *value, RlsId *id)
{
	memset(id, 0, sizeof(RlsId));
	if (value == NULL || value[0] == '\0')
	{
		id->kind = RLS_ID_UNSET;
		return true;
	}
	if (ParseUuid(value, &id->uuid_value))
	{
		id->kind = RLS_ID_UUID;
		return true;
	}
	if (ParseInt64(value, &id->int_value))
	{
		id->kind = RLS_ID_INT;
		return true;
	}
	return false;
}

/*
 * Return the canonical text of a site or user identifier: the decimal form of
 * an integer or the lower-case hyphenated form of a UUID.  NULL and the empty
 * string mean "not set" and come back as "".
 */
char *
RlsCanonicalId(const char *what, const char *value)
{
	RlsId		id;

	if (!RlsParseId(value, &id))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid %s identifier \"%s\"", what, value),
				 errdetail("A context identifier must be a 64-bit decimal integer, or a UUID as 8-4-4-4-12 or 32 hexadecimal digits."),
				 errhint("Pass the primary key of the %s, such as '42' or 'a8098c1a-f86e-11da-bd1a-00112444be1e'.", what)));
	switch (id.kind)
	{
		case RLS_ID_INT:
			return psprintf(INT64_FORMAT, id.int_value);
		case RLS_ID_UUID:
			return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&id.uuid_value)));
		case RLS_ID_UNSET:
			break;
	}
	return pstrdup("");
}

/*
 * Validate claims and return their canonical text ("" for none).  JSON null
 * counts as no claims.
 */
char *
RlsCanonicalClaims(Datum claims)
{
	Jsonb	   *jb = DatumGetJsonbP(claims);
	char	   *text;

	if (JB_ROOT_IS_SCALAR(jb))
	{
		JsonbValue	scalar;

		if (JsonbExtractScalar(&jb->root, &scalar) && scalar.type == jbvNull)
			return pstrdup("");
	}
	if (!JB_ROOT_IS_OBJECT(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("django_rls claims must be a JSON object"),
				 errhint("Pass claims like '{\"role\": \"editor\"}', or NULL for none.")));
	text = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
	if (strlen(text) > RLS_CLAIMS_MAX_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("django_rls claims are too large"),
				 errdetail("The claims take %zu bytes; the limit is %d.", strlen(text), RLS_CLAIMS_MAX_LEN),
				 errhint("Keep claims to a few small values and look larger data up in tables.")));
	return text;
}

static JsonbValue *
Member(Jsonb *object, const char *name, JsonbValue *buf)
{
	return getKeyJsonValueFromContainer(&object->root, name, strlen(name), buf);
}

/*
 * Read the site or user member: a string, an integer or null.  Returns false
 * for any other JSON type.
 */
static bool
IdMember(JsonbValue *value, const char *name, char **result)
{
	if (value == NULL || value->type == jbvNull)
		*result = pstrdup("");
	else if (value->type == jbvString)
		*result = RlsCanonicalId(name, pnstrdup(value->val.string.val, value->val.string.len));
	else if (value->type == jbvNumeric)
		*result = RlsCanonicalId(name, DatumGetCString(DirectFunctionCall1(numeric_out,
																		   NumericGetDatum(value->val.numeric))));
	else
		return false;
	return true;
}

/*
 * The first member of the object that is not in known[], or NULL.  Callers
 * refuse it: a member this version does not know may carry a constraint that
 * would otherwise be ignored.
 */
char *
RlsUnknownMember(Jsonb *object, const char *const *known, size_t nknown)
{
	JsonbIterator *it = JsonbIteratorInit(&object->root);
	JsonbValue	v;
	JsonbIteratorToken r;

	while ((r = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		bool		ok = false;
		size_t		i;

		if (r != WJB_KEY)
			continue;
		for (i = 0; i < nknown; i++)
			if (strlen(known[i]) == (size_t) v.val.string.len &&
				memcmp(known[i], v.val.string.val, v.val.string.len) == 0)
				ok = true;
		if (!ok)
			return pnstrdup(v.val.string.val, v.val.string.len);
	}
	return NULL;
}

/* What a member named by RlsReadContextMembers() must be, for an error detail. */
const char *
RlsContextMemberType(const char *member)
{
	if (strcmp(member, "claims") == 0)
		return "a JSON object or null";
	return "a string, an integer or null";
}

/*
 * Read the members site, user and claims of an object, as tokens and
 * unsigned contexts hold them.  Returns the name of a member of the wrong
 * JSON type, for the caller to report in its own terms (with
 * RlsContextMemberType), or NULL; an id or claims of the right type but with
 * a bad value raises an error here.
 */
const char *
RlsReadContextMembers(Jsonb *object, RlsContextValues *result)
{
	JsonbValue	buf;
	JsonbValue *value;

	if (!IdMember(Member(object, "site", &buf), "site", &result->site))
		return "site";
	if (!IdMember(Member(object, "user", &buf), "user", &result->user))
		return "user";
	value = Member(object, "claims", &buf);
	if (value == NULL || value->type == jbvNull)
		result->claims = pstrdup("");
	else if (value->type == jbvBinary && JsonContainerIsObject(value->val.binary.data))
		result->claims = RlsCanonicalClaims(JsonbPGetDatum(JsonbValueToJsonb(value)));
	else
		return "claims";			/* a scalar or an array */
	return NULL;
}

/*
 * Parse an unsigned context written as a JSON object with the members site,
 * user and claims (each optional), as a statement-carried context sends it.
 */
void
RlsParseContextObject(const char *json, int len, RlsContextValues *result)
{
	Jsonb	   *object;
	char	   *unknown;
	const char *wrong;

	object = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(json, len))));
	if (!JB_ROOT_IS_OBJECT(object))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a django_rls context must be a JSON object"),
				 errhint("Send {\"site\": ..., \"user\": ..., \"claims\": ...}, or a signed token.")));
	unknown = RlsUnknownMember(object, context_members, lengthof(context_members));
	if (unknown != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a django_rls context has an unknown member \"%s\"", unknown),
				 errhint("Only site, user and claims are allowed.")));
	wrong = RlsReadContextMembers(object, result);
	if (wrong != NULL && strcmp(wrong, "claims") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("django_rls claims must be a JSON object"),
				 errhint("Pass claims like {\"role\": \"editor\"}, or null for none.")));
	if (wrong != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the django_rls context member \"%s\" must be %s", wrong, RlsContextMemberType(wrong)),
				 errhint("Send ids as JSON strings or integers, such as {\"site\": 42, \"user\": \"a8098c1a-f86e-11da-bd1a-00112444be1e\"}.")));
}
