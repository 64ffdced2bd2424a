/*-------------------------------------------------------------------------
 *
 * ext/replay.c
 *		Server-wide memory of spent token nonces.
 *
 * A signed token can be read back from pg_stat_activity or the server log, so
 * every token is single-use.  The nonces of accepted tokens are kept in a
 * shared-memory hash table until the token would have expired anyway; the
 * table is shared by all backends, so a token is refused on any connection
 * once it has been used on one.  That is what makes replay protection work
 * behind PgBouncer, where the application cannot know which backend it talks
 * to.
 *
 * Memory is fixed at server start (django_rls.replay_cache_size entries).
 * Expired entries are swept only when the table is full; if it is still full
 * after a sweep, tokens are refused rather than remembered partially.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/hsearch.h"

#include "django_rls.h"

#define REPLAY_TRANCHE_NAME "django_rls"

typedef struct ReplayKey
{
	char		nonce[RLS_NONCE_MAX_LEN];	/* zero-padded */
} ReplayKey;

typedef struct ReplayEntry
{
	ReplayKey	key;
	int64		expires_at;		/* Unix time, seconds */
} ReplayEntry;

typedef struct ReplayShared
{
	LWLock	   *lock;
} ReplayShared;

static int	replay_cache_size = 65536;
static ReplayShared *replay_shared = NULL;
static HTAB *replay_table = NULL;

void
RlsDefineReplaySettings(void)
{
	DefineCustomIntVariable(RLS_GUC_PREFIX ".replay_cache_size",
							"Number of spent token nonces remembered to refuse replayed tokens.",
							"Size it for the peak number of signed tokens accepted within django_rls.max_token_lifetime.",
							&replay_cache_size, 65536, 1024, INT_MAX / 2,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
}

static Size
ReplayShmemSize(void)
{
	return add_size(MAXALIGN(sizeof(ReplayShared)),
					hash_estimate_size(replay_cache_size, sizeof(ReplayEntry)));
}

void
RlsReplayShmemRequest(void)
{
	RequestAddinShmemSpace(ReplayShmemSize());
	RequestNamedLWLockTranche(REPLAY_TRANCHE_NAME, 1);
}

void
RlsReplayShmemStartup(void)
{
	bool		found;
	HASHCTL		info;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	replay_shared = ShmemInitStruct("django_rls replay state",
									sizeof(ReplayShared), &found);
	if (!found)
		replay_shared->lock = &(GetNamedLWLockTranche(REPLAY_TRANCHE_NAME))->lock;

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(ReplayKey);
	info.entrysize = sizeof(ReplayEntry);
	replay_table = ShmemInitHash("django_rls replay cache",
								 replay_cache_size, replay_cache_size,
								 &info, HASH_ELEM | HASH_BLOBS);
	LWLockRelease(AddinShmemInitLock);
}

bool
RlsReplayAvailable(void)
{
	return replay_table != NULL;
}

/* Drop every entry whose token has expired.  Caller holds the lock. */
static void
SweepExpired(int64 now)
{
	HASH_SEQ_STATUS status;
	ReplayEntry *entry;

	hash_seq_init(&status, replay_table);
	while ((entry = (ReplayEntry *) hash_seq_search(&status)) != NULL)
	{
		if (entry->expires_at <= now)
			(void) hash_search(replay_table, &entry->key, HASH_REMOVE, NULL);
	}
}

/*
 * Remember a nonce until expires_at.  Returns false when the nonce is already
 * remembered, that is when the token was used before.  Raises an error when
 * the table is full of live nonces.
 */
bool
RlsReplayRemember(const char *nonce, int64 expires_at, int64 now)
{
	ReplayKey	key;
	ReplayEntry *entry;
	bool		full = false;

	Assert(strlen(nonce) <= RLS_NONCE_MAX_LEN);
	memset(&key, 0, sizeof(key));
	memcpy(key.nonce, nonce, strlen(nonce));

	LWLockAcquire(replay_shared->lock, LW_EXCLUSIVE);
	entry = (ReplayEntry *) hash_search(replay_table, &key, HASH_FIND, NULL);
	if (entry != NULL && entry->expires_at > now)
	{
		LWLockRelease(replay_shared->lock);
		return false;
	}
	if (entry == NULL && hash_get_num_entries(replay_table) >= replay_cache_size)
	{
		SweepExpired(now);
		full = hash_get_num_entries(replay_table) >= replay_cache_size;
	}
	if (!full)
	{
		entry = (ReplayEntry *) hash_search(replay_table, &key, HASH_ENTER_NULL, NULL);
		if (entry == NULL)
			full = true;
		else
			entry->expires_at = expires_at;
	}
	LWLockRelease(replay_shared->lock);

	if (full)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("the django_rls replay cache is full"),
				 errdetail("%d signed tokens that have not expired yet are remembered.", replay_cache_size),
				 errhint("Raise django_rls.replay_cache_size (needs a restart) or lower the lifetime of the tokens the application signs.")));
	return true;
}

/* Report how many entries are in use, for rls.extension_info(). */
void
RlsReplayUsage(int64 *used, int64 *capacity)
{
	*capacity = replay_table ? replay_cache_size : 0;
	*used = 0;
	if (replay_table == NULL)
		return;
	LWLockAcquire(replay_shared->lock, LW_SHARED);
	*used = hash_get_num_entries(replay_table);
	LWLockRelease(replay_shared->lock);
}
