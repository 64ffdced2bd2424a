"""Replay protection under a backend crash, under sustained load, and against what a server log shows,
on throwaway clusters.

Each needs server settings the shared test cluster must not change (a crash resets every
connection; replay_issuers needs a restart; statement logging), so each test class gets its own
cluster.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.types.string import StrDumper

from django_rls.tokens import ReusableToken, sign_context, sign_reusable
from tests.conftest import KEY_FILE, wait_for, write_key_file
from tests.harness.cluster import BINDIR, Cluster

pytestmark = pytest.mark.skipif(not (BINDIR / "initdb").exists(), reason=f"no PostgreSQL server binaries in {BINDIR}")

APP = "replay_app"
LIFETIME = 2  # seconds: django_rls.max_token_lifetime of the load cluster
ISSUERS = 8  # django_rls.replay_issuers of the load cluster


def start_cluster(**settings: str | int) -> tuple[Cluster, str]:
    cluster = Cluster()
    cluster.init()
    cluster.start()
    key = secrets.token_urlsafe(48)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP)))
        conn.execute("CREATE EXTENSION django_rls")
        write_key_file(conn, key)
        conn.execute(sql.SQL("ALTER SYSTEM SET django_rls.signing_key_file = {}").format(sql.Literal(KEY_FILE)))
        for name, value in settings.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(str(value))))
    cluster.stop()
    cluster.start()
    return cluster, key


def spend(conn: psycopg.Connection, token: str) -> int | None:
    """Set a session context from the token and return its site."""
    conn.execute("SELECT rls.set_context_signed(%s, false)", (token,))
    return conn.execute("SELECT rls.site_id()").fetchone()[0]


def spend_use(conn: psycopg.Connection, token: ReusableToken, sequence: int) -> int | None:
    """Set a session context from a new use of the token and return its site."""
    return spend(conn, token.use(sequence))


def crash(cluster: Cluster) -> None:
    """Kill a backend: the postmaster kills every other one and creates shared memory anew.

    A witness connection tells when it has done the killing; only then can a new
    connection be sure to reach the reinitialised server.
    """
    witness = psycopg.connect(cluster.dsn(), autocommit=True)
    with psycopg.connect(cluster.dsn(), autocommit=True) as victim:
        os.kill(victim.execute("SELECT pg_backend_pid()").fetchone()[0], signal.SIGKILL)
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")

    def witness_gone() -> None:
        try:
            witness.execute("SELECT 1")
        except psycopg.OperationalError:
            return
        raise AssertionError("the postmaster has not reset the other backends yet")

    wait_for(witness_gone, timeout=60)
    witness.close()


def first_accepted(conn: psycopg.Connection, key: str, **kwargs) -> int | None:
    """Spend a fresh token, retrying while the server refuses tokens issued in its first second."""
    return wait_for(lambda: spend(conn, sign_context(key, site=1, user=1, **kwargs)))


@pytest.fixture(scope="module")
def crashed() -> Iterator[tuple[Cluster, str]]:
    cluster, key = start_cluster()
    try:
        yield cluster, key
    finally:
        cluster.stop()
        cluster.remove()


@pytest.fixture(scope="module")
def logged() -> Iterator[tuple[Cluster, str]]:
    cluster, key = start_cluster(log_statement="all")
    try:
        yield cluster, key
    finally:
        cluster.stop()
        cluster.remove()


@pytest.fixture(scope="module")
def loaded() -> Iterator[tuple[Cluster, str]]:
    cluster, key = start_cluster(**{"django_rls.replay_issuers": ISSUERS, "django_rls.max_token_lifetime": LIFETIME})
    try:
        yield cluster, key
    finally:
        cluster.stop()
        cluster.remove()


class TestCrash:
    def test_a_crash_does_not_reopen_replay(self, crashed):
        cluster, key = crashed
        with psycopg.connect(cluster.dsn(user=APP), autocommit=True) as conn:
            first_accepted(conn, key)
            spent = sign_context(key, site=2, user=1)
            unspent = sign_context(key, site=3, user=1)
            assert spend(conn, spent) == 2
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
                spend(conn, spent)

        crash(cluster)
        after = wait_for(lambda: psycopg.connect(cluster.dsn(user=APP), autocommit=True), timeout=60)
        with after:
            for token in (spent, unspent):  # spent before, or merely issued before: both refused
                with pytest.raises(
                    psycopg.errors.InvalidAuthorizationSpecification, match="replay memory was initialised"
                ):
                    spend(after, token)
            assert first_accepted(after, key) == 1  # a token issued after the crash works

    def test_a_crash_does_not_reopen_replay_of_uses(self, crashed):
        """A reusable token outlives the crash; only uses made after it are accepted."""
        cluster, key = crashed
        token = sign_reusable(key, site=4, user=1, lifetime=290, issuer=secrets.token_urlsafe(16))
        sequences = iter(range(1, 10_000))
        with psycopg.connect(cluster.dsn(user=APP), autocommit=True) as conn:
            wait_for(lambda: spend_use(conn, token, next(sequences)))  # the first second is refused
            spent, unspent = token.use(next(sequences)), token.use(next(sequences))
            assert spend(conn, spent) == 4
        crash(cluster)
        after = wait_for(lambda: psycopg.connect(cluster.dsn(user=APP), autocommit=True), timeout=60)
        with after:
            for use in (spent, unspent):
                with pytest.raises(
                    psycopg.errors.InvalidAuthorizationSpecification, match="replay memory was initialised"
                ) as excinfo:
                    spend(after, use)
                assert "use was used before" in excinfo.value.diag.message_detail
            assert wait_for(lambda: spend_use(after, token, next(sequences))) == 4


class TestSustainedLoad:
    def test_no_refusal_at_any_rate_for_longer_than_the_lifetime(self, loaded):
        """Memory follows the issuers, not the rate: a fixed-size cache of ISSUERS entries
        would have been full after ISSUERS tokens."""
        cluster, key = loaded
        refusals: list[BaseException] = []
        counts: list[int] = []

        def issuer_process() -> None:
            issuer, sent = secrets.token_urlsafe(16), 0
            try:
                with psycopg.connect(cluster.dsn(user=APP), autocommit=True) as conn:
                    first_accepted(conn, key, lifetime=LIFETIME, issuer=issuer, sequence=1)
                    deadline = time.monotonic() + 2.5 * LIFETIME
                    while time.monotonic() < deadline:
                        sent += 1
                        token = sign_context(
                            key, site=sent, user=1, lifetime=LIFETIME, issuer=issuer, sequence=sent + 1
                        )
                        if spend(conn, token) != sent:
                            raise AssertionError("wrong context")
            except BaseException as exc:  # reported by the main thread
                refusals.append(exc)
            counts.append(sent)

        threads = [threading.Thread(target=issuer_process) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert refusals == []
        assert sum(counts) > 100 * ISSUERS

    def test_no_refusal_at_any_rate_of_uses_for_longer_than_the_lifetime(self, loaded):
        """Uses spend numbers of their issuer's window exactly as single-use tokens do; each issuer
        signs a new reusable token when half of the last one's lifetime is gone."""
        cluster, key = loaded
        refusals: list[BaseException] = []
        counts: list[int] = []
        tokens: list[int] = []

        def issuer_process() -> None:
            issuer, sent, signed = secrets.token_urlsafe(16), 0, 0
            try:
                with psycopg.connect(cluster.dsn(user=APP), autocommit=True) as conn:
                    token = sign_reusable(key, site=0, user=1, lifetime=LIFETIME, issuer=issuer)
                    wait_for(lambda: spend_use(conn, token, 1))
                    deadline = time.monotonic() + 2.5 * LIFETIME
                    while time.monotonic() < deadline:
                        sent += 1
                        if token.expires_at - time.time() < LIFETIME / 2:
                            token = sign_reusable(key, site=sent, user=1, lifetime=LIFETIME, issuer=issuer)
                            signed += 1
                        if spend_use(conn, token, sent + 1) is None:
                            raise AssertionError("no context")
            except BaseException as exc:  # reported by the main thread
                refusals.append(exc)
            counts.append(sent)
            tokens.append(signed)

        threads = [threading.Thread(target=issuer_process) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert refusals == []
        assert sum(counts) > 100 * ISSUERS
        assert sum(tokens) < sum(counts) / 20

    def test_a_full_issuer_table_refuses_only_new_issuers_until_they_expire(self, loaded):
        cluster, key = loaded
        with psycopg.connect(cluster.dsn(user=APP), autocommit=True) as conn:
            known = secrets.token_urlsafe(16)
            first_accepted(conn, key, lifetime=LIFETIME, issuer=known, sequence=1)
            newcomer = None
            for _ in range(2 * ISSUERS):  # fill the table with live issuers until one is refused
                issuer = secrets.token_urlsafe(16)
                try:
                    spend(conn, sign_context(key, site=1, user=1, lifetime=LIFETIME, issuer=issuer, sequence=1))
                except psycopg.errors.ConfigurationLimitExceeded as exc:
                    assert "too many django_rls token issuers" in str(exc)
                    newcomer = issuer
                    break
            assert newcomer is not None
            # A known issuer goes on working.
            assert spend(conn, sign_context(key, site=7, user=1, lifetime=LIFETIME, issuer=known, sequence=2)) == 7
            # Once their tokens have expired, issuers are forgotten and the newcomer gets in.
            assert (
                wait_for(
                    lambda: spend(
                        conn, sign_context(key, site=8, user=1, lifetime=LIFETIME, issuer=newcomer, sequence=1)
                    ),
                    timeout=3 * LIFETIME + 5,
                )
                == 8
            )


class Text(str):
    """A str bound as type text, as the bridge binds a context."""


class TextDumper(StrDumper):
    oid = psycopg.adapters.types["text"].oid


class TestLoggedMaterial:
    """log_statement = 'all' writes every bound parameter to the server log, a use included."""

    def test_a_use_read_from_the_server_log_is_worth_nothing(self, logged):
        cluster, key = logged
        token = sign_reusable(key, site=5, user=1, issuer=secrets.token_urlsafe(16))
        sequences = iter(range(1, 10_000))
        with psycopg.connect(cluster.dsn(user=APP), autocommit=True) as victim:
            victim.adapters.register_dumper(Text, TextDumper)
            query = "/*django_rls:$1*/ SELECT rls.site_id()"
            assert wait_for(lambda: victim.execute(query.replace("$1", "%s"), (Text(token.use(next(sequences))),)))

        def logged_uses() -> list[str]:
            found = re.findall(r"\$1 = '(v1\.[A-Za-z0-9_.-]+)'", cluster.log_file.read_text(errors="replace"))
            assert found, "the statement's parameters are not in the log yet"
            return found

        seen = wait_for(logged_uses)[-1]
        assert seen.startswith(token.token + ".")
        with psycopg.connect(cluster.dsn(user=APP), autocommit=True) as attacker:
            attacker.adapters.register_dumper(Text, TextDumper)
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
                attacker.execute(query.replace("$1", "%s"), (Text(seen),))
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="already been used"):
                spend(attacker, seen)
            parts = seen.split(".")
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid use") as excinfo:
                spend(attacker, ".".join([*parts[:3], str(int(parts[3]) + 1), *parts[4:]]))
            assert "MAC does not match" in excinfo.value.diag.message_detail
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification, match="invalid use") as excinfo:
                spend(attacker, ".".join(parts[:3]))
            assert "never alone" in excinfo.value.diag.message_detail
