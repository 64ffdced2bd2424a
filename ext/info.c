/*-------------------------------------------------------------------------
 *
 * ext/info.c
 *		rls.extension_info(): how the library is loaded and configured.
 *
 * The status view and Django's system checks need to know whether the
 * library was preloaded and whether signing is set up.  Settings such as
 * shared_preload_libraries and django_rls.signing_key_file are hidden from the
 * application role, so this function reports facts about them without
 * revealing their values.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "django_rls.h"

PG_FUNCTION_INFO_V1(rls_extension_info);

Datum
rls_extension_info(PG_FUNCTION_ARGS)
{
	StringInfoData buf;
	int64		used;
	int64		capacity;

	RlsReplayUsage(&used, &capacity);

	initStringInfo(&buf);
	appendStringInfo(&buf,
					 "{\"mode\": \"c\", \"library_version\": \"%s\", \"loaded_at_startup\": %s, "
					 "\"replay_protection\": %s, \"signing_key_configured\": %s, "
					 "\"require_signature\": %s, \"statement_bound\": %s, \"strict\": %s, "
					 "\"replay_issuers_used\": " INT64_FORMAT ", \"replay_issuers_capacity\": " INT64_FORMAT "}",
					 DJANGO_RLS_VERSION,
					 rls_loaded_at_startup ? "true" : "false",
					 RlsReplayAvailable() ? "true" : "false",
					 RlsSigningKeyConfigured() ? "true" : "false",
					 rls_require_signature ? "true" : "false",
					 rls_statement_bound ? "true" : "false",
					 rls_strict ? "true" : "false",
					 used, capacity);
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}
