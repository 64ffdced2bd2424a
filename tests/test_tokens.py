"""Signed context tokens, verified by rls.set_context_signed() as the app role."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from django_rls.tokens import sign_context
from tests.conftest import APP_ROLE, KEY_FILE, Database, wait_for, write_key_file

pytestmark = pytest.mark.usefixtures("signing_keys")


def set_signed(conn: psycopg.Connection, token: str) -> dict:
    """Apply a token inside a transaction and return the context it produced."""
    with conn.transaction():
        conn.execute("SELECT rls.set_context_signed(%s)", (token,))
        return conn.execute("SELECT rls.context()").fetchone()[0]


def test_valid_token_sets_the_context(app_conn, signing_keys):
    token = sign_context(signing_keys[0], site=42, user=7, claims={"role": "editor"})
    assert set_signed(app_conn, token) == {"site": 42, "user": 7, "claims": {"role": "editor"}}
    assert app_conn.execute("SELECT rls.context()").fetchone()[0]["site"] is None


def test_uuid_identifiers(app_conn, signing_keys):
    site, user = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12"
    token = sign_context(signing_keys[0], site=site, user=user)
    assert set_signed(app_conn, token) == {"site": site, "user": user.lower(), "claims": None}


def test_previous_key_still_accepted_during_rotation(app_conn, signing_keys):
    token = sign_context(signing_keys[1], site=1, user=1)
    assert set_signed(app_conn, token)["site"] == 1


def test_token_restricts_rows(app_conn, signing_keys, sites_table):
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context_signed(%s)", (sign_context(signing_keys[0], site=2, user=1),))
        rows = app_conn.execute(f"SELECT DISTINCT site_id FROM {sites_table}").fetchall()
    assert rows == [(2,)]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _payload(token: str) -> dict:
    encoded = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def _reencode(token: str, change) -> str:
    """Change the payload but keep the original signature, as a forger without the key must."""
    data = _payload(token)
    change(data)
    return f"v1.{_b64url(json.dumps(data).encode())}.{token.split('.')[2]}"


def _resign(key: str, data: dict) -> str:
    """Sign an arbitrary payload with a real key, as a client of another version might."""
    signed_part = f"v1.{_b64url(json.dumps(data).encode())}"
    return f"{signed_part}.{_b64url(hmac.new(key.encode(), signed_part.encode(), hashlib.sha256).digest())}"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda t: _reencode(t, lambda d: d.update(site=2)), id="payload-site-changed"),
        pytest.param(lambda t: _reencode(t, lambda d: d.update(exp=d["exp"] + 1)), id="payload-exp-changed"),
        pytest.param(lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BA"), id="signature-changed"),
        pytest.param(lambda t: "v2" + t[2:], id="version-changed"),
        pytest.param(lambda t: t.rsplit(".", 1)[0], id="signature-missing"),
        pytest.param(lambda t: t + "x" * 20000, id="oversized"),
        pytest.param(lambda t: "v1.%%%." + t.split(".")[2], id="not-base64"),
    ],
)
def test_tampered_tokens_are_refused(app_conn, signing_keys, forge):
    token = forge(sign_context(signing_keys[0], site=1, user=1))
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid django_rls context token"):
        set_signed(app_conn, token)
    assert app_conn.execute("SELECT rls.site_id()").fetchone()[0] is None


def test_wrong_key_is_refused(app_conn):
    token = sign_context("k" * 64, site=1, user=1)
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
        set_signed(app_conn, token)
    assert "does not match any key" in excinfo.value.diag.message_detail


def test_expired_token_is_refused(app_conn, signing_keys):
    token = sign_context(signing_keys[0], site=1, user=1, lifetime=5, now=time.time() - 10)
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="has expired"):
        set_signed(app_conn, token)


def test_token_living_too_long_is_refused(app_conn, signing_keys):
    token = sign_context(signing_keys[0], site=1, user=1, lifetime=3600)
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="lives too long"):
        set_signed(app_conn, token)


def test_token_issued_before_the_replay_memory_is_refused(app_conn, signing_keys):
    started = app_conn.execute("SELECT extract(epoch FROM pg_postmaster_start_time())::bigint").fetchone()[0]
    token = sign_context(signing_keys[0], site=1, user=1, lifetime=290, now=started - 10)
    if started - 10 + 290 <= time.time():
        pytest.skip("the server started too long ago to build an unexpired pre-start token")
    with pytest.raises(
        psycopg.errors.InvalidAuthorizationSpecification, match="before the server's replay memory was initialised"
    ):
        set_signed(app_conn, token)


def test_replay_on_the_same_connection_is_refused(app_conn, signing_keys):
    token = sign_context(signing_keys[0], site=1, user=1)
    set_signed(app_conn, token)
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
        set_signed(app_conn, token)


def test_replay_on_another_connection_is_refused(database: Database, signing_keys):
    token = sign_context(signing_keys[0], site=1, user=1)
    with database.connect("app_unbound") as first, database.connect("app_unbound") as second:
        set_signed(first, token)
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
            set_signed(second, token)


def test_token_read_from_pg_stat_activity_cannot_be_replayed(database: Database, signing_keys):
    """A2 sees the victim's statement text (client-side binding puts the token in it) and replays it.

    The attacker reads the text once the victim's statement is over and its transaction idles,
    which is when pg_stat_activity still shows it; reading it earlier would be a race against
    the victim for the token, not a replay.
    """
    token = sign_context(signing_keys[0], site=1, user=1)
    attacker_done = threading.Event()
    victim_result: list[object] = []

    def victim() -> None:
        with database.connect("app_unbound", cursor_factory=psycopg.ClientCursor) as conn:
            with conn.transaction():
                conn.execute("SELECT rls.set_context_signed(%s)", (token,))
                attacker_done.wait(10)
                victim_result.append(conn.execute("SELECT rls.site_id()").fetchone())

    thread = threading.Thread(target=victim)
    thread.start()
    try:
        with database.connect("app_unbound") as attacker:
            seen = None
            deadline = time.monotonic() + 5
            while seen is None and time.monotonic() < deadline:
                # Once the victim sleeps, its set_context_signed() (evaluated first) has run: the
                # attacker replays a spent token, instead of racing the victim to spend it.
                for (query,) in attacker.execute(
                    "SELECT query FROM pg_stat_activity WHERE state = 'idle in transaction'"
                    " AND query LIKE '%%set_context_signed(''v1.%%'"
                ).fetchall():
                    match = re.search(r"'(v1\.[A-Za-z0-9_\-.]+)'", query)
                    if match:
                        seen = match.group(1)
            assert seen == token, "the attacker should be able to read the token in this setup"
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
                set_signed(attacker, seen)
    finally:
        attacker_done.set()
        thread.join()
    assert victim_result == [(1,)]


def test_server_side_binding_keeps_the_token_out_of_pg_stat_activity(database: Database, signing_keys):
    token = sign_context(signing_keys[0], site=1, user=1)
    with database.connect("app_unbound") as victim, database.connect("app_unbound") as observer:
        victim.execute("BEGIN")
        victim.execute("SELECT rls.set_context_signed(%s)", (token,))
        queries = [q for (q,) in observer.execute("SELECT query FROM pg_stat_activity WHERE usename = %s", (APP_ROLE,))]
        victim.execute("ROLLBACK")
    assert any("set_context_signed($1)" in q for q in queries)
    assert not any(token in q for q in queries)


def test_unknown_member_is_refused(app_conn, signing_keys):
    data = _payload(sign_context(signing_keys[0], site=1, user=1))
    data["scope"] = "admin"
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
        set_signed(app_conn, _resign(signing_keys[0], data))
    assert 'unknown member "scope"' in excinfo.value.diag.message_detail


@pytest.mark.parametrize(
    ("member", "value", "detail"),
    [
        ("iss", "short", '"iss" must be'),
        ("iss", "not base64url!!!!!!", '"iss" must be'),
        ("seq", 0, '"seq" must be a positive integer'),
        ("seq", "7", '"seq" must be an integer'),
        ("exp", "soon", '"exp" must be an integer'),
        ("iat", 1.5, '"iat" must be an integer'),
        ("site", ["1"], '"site" must be a string, an integer or null'),
        ("claims", "admin", '"claims" must be a JSON object or null'),
    ],
)
def test_malformed_members_are_refused(app_conn, signing_keys, member, value, detail):
    data = _payload(sign_context(signing_keys[0], site=1, user=1))
    data[member] = value
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
        set_signed(app_conn, _resign(signing_keys[0], data))
    assert detail in excinfo.value.diag.message_detail


def test_database_binding(app_conn, signing_keys, database: Database):
    assert set_signed(app_conn, sign_context(signing_keys[0], site=3, user=1, database=database.name))["site"] == 3
    with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
        set_signed(app_conn, sign_context(signing_keys[0], site=3, user=1, database="another_db"))
    assert "another database" in excinfo.value.diag.message_detail


def test_scope_error_does_not_spend_the_token(app_conn, signing_keys):
    token = sign_context(signing_keys[0], site=5, user=1)
    with pytest.raises(psycopg.errors.NoActiveSqlTransaction):
        app_conn.execute("SELECT rls.set_context_signed(%s)", (token,))
    assert set_signed(app_conn, token)["site"] == 5


def test_session_scope_token(app_conn, signing_keys):
    app_conn.execute(
        "SELECT rls.set_context_signed(%s, is_local => false)", (sign_context(signing_keys[0], site=6, user=1),)
    )
    assert app_conn.execute("SELECT rls.site_id()").fetchone()[0] == 6
    app_conn.execute("SELECT rls.clear_context()")
    assert app_conn.execute("SELECT rls.site_id()").fetchone()[0] is None


def test_bad_tokens_do_not_fill_the_replay_memory(app_conn, signing_keys):
    used_before = app_conn.execute("SELECT rls.extension_info()->>'replay_issuers_used'").fetchone()[0]
    for _ in range(200):
        bad = sign_context("x" * 64, site=1, user=1, issuer=secrets.token_urlsafe(16), sequence=1)
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            set_signed(app_conn, bad)
    used_after = app_conn.execute("SELECT rls.extension_info()->>'replay_issuers_used'").fetchone()[0]
    assert used_after == used_before


def test_null_token_is_an_error_not_a_no_op(app_conn, signing_keys):
    with app_conn.transaction():
        app_conn.execute("SELECT rls.set_context_signed(%s)", (sign_context(signing_keys[0], site=4, user=1),))
        with pytest.raises(psycopg.errors.NullValueNotAllowed) as excinfo, app_conn.transaction():
            app_conn.execute("SELECT rls.set_context_signed(NULL)")
        assert excinfo.value.diag.message_hint
        with pytest.raises(psycopg.errors.NullValueNotAllowed), app_conn.transaction():
            app_conn.execute("SELECT rls.set_context_signed(%s::text, false)", (None,))
    assert app_conn.execute(
        "SELECT proisstrict FROM pg_proc WHERE oid = 'rls.set_context_signed(text, boolean)'::regprocedure"
    ).fetchone() == (False,)


class TestReplayWindow:
    """Tokens are spent per issuer in a sliding window (ext/replay.c), on every connection."""

    def test_each_number_once_in_any_order_within_the_window(self, app_conn, database: Database, signing_keys):
        issuer = secrets.token_urlsafe(16)

        def token(sequence: int) -> str:
            return sign_context(signing_keys[0], site=sequence, user=1, issuer=issuer, sequence=sequence)

        first, later, skipped = token(10), token(500), token(11)
        assert set_signed(app_conn, first)["site"] == 10
        assert set_signed(app_conn, later)["site"] == 500
        assert set_signed(app_conn, skipped)["site"] == 11  # out of order, inside the window
        with database.connect("app_unbound") as other:  # another connection: still spent
            for spent in (first, later, skipped):
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
                    set_signed(other, spent)

    def test_a_token_behind_the_window_is_refused(self, app_conn, signing_keys):
        issuer = secrets.token_urlsafe(16)
        late = sign_context(signing_keys[0], site=1, user=1, issuer=issuer, sequence=1)
        set_signed(app_conn, sign_context(signing_keys[0], site=2, user=1, issuer=issuer, sequence=1 + 4096))
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="newer tokens of its issuer"):
            set_signed(app_conn, late)
        # Just inside the window is still fine.
        set_signed(app_conn, sign_context(signing_keys[0], site=3, user=1, issuer=issuer, sequence=2))

    def test_issuers_are_independent(self, app_conn, signing_keys):
        one, two = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        set_signed(app_conn, sign_context(signing_keys[0], site=1, user=1, issuer=one, sequence=1))
        assert set_signed(app_conn, sign_context(signing_keys[0], site=2, user=1, issuer=two, sequence=1))["site"] == 2

    def test_the_python_signer_numbers_its_tokens_per_process(self, signing_keys):
        a, b = (_payload(sign_context(signing_keys[0], site=1, user=1)) for _ in range(2))
        assert a["iss"] == b["iss"] and b["seq"] == a["seq"] + 1
        with pytest.raises(ValueError, match="both issuer and sequence"):
            sign_context(signing_keys[0], site=1, user=1, issuer=a["iss"])

    # The child only signs and exits; the warning about forking a process with threads (Python 3.12+) is moot here.
    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
    def test_a_forked_process_is_a_new_issuer(self, signing_keys):
        parent = _payload(sign_context(signing_keys[0], site=1, user=1))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: sign one token and report its issuer and number
            try:
                child = _payload(sign_context(signing_keys[0], site=1, user=1))
                os.write(write, json.dumps([child["iss"], child["seq"]]).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            issuer, sequence = json.loads(pipe.read())
        os.waitpid(pid, 0)
        assert issuer != parent["iss"] and sequence == 1


def test_require_signature_leaves_only_signed_tokens(database: Database, admin_conn, signing_keys):
    admin_conn.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(sql.Identifier(APP_ROLE)))
    try:
        with database.connect("app_unbound") as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="require_signature is on"):
                with conn.transaction():
                    conn.execute("SELECT rls.set_context('1', '1')")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SET django_rls.require_signature = off")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT set_config('django_rls.require_signature', 'off', false)")
            conn.execute("RESET ALL")  # restores the role's setting, not the default
            assert conn.execute("SHOW django_rls.require_signature").fetchone()[0] == "on"
            assert set_signed(conn, sign_context(signing_keys[0], site=9, user=1))["site"] == 9
    finally:
        admin_conn.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(sql.Identifier(APP_ROLE)))


def test_rotated_key_file_takes_effect_without_reload(app_conn, admin_conn, signing_keys):
    """A backend re-reads the key file when it changes; a removed key stops working at once."""
    current, previous = signing_keys
    newest = "n" * 40 + current[:8]
    assert set_signed(app_conn, sign_context(previous, site=1, user=1))["site"] == 1
    write_key_file(admin_conn, newest, current)
    try:
        assert set_signed(app_conn, sign_context(newest, site=2, user=1))["site"] == 2
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            set_signed(app_conn, sign_context(previous, site=1, user=1))
    finally:
        write_key_file(admin_conn, current, previous)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (("short-key",), "shorter than 32 bytes"),
        ((), "holds no key"),
    ],
)
def test_bad_key_file_is_reported(app_conn, admin_conn, signing_keys, keys, message):
    write_key_file(admin_conn, *keys)
    try:
        with pytest.raises(psycopg.errors.ConfigFileError, match=message) as excinfo:
            set_signed(app_conn, sign_context(signing_keys[0], site=1, user=1))
        assert "short-key" not in str(excinfo.value)
        assert_no_path(excinfo.value, KEY_FILE)
    finally:
        write_key_file(admin_conn, *signing_keys)


def assert_no_path(error: psycopg.Error, name: str) -> None:
    """The app role learns what is wrong with the key file, not where the server keeps it."""
    diag = error.diag
    for part in (diag.message_primary, diag.message_detail, diag.message_hint, diag.context):
        assert name not in (part or ""), part


def test_missing_key_file_error_does_not_show_its_path(app_conn, admin_conn, signing_keys):
    missing = "django_rls_no_such_dir/secret_place.key"
    admin_conn.execute(sql.SQL("ALTER SYSTEM SET django_rls.signing_key_file = {}").format(sql.Literal(missing)))
    admin_conn.execute("SELECT pg_reload_conf()")
    try:

        def refused() -> psycopg.Error:
            try:
                set_signed(app_conn, sign_context(signing_keys[0], site=1, user=1))
            except psycopg.errors.UndefinedFile as error:
                return error
            raise AssertionError("the backend still uses the old key file")

        error = wait_for(refused)
        assert "could not read the django_rls signing key file" in error.diag.message_primary
        assert_no_path(error, "secret_place")
        assert_no_path(error, "django_rls_no_such_dir")
    finally:
        admin_conn.execute(sql.SQL("ALTER SYSTEM SET django_rls.signing_key_file = {}").format(sql.Literal(KEY_FILE)))
        admin_conn.execute("SELECT pg_reload_conf()")
        wait_for(lambda: set_signed(app_conn, sign_context(signing_keys[0], site=1, user=1)))


def test_world_readable_key_file_outside_the_data_directory_is_refused(app_conn, admin_conn, signing_keys):
    data_directory = Path(admin_conn.execute("SHOW data_directory").fetchone()[0])
    if not data_directory.exists():
        pytest.skip("the server's data directory is not on this machine")
    outside = data_directory.parent / "django_rls_outside.key"
    outside.write_text("\n".join(signing_keys) + "\n")
    shutil.chown(outside, *(data_directory.owner(), data_directory.group()))
    admin_conn.execute(sql.SQL("ALTER SYSTEM SET django_rls.signing_key_file = {}").format(sql.Literal(str(outside))))
    admin_conn.execute("SELECT pg_reload_conf()")
    try:
        outside.chmod(0o644)

        def refused() -> psycopg.Error:
            try:
                set_signed(app_conn, sign_context(signing_keys[0], site=1, user=1))
            except psycopg.errors.ConfigFileError as error:
                return error
            raise AssertionError("the backend still uses the old key file")

        error = wait_for(refused)
        assert "accessible to every user" in str(error)
        assert_no_path(error, outside.name)
        outside.chmod(0o600)
        assert set_signed(app_conn, sign_context(signing_keys[0], site=1, user=1))["site"] == 1
    finally:
        admin_conn.execute(sql.SQL("ALTER SYSTEM SET django_rls.signing_key_file = {}").format(sql.Literal(KEY_FILE)))
        admin_conn.execute("SELECT pg_reload_conf()")
        outside.unlink()
        wait_for(lambda: set_signed(app_conn, sign_context(signing_keys[0], site=1, user=1)))


class TestKeyIsUnreadable:
    """The app role must not be able to read the signing keys through any SQL."""

    def test_no_setting_holds_a_key(self, admin_conn, signing_keys):
        settings = admin_conn.execute("SELECT string_agg(setting, ' ') FROM pg_settings").fetchone()[0]
        assert not any(key in settings for key in signing_keys)

    def test_key_file_setting_is_hidden(self, app_conn):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app_conn.execute("SHOW django_rls.signing_key_file")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app_conn.execute("SELECT current_setting('django_rls.signing_key_file')")
        rows = app_conn.execute("SELECT setting FROM pg_settings WHERE name = 'django_rls.signing_key_file'").fetchall()
        assert rows == [("********",)] or rows == []

    @pytest.mark.parametrize(
        "query",
        [
            "SELECT pg_read_file('django_rls_test.key')",
            "SELECT pg_read_binary_file('django_rls_test.key')",
            "COPY (SELECT 1) TO STDOUT",  # control: COPY itself is allowed...
            "CREATE TEMP TABLE k (line text); COPY k FROM '/dev/null'",  # ...but not from server files
            "SELECT lo_import('django_rls_test.key')",
            "SELECT * FROM pg_file_settings",
        ],
    )
    def test_server_files_are_out_of_reach(self, app_conn, signing_keys, query):
        if query.startswith("COPY (SELECT 1)"):
            with app_conn.cursor().copy(query) as copy:
                assert b"".join(copy) == b"1\n"
            return
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app_conn.execute(query)

    def test_pg_db_role_setting_holds_no_key(self, app_conn, signing_keys):
        settings = app_conn.execute(
            "SELECT coalesce(string_agg(array_to_string(setconfig, ','), ','), '') FROM pg_db_role_setting"
        ).fetchone()[0]
        assert not any(key in settings for key in signing_keys)

    def test_extension_info_reveals_only_presence(self, app_conn, signing_keys):
        info = app_conn.execute("SELECT rls.extension_info()::text").fetchone()[0]
        assert '"signing_key_configured": true' in info
        assert not any(key in info for key in signing_keys)


@pytest.mark.parametrize("lifetime", [301, 86400, 0, True, "30"])
def test_token_lifetime_setting_stays_within_what_the_server_accepts(lifetime):
    from django.core.exceptions import ImproperlyConfigured

    from django_rls.conf import validate

    with pytest.raises(ImproperlyConfigured, match="TOKEN_LIFETIME") as excinfo:
        validate({"TOKEN_LIFETIME": lifetime})
    assert "django_rls.max_token_lifetime" in str(excinfo.value)


def test_longest_token_lifetime_setting_is_accepted_by_the_server(app_conn, signing_keys):
    from django_rls.conf import validate
    from django_rls.tokens import SERVER_MAX_LIFETIME

    assert app_conn.execute(
        "SELECT boot_val::int FROM pg_settings WHERE name = 'django_rls.max_token_lifetime'"
    ).fetchone() == (SERVER_MAX_LIFETIME,)
    lifetime = validate({"TOKEN_LIFETIME": SERVER_MAX_LIFETIME})["TOKEN_LIFETIME"]
    assert set_signed(app_conn, sign_context(signing_keys[0], site=1, user=1, lifetime=lifetime))["site"] == 1
