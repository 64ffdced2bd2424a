/*-------------------------------------------------------------------------
 *
 * ext/audit_image.c
 *		Row images (jsonb) and the comparison of column values, for the audit.
 *
 * Nothing here looks up a cast, an operator or a function by name, so no
 * code a role can define (CREATE CAST, CREATE OPERATOR, functions in its
 * schema or in pg_temp) runs while a row is recorded.  That is what made
 * to_jsonb(), ::text and IS DISTINCT FROM unsafe: to_jsonb() calls a cast to
 * json when the column's type has one, and the others resolve operators and
 * casts through the search path.
 *
 * A value becomes JSON by its type (a domain by its base type): json and
 * jsonb are embedded as JSON; booleans and finite numbers as JSON booleans
 * and numbers; date and time types as ISO 8601 strings; everything else
 * (enums, arrays, ranges, multiranges, composites, geometric types, money,
 * bytea, xml, ...) as the string the type's output function returns.  Output
 * functions are safe to call: only a superuser can create a base type, and
 * every other kind of type (enum, domain, array, range, multirange,
 * composite) prints through a built-in output function that prints its parts
 * through theirs.  They also run with the rights of the role that wrote the
 * row, never raised ones (see audit.c).
 *
 * Two values are equal when their bytes are (after detoasting), or else when
 * their output texts are: a type's output is what the log shows, and binary
 * equality never calls type-specific code.  Output texts depend on settings a
 * session may SET (extra_float_digits prints 1.9 and 1.7 alike at -15); the
 * SET clauses of rls_audit.capture() pin every one of them while the trigger
 * runs, so neither the images nor this comparison depend on the writer's
 * session.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"

#include "django_rls.h"

static RlsJsonKind
JsonKindOf(Oid type)
{
	switch (type)
	{
		case BOOLOID:
			return RLS_JSON_BOOL;
		case INT2OID:
		case INT4OID:
		case INT8OID:
			return RLS_JSON_INTEGER;
		case FLOAT4OID:
		case FLOAT8OID:
			return RLS_JSON_FLOAT;
		case NUMERICOID:
			return RLS_JSON_NUMERIC;
		case DATEOID:
		case TIMEOID:
		case TIMETZOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return RLS_JSON_DATETIME;
		case JSONOID:
			return RLS_JSON_JSON;
		case JSONBOID:
			return RLS_JSON_JSONB;
		default:
			return RLS_JSON_TEXT;
	}
}

void
RlsAuditColumnInit(RlsAuditColumn *column, Form_pg_attribute attr, MemoryContext cxt)
{
	Oid			output;
	bool		varlena;

	column->name = MemoryContextStrdup(cxt, NameStr(attr->attname));
	column->type = getBaseType(attr->atttypid);
	column->typlen = attr->attlen;
	column->typbyval = attr->attbyval;
	column->kind = JsonKindOf(column->type);
	/* A domain's output function is its base type's. */
	getTypeOutputInfo(attr->atttypid, &output, &varlena);
	fmgr_info_cxt(output, &column->output, cxt);
	column->excluded = false;
	column->masked = false;
}

char *
RlsAuditValueText(RlsAuditColumn *column, Datum value)
{
	return OutputFunctionCall(&column->output, value);
}

bool
RlsAuditValuesEqual(RlsAuditColumn *column, Datum a, bool a_null, Datum b, bool b_null)
{
	bool		same;

	if (a_null || b_null)
		return a_null && b_null;
	if (column->typbyval)
		return a == b;
	if (column->typlen == -1)
	{
		struct varlena *va = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(a));
		struct varlena *vb = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(b));

		same = VARSIZE_ANY_EXHDR(va) == VARSIZE_ANY_EXHDR(vb) &&
			memcmp(VARDATA_ANY(va), VARDATA_ANY(vb), VARSIZE_ANY_EXHDR(va)) == 0;
	}
	else if (column->typlen > 0)
		same = memcmp(DatumGetPointer(a), DatumGetPointer(b), column->typlen) == 0;
	else
		same = strcmp(DatumGetCString(a), DatumGetCString(b)) == 0;
	if (same)
		return true;
	/* Bytes may differ where the value does not (padding, a null bitmap). */
	return strcmp(RlsAuditValueText(column, a), RlsAuditValueText(column, b)) == 0;
}

static void
PushString(JsonbParseState **state, const char *text)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = (char *) text;
	v.val.string.len = strlen(text);
	(void) pushJsonbValue(state, WJB_VALUE, &v);
}

static void
PushNumeric(JsonbParseState **state, Datum number)
{
	JsonbValue	v;

	v.type = jbvNumeric;
	v.val.numeric = DatumGetNumeric(number);
	(void) pushJsonbValue(state, WJB_VALUE, &v);
}

