"""python -m build makes an sdist and a wheel that install into a fresh venv; the sdist builds the extension."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

import django_rls

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], check=True, capture_output=True)
    return out


def test_one_version_everywhere(dist):
    control = (ROOT / "django_rls.control.in").read_text()
    assert "default_version = '@VERSION@'" in control
    assert django_rls.EXTENSION_VERSION == django_rls.__version__
    assert (dist / f"django_pg_rls-{django_rls.__version__}.tar.gz").exists()


def test_wheel_installs_into_a_fresh_venv(dist, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    wheel = next(dist.glob("*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True)
    probe = (
        "import django_rls, importlib.resources as r;"
        "print(django_rls.__version__);"
        "print(r.files('django_rls').joinpath('templates/admin/django_rls/auditentry/change_form.html').is_file());"
        # rls_apply --install reads the SQL-only mode's scripts from the installed package: its own and those
        # it shares with the extension's install script (sql/install/21_audit_base.sql, ...).
        "from django_rls import sqlonly; print('rls.set_context_signed' in sqlonly.script_text());"
        "print(all(r.files('django_rls').joinpath('sql', name).is_file() for name in sqlonly.SCRIPTS));"
        "print(sorted(name for name in sqlonly.SCRIPTS if name.startswith('install/21_')))"
    )
    out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True).stdout.splitlines()
    assert out == [
        django_rls.__version__,
        "True",
        "True",
        "True",
        "['install/21_audit_base.sql', 'install/21_audit_read_rules.sql', 'install/21_audit_view.sql']",
    ]


def test_sdist_carries_and_builds_the_extension(dist, tmp_path):
    sdist = next(dist.glob("*.tar.gz"))
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        archive.extractall(tmp_path, filter="data")
    top = tmp_path / sdist.name.removesuffix(".tar.gz")
    for needed in (
        "Makefile",
        "django_rls.control.in",
        "LICENSE",
        "ext/context.c",
        "ext/compat.h",
        "sql/install/10_context.sql",
        # shared with the SQL-only mode, which reads them from the installed package
        "sql/install/21_audit_base.sql",
        "sql/install/21_audit_view.sql",
    ):
        assert f"{top.name}/{needed}" in names, needed
    # The install script `make` builds (present in the checkout once make ran) is never shipped: the
    # sdist's own `make` builds it from sql/install/, so the sdist is the same whether make ran or not.
    assert f"{top.name}/sql/django_rls--{django_rls.__version__}.sql" not in names
    result = subprocess.run(
        ["make", "-C", str(top), "PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config", "with_llvm=no"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (top / "django_rls.so").exists()
    assert f"default_version = '{django_rls.__version__}'" in (top / "django_rls.control").read_text()


def test_license_and_no_fuzz_artifacts(dist):
    import zipfile

    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert "Copyright (c) 2026 django_rls contributors" in (ROOT / "LICENSE").read_text()
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as wheel:
        assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel.namelist())
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "crash-*"], capture_output=True, text=True)
    assert tracked.returncode == 0 and tracked.stdout == ""
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "crash-0123abcd"])
    assert ignored.returncode == 0  # libFuzzer's crash-<sha1> files are ignored


def test_nothing_needs_an_app_the_readme_does_not_list():
    """django.contrib.postgres would have to join INSTALLED_APPS (Django 6 checks it); django_rls uses none of it."""
    from django_rls.models import AuditEntry

    uses = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "django_rls").rglob("*.py"))
        if re.search(r"^\s*(from|import) django\.contrib\.postgres\b", path.read_text(), re.MULTILINE)
    ]
    assert uses == []
    assert AuditEntry.check() == []


def _readme_install_blocks() -> list[list[str]]:
    """The commands of each sh block in the README's Install section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Install\n") :]
    section = section[: section.index("\n## ", 1)]
    blocks = []
    for block in section.split("```sh\n")[1:]:
        lines = [line.split("#", 1)[0].strip() for line in block.split("```", 1)[0].splitlines()]
        blocks.append([line for line in lines if line])
    return blocks


def _checkout_copy(where: Path) -> Path:
    """A copy of this checkout as a user would clone it (no build products, no virtualenv)."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "*.o", "*.so", "*.bc", "__pycache__", "results", "log"
    )
    return Path(shutil.copytree(ROOT, where / "django_rls", ignore=ignore))


@pytest.mark.parametrize("way", ["checkout", "sdist"])
def test_readme_install_commands_work_in_a_fresh_venv(way, tmp_path):
    blocks = _readme_install_blocks()
    assert len(blocks) == 2, blocks
    commands = blocks[0] if way == "checkout" else blocks[1]
    assert not any("django-pg-rls" in command.split() for command in commands)  # not on PyPI
    _checkout_copy(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(env_dir)}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        ["bash", "-e", "-c", "\n".join(commands)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{commands}: {result.stderr[-3000:]}"
    probe = "import django_rls, importlib.metadata as m; print(django_rls.__file__, m.version('django-pg-rls'))"
    out = subprocess.run(
        [env_dir / "bin" / "python", "-c", probe], cwd="/", check=True, capture_output=True, text=True
    ).stdout.split()
    assert out[0].startswith(str(env_dir)) and out[1] == django_rls.__version__, out
