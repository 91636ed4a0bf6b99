"""What the nodes read from Redis besides rooms: the catalog, token records, ``ktv-admin``, and their options.

Every Redis test runs a real redis-server (tests/redis_helper.py) and fails
when it is missing.
"""

from __future__ import annotations

import io
import json
import os
import sys
from importlib import metadata
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ktvtwist.admin_cli import execute
from ktvtwist.auth import Identity, OpenAuthority, RedisTokenAuthority, SignedAuthority
from ktvtwist.catalog import CatalogError, CatalogSong, MemoryCatalog
from ktvtwist.errors import KTVError
from ktvtwist.redis_catalog import RedisCatalog, load_catalog
from ktvtwist.redis_store import RedisAddress, RedisRoomStore
from ktvtwist.room import RoomRules, RoomStatus
from ktvtwist.server import KTVServer
from ktvtwist.tap import Options, ServerService, exposure_problem, makeService
from tests.redis_helper import RedisServer, free_port
from tests.support import RecordingConnection
from tests.test_stores import connected_redis_store, wait_until

SONGS = [
    CatalogSong("1", "月亮代表我的心", "邓丽君", lrc="https://lrc.example/1.lrc", link="https://v.example/1"),
    CatalogSong("2", "甜蜜蜜", "邓丽君"),
    CatalogSong("3", "My Way", "Frank Sinatra"),
]
SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def refused(code: str, d: Deferred[Any]) -> KTVError:
    try:
        await d
    except KTVError as e:
        assert e.code == code, (e.code, code, e.en)
        return e
    raise AssertionError(f"no {code}")


class RedisTestCase(TestCase):
    prefix = "ktv:"

    async def start_redis(self) -> RedisRoomStore:
        self.redis = RedisServer(self)
        await self.redis.start()
        self.store = store = RedisRoomStore(
            RedisAddress.parse(self.redis.url), reactor=reactor, prefix=self.prefix, reply_timeout=2
        )
        self.after_store_stops: list[Any] = []

        async def stop() -> None:
            await store.stop()
            for cleanup in self.after_store_stops:
                cleanup()

        store.start()
        self.addCleanup(stop)
        await wait_until(lambda: store.connected and store.listening, what="the store to connect")
        return store

    async def raw(self, method: str, *args: Any) -> Any:
        """A command on the store's own connection, without the store's error handling."""
        return await getattr(self.store.redis(), method)(*args)

    async def redis_down(self) -> None:
        await self.redis.stop()
        await wait_until(lambda: not self.store.connected, what="the store to notice")


