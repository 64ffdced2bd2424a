/*-------------------------------------------------------------------------
 *
 * ext/keys.c
 *		The signing keys: read from a file, never from a setting.
 *
 * A key kept in a setting would be printed to the server log whenever the
 * configuration is reloaded ("parameter ... changed to ...") and could be
 * read back by pg_read_all_settings members.  So the only setting is
 * django_rls.signing_key_file, a path (relative to the data directory, or
 * absolute); the keys live in that file, one per line, readable by the server
 * and by nobody else (a file outside the data directory that every OS user
 * can read is refused).
 *
 * Each backend reads the file when it first verifies a token and again
 * whenever the file's size, inode or timestamps change, so a rotated key file
 * takes effect without a reload.  Timestamps count whole seconds, so a file
 * changed in the second it was read is read again at every check until a
 * reading comes from a later second: a same-size rewrite within that second
 * is not missed.  Old key material is wiped from memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>
#include <time.h>

#include "common/sha2.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "django_rls.h"

#define SIGNING_KEY_MIN_LEN 32
#define KEY_FILE_MAX_SIZE 65536

static char *signing_key_file = NULL;

/* The keys read from the file, and what the file looked like then. */
static MemoryContext keys_context = NULL;
static char *loaded_path = NULL;
static struct stat loaded_stat;

/*
 * Whether the file was last changed in the second it was read, or later: a
 * rewrite within that second (in place, same size) leaves its stat() alone,
 * so it is read again until a reading comes from a later second.
 */
static bool loaded_racy = false;
static int	nkeys = 0;
static char **keys = NULL;
static size_t *key_lengths = NULL;

/*
 * Increased whenever the keys are read anew, so that what was verified with
 * the old keys (token_cache.c) is verified again.
 */
static uint64 keys_generation = 0;

void
RlsDefineKeySettings(void)
{
	DefineCustomStringVariable(RLS_GUC_PREFIX ".signing_key_file",
							   "File holding the keys that sign django_rls context tokens, one per line.",
							   "Relative paths are relative to the data directory. Any listed key is accepted, which allows key rotation.",
							   &signing_key_file, "", PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);
}

bool
RlsSigningKeyConfigured(void)
{
	return signing_key_file != NULL && signing_key_file[0] != '\0';
}

static void
ForgetKeys(void)
{
	int			i;

	for (i = 0; i < nkeys; i++)
		explicit_bzero(keys[i], key_lengths[i]);
	nkeys = 0;
	keys = NULL;
	key_lengths = NULL;
	if (loaded_path)
		pfree(loaded_path);
	loaded_path = NULL;
	if (keys_context)
		MemoryContextReset(keys_context);
}

static bool
SameFile(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
		a->st_size == b->st_size && a->st_mtime == b->st_mtime &&
		a->st_ctime == b->st_ctime;
}

/*
 * Where the key file is goes to the server log only: errors about it reach
 * whichever role verified a token, usually the application role, which has
 * no business learning the server's file layout (superusers can read the log
 * or SHOW django_rls.signing_key_file).
 */
static int
KeyFileDetail(const char *path)
{
	return errdetail_log("The file is \"%s\" (django_rls.signing_key_file).", path);
}

/* Parse the file's text into keys: one per line, blank lines and #-comments skipped. */
static void
ParseKeys(char *text, const char *path)
{
	char	   *line = text;
	int			lineno = 0;
	int			capacity = 4;

	keys = MemoryContextAlloc(keys_context, sizeof(char *) * capacity);
	key_lengths = MemoryContextAlloc(keys_context, sizeof(size_t) * capacity);
	while (line != NULL && *line != '\0')
	{
		char	   *next = strchr(line, '\n');
		size_t		len = next ? (size_t) (next - line) : strlen(line);

		lineno++;
		while (len > 0 && (*line == ' ' || *line == '\t'))
		{
			line++;
			len--;
		}
		while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
			len--;
		if (len > 0 && line[0] != '#')
		{
			if (len < SIGNING_KEY_MIN_LEN)
				ereport(ERROR,
						(errcode(ERRCODE_CONFIG_FILE_ERROR),
						 errmsg("line %d of the django_rls signing key file holds a key shorter than %d bytes",
								lineno, SIGNING_KEY_MIN_LEN),
						 KeyFileDetail(path),
						 errhint("Generate keys with manage.py rls_keygen or: openssl rand -base64 48")));
			if (nkeys == capacity)
			{
				capacity *= 2;
				keys = repalloc(keys, sizeof(char *) * capacity);
				key_lengths = repalloc(key_lengths, sizeof(size_t) * capacity);
			}
			keys[nkeys] = MemoryContextAlloc(keys_context, len);
			memcpy(keys[nkeys], line, len);
			key_lengths[nkeys] = len;
			nkeys++;
		}
		line = next ? next + 1 : NULL;
	}
	if (nkeys == 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("the django_rls signing key file holds no key"),
				 KeyFileDetail(path),
				 errhint("Put one key per line in the file; generate one with manage.py rls_keygen.")));
}

