"""The reference pages list exactly what the code has: settings, check ids, commands and their options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.management import load_command_class
from django.core.management.base import BaseCommand

from django_rls.conf import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMANDS = sorted(p.stem for p in (ROOT / "django_rls" / "management" / "commands").glob("rls_*.py"))


def table_rows(text: str, key: str) -> dict[str, list[str]]:
    """Markdown table rows whose first cell is `key`-shaped code: {key: the other cells}."""
    rows = {}
    for line in text.splitlines():
        match = re.match(rf"^\| `({key})` \|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split(" | ")]
    return rows


def test_settings_md_lists_every_setting_the_code_reads():
    documented = table_rows((DOCS / "settings.md").read_text(), r"[A-Z_]+")
    assert sorted(documented) == sorted(DEFAULTS)


def test_checks_md_lists_every_check_the_code_emits_with_what_to_do():
    code = "".join(path.read_text() for path in (ROOT / "django_rls").rglob("*.py"))
    emitted = set(re.findall(r"django_rls\.([EW]\d{3})\b", code))
    documented = table_rows((DOCS / "checks.md").read_text(), r"django_rls\.[EW]\d{3}")
    assert sorted(key.removeprefix("django_rls.") for key in documented) == sorted(emitted)
    for key, (level, meaning, todo) in documented.items():
        assert level == ("error" if key.startswith("django_rls.E") else "warning"), key
        assert meaning and todo, f"{key} says what it means and what to do"


def test_checks_md_names_the_database_checks():
    """The ids its first paragraph says need --database: those check_database() (registered with the database tag)
    and the Citus checks it calls can emit."""
    source = (ROOT / "django_rls" / "checks.py").read_text()
    database_part = (
        source[source.index("def check_database(") :] + (ROOT / "django_rls" / "citus_checks.py").read_text()
    )
    emitted = set(re.findall(r"django_rls\.([EW]\d{3})\b", database_part))
    intro = (DOCS / "checks.md").read_text().split("\n\n")[1]
    named = set()
    for first, last in re.findall(r"`([EW]\d{3})`(?:\u2013`([EW]\d{3})`)?", intro):
        named |= {f"{first[0]}{n:03d}" for n in range(int(first[1:]), int((last or first)[1:]) + 1)}
    assert sorted(named) == sorted(emitted)


def sections(text: str) -> dict[str, str]:
    """`## `name`` sections of a page: {name: its text up to the next such heading}."""
    parts = re.split(r"^## `([a-z_]+)`\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def own_options(command: BaseCommand, name: str) -> set[str]:
    """The command's long options, without those every command has (and, for rls_migrate, those of migrate)."""
    inherited = {o for a in BaseCommand().create_parser("manage.py", "x")._actions for o in a.option_strings}
    if name == "rls_migrate":
        migrate = load_command_class("django.core", "migrate").create_parser("manage.py", "migrate")
        inherited |= {o for a in migrate._actions for o in a.option_strings}
    parser = command.create_parser("manage.py", name)
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")} - inherited


@pytest.mark.parametrize("name", COMMANDS)
def test_commands_md_describes_every_command_and_option(name):
    documented = sections((DOCS / "commands.md").read_text())
    assert name in documented, f"docs/commands.md has no section for {name}"
    missing = sorted(
        o for o in own_options(load_command_class("django_rls", name), name) if f"`{o}" not in documented[name]
    )
    assert not missing, f"docs/commands.md, {name}: options not described: {missing}"


def test_readme_names_every_command_beside_commands_md():
    line = next(line for line in (ROOT / "README.md").read_text().split("\n- ") if "docs/commands.md" in line)
    assert [name for name in COMMANDS if f"`{name}`" not in line] == []
