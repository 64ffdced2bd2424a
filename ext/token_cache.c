/*-------------------------------------------------------------------------
 *
 * ext/token_cache.c
 *		The reusable tokens this backend has verified, so each is parsed once.
 *
 * A reusable token (see token.c) comes with every statement of every request
 * of its context, each time as a new use.  Checking its signature and
 * decoding its payload costs far more than checking a use's MAC, and behind
 * PgBouncer the statements of one request reach different backends, so each
 * backend keeps what it verified.  Only the work is saved: every use still
 * needs its own MAC under a current key, a sequence number never spent before
 * (replay.c), and an unexpired token.
 *
 * The cache is a fixed array of slots, the slot chosen by a hash of the
 * token's text, a newcomer replacing whatever held its slot: its memory is
 * bounded whatever the load, and a token that lost its slot is simply
 * verified again.  Only tokens whose signature matched are stored, so no one
 * without a key can choose what the cache holds.  What was verified under a
 * key file that has changed since is verified again, so a removed key stops
 * working at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/memutils.h"

#include "django_rls.h"

#define TOKEN_CACHE_SLOTS 64

typedef struct CachedToken
{
	char	   *text;			/* NULL while the slot is empty */
	int			len;
	uint64		keys_generation;
	RlsVerifiedToken verified;
} CachedToken;

static MemoryContext cache_context = NULL;
static CachedToken slots[TOKEN_CACHE_SLOTS];

static CachedToken *
SlotFor(const char *token, int len)
{
	return &slots[hash_bytes((const unsigned char *) token, len) % TOKEN_CACHE_SLOTS];
}

static void
EmptySlot(CachedToken *slot)
{
	if (slot->text == NULL)
		return;
	pfree(slot->text);
	pfree(slot->verified.context.site);
	pfree(slot->verified.context.user);
	pfree(slot->verified.context.claims);
	pfree(slot->verified.issuer);
	slot->text = NULL;
}

/*
 * Copy what this backend verified of the token into *result, in the current
 * memory context, or return false when it must be verified (again).
 */
bool
RlsTokenCacheLookup(const char *token, int len, uint64 keys_generation,
					RlsVerifiedToken *result)
{
	CachedToken *slot = SlotFor(token, len);

	if (slot->text == NULL || slot->len != len || memcmp(slot->text, token, len) != 0)
		return false;
	if (slot->keys_generation != keys_generation)
	{
		EmptySlot(slot);
		return false;
	}
	*result = slot->verified;
	result->context.site = pstrdup(slot->verified.context.site);
	result->context.user = pstrdup(slot->verified.context.user);
	result->context.claims = pstrdup(slot->verified.context.claims);
	result->issuer = pstrdup(slot->verified.issuer);
	return true;
}

/* Remember a token whose signature and payload were just verified. */
void
RlsTokenCacheStore(const char *token, int len, uint64 keys_generation,
				   const RlsVerifiedToken *verified)
{
	CachedToken *slot = SlotFor(token, len);
	MemoryContext old;

	if (cache_context == NULL)
		cache_context = AllocSetContextCreate(TopMemoryContext, "django_rls token cache",
											  ALLOCSET_SMALL_SIZES);
	EmptySlot(slot);
	old = MemoryContextSwitchTo(cache_context);
	slot->verified = *verified;
	slot->verified.context.site = pstrdup(verified->context.site);
	slot->verified.context.user = pstrdup(verified->context.user);
	slot->verified.context.claims = pstrdup(verified->context.claims);
	slot->verified.issuer = pstrdup(verified->issuer);
	slot->text = pnstrdup(token, len);
	slot->len = len;
	slot->keys_generation = keys_generation;
	MemoryContextSwitchTo(old);
}
