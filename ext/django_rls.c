/*-------------------------------------------------------------------------
 *
 * ext/django_rls.c
 *		Module entry point: settings, reserved prefix and shared-memory hooks.
 *
 * The library should be loaded through shared_preload_libraries: that is the
 * only way to reserve the shared memory that replay protection of signed
 * tokens needs, and it guarantees that the django_rls.* settings exist and the
 * statement hooks are in place before any SQL runs.  Loaded later, the setter
 * functions still work and placeholders set before the load are refused by
 * the settings' check hooks; a statement carrying its context, which needs
 * the hooks from its start, is refused (statement.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"

#include "django_rls.h"

RLS_MODULE_MAGIC;

/* True when the library was loaded at server or session start. */
bool		rls_loaded_at_startup = false;

/* The same, as the setting django_rls.preloaded. */
static bool preloaded_setting = false;

#ifdef RLS_HAVE_SHMEM_REQUEST_HOOK
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

#ifdef RLS_HAVE_SHMEM_REQUEST_HOOK
static void
RequestSharedMemory(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RlsReplayShmemRequest();
}
#endif

static void
StartupSharedMemory(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	RlsReplayShmemStartup();
}

void		_PG_init(void);

void
_PG_init(void)
{
	/*
	 * CREATE EXTENSION and the first call of one of our functions load the
	 * library inside a transaction of a running session; preloading happens
	 * in the postmaster, or while the backend initialises (from PostgreSQL 15
	 * session_preload_libraries inside InitPostgres's transaction, so that
	 * alone does not tell).
	 */
	rls_loaded_at_startup = !IsTransactionState() || !IsNormalProcessingMode();

	/*
	 * Clients ask this setting whether a statement may carry its context
	 * (statement.c needs its hooks in place before the statement starts).
	 * It is reported to the client at connection start, so asking costs
	 * nothing; it does not exist in a backend that has not loaded the library.
	 * It starts off and is then switched on, rather than starting on: a
	 * setting is reported when the backend starts reporting, or later when
	 * its value changes, and PostgreSQL 14 loads session_preload_libraries
	 * only after the backend has started reporting.
	 */
	DefineCustomBoolVariable(RLS_GUC_PREFIX ".preloaded",
							 "Whether the django_rls library was loaded at server or session start in this backend.",
							 "Statements can carry their context (the /*django_rls:$1*/ marker) only when it is on.",
							 &preloaded_setting, false, PGC_INTERNAL,
							 GUC_REPORT | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE,
							 NULL, NULL, NULL);
	if (rls_loaded_at_startup)
		SetConfigOption(RLS_GUC_PREFIX ".preloaded", "on", PGC_INTERNAL, PGC_S_OVERRIDE);
	RlsDefineContextSettings();
	RlsDefineBypassingRoleSettings();
	RlsDefineTokenSettings();
	RlsDefineKeySettings();
	RlsDefineAccessorParamSettings();
	RlsDefineAuditSettings();
	RlsDefineCitusSettings();
	RlsReportCitusLibrary();
	if (process_shared_preload_libraries_in_progress)
		RlsDefineReplaySettings();
	MarkGUCPrefixReserved(RLS_GUC_PREFIX);
	/* First, so that statement.c's hooks run before audit_context.c's. */
	RlsInstallAuditContextHooks();
	RlsInstallStatementHooks();
	RlsInstallBoundRoleUtilityHook();
	RlsInstallAccessorParams();
	if (!rls_loaded_at_startup)
		RlsNoteLateLoad();

	if (!process_shared_preload_libraries_in_progress)
		return;

#ifdef RLS_HAVE_SHMEM_REQUEST_HOOK
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = RequestSharedMemory;
#else
	RlsReplayShmemRequest();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = StartupSharedMemory;
}
