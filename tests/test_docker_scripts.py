"""The Docker files' build and init logic, run here without a Docker engine: the same scripts, this machine."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from django_rls.tokens import sign_context
from tests.conftest import wait_for
from tests.harness.cluster import BINDIR, Cluster, as_postgres

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
# What a build leaves beside the sources; an image built from a clean checkout has none of it.
BUILD_PRODUCTS = ("*.o", "*.bc", "*.so")

pytestmark = pytest.mark.skipif(not (BINDIR / "initdb").exists(), reason=f"no PostgreSQL server binaries in {BINDIR}")


def _pg_config(*args: str) -> str:
    return subprocess.run([str(BINDIR / "pg_config"), *args], capture_output=True, text=True, check=True).stdout.strip()


def _major() -> str:
    return re.match(r"PostgreSQL (\d+)", _pg_config("--version")).group(1)


def _sources_as_the_image_copies_them(into: Path) -> Path:
    """The files docker/Dockerfile COPYs into /src/django_rls, copied the same way under `into`."""
    image_root = "/src/django_rls"
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or not words[-1].startswith(image_root):
            continue
        *sources, destination = words[1:]
        target = into / destination[len(image_root) :].lstrip("/")
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*BUILD_PRODUCTS))
            else:
                place = target / path.name if destination.endswith("/") else target
                place.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, place)
    return into


def test_build_script_installs_the_extension(tmp_path):
    # Into the installation the suite runs against (a relocated copy too), never another one, from
    # the files the image has: the tree's own objects may be built for another installation (the
    # matrix builds each major elsewhere), and make would install those.
    source = _sources_as_the_image_copies_them(tmp_path / "src")
    major = _major()
    env = {**os.environ, "PG_MAJOR": major, "PG_CONFIG": str(BINDIR / "pg_config")}
    result = subprocess.run(
        [str(source / "docker" / "build-extension.sh"), str(source)], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"django_rls installed for PostgreSQL {major}" in result.stdout
    assert (Path(_pg_config("--sharedir")) / "extension" / "django_rls.control").exists()


def test_build_script_refuses_a_pg_config_of_another_major():
    other = "15" if _major() == "14" else "14"
    env = {**os.environ, "PG_MAJOR": other, "PG_CONFIG": str(BINDIR / "pg_config")}
    result = subprocess.run([str(DOCKER / "build-extension.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "point PG_CONFIG at a" in result.stderr


def test_init_script_creates_the_extension_and_installs_the_key():
    key = secrets.token_urlsafe(48)
    cluster = Cluster()
    cluster.init()
    cluster.start()
    try:
        env = {
            **cluster.env,
            "PATH": f"{BINDIR}:{os.environ['PATH']}",
            "POSTGRES_USER": "postgres",
            "POSTGRES_DB": "postgres",
            "DJANGO_RLS_SIGNING_KEY": key,
        }
        # The image runs init scripts as the postgres OS user, which can write into the data directory.
        # The script goes in on stdin: the postgres user may not be allowed to read this checkout.
        command = ["env", *(f"{k}={v}" for k, v in env.items()), "bash", "-s"]
        result = subprocess.run(
            as_postgres(command),
            input=(DOCKER / "initdb.d" / "10-django-rls.sh").read_text(),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE fresh")  # from template1, which has the extension
        with psycopg.connect(cluster.dsn(dbname="fresh"), autocommit=True) as conn:
            assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'django_rls'").fetchone()

            def signed_site() -> int:
                with conn.transaction():
                    conn.execute("SET LOCAL django_rls.allow_bypassing_roles = on")  # connected as the superuser
                    conn.execute("SELECT rls.set_context_signed(%s)", (sign_context(key, site=3, user=4),))
                    return conn.execute("SELECT rls.site_id()").fetchone()[0]

            # Tokens issued in the second the server started are refused (docs/security.md, replay).
            assert wait_for(signed_site) == 3
    finally:
        cluster.stop()
        cluster.remove()


def test_docker_files_only_reference_what_exists():
    for dockerfile in ("Dockerfile", "demo.Dockerfile"):
        text = (DOCKER / dockerfile).read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):
                *sources, _target = line.split()[1:]
                for source in sources:
                    assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"
    compose = (DOCKER / "compose.yaml").read_text()
    for dockerfile in re.findall(r"dockerfile: (\S+)", compose):
        assert (ROOT / dockerfile).exists()
    assert "shared_preload_libraries = 'django_rls'" in (DOCKER / "Dockerfile").read_text()
    assert "/docker-entrypoint-initdb.d/" in (DOCKER / "Dockerfile").read_text()


def test_every_place_that_lists_the_supported_majors_agrees():
    from tests.harness.matrix import PG_MAJORS

    script = (DOCKER / "build-extension.sh").read_text()
    assert re.search(r'SUPPORTED_MAJORS="([0-9 ]+)"', script).group(1).split() == PG_MAJORS
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"PG_MAJOR: one of ([0-9 ]+)", dockerfile).group(1).split() == PG_MAJORS
    started = (ROOT / "docs" / "getting-started.md").read_text()
    listed = re.search(r"Supported: PostgreSQL ([0-9, and]+) \(", started).group(1)
    assert re.findall(r"\d+", listed) == PG_MAJORS
    fetched = (ROOT / "tests" / "harness" / "pg_binaries.sh").read_text()
    assert re.findall(r"^\s+(\d+)\) version=", fetched, re.MULTILINE) == PG_MAJORS


def test_build_script_refuses_an_unsupported_major():
    result = subprocess.run(
        [str(DOCKER / "build-extension.sh")], env={**os.environ, "PG_MAJOR": "13"}, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "PostgreSQL 13 is not supported; use one of 14 15 16 17 18" in result.stderr
