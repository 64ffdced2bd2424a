#!/usr/bin/env bash
# Install what building and testing django_rls needs, on a fresh Debian
# machine or an already prepared one: the PostgreSQL server headers (PGXS)
# and the project's virtualenv.  Safe to run again: it only installs what is
# missing or out of date.
set -euo pipefail
cd "$(dirname "$0")/../.."

PG_MAJOR="${PG_MAJOR:-15}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

need_apt=()
if [ ! -f "/usr/include/postgresql/${PG_MAJOR}/server/postgres.h" ]; then
    need_apt+=("postgresql-server-dev-${PG_MAJOR}")
fi
if [ ! -x "/usr/lib/postgresql/${PG_MAJOR}/bin/postgres" ]; then
    need_apt+=("postgresql-${PG_MAJOR}" "postgresql-contrib")
fi
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
    need_apt+=("pgbouncer")  # the pooling tests run the real thing
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "deps.sh: missing ${need_apt[*]}; run as root or install them with apt-get" >&2
        exit 1
    fi
    echo "deps.sh: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Rebuild the virtualenv's packages only when pyproject.toml changed.
stamp="$VENV/.installed-pyproject"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    cp pyproject.toml "$stamp"
fi
