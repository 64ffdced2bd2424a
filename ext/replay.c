/*-------------------------------------------------------------------------
 *
 * ext/replay.c
 *		Server-wide memory of spent tokens: a sliding window per issuer.
 *
 * A signed token can be read back from pg_stat_activity or the server log, so
 * every token is single-use, on every connection: the memory is in shared
 * memory, shared by all backends.  That is what makes replay protection work
 * behind PgBouncer, where the application cannot know which backend it talks
 * to.
 *
 * Remembering every spent token until it expires would need memory in
 * proportion to the rate of tokens times their lifetime, and any fixed
 * amount of it can be exhausted by legitimate traffic.  Instead each token
 * names its issuer (a random id each signing process draws for itself) and a
 * sequence number that the issuer increases for every token, and the server
 * keeps, per issuer, the highest sequence number accepted and a bitmap of the
 * REPLAY_WINDOW numbers below it (the anti-replay window of IPsec, RFC 4303
 * section 3.4.3).  A token is accepted when its number is above the highest,
 * or inside the window and not yet marked.  Memory grows with the number of
 * issuers, never with the rate, and every check is O(1).
 *
 * What can still be refused under load:
 *	- a token that arrives after REPLAY_WINDOW newer tokens of the same issuer
 *	  have been accepted (it is indistinguishable from a replay);
 *	- a token from a new issuer while django_rls.replay_issuers issuers with
 *	  unexpired tokens are remembered (a configuration problem: too many
 *	  signing processes for the setting).
 * Issuers whose tokens have all expired are forgotten, oldest first, each at
 * most once per insertion: expiry is O(1) amortised.
 *
 * Shared memory does not survive a restart, nor the reinitialisation that
 * follows a backend crash, so the time it was initialised is kept too: a
 * token issued before then may have been spent already (see token.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/ilist.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "django_rls.h"

#define REPLAY_TRANCHE_NAME "django_rls"
#define REPLAY_WORDS (RLS_REPLAY_WINDOW / 64)

typedef struct ReplayKey
{
	char		issuer[RLS_ISSUER_MAX_LEN]; /* zero-padded */
} ReplayKey;

typedef struct ReplayIssuer
{
	ReplayKey	key;
	int64		newest;			/* highest sequence number accepted */
	int64		expires_at;		/* latest expiry of an accepted token */
	dlist_node	by_use;			/* in ReplayShared.issuers, least recent first */
	uint64		seen[REPLAY_WORDS]; /* bit i: number newest - i was accepted */
} ReplayIssuer;

typedef struct ReplayShared
{
	LWLock	   *lock;
	TimestampTz initialized_at;
	dlist_head	issuers;
	int64		count;
} ReplayShared;

static int	replay_issuers = 1024;
static ReplayShared *replay_shared = NULL;
static HTAB *replay_table = NULL;