class RedisCatalogTests(RedisTestCase):
    async def test_lookup(self) -> None:
        store = await self.start_redis()
        self.assertEqual(await load_catalog(store, SONGS), 3)
        catalog = RedisCatalog(store)
        self.assertEqual(await catalog.lookup("1"), SONGS[0])
        self.assertEqual(await catalog.lookup("3"), SONGS[2])
        self.assertIsNone(await catalog.lookup("4"))
        self.assertIsNone(await catalog.lookup("0"))
        stored = json.loads(await self.raw("hget", "ktv:catalog", "1"))
        self.assertEqual(
            stored,
            {
                "sid": "1",
                "name": "月亮代表我的心",
                "author": "邓丽君",
                "lrc": "https://lrc.example/1.lrc",
                "link": "https://v.example/1",
            },
        )

    async def test_empty_catalog(self) -> None:
        catalog = RedisCatalog(await self.start_redis())
        self.assertIsNone(await catalog.lookup("1"))

    async def test_replace_and_merge(self) -> None:
        store = await self.start_redis()
        catalog = RedisCatalog(store)
        await load_catalog(store, SONGS)
        renamed = CatalogSong("3", "My Way (live)", "Frank Sinatra")
        self.assertEqual(await load_catalog(store, [renamed, CatalogSong("4", "Yesterday", "The Beatles")]), 2)
        self.assertIsNone(await catalog.lookup("1"))
        self.assertEqual(await catalog.lookup("3"), renamed)
        self.assertEqual(await load_catalog(store, [SONGS[0]], replace=False), 3)
        self.assertEqual(await catalog.lookup("1"), SONGS[0])
        self.assertEqual((await catalog.lookup("4")).name, "Yesterday")  # type: ignore[union-attr]

    async def test_a_large_catalog_in_one_step(self) -> None:
        store = await self.start_redis()
        songs = [CatalogSong(str(i), f"song {i}", "someone") for i in range(1, 2501)]
        self.assertEqual(await load_catalog(store, songs), 2500)
        self.assertEqual((await RedisCatalog(store).lookup("2500")).name, "song 2500")  # type: ignore[union-attr]

    async def test_a_connection_and_a_prefix(self) -> None:
        self.prefix = "kx:"
        store = await self.start_redis()
        # A plain txredisapi connection: keys under the given prefix.
        self.assertEqual(await load_catalog(store.redis(), SONGS[:1], prefix="kx:"), 1)
        self.assertEqual(await RedisCatalog(store).lookup("1"), SONGS[0])
        self.assertEqual(await self.raw("exists", "ktv:catalog"), 0)

    async def test_unavailable(self) -> None:
        store = await self.start_redis()
        await load_catalog(store, SONGS)
        await self.redis_down()
        await refused("unavailable", RedisCatalog(store).lookup("1"))
        await refused("unavailable", load_catalog(store, SONGS))

    async def test_a_bad_entry_is_an_error_not_a_missing_song(self) -> None:
        store = await self.start_redis()
        catalog = RedisCatalog(store)
        await self.raw("hset", "ktv:catalog", "7", "not json")
        await self.raw("hset", "ktv:catalog", "8", json.dumps({"sid": "9", "name": "x", "author": "y"}))
        await self.raw("hset", "ktv:catalog", "10", json.dumps({"sid": "10", "name": ["x"]}))
        for sid in ("7", "8", "10"):
            with self.assertRaises(CatalogError):
                await catalog.lookup(sid)
        await self.raw("delete", "ktv:catalog")
        await self.raw("set", "ktv:catalog", "oops")
        with self.assertRaises(CatalogError):
            await catalog.lookup("1")


class RedisTokenAuthorityTests(RedisTestCase):
    async def setUp(self) -> None:  # type: ignore[override]
        store = await self.start_redis()
        self.authority = RedisTokenAuthority(store)
        self.state = RoomRules().create("R1", 0.0)

    async def record(self, token: str, **fields: Any) -> None:
        await self.raw("hmset", f"ktv:token:{token}", fields)

    async def test_not_open(self) -> None:
        self.assertFalse(self.authority.open)
        self.assertEqual(repr(self.authority), "RedisTokenAuthority('ktv:token:*')")

    async def test_identify_ignores_the_claimed_identity(self) -> None:
        await self.record("tok-a", fullname="alice", nick="Al", avatar="https://a/1.png")
        identity = await self.authority.identify("tok-a", {"fullname": "mallory", "nick": "M"})
        self.assertEqual(identity, Identity("alice", "Al", "https://a/1.png", admin=False, credential=""))

    async def test_defaults(self) -> None:
        await self.record("tok-b", fullname="bob")
        self.assertEqual(await self.authority.identify("tok-b", {}), Identity("bob", "bob", ""))

    async def test_admin(self) -> None:
        await self.record("tok-root", fullname="root", role="admin")
        await self.record("tok-ops", fullname="ops", role="operator")
        self.assertTrue((await self.authority.identify("tok-root", {})).admin)
        self.assertFalse((await self.authority.identify("tok-ops", {})).admin)
        self.assertTrue((await self.authority.resolve("tok-root", self.state)).admin)

    async def test_resolve_does_not_check_membership(self) -> None:
        await self.record("tok-a", fullname="alice")
        identity = await self.authority.resolve("tok-a", self.state)
        self.assertEqual((identity.fullname, identity.credential), ("alice", ""))
        await refused("auth_failed", self.authority.resolve("tok-z", self.state))

    async def test_missing_or_unknown_tokens(self) -> None:
        for token in (None, "", 42, ["tok-a"], "tok-unknown", "x" * 4097, "\ud800"):
            await refused("auth_failed", self.authority.identify(token, {"fullname": "alice"}))

    async def test_expiry_is_the_keys_ttl(self) -> None:
        await self.record("tok-a", fullname="alice")
        await self.raw("execute_command", "PEXPIRE", "ktv:token:tok-a", 100)
        self.assertEqual((await self.authority.identify("tok-a", {})).fullname, "alice")
        await wait_for_expiry(self, "ktv:token:tok-a")
        await refused("auth_failed", self.authority.identify("tok-a", {}))

    async def test_bad_records(self) -> None:
        await self.record("t1", nick="no fullname")
        await self.record("t2", fullname="x" * 65)
        await self.record("t3", fullname="al\nice")
        await self.record("t4", fullname="alice", avatar="a" * 1025)
        await self.record("t5", fullname=b"\xff\xfe")  # not UTF-8: not text
        await self.record("t6", fullname="alice", nick=b"\xc3")
        await self.raw("set", "ktv:token:t7", "alice")  # not a hash
        for token in ("t1", "t2", "t3", "t4", "t5", "t6", "t7"):
            e = await refused("auth_failed", self.authority.identify(token, {}))
            self.assertIn("invalid", e.en)
            self.assertNotIn(token, e.en)
            await refused("auth_failed", self.authority.resolve(token, self.state))
        # The longest valid values pass.
        await self.record("t8", fullname="x" * 64, nick="n" * 64, avatar="a" * 1024)
        self.assertEqual((await self.authority.identify("t8", {})).fullname, "x" * 64)

    async def test_unavailable(self) -> None:
        await self.record("tok-a", fullname="alice")
        await self.redis_down()
        await refused("unavailable", self.authority.identify("tok-a", {}))
        await refused("unavailable", self.authority.resolve("tok-a", self.state))

    async def test_the_stores_prefix(self) -> None:
        other = RedisTokenAuthority(
            await connected_redis_store(self, self.redis, prefix="app1:")  # same Redis, another prefix
        )
        await self.record("tok-a", fullname="alice")
        await refused("auth_failed", other.identify("tok-a", {}))
        await self.raw("hset", "app1:token:tok-a", "fullname", "alice1")
        self.assertEqual((await other.identify("tok-a", {})).fullname, "alice1")