/*
 * The data directory is only accessible to the server's OS user (PostgreSQL
 * refuses to start otherwise), so a file inside it is protected whatever its
 * own mode says.
 */
static bool
InsideDataDirectory(const char *path)
{
	char	   *resolved = realpath(path, NULL);
	char	   *data_dir = realpath(DataDir, NULL);
	bool		inside = false;

	if (resolved != NULL && data_dir != NULL)
	{
		size_t		len = strlen(data_dir);

		inside = strncmp(resolved, data_dir, len) == 0 && resolved[len] == '/';
	}
	free(resolved);
	free(data_dir);
	return inside;
}

/* Make sure the keys in memory are those of the current file. */
static void
LoadKeys(void)
{
	const char *path = signing_key_file;
	struct stat st;
	FILE	   *file;
	char	   *text;
	size_t		nread;
	time_t		read_at;

	if (stat(path, &st) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read the django_rls signing key file: %m"),
				 KeyFileDetail(path),
				 errhint("Check django_rls.signing_key_file; relative paths start at the data directory.")));
	if (loaded_path != NULL && strcmp(loaded_path, path) == 0 && SameFile(&st, &loaded_stat) && !loaded_racy)
		return;

	ForgetKeys();
	if ((st.st_mode & S_IRWXO) != 0 && !InsideDataDirectory(path))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("the django_rls signing key file is accessible to every user of the machine"),
				 KeyFileDetail(path),
				 errhint("Run chmod 600 on the file (or 640 with a group only the server belongs to).")));
	if (st.st_size > KEY_FILE_MAX_SIZE)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("the django_rls signing key file is larger than %d bytes", KEY_FILE_MAX_SIZE),
				 KeyFileDetail(path),
				 errhint("Keep one key per line, and only a few keys.")));

	if (keys_context == NULL)
		keys_context = AllocSetContextCreate(TopMemoryContext, "django_rls signing keys",
											 ALLOCSET_SMALL_SIZES);
	file = AllocateFile(path, "r");
	if (file == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open the django_rls signing key file: %m"),
				 KeyFileDetail(path),
				 errhint("Check that the server's operating system user can read the file.")));
	text = MemoryContextAllocZero(keys_context, st.st_size + 1);
	nread = fread(text, 1, st.st_size, file);
	if (ferror(file))
	{
		FreeFile(file);
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read the django_rls signing key file: %m"),
				 KeyFileDetail(path),
				 errhint("Check that the server's operating system user can read the file.")));
	}
	FreeFile(file);
	text[nread] = '\0';

	PG_TRY();
	{
		ParseKeys(text, path);
	}
	PG_CATCH();
	{
		explicit_bzero(text, nread);
		ForgetKeys();
		PG_RE_THROW();
	}
	PG_END_TRY();
	explicit_bzero(text, nread);
	pfree(text);

	loaded_path = MemoryContextStrdup(keys_context, path);
	loaded_stat = st;
	read_at = time(NULL);
	loaded_racy = st.st_mtime >= read_at || st.st_ctime >= read_at;
	keys_generation++;
}

/*
 * Which reading of the key file the keys in memory come from, as of the last
 * check (RlsSignatureMatches() checks the file first).
 */
uint64
RlsSigningKeysGeneration(void)
{
	return keys_generation;
}

/* Compare two buffers in time that depends only on their length. */
static bool
ConstantTimeEqual(const uint8 *a, const uint8 *b, size_t len)
{
	uint8		diff = 0;
	size_t		i;

	for (i = 0; i < len; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

/*
 * True when the signature is HMAC-SHA256 of the signed part under one of the
 * keys.  Every key is tried even after a match, so the time taken does not
 * reveal which one matched.
 */
bool
RlsSignatureMatches(const char *signed_part, size_t signed_len, const uint8 *signature)
{
	bool		matched = false;
	int			i;

	LoadKeys();
	for (i = 0; i < nkeys; i++)
	{
		uint8		expected[PG_SHA256_DIGEST_LENGTH];

		if (!RlsHmacSha256((const uint8 *) keys[i], key_lengths[i],
						   (const uint8 *) signed_part, signed_len, expected))
			elog(ERROR, "could not compute HMAC-SHA256 for a django_rls token");
		if (ConstantTimeEqual(expected, signature, PG_SHA256_DIGEST_LENGTH))
			matched = true;
	}
	return matched;
}

/*
 * HMAC-SHA256 of data under the first key of the file, for what this server
 * signs itself (the context a Citus coordinator forwards, citus.c).
 */
void
RlsSign(const char *data, size_t len, uint8 *mac)
{
	LoadKeys();
	if (!RlsHmacSha256((const uint8 *) keys[0], key_lengths[0], (const uint8 *) data, len, mac))
		elog(ERROR, "could not compute HMAC-SHA256 for a django_rls context");
}
