"""Reusable tokens: signed once per context, sent as a new single-use *use* with each statement.

The server part runs as the app role through rls.set_context_signed() and the statement
marker; the bridge part counts the signatures a request costs in this process and replays
what it sent from other connections.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

import psycopg
import pytest
from django.db import connections
from psycopg import sql
from psycopg.types.string import StrDumper

from django_rls import database as bridge
from django_rls.state import make_values
from django_rls.tokens import HmacSha256, ReusableToken, sign_context, sign_reusable
from tests.conftest import APP_ROLE, Database, reset_max_token_lifetime, wait_for, write_key_file

pytestmark = pytest.mark.usefixtures("signing_keys")

H1, H2 = "megacorp1.test", "megacorp2.test"
MARKER = "/*django_rls:%s*/ "


class Text(str):
    """A str bound as type text, as the bridge binds a context."""


class TextDumper(StrDumper):
    oid = psycopg.adapters.types["text"].oid


def set_signed(conn: psycopg.Connection, material: str) -> int | None:
    """Apply a token or use inside a transaction and return the site it set."""
    with conn.transaction():
        conn.execute("SELECT rls.set_context_signed(%s)", (material,))
        return conn.execute("SELECT rls.site_id()").fetchone()[0]


def carried(conn: psycopg.Connection, material: str, query: str = "SELECT rls.site_id()") -> list[tuple]:
    conn.adapters.register_dumper(Text, TextDumper)
    return conn.execute(MARKER + query, (Text(material),)).fetchall()


def reusable(key: str, site: int = 1, **kwargs) -> ReusableToken:
    """A reusable token of an issuer of its own, so the test chooses its sequence numbers."""
    return sign_reusable(key, site=site, user=1, issuer=secrets.token_urlsafe(16), **kwargs)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mac(key: str, text: str) -> str:
    return b64(hmac.new(key.encode(), text.encode(), hashlib.sha256).digest())


def refused(excinfo: pytest.ExceptionInfo) -> psycopg.Error:
    """The error, after checking it is SQLSTATE 28000 with a hint."""
    error = excinfo.value
    assert error.sqlstate == "28000"
    assert error.diag.message_hint
    return error


class TestServer:
    def test_each_use_sets_the_context_once_on_any_connection(self, database: Database, signing_keys):
        token = reusable(signing_keys[0], site=2)
        uses = [token.use(sequence) for sequence in (1, 2, 3)]
        with database.connect("app_unbound") as a, database.connect("app_unbound") as b:
            assert set_signed(a, uses[0]) == 2
            assert set_signed(b, uses[1]) == 2
            assert set_signed(a, uses[2]) == 2
            for conn, spent in ((b, uses[0]), (a, uses[1]), (b, uses[2])):
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used") as e:
                    set_signed(conn, spent)
                assert "new use" in refused(e).diag.message_hint

    def test_the_token_alone_is_refused(self, app_conn, signing_keys):
        token = reusable(signing_keys[0])
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid use") as excinfo:
            set_signed(app_conn, token.token)
        assert "never alone" in refused(excinfo).diag.message_detail

    def test_a_single_use_token_takes_no_use(self, app_conn, signing_keys):
        token = sign_context(signing_keys[0], site=1, user=1)
        made = f"7.{int(time.time())}"
        material = f"{token}.{made}.{mac(signing_keys[0], token.rsplit('.', 1)[1] + '.' + made)}"
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
            set_signed(app_conn, material)
        assert "single-use" in refused(excinfo).diag.message_detail
        assert set_signed(app_conn, token) == 1  # refused before it was spent

    @pytest.mark.parametrize(
        "forge",
        [
            pytest.param(lambda key, token, use: use.replace(".5.", ".6.", 1), id="another-sequence-number"),
            pytest.param(lambda key, token, use: use.replace(".5.", ".50.", 1), id="a-longer-sequence-number"),
            pytest.param(lambda key, token, use: _retimed(use, +1), id="another-time"),
            pytest.param(lambda key, token, use: use[:-43] + _flip(use[-43:]), id="mac-changed"),
            pytest.param(
                lambda key, token, use: reusable(key, site=2).token + use[len(token.token) :],
                id="the-use-of-another-token",
            ),
            pytest.param(lambda key, token, use: _remac(token, "k" * 64, _made(use)), id="mac-under-an-unknown-key"),
        ],
    )
    def test_a_use_cannot_be_altered(self, app_conn, signing_keys, forge):
        token = reusable(signing_keys[0])
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid use") as excinfo:
            set_signed(app_conn, forge(signing_keys[0], token, token.use(5)))
        assert "MAC does not match" in refused(excinfo).diag.message_detail
        assert set_signed(app_conn, token.use(5)) == 1  # the genuine use was never spent

    def test_a_token_signed_with_an_unknown_key_is_refused_whatever_its_mac(self, app_conn, signing_keys):
        forged = reusable("k" * 64)
        material = _remac(forged, signing_keys[0], f"1.{int(time.time())}")
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
            set_signed(app_conn, material)
        assert "does not match any key" in refused(excinfo).diag.message_detail

    @pytest.mark.parametrize(
        ("suffix", "detail"),
        [
            ("01.{now}.{mac}", "sequence number must be a positive decimal"),
            ("+1.{now}.{mac}", "sequence number must be a positive decimal"),
            ("0.{now}.{mac}", "sequence number must be a positive decimal"),
            ("99999999999999999999.{now}.{mac}", "sequence number must be a positive decimal"),
            ("1.-5.{mac}", "time must be a positive decimal"),
            ("1.{mac}", "ends with"),
            ("1.{now}.{mac}x", "not 43 characters"),
            ("1.{now}.", "not 43 characters"),
        ],
    )
    def test_malformed_uses_are_refused(self, app_conn, signing_keys, suffix, detail):
        token = reusable(signing_keys[0])
        material = token.token + "." + suffix.format(now=int(time.time()), mac="A" * 43)
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
            set_signed(app_conn, material)
        assert detail in refused(excinfo).diag.message_detail

    def test_a_statements_use_is_refused_on_another_connection_and_for_another_statement(
        self, database: Database, signing_keys, sites_table
    ):
        """The statement marker, as the statement-bound app role: what one statement carried is spent."""
        token = reusable(signing_keys[0], site=2)
        with database.connect("app") as first, database.connect("app") as second:
            material = token.use(1)
            assert carried(first, material) == [(2,)]
            for conn in (second, first):  # another connection; a later statement of the same one
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used") as e:
                    carried(conn, material, f"SELECT count(*) FROM {sites_table}")
                refused(e)
            assert carried(second, token.use(2)) == [(2,)]

    def test_the_token_seen_in_a_statement_makes_no_new_use(self, database: Database, signing_keys):
        token = reusable(signing_keys[0], site=2)
        material = token.use(1)
        with database.connect("app") as conn:
            assert carried(conn, material) == [(2,)]
            seen = material.split(".")
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid use") as excinfo:
                carried(conn, ".".join([*seen[:3], "2", seen[4], seen[5]]))
            assert "MAC does not match" in refused(excinfo).diag.message_detail
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid use"):
                carried(conn, ".".join(seen[:3]))

    def test_more_tokens_than_a_backend_keeps_all_work(self, app_conn, signing_keys):
        """The per-backend cache has a fixed number of slots; a token that lost its slot is verified again."""
        tokens = [reusable(signing_keys[0], site=site) for site in range(1, 201)]
        for sequence in (1, 2):
            assert [set_signed(app_conn, token.use(sequence)) for token in tokens] == list(range(1, 201))

    def test_a_kept_token_still_expires(self, app_conn, signing_keys):
        token = reusable(signing_keys[0], lifetime=1)
        assert set_signed(app_conn, token.use(1)) == 1
        time.sleep(max(0.0, token.expires_at - time.time()) + 0.1)
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="has expired"):
            set_signed(app_conn, token.use(2))

    def test_a_kept_token_follows_a_lowered_max_token_lifetime(self, app_conn, admin_conn, signing_keys):
        token = reusable(signing_keys[0], lifetime=120)
        sequences = iter(range(1, 10_000))
        assert set_signed(app_conn, token.use(next(sequences))) == 1
        admin_conn.execute("ALTER SYSTEM SET django_rls.max_token_lifetime = 60")
        admin_conn.execute("SELECT pg_reload_conf()")
        try:

            def refused_now() -> psycopg.Error:
                try:
                    set_signed(app_conn, token.use(next(sequences)))
                except psycopg.errors.InvalidAuthorizationSpecification as error:
                    return error
                raise AssertionError("the backend has not reloaded its configuration yet")

            assert "lives too long" in str(wait_for(refused_now))
        finally:
            reset_max_token_lifetime(admin_conn)

    def test_forged_uses_do_not_fill_the_replay_memory(self, app_conn, signing_keys):
        used_before = app_conn.execute("SELECT rls.extension_info()->>'replay_issuers_used'").fetchone()[0]
        for _ in range(100):
            token = reusable(signing_keys[0])  # a genuine token of a new issuer, a use with a forged MAC
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid use"):
                set_signed(app_conn, _remac(token, "k" * 64, f"1.{int(time.time())}"))
        used_after = app_conn.execute("SELECT rls.extension_info()->>'replay_issuers_used'").fetchone()[0]
        assert used_after == used_before

    def test_a_removed_key_stops_a_kept_token_at_once(self, app_conn, admin_conn, signing_keys):
        current, previous = signing_keys
        token = reusable(previous)
        assert set_signed(app_conn, token.use(1)) == 1  # verified, and kept by this backend
        write_key_file(admin_conn, current)
        try:
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
                set_signed(app_conn, token.use(2))  # its MAC, under the removed key
            assert "MAC does not match" in refused(excinfo).diag.message_detail
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
                set_signed(app_conn, _remac(token, current, f"3.{int(time.time())}"))  # a current key's MAC
            assert "signature does not match any key" in refused(excinfo).diag.message_detail
        finally:
            write_key_file(admin_conn, current, previous)

    def test_require_signature_accepts_uses(self, database: Database, admin_conn, signing_keys):
        admin_conn.execute(
            sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(sql.Identifier(APP_ROLE))
        )
        try:
            with database.connect("app") as conn:
                assert carried(conn, reusable(signing_keys[0], site=2).use(1)) == [(2,)]
        finally:
            admin_conn.execute(
                sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(sql.Identifier(APP_ROLE))
            )


def _flip(text: str) -> str:
    return ("B" if text[0] == "A" else "A") + text[1:]


def _retimed(use: str, delta: int) -> str:
    parts = use.split(".")
    parts[4] = str(int(parts[4]) + delta)
    return ".".join(parts)


def _made(use: str) -> str:
    """A use's "<seq>.<time>"."""
    return ".".join(use.split(".")[3:5])