/* Add a jsonb document as the value of the key just pushed. */
static void
PushJsonb(JsonbParseState **state, Jsonb *jsonb)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken token;

	if (JB_ROOT_IS_SCALAR(jsonb))
	{
		(void) JsonbExtractScalar(&jsonb->root, &v);
		(void) pushJsonbValue(state, WJB_VALUE, &v);
		return;
	}
	it = JsonbIteratorInit(&jsonb->root);
	while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
		(void) pushJsonbValue(state, token,
							  (token == WJB_KEY || token == WJB_VALUE || token == WJB_ELEM) ? &v : NULL);
}

/* Add one column's value as the value of the key just pushed. */
static void
PushValue(JsonbParseState **state, RlsAuditColumn *column, Datum value, bool isnull)
{
	JsonbValue	v;
	char	   *text;

	if (isnull)
	{
		v.type = jbvNull;
		(void) pushJsonbValue(state, WJB_VALUE, &v);
		return;
	}
	switch (column->kind)
	{
		case RLS_JSON_BOOL:
			v.type = jbvBool;
			v.val.boolean = DatumGetBool(value);
			(void) pushJsonbValue(state, WJB_VALUE, &v);
			return;
		case RLS_JSON_INTEGER:
			if (column->type == INT2OID)
				PushNumeric(state, DirectFunctionCall1(int2_numeric, value));
			else if (column->type == INT4OID)
				PushNumeric(state, DirectFunctionCall1(int4_numeric, value));
			else
				PushNumeric(state, DirectFunctionCall1(int8_numeric, value));
			return;
		case RLS_JSON_FLOAT:
			{
				double		d = column->type == FLOAT4OID ? DatumGetFloat4(value) : DatumGetFloat8(value);

				text = RlsAuditValueText(column, value);
				if (isnan(d) || isinf(d))
					PushString(state, text);
				else
					PushNumeric(state, DirectFunctionCall3(numeric_in, CStringGetDatum(text),
														   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)));
				return;
			}
		case RLS_JSON_NUMERIC:
			if (numeric_is_nan(DatumGetNumeric(value)) || numeric_is_inf(DatumGetNumeric(value)))
				PushString(state, RlsAuditValueText(column, value));
			else
				PushNumeric(state, value);
			return;
		case RLS_JSON_DATETIME:
			{
				char		buf[MAXDATELEN + 1];

				/* The parse state keeps the pointer: the text must outlive buf. */
				PushString(state, pstrdup(JsonEncodeDateTime(buf, value, column->type, NULL)));
				return;
			}
		case RLS_JSON_JSONB:
			PushJsonb(state, DatumGetJsonbP(value));
			return;
		case RLS_JSON_JSON:
			text = RlsAuditValueText(column, value);

			/*
			 * json may hold \u0000, which jsonb cannot: such a document is
			 * kept as its text.
			 */
			if (strstr(text, "\\u0000") != NULL)
				PushString(state, text);
			else
				PushJsonb(state, DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text))));
			return;
		case RLS_JSON_TEXT:
			PushString(state, RlsAuditValueText(column, value));
			return;
	}
}

static void
PushKey(JsonbParseState **state, const char *name)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) name;
	k.val.string.len = strlen(name);
	(void) pushJsonbValue(state, WJB_KEY, &k);
}

/*
 * The row in slot as a jsonb object of its logged columns: every column that
 * is neither excluded nor masked, or, when only is given, those of them for
 * which only[i] is true (i the column's index in columns).  order lists the
 * indexes of norder live columns in the order their keys take in a jsonb
 * object, so that the object's keys need no sorting.
 */
Jsonb *
RlsAuditRowImage(RlsAuditColumn *columns, const int *order, int norder, TupleTableSlot *slot,
				 const bool *only)
{
	JsonbParseState *state = NULL;
	JsonbValue *result;
	int			n;

	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (n = 0; n < norder; n++)
	{
		int			i = order[n];
		RlsAuditColumn *column = &columns[i];

		if (column->name == NULL || column->excluded || column->masked || (only != NULL && !only[i]))
			continue;
		PushKey(&state, column->name);
		PushValue(&state, column, slot->tts_values[i], slot->tts_isnull[i]);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(result);
}

/*
 * A row's primary key as text: the key column's output for a one-column key,
 * a JSON object of the key columns otherwise.
 */
char *
RlsAuditKeyText(RlsAuditColumn *columns, const AttrNumber *key, int nkey, TupleTableSlot *slot)
{
	JsonbParseState *state = NULL;
	JsonbValue *result;
	int			i;

	if (nkey == 1)
	{
		int			att = key[0] - 1;

		if (slot->tts_isnull[att])
			return NULL;
		return RlsAuditValueText(&columns[att], slot->tts_values[att]);
	}
	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < nkey; i++)
	{
		int			att = key[i] - 1;

		PushKey(&state, columns[att].name);
		PushValue(&state, &columns[att], slot->tts_values[att], slot->tts_isnull[att]);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbToCString(NULL, &JsonbValueToJsonb(result)->root, 0);
}
