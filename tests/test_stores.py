"""The store contract, run against the in-memory store and a real Redis."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from ktvtwist import errors
from ktvtwist.errors import KTVError
from ktvtwist.redis_store import RedisAddress, RedisRoomStore
from ktvtwist.room import Member, RoomRules, RoomState
from ktvtwist.store import IRoomListener, IRoomStore, MemoryRoomStore
from tests.redis_helper import RedisServer

RULES = RoomRules()


@implementer(IRoomListener)
class RecordingListener:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any, str | None]] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def room_changed(self, room_id: str, state: RoomState | None, origin: str | None) -> None:
        self._record(("state", room_id, state, origin))

    def room_message(self, room_id: str, message: dict[str, Any], origin: str | None) -> None:
        self._record(("message", room_id, message, origin))

    def _record(self, event: tuple[str, str, Any, str | None]) -> None:
        self.events.append(event)
        for count, d in list(self._waiting):
            if len(self.events) >= count:
                self._waiting.remove((count, d))
                d.callback(None)

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        """Until ``count`` events have arrived (events from Redis come asynchronously)."""
        if len(self.events) >= count:
            return
        d: Deferred[None] = Deferred()
        self._waiting.append((count, d))
        d.addTimeout(timeout, reactor)
        await d


async def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"timed out waiting for {what}")


async def connected_redis_store(testcase: TestCase, server: RedisServer, prefix: str = "ktv:") -> RedisRoomStore:
    store = RedisRoomStore(RedisAddress.parse(server.url), reactor=reactor, prefix=prefix, reply_timeout=2)
    store.start()
    testcase.addCleanup(store.stop)
    await wait_until(lambda: store.connected and store.listening, what="the store to connect")
    return store


def member(name: str) -> Member:
    return Member(fullname=name, nick=name, avatar="", credential=f"t-{name}")


class StoreContractMixin:
    """What every IRoomStore does.  Subclasses provide ``make_store``."""

    store: IRoomStore
    listener: RecordingListener

    async def make_store(self) -> IRoomStore:
        raise NotImplementedError

    async def setUpStore(self) -> None:
        self.store = await self.make_store()
        self.listener = RecordingListener()
        self.store.subscribe(self.listener)
        await self.store.watch("R1")

    async def create(self, name: str = "alice", origin: str | None = "c1") -> RoomState:
        state = await self.store.update(
            "R1", lambda s: RULES.join(s or RULES.create("R1", 100.0), member(name)), origin
        )
        assert state is not None
        return state

    async def test_missing_room_is_none(self) -> None:
        await self.setUpStore()
        self.assertIsNone(await self.store.get("nope"))  # type: ignore[attr-defined]

    async def test_update_stores_and_announces_with_origin(self) -> None:
        await self.setUpStore()
        state = await self.create()
        self.assertEqual(await self.store.get("R1"), state)  # type: ignore[attr-defined]
        await self.listener.wait_for(1)
        self.assertEqual(self.listener.events, [("state", "R1", state, "c1")])  # type: ignore[attr-defined]

    async def test_unchanged_state_is_not_announced(self) -> None:
        await self.setUpStore()
        state = await self.create()
        same = await self.store.update("R1", lambda s: s, None)
        self.assertEqual(same, state)  # type: ignore[attr-defined]
        await self.create("bob")
        await self.listener.wait_for(2)
        self.assertEqual(len(self.listener.events), 2)  # type: ignore[attr-defined]

    async def test_refused_change_stores_nothing(self) -> None:
        await self.setUpStore()
        state = await self.create()

        def refuse(s: RoomState | None) -> RoomState:
            raise errors.room_full()

        with self.assertRaises(KTVError):  # type: ignore[attr-defined]
            await self.store.update("R1", refuse, None)
        self.assertEqual(await self.store.get("R1"), state)  # type: ignore[attr-defined]

    async def test_none_deletes(self) -> None:
        await self.setUpStore()
        await self.create()
        self.assertIsNone(await self.store.update("R1", lambda s: None, "c2"))  # type: ignore[attr-defined]
        self.assertIsNone(await self.store.get("R1"))  # type: ignore[attr-defined]
        await self.listener.wait_for(2)
        self.assertEqual(self.listener.events[-1], ("state", "R1", None, "c2"))  # type: ignore[attr-defined]

    async def test_changes_arrive_in_order(self) -> None:
        await self.setUpStore()
        for name in ("a", "b", "c", "d", "e"):
            await self.create(name)
        await self.listener.wait_for(5)
        versions = [event[2].version for event in self.listener.events]
        self.assertEqual(versions, [1, 2, 3, 4, 5])  # type: ignore[attr-defined]

    async def test_publish_reaches_listeners(self) -> None:
        await self.setUpStore()
        await self.store.publish("R1", {"action": "boardcast", "body": {"x": 1}}, "c9")
        await self.listener.wait_for(1)
        self.assertEqual(  # type: ignore[attr-defined]
            self.listener.events, [("message", "R1", {"action": "boardcast", "body": {"x": 1}}, "c9")]
        )

    async def test_history_newest_first_and_bounded(self) -> None:
        await self.setUpStore()
        for i in range(5):
            await self.store.add_history("R1", {"content": str(i)}, 3)
        history = await self.store.history("R1")
        self.assertEqual([m["content"] for m in history], ["4", "3", "2"])  # type: ignore[attr-defined]
        self.assertEqual(await self.store.history("R2"), [])  # type: ignore[attr-defined]

    async def test_round_trip_keeps_everything(self) -> None:
        await self.setUpStore()
        await self.create("alice")
        await self.create("bob")

        def away(s: RoomState | None) -> RoomState:
            assert s is not None
            return RULES.disconnect(RULES.join(s, member("bob"), "n1"), "bob", "n1", 150.0)

        state = await self.store.update("R1", away, None)
        assert state is not None
        self.assertEqual(state.member("bob"), Member("bob", "bob", "", "t-bob", (), 180.0))  # type: ignore[attr-defined]
        self.assertEqual(await self.store.get("R1"), state)  # type: ignore[attr-defined]


class MemoryStoreTests(StoreContractMixin, TestCase):
    async def make_store(self) -> IRoomStore:
        return MemoryRoomStore()


class RedisStoreTests(StoreContractMixin, TestCase):
    async def make_store(self) -> IRoomStore:
        self.redis = RedisServer(self)
        await self.redis.start()
        return await connected_redis_store(self, self.redis)

    async def test_keys_of_a_room_share_its_hash_tag(self) -> None:
        await self.setUpStore()
        store = self.store
        assert isinstance(store, RedisRoomStore)
        for key in (store.room_key("R1"), store.history_key("R1"), store.channel("R1")):
            self.assertTrue(key.startswith("ktv:{R1}:"), key)

    async def test_racing_changes_both_apply_exactly_once(self) -> None:
        await self.setUpStore()
        other = await connected_redis_store(self, self.redis)
        await self.create("alice")
        names = [f"m{i}" for i in range(8)]
        big = RoomRules(max_members=20)
        results = []
        for i, name in enumerate(names):
            store = self.store if i % 2 else other
            results.append(
                store.update("R1", lambda s, n=name: big.join(s, member(n)), None)  # type: ignore[misc]
            )
        for d in results:
            await d
        final = await self.store.get("R1")
        assert final is not None
        self.assertEqual(sorted(m.fullname for m in final.members), sorted(["alice", *names]))
        self.assertEqual(final.version, 1 + len(names))

    async def test_unavailable_at_once_when_redis_is_down(self) -> None:
        await self.setUpStore()
        await self.redis.stop()
        await wait_until(lambda: not self.store.connected, what="the store to notice")  # type: ignore[attr-defined]
        with self.assertRaises(KTVError) as caught:
            await self.store.get("R1")
        self.assertEqual(caught.exception.code, "unavailable")
        await self.redis.start()
        await wait_until(lambda: self.store.connected and self.store.listening, what="reconnecting")  # type: ignore[attr-defined]
        await self.create()
        await self.listener.wait_for(1)  # the subscription came back by itself