def _remac(token: ReusableToken, key: str, made: str) -> str:
    """A use of the token with this "<seq>.<time>", its MAC made under key."""
    return f"{token.token}.{made}.{mac(key, token.token.rsplit('.', 1)[1] + '.' + made)}"


class TestSigner:
    @pytest.mark.parametrize("length", [32, 64, 65, 200])
    def test_hmac_with_hashed_pads_is_hmac_sha256(self, length):
        key = secrets.token_bytes(length)
        for message in (b"", b"x", b"y" * 63, b"z" * 64, b"w" * 1000):
            assert HmacSha256(key).digest(message) == hmac.digest(key, message, "sha256")

    def test_a_use_is_the_token_a_number_a_time_and_their_mac(self, signing_keys):
        token = sign_reusable(signing_keys[0], site=1, user=2)
        use = token.use(now=1_900_000_000)
        prefix, sequence, made, use_mac = use.rsplit(".", 3)
        assert prefix == token.token and made == "1900000000" and int(sequence) >= 1
        assert use_mac == mac(signing_keys[0], f"{token.token.rsplit('.', 1)[1]}.{sequence}.{made}")
        payload = json.loads(base64.urlsafe_b64decode(token.token.split(".")[1] + "=="))
        assert "seq" not in payload and payload["iss"] == token.issuer

    # The child only signs and exits; the warning about forking a process with threads (Python 3.12+) is moot here.
    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
    def test_a_forked_child_signs_its_own_token(self, signing_keys):
        cache = bridge.ReusableTokens()
        values = make_values(site=1, user=1)
        parent = cache.use(signing_keys[0], 30, values)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(write, cache.use(signing_keys[0], 30, values).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            child = pipe.read()
        os.waitpid(pid, 0)
        assert child.split(".")[:3] != parent.split(".")[:3]
        assert cache.use(signing_keys[0], 30, values).split(".")[:3] == parent.split(".")[:3]

    def test_a_token_is_signed_again_when_half_its_lifetime_is_gone(self, signing_keys, monkeypatch):
        clock = [1_900_000_000.0]
        monkeypatch.setattr(bridge.time, "time", lambda: clock[0])
        cache, values = bridge.ReusableTokens(), make_values(site=1, user=1)
        first = cache.use(signing_keys[0], 30, values).split(".")[:3]
        clock[0] += 14
        assert cache.use(signing_keys[0], 30, values).split(".")[:3] == first
        clock[0] += 2
        assert cache.use(signing_keys[0], 30, values).split(".")[:3] != first

    def test_the_cache_is_bounded(self, signing_keys):
        cache = bridge.ReusableTokens(size=3)
        for site in range(10):
            cache.use(signing_keys[0], 30, make_values(site=site, user=1))
        assert len(cache._tokens) == 3


@pytest.fixture
def signed(live_db, settings, signing_keys, admin_conn, monkeypatch):
    """Signed mode with signatures required of the (statement-bound) app role, a fresh token cache,
    and a record of every token signed and every use sent in this process."""
    record: dict[str, list[str]] = {"signed": [], "uses": []}
    real_sign, real_use = bridge.sign_reusable, ReusableToken.use

    def counting_sign(*args, **kwargs) -> ReusableToken:
        token = real_sign(*args, **kwargs)
        record["signed"].append(token.token)
        return token

    def recording_use(self: ReusableToken, *args, **kwargs) -> str:
        use = real_use(self, *args, **kwargs)
        record["uses"].append(use)
        return use

    monkeypatch.setattr(bridge, "sign_reusable", counting_sign)
    monkeypatch.setattr(ReusableToken, "use", recording_use)
    monkeypatch.setattr(bridge, "reusable_tokens", bridge.ReusableTokens())
    settings.DJANGO_RLS = {**settings.DJANGO_RLS, "SIGNING_KEY": signing_keys[0]}
    admin_conn.execute(sql.SQL("ALTER ROLE {} SET django_rls.require_signature = on").format(sql.Identifier(APP_ROLE)))
    connections.close_all()
    yield record
    admin_conn.execute(sql.SQL("ALTER ROLE {} RESET django_rls.require_signature").format(sql.Identifier(APP_ROLE)))
    connections.close_all()


class TestBridge:
    @pytest.mark.parametrize("alias", ["default", "replica"], ids=["client-side binding", "server-side binding"])
    def test_a_request_of_ten_queries_signs_once(self, signed, client, alias):
        url = f"/notes/query-by-query/{alias}/?n=10"
        assert client.get(url, HTTP_HOST=H1).json() == {"sites": [1]}
        assert len(signed["signed"]) == 1
        assert len(signed["uses"]) == 10 and len(set(signed["uses"])) == 10
        assert {use.rsplit(".", 3)[0] for use in signed["uses"]} == set(signed["signed"])
        # The next request of the same context signs nothing; another context signs once.
        assert client.get(url, HTTP_HOST=H1).json() == {"sites": [1]}
        assert client.get(url, HTTP_HOST=H2).json() == {"sites": [2]}
        assert len(signed["signed"]) == 2 and len(signed["uses"]) == 30

    def test_atomic_requests_send_one_use(self, signed, client):
        connections.settings["default"]["ATOMIC_REQUESTS"] = True
        try:
            assert client.get("/notes/query-by-query/default/?n=10", HTTP_HOST=H2).json() == {"sites": [2]}
        finally:
            connections.settings["default"]["ATOMIC_REQUESTS"] = False
        assert (len(signed["signed"]), len(signed["uses"])) == (1, 1)

    def test_what_a_request_sent_cannot_be_replayed(self, signed, client, database: Database):
        assert client.get("/notes/query-by-query/replica/?n=3", HTTP_HOST=H2).json() == {"sites": [2]}
        with database.connect("app") as bound, database.connect("app_unbound") as unbound:
            for use in signed["uses"]:
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used") as e:
                    carried(bound, use)
                refused(e)
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
                    set_signed(unbound, use)
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="never alone"):
                carried(bound, signed["signed"][0])