async def wait_for_expiry(testcase: RedisTestCase, key: str) -> None:
    for _ in range(100):
        if await testcase.raw("exists", key) == 0:
            return
        await deferred_sleep(0.02)
    raise AssertionError(f"{key} did not expire")


def deferred_sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


class AdminCLITests(RedisTestCase):
    async def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = await execute(list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    def catalog_file(self, data: Any) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
        return path

    def assertOneLineError(self, err: str) -> None:
        self.assertTrue(err.startswith("ktv-admin: error: "), err)
        self.assertEqual(err.count("\n"), 1, err)

    async def test_load_catalog(self) -> None:
        store = await self.start_redis()
        path = self.catalog_file(
            [{"sid": 1, "name": "n1", "author": "a1", "lrc": "l", "link": "k"}, {"sid": "2", "name": "n2"}]
        )
        code, out, err = await self.run_cli("load-catalog", path, "--redis", self.redis.url)
        self.assertEqual((code, out, err), (0, "loaded 2 songs into ktv:catalog\n", ""))
        catalog = RedisCatalog(store)
        self.assertEqual(await catalog.lookup("1"), CatalogSong("1", "n1", "a1", "l", "k"))
        self.assertEqual(await catalog.lookup("2"), CatalogSong("2", "n2", ""))
        # Again: replaced, not added to.
        code, out, _ = await self.run_cli("load-catalog", self.catalog_file([{"sid": 3}]), "--redis", self.redis.url)
        self.assertEqual((code, out), (0, "loaded 1 songs into ktv:catalog\n"))
        self.assertIsNone(await catalog.lookup("1"))
        code, out, _ = await self.run_cli(
            "load-catalog", self.catalog_file([{"sid": 4}]), "--merge", "--redis", self.redis.url
        )
        self.assertEqual((code, out), (0, "loaded 1 songs into ktv:catalog (2 in all)\n"))

    async def test_load_the_shipped_sample_under_a_prefix(self) -> None:
        self.prefix = "p1:"
        store = await self.start_redis()
        path = os.path.join(SOURCE, "ktvtwist", "data", "catalog.json")
        code, out, _ = await self.run_cli("load-catalog", path, "--redis", self.redis.url, "--redis-prefix", "p1:")
        self.assertEqual((code, out), (0, f"loaded {len(MemoryCatalog.sample())} songs into p1:catalog\n"))
        self.assertEqual(await RedisCatalog(store).lookup("12"), MemoryCatalog.sample().lookup("12"))

    async def test_bad_catalogs(self) -> None:
        await self.start_redis()
        for path in (
            self.mktemp(),
            self.catalog_file({"sid": 1}),
            self.catalog_file([{"sid": 0, "name": "x"}]),
            self.catalog_file([{"sid": "1", "name": {"a": 1}}]),
            self.catalog_file([]),
        ):
            code, out, err = await self.run_cli("load-catalog", path, "--redis", self.redis.url)
            self.assertEqual((code, out), (2, ""), err)
            self.assertOneLineError(err)
        self.assertEqual(await self.raw("exists", "ktv:catalog"), 0)

    async def test_set_token(self) -> None:
        store = await self.start_redis()
        authority = RedisTokenAuthority(store)
        code, out, err = await self.run_cli(
            "set-token", "tok-a", "--fullname", "alice", "--nick", "Al", "--avatar", "u", "--redis", self.redis.url
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out, "stored the token of alice (never expires)\n")
        self.assertEqual(await authority.identify("tok-a", {}), Identity("alice", "Al", "u"))
        self.assertEqual(await self.raw("execute_command", "PTTL", "ktv:token:tok-a"), -1)
        # Again: the record is replaced (no nick left over), with a TTL and the admin role.
        code, out, _ = await self.run_cli(
            "set-token", "tok-a", "--fullname", "root", "--admin", "--ttl", "60", "--redis", self.redis.url
        )
        self.assertEqual((code, out), (0, "stored the token of root (expires in 60 s)\n"))
        self.assertEqual(await authority.identify("tok-a", {}), Identity("root", "root", "", admin=True))
        self.assertTrue(55_000 < int(await self.raw("execute_command", "PTTL", "ktv:token:tok-a")) <= 60_000)
        self.assertEqual(await self.raw("hgetall", "ktv:token:tok-a"), {"fullname": "root", "role": "admin"})

    async def test_set_token_under_a_prefix_expires(self) -> None:
        self.prefix = "p2:"
        store = await self.start_redis()
        code, _, _ = await self.run_cli(
            "set-token",
            "tok-b",
            "--fullname",
            "bob",
            "--ttl",
            "0.1",
            "--redis",
            self.redis.url,
            "--redis-prefix",
            "p2:",
        )
        self.assertEqual(code, 0)
        self.assertEqual((await RedisTokenAuthority(store).identify("tok-b", {})).fullname, "bob")
        await wait_for_expiry(self, "p2:token:tok-b")

    async def test_bad_token_records(self) -> None:
        await self.start_redis()
        for argv in (
            ["", "--fullname", "alice"],
            ["t", "--fullname", ""],
            ["t", "--fullname", "x" * 65],
            ["t", "--fullname", "a\tb"],
            ["t", "--fullname", "alice", "--avatar", "a" * 1025],
            ["t" * 4097, "--fullname", "alice"],
        ):
            code, out, err = await self.run_cli("set-token", *argv, "--redis", self.redis.url)
            self.assertEqual((code, out), (2, ""), argv)
            self.assertOneLineError(err)
        self.assertEqual(await self.raw("dbsize"), 0)

    async def test_redis_unreachable_or_refusing(self) -> None:
        await self.start_redis()
        nobody = f"redis://127.0.0.1:{free_port()}/0"
        path = self.catalog_file([{"sid": 1}])
        for argv in (
            ["load-catalog", path, "--redis", nobody, "--timeout", "2"],
            ["set-token", "t", "--fullname", "a", "--redis", nobody],
            # A password the server does not expect, a database it does not have.
            ["set-token", "t", "--fullname", "a", "--redis", f"redis://:pw@127.0.0.1:{self.redis.port}/0"],
            ["load-catalog", path, "--redis", f"redis://127.0.0.1:{self.redis.port}/99"],
        ):
            code, out, err = await self.run_cli(*argv)
            self.assertEqual((code, out), (1, ""), argv)
            self.assertOneLineError(err)
            self.assertIn("Redis", err)
        code, _, err = await self.run_cli("load-catalog", path, "--redis", "http://x")
        self.assertEqual(code, 2)
        self.assertOneLineError(err)
        self.assertEqual(await self.raw("dbsize"), 0)

    async def test_usage_errors(self) -> None:
        for argv in (
            [],
            ["load-catalog", "f"],
            ["set-token", "t", "--redis", "redis://h"],
            ["set-token", "t", "--fullname", "a", "--ttl", "0", "--redis", "redis://h"],
            ["drop-everything"],
        ):
            with self.assertRaises(SystemExit) as caught:
                await execute(argv, io.StringIO(), io.StringIO())
            self.assertEqual(caught.exception.code, 2)

    async def test_the_console_script(self) -> None:
        await self.start_redis()
        [entry] = metadata.entry_points(group="console_scripts", name="ktv-admin")
        self.assertEqual(entry.value, "ktvtwist.admin_cli:main")
        path = self.catalog_file([{"sid": 1}, {"sid": 2}])
        env = {**os.environ, "PYTHONPATH": SOURCE}
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "ktvtwist.admin_cli", "load-catalog", path, "--redis", self.redis.url], env=env
        )
        self.assertEqual((code, out, err), (0, b"loaded 2 songs into ktv:catalog\n", b""))
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "ktvtwist.admin_cli",
                "set-token",
                "t",
                "--fullname",
                "a",
                "--redis",
                f"redis://127.0.0.1:{free_port()}",
            ],
            env=env,
        )
        self.assertEqual((code, out), (1, b""))
        self.assertTrue(err.startswith(b"ktv-admin: error: cannot use Redis at 127.0.0.1:"), err)
        self.assertEqual(err.count(b"\n"), 1, err)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "ktvtwist.admin_cli", "set-token", "t"], env=env
        )
        self.assertEqual((code, out), (2, b""))
        self.assertIn(b"--fullname", err)


