"""Every code block in README.md and docs/ is run here, or checked, or marked <!-- excerpt -->.

- ```sql blocks run with psql (meta-commands included) in a fresh database, after a small
  prelude that creates the tables and roles the examples name;
- ```sh blocks can not run inside the test suite (they start it, or serve forever): each
  command is checked to exist — make targets in the Makefile, manage.py commands in Django or
  django_rls, files in the repository;
- anything else must be marked as an excerpt.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg
import pytest
from django.core.management import get_commands
from psycopg import sql

from tests.harness.cluster import BINDIR

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)```(\w+)\s*$")

PRELUDE = """
CREATE EXTENSION IF NOT EXISTS django_rls;
DO $$ BEGIN CREATE ROLE app; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
CREATE TABLE shop_order (id serial PRIMARY KEY, site_id bigint NOT NULL);
CREATE TABLE category (id serial PRIMARY KEY, site_id bigint, name text);
CREATE TABLE document (id serial PRIMARY KEY, site_id bigint, draft boolean NOT NULL DEFAULT true);
CREATE TABLE account (id serial PRIMARY KEY, site_id bigint, cache text, password text);
"""


def blocks() -> list[tuple[str, str, str, bool]]:
    """(where, language, code, is_excerpt) for every fenced block."""
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            match = FENCE.match(lines[i])
            if match:
                indent, language = match.groups()
                excerpt = i > 0 and lines[i - 1].strip() == "<!-- excerpt -->"
                start = i
                body = []
                i += 1
                while not lines[i].strip().startswith("```"):
                    body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
                    i += 1
                found.append((f"{path.relative_to(ROOT)}:{start + 1}", language, "\n".join(body), excerpt))
            i += 1
    return found


ALL = blocks()


def test_every_block_is_covered():
    uncovered = [where for where, language, _, excerpt in ALL if language not in ("sql", "sh") and not excerpt]
    assert not uncovered, f"code blocks neither run nor marked <!-- excerpt -->: {uncovered}"


@pytest.mark.parametrize(("where", "code"), [(w, c) for w, lang, c, ex in ALL if lang == "sql" and not ex])
def test_sql_block_runs(where, code, database):
    name = "django_rls_docs"
    with psycopg.connect(
        database.admin.replace(f"dbname={database.name}", "dbname=postgres"), autocommit=True
    ) as admin:
        for db in (name, "shop"):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conninfo = psycopg.conninfo.conninfo_to_dict(database.admin)
    env = {
        "PGHOST": str(conninfo.get("host", "")),
        "PGPORT": str(conninfo.get("port", "")),
        "PGUSER": str(conninfo.get("user", "postgres")),
        "PGPASSWORD": str(conninfo.get("password", "")),
    }
    script = PRELUDE + "\n" + code.replace("CREATE EXTENSION django_rls;", "CREATE EXTENSION IF NOT EXISTS django_rls;")
    result = subprocess.run(
        [str(BINDIR / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", name],
        input=script,
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    with psycopg.connect(
        database.admin.replace(f"dbname={database.name}", "dbname=postgres"), autocommit=True
    ) as admin:
        for db in (name, "shop"):
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    assert result.returncode == 0, f"{where}: {result.stderr}"


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))


@pytest.mark.parametrize(("where", "code"), [(w, c) for w, lang, c, ex in ALL if lang == "sh" and not ex])
def test_shell_block_commands_exist(where, code):
    commands = get_commands()
    for line in code.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] == "make":
            assert words[1] in _make_targets(), f"{where}: no make target {words[1]!r}"
        elif "manage.py" in line:
            command = words[words.index(next(w for w in words if w.endswith("manage.py"))) + 1]
            assert command in commands, f"{where}: no manage.py command {command!r}"
        elif words[0] in ("docker", "pip", "django-admin", "cd", "openssl", "chmod", "psql"):
            for word in words:
                if word.startswith(("docker/", "demo/", "docs/")):
                    assert (ROOT / word).exists(), f"{where}: {word} does not exist"
        else:
            pytest.fail(f"{where}: unknown command {line!r}; check it here or mark the block <!-- excerpt -->")


def test_ci_runs_the_test_commands_of_the_readme():
    """.ci/run runs exactly the commands README.md's "Run the tests" gives, in the same order."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"^## Run the tests\n+```sh\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert block, "README.md has no sh block under '## Run the tests'"
    documented = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    run = [line.strip() for line in script if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert run == [line for line in documented if line]
    assert {"test", "test-matrix"} <= _make_targets()


def test_make_runs_the_cluster_of_the_installation_pg_config_names(tmp_path):
    """README: `make demo PG_CONFIG=…` installs into that PostgreSQL and runs its server, with no PG_BINDIR."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pg_config").write_text(f'#!/bin/sh\n[ "$1" = --bindir ] && echo {fake}\n')
    (fake / "pg_config").chmod(0o755)

    def bindir(*args: str, **env: str) -> str:
        show = 'show-bindir: ; @echo "$$PG_BINDIR"'
        # As typed in a shell: not inside `make test`'s own make (its MAKEFLAGS carry its PG_CONFIG).
        outer = {"PG_BINDIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
        environ = {k: v for k, v in os.environ.items() if k not in outer} | env
        command = ["make", "-s", "--no-print-directory", "-C", str(ROOT), f"--eval={show}", "show-bindir", *args]
        return subprocess.run(command, capture_output=True, text=True, check=True, env=environ).stdout.strip()

    assert bindir(f"PG_CONFIG={fake / 'pg_config'}") == str(fake)
    assert bindir(f"PG_CONFIG={fake / 'pg_config'}", PG_BINDIR="/elsewhere/bin") == "/elsewhere/bin"
    assert "make demo PG_CONFIG=/path/to/bin/pg_config" in (ROOT / "README.md").read_text()
