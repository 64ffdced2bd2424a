"""docs/security.md lists every place django_rls raises rights: each SECURITY DEFINER function, and the capture's user switch."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

SECURITY_MD = Path(__file__).resolve().parent.parent / "docs" / "security.md"
SECTION = "## SECURITY DEFINER functions and user switches"


def documented_functions() -> set[str]:
    text = SECURITY_MD.read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    # The first cell of each table row names the function(s): | `rls_audit._enable(regclass, ...)` | ...
    first_cells = re.findall(r"^\| (.*?) \| ", section, flags=re.MULTILINE)
    return {name for cell in first_cells for name in re.findall(r"`((?:rls|rls_audit)\.[a-z_]+)\(", cell)}


def test_every_security_definer_function_is_documented(admin_conn: psycopg.Connection) -> None:
    defined = {
        name
        for (name,) in admin_conn.execute(
            """
            SELECT p.pronamespace::regnamespace::text || '.' || p.proname
              FROM pg_proc p
              JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
              JOIN pg_extension e ON e.oid = d.refobjid
             WHERE e.extname = 'django_rls' AND p.prosecdef
            """
        ).fetchall()
    }
    assert defined, "the extension defines no SECURITY DEFINER function: is it installed?"
    documented = documented_functions()
    assert defined - documented == set(), "SECURITY DEFINER functions missing from docs/security.md"
    # The documented places that are not SECURITY DEFINER: the capture's user switch, the C
    # functions that check the calling role before they run an internal SECURITY DEFINER one, and
    # the membership lookup that reads past a table's policies as its caller.
    assert documented - defined == {
        "rls.member_of",
        "rls_audit.capture",
        "rls_audit.enable",
        "rls_audit.disable",
        "rls_audit.set_read_rule",
    }
