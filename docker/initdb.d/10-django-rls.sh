#!/usr/bin/env bash
# Runs once when the official postgres image initialises its data directory
# (/docker-entrypoint-initdb.d), and in the test suite against a throwaway cluster.
#
# - creates the extension in POSTGRES_DB (and in template1, so new databases have it);
# - with DJANGO_RLS_SIGNING_KEY set, writes it to a key file in the data directory
#   (mode 600) and points django_rls.signing_key_file at it.
# The library itself is preloaded by the image's postgresql.conf (see Dockerfile).
set -euo pipefail
psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}")

for db in template1 "${POSTGRES_DB:-postgres}"; do
    "${psql[@]}" --dbname "$db" -c 'CREATE EXTENSION IF NOT EXISTS django_rls'
done

if [ -n "${DJANGO_RLS_SIGNING_KEY:-}" ]; then
    data_directory=$("${psql[@]}" --dbname "${POSTGRES_DB:-postgres}" -Atc 'SHOW data_directory')
    key_file="$data_directory/django_rls.key"
    ( umask 077 && printf '%s\n' "$DJANGO_RLS_SIGNING_KEY" > "$key_file" )
    "${psql[@]}" --dbname "${POSTGRES_DB:-postgres}" \
        -c "ALTER SYSTEM SET django_rls.signing_key_file = 'django_rls.key'" -c 'SELECT pg_reload_conf()'
fi
echo "10-django-rls.sh: django_rls is ready in ${POSTGRES_DB:-postgres}"