class RedisTapTests(SynchronousTestCase):
    URL = "redis://127.0.0.1:6399/0"

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def server(self, *argv: str) -> KTVServer:
        service = cast(MultiService, makeService(self.parse(*argv), reactor=MemoryReactorClock()))
        [server_service] = [c for c in service if isinstance(c, ServerService)]
        return server_service.server

    def test_redis_auth_and_catalog_need_redis(self) -> None:
        e = self.assertRaises(usage.UsageError, self.parse, "--auth", "redis")
        self.assertIn("--redis", str(e))
        e = self.assertRaises(usage.UsageError, self.parse, "--catalog-redis")
        self.assertIn("--redis", str(e))
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump([{"sid": 1}], f)
        e = self.assertRaises(usage.UsageError, self.parse, "--redis", self.URL, "--catalog-redis", "--catalog", path)
        self.assertIn("--catalog-redis", str(e))
        self.assertRaises(usage.UsageError, self.parse, "--auth", "redis", "--redis", self.URL, "--secret-file", path)
        self.assertRaises(usage.UsageError, self.parse, "--auth", "tokens", "--redis", self.URL)

    def test_redis_auth_and_catalog(self) -> None:
        server = self.server("--redis", self.URL, "--redis-prefix", "k1:", "--auth", "redis", "--catalog-redis")
        self.assertIsInstance(server.store, RedisRoomStore)
        authority, catalog = server.authority, server.catalog
        assert isinstance(authority, RedisTokenAuthority) and isinstance(catalog, RedisCatalog)
        self.assertIs(authority.store, server.store)
        self.assertIs(catalog.store, server.store)
        self.assertEqual(authority.store.token_key("t"), "k1:token:t")
        self.assertEqual(catalog.store.catalog_key(), "k1:catalog")
        self.assertEqual(authority.store.address, RedisAddress("127.0.0.1", 6399, 0))

    def test_each_on_its_own(self) -> None:
        server = self.server("--redis", self.URL, "--auth", "redis")
        self.assertIsInstance(server.authority, RedisTokenAuthority)
        self.assertIsInstance(server.catalog, MemoryCatalog)
        self.assertEqual(server.catalog.lookup("1"), MemoryCatalog.sample().lookup("1"))
        server = self.server("--redis", self.URL, "--catalog-redis")
        self.assertIsInstance(server.authority, OpenAuthority)
        self.assertIsInstance(server.catalog, RedisCatalog)

    def test_without_redis_nothing_changes(self) -> None:
        server = self.server()
        self.assertIsInstance(server.authority, OpenAuthority)
        self.assertIsInstance(server.catalog, MemoryCatalog)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"s" * 32)
        server = self.server("--redis", self.URL, "--auth", "signed", "--secret-file", path)
        self.assertIsInstance(server.authority, SignedAuthority)

    def test_redis_auth_may_listen_publicly(self) -> None:
        self.assertIsNone(exposure_problem(self.parse("--listen", "tcp:0", "--redis", self.URL, "--auth", "redis")))