VECTORS = json.loads((Path(__file__).parent / "token_vectors.json").read_text())


def _vector_arguments(inputs: dict) -> dict:
    arguments = {name: inputs[name] for name in ("site", "user", "claims", "lifetime", "issuer", "now")}
    return {**arguments, **({"database": inputs["database"]} if "database" in inputs else {})}


class TestVectors:
    def test_the_python_signer_makes_the_vectors(self):
        key = VECTORS["key"]
        for vector in VECTORS["single_use"]:
            inputs = vector["inputs"]
            assert sign_context(key, **_vector_arguments(inputs), sequence=inputs["sequence"]) == vector["token"]
        for vector in VECTORS["reusable"]:
            token = sign_reusable(key, **_vector_arguments(vector["inputs"]))
            assert token.token == vector["token"]
            for use in vector["uses"]:
                assert token.use(use["sequence"], now=use["time"]) == use["use"]

    def test_the_server_accepts_their_signatures_and_macs(self, app_conn, admin_conn, signing_keys):
        """The vectors expired long ago (and some name another database): the server says so, which it
        checks only after the signature, the MAC and the layout; one changed character is refused first."""
        materials = [vector["token"] for vector in VECTORS["single_use"]]
        materials += [use["use"] for vector in VECTORS["reusable"] for use in vector["uses"]]
        write_key_file(admin_conn, *signing_keys, VECTORS["key"])
        try:
            for material in materials:
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as excinfo:
                    set_signed(app_conn, material)
                error = excinfo.value
                assert "has expired" in error.diag.message_primary or "another database" in (
                    error.diag.message_detail or ""
                ), material
                with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid") as excinfo:
                    set_signed(app_conn, material[:-1] + ("A" if material[-1] != "A" else "B"))
        finally:
            write_key_file(admin_conn, *signing_keys)