void
RlsDefineReplaySettings(void)
{
	DefineCustomIntVariable(RLS_GUC_PREFIX ".replay_issuers",
							"Number of token issuers (signing processes) whose spent tokens are remembered.",
							"Each issuer takes about 600 bytes of shared memory, whatever its rate of tokens. Size it for the number of application processes that sign tokens within django_rls.max_token_lifetime.",
							&replay_issuers, 1024, 4, INT_MAX / 2,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
}

static Size
ReplayShmemSize(void)
{
	return add_size(MAXALIGN(sizeof(ReplayShared)),
					hash_estimate_size(replay_issuers, sizeof(ReplayIssuer)));
}

void
RlsReplayShmemRequest(void)
{
	RequestAddinShmemSpace(ReplayShmemSize());
	RequestNamedLWLockTranche(REPLAY_TRANCHE_NAME, 1);
}

/*
 * Runs in the postmaster at start and again after every crash of a backend,
 * when all shared memory is created anew.
 */
void
RlsReplayShmemStartup(void)
{
	bool		found;
	HASHCTL		info;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	replay_shared = ShmemInitStruct("django_rls replay state",
									sizeof(ReplayShared), &found);
	if (!found)
	{
		replay_shared->lock = &(GetNamedLWLockTranche(REPLAY_TRANCHE_NAME))->lock;
		replay_shared->initialized_at = GetCurrentTimestamp();
		dlist_init(&replay_shared->issuers);
		replay_shared->count = 0;
	}

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(ReplayKey);
	info.entrysize = sizeof(ReplayIssuer);
	replay_table = ShmemInitHash("django_rls replay issuers",
								 replay_issuers, replay_issuers,
								 &info, HASH_ELEM | HASH_BLOBS);
	LWLockRelease(AddinShmemInitLock);
}

bool
RlsReplayAvailable(void)
{
	return replay_table != NULL;
}

/* Unix time (seconds, rounded down) at which the replay memory was created. */
int64
RlsReplayInitializedAt(void)
{
	return (int64) timestamptz_to_time_t(replay_shared->initialized_at);
}

/*
 * Forget issuers whose every accepted token has expired, least recently used
 * first, stopping at the first one still live.  Caller holds the lock.
 */
static void
ForgetExpiredIssuers(int64 now)
{
	while (!dlist_is_empty(&replay_shared->issuers))
	{
		ReplayIssuer *oldest = dlist_head_element(ReplayIssuer, by_use,
												  &replay_shared->issuers);

		if (oldest->expires_at > now)
			break;
		dlist_delete(&oldest->by_use);
		(void) hash_search(replay_table, &oldest->key, HASH_REMOVE, NULL);
		replay_shared->count--;
	}
}

/* Move the window up by distance numbers: bit i becomes bit i + distance. */
static void
SlideWindow(uint64 *seen, uint64 distance)
{
	int			words;
	int			bits;
	int			i;

	if (distance >= RLS_REPLAY_WINDOW)
	{
		memset(seen, 0, sizeof(uint64) * REPLAY_WORDS);
		return;
	}
	words = (int) (distance / 64);
	bits = (int) (distance % 64);
	for (i = REPLAY_WORDS - 1; i >= 0; i--)
	{
		uint64		moved = 0;

		if (i - words >= 0)
		{
			moved = seen[i - words] << bits;
			if (bits > 0 && i - words - 1 >= 0)
				moved |= seen[i - words - 1] >> (64 - bits);
		}
		seen[i] = moved;
	}
}

/*
 * Spend token number sequence of issuer, valid until expires_at.  Nothing is
 * remembered unless RLS_REPLAY_FRESH is returned.
 */
RlsReplayResult
RlsReplaySpend(const char *issuer, int64 sequence, int64 expires_at, int64 now)
{
	ReplayKey	key;
	ReplayIssuer *entry;
	bool		found;
	RlsReplayResult result = RLS_REPLAY_FRESH;

	Assert(strlen(issuer) <= RLS_ISSUER_MAX_LEN);
	memset(&key, 0, sizeof(key));
	memcpy(key.issuer, issuer, strlen(issuer));

	LWLockAcquire(replay_shared->lock, LW_EXCLUSIVE);
	ForgetExpiredIssuers(now);
	entry = (ReplayIssuer *) hash_search(replay_table, &key, HASH_FIND, NULL);
	if (entry == NULL)
	{
		if (replay_shared->count >= replay_issuers)
			result = RLS_REPLAY_FULL;
		else
		{
			entry = (ReplayIssuer *) hash_search(replay_table, &key, HASH_ENTER_NULL, &found);
			if (entry == NULL)
				result = RLS_REPLAY_FULL;
			else
			{
				Assert(!found);
				entry->newest = sequence;
				entry->expires_at = expires_at;
				memset(entry->seen, 0, sizeof(entry->seen));
				entry->seen[0] = 1;
				dlist_push_tail(&replay_shared->issuers, &entry->by_use);
				replay_shared->count++;
			}
		}
	}
	else
	{
		if (sequence > entry->newest)
		{
			SlideWindow(entry->seen, (uint64) sequence - (uint64) entry->newest);
			entry->seen[0] |= 1;
			entry->newest = sequence;
		}
		else
		{
			uint64		behind = (uint64) entry->newest - (uint64) sequence;

			if (behind >= RLS_REPLAY_WINDOW)
				result = RLS_REPLAY_TOO_OLD;
			else if (entry->seen[behind / 64] & (UINT64CONST(1) << (behind % 64)))
				result = RLS_REPLAY_SPENT;
			else
				entry->seen[behind / 64] |= UINT64CONST(1) << (behind % 64);
		}
		if (result == RLS_REPLAY_FRESH)
		{
			entry->expires_at = Max(entry->expires_at, expires_at);
			dlist_move_tail(&replay_shared->issuers, &entry->by_use);
		}
	}
	LWLockRelease(replay_shared->lock);
	return result;
}

/* Report how many issuers are remembered, for rls.extension_info(). */
void
RlsReplayUsage(int64 *used, int64 *capacity)
{
	*capacity = replay_table ? replay_issuers : 0;
	*used = 0;
	if (replay_table == NULL)
		return;
	LWLockAcquire(replay_shared->lock, LW_SHARED);
	*used = replay_shared->count;
	LWLockRelease(replay_shared->lock);
}