class RedisAuthServerTests(RedisTestCase):
    """A KTVServer on the real reactor with rooms, tokens and the catalog in Redis."""

    async def setUp(self) -> None:  # type: ignore[override]
        store = await self.start_redis()
        self.server = KTVServer(
            store=store,
            catalog=RedisCatalog(store),
            authority=RedisTokenAuthority(store),
            clock=reactor,
            rules=RoomRules(max_members=4),
            node_id="n1",
        )
        # Once the store has stopped no event can arm a timer: then the timers go.
        self.after_store_stops.append(self.server.stop)
        await load_catalog(store, SONGS)
        await self.record("tok-a", fullname="alice", nick="Al")
        await self.record("tok-b", fullname="bob")

    async def record(self, token: str, **fields: Any) -> None:
        await self.raw("hmset", f"ktv:token:{token}", fields)

    async def join(self, token: Any, claimed: dict[str, Any]) -> Any:
        conn = RecordingConnection(self.server)
        return conn, await self.server.join(conn, "R1", token, claimed)

    async def test_a_join_is_the_member_the_token_names(self) -> None:
        conn, state = await self.join("tok-a", {"fullname": "mallory", "nick": "M", "avatar": "x"})
        [member] = state.members
        self.assertEqual((member.fullname, member.nick, member.avatar, member.credential), ("alice", "Al", "", ""))
        binding = self.server.binding(conn)
        assert binding is not None
        self.assertEqual(binding.identity, Identity("alice", "Al", ""))
        # A second device with the same token shares the membership.
        _, state = await self.join("tok-a", {"fullname": "bob"})
        self.assertEqual([m.fullname for m in state.members], ["alice"])
        stored = await self.store.get("R1")
        assert stored is not None
        self.assertEqual([m.fullname for m in stored.members], ["alice"])
        # Unknown tokens join nobody.
        for token in ("tok-nobody", "", None):
            with self.assertRaises(KTVError) as caught:
                await self.join(token, {"fullname": "alice"})
            self.assertEqual(caught.exception.code, "auth_failed")
        await wait_until(lambda: self.server.rooms["R1"].version == state.version, what="the room's events")

    async def test_queue_a_song_from_the_redis_catalog(self) -> None:
        await self.join("tok-a", {})
        state = await self.server.queue_song("R1", "tok-a", "1", "200")
        self.assertEqual(state.status, RoomStatus.ASKING)
        [song] = state.queue  # asked to take the mic
        self.assertEqual((song.name, song.fullname, song.nick), (SONGS[0].name, "alice", "Al"))
        for token, sid, code in (
            ("tok-b", "2", "not_member"),
            ("tok-x", "2", "auth_failed"),
            ("tok-a", "99", "song_not_found"),
        ):
            with self.assertRaises(KTVError) as caught:
                await self.server.queue_song("R1", token, sid, "200")
            self.assertEqual(caught.exception.code, code)
        await wait_until(lambda: self.server.rooms["R1"].version == state.version, what="the room's events")

    async def test_unavailable_when_redis_is_down(self) -> None:
        await self.redis_down()
        with self.assertRaises(KTVError) as caught:
            await self.join("tok-a", {})
        self.assertEqual(caught.exception.code, "unavailable")
        self.assertEqual(self.server.rooms, {})
