/*-------------------------------------------------------------------------
 *
 * ext/django_rls.c
 *		Module entry point: settings, reserved prefix and shared-memory hooks.
 *
 * The library should be loaded through shared_preload_libraries: that is the
 * only way to reserve the shared memory that replay protection of signed
 * tokens needs, and it guarantees that the django_rls.* settings exist before
 * any SQL runs.  Loaded later it still works, and placeholders set before
 * the load are refused by the settings' check hooks.
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
	 * library inside a transaction; preloading happens outside of one.
	 */
	rls_loaded_at_startup = !IsTransactionState();

	RlsDefineContextSettings();
	RlsDefineTokenSettings();
	RlsDefineKeySettings();
	if (process_shared_preload_libraries_in_progress)
		RlsDefineReplaySettings();
	MarkGUCPrefixReserved(RLS_GUC_PREFIX);
	/* First, so that statement.c's hooks run before audit_context.c's. */
	RlsInstallAuditContextHooks();
	RlsInstallStatementHooks();

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
