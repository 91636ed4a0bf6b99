"""Several room servers on one reactor sharing one real Redis.

Room timers run on a shared ``task.Clock`` (advanced by the tests); Redis
traffic runs on the real reactor.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from ktvtwist.auth import OpenAuthority
from ktvtwist.catalog import MemoryCatalog
from ktvtwist.errors import KTVError
from ktvtwist.redis_store import RedisAddress, RedisRoomStore
from ktvtwist.room import RoomRules, RoomState, RoomStatus
from ktvtwist.server import IConnection, KTVServer
from ktvtwist.wire import Frame
from tests.redis_helper import RedisServer
from tests.test_stores import wait_until

START = 1_700_000_000.0


@implementer(IConnection)
class Phone:
    """A member's connection: keeps every frame it is sent."""

    def __init__(self, server: KTVServer) -> None:
        self.connection_id = server.new_connection_id()
        self.messages: list[dict[str, Any]] = []

    def send(self, frame: Frame) -> None:
        self.messages.append(json.loads(frame.payload))

    def versions(self) -> list[int]:
        return [m["body"]["version"] for m in self.messages if m["type"] == 1]

    @property
    def room(self) -> dict[str, Any]:
        return [m for m in self.messages if m["type"] == 1][-1]["body"]


class MultiNodeTests(TestCase):
    timeout = 60

    async def setUp(self) -> None:  # type: ignore[override]
        self.redis = RedisServer(self, durable=True)
        await self.redis.start()
        self.clock = Clock()
        self.clock.advance(START)
        self.nodes: dict[str, KTVServer] = {}

    async def node(self, name: str) -> KTVServer:
        store = RedisRoomStore(RedisAddress.parse(self.redis.url), reactor=reactor, reply_timeout=2)
        store.start()
        self.addCleanup(store.stop)
        await wait_until(lambda: store.connected and store.listening, what=f"node {name} to connect")
        server = KTVServer(
            store=store,
            catalog=MemoryCatalog.sample(),
            authority=OpenAuthority(),
            clock=self.clock,
            rules=RoomRules(ask_seconds=15, rest_seconds=30, max_members=8, reconnect_grace=30),
            node_id=name,
            node_ttl=10,
        )
        server.start()
        self.addCleanup(server.stop)
        self.nodes[name] = server
        await self.settle()
        return server

    async def settle(self) -> None:
        """Let Redis round trips and pub/sub deliveries in flight finish (real I/O, not timers)."""
        for _ in range(3):
            if self.nodes and self.store_of("any").connected:
                await self.store_of("any").get("__settle__")
            await deferLater(reactor, 0.05, lambda: None)

    def store_of(self, name: str) -> RedisRoomStore:
        server = self.nodes.get(name) or next(iter(self.nodes.values()))
        store = server.store
        assert isinstance(store, RedisRoomStore)
        return store

    async def join(self, server: KTVServer, name: str, room: str = "R1") -> Phone:
        phone = Phone(server)
        await server.join(phone, room, f"t-{name}", {"fullname": name})
        return phone

    async def state(self, room: str = "R1") -> RoomState | None:
        return await self.store_of("any").get(room)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.settle()

    def assertInOrderOnce(self, phone: Phone) -> None:
        versions = phone.versions()
        self.assertEqual(versions, sorted(set(versions)), f"pushes out of order or doubled: {versions}")

    async def test_members_on_two_nodes_see_every_push_once_in_order(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        alice = await self.join(a, "alice")
        bob = await self.join(b, "bob")
        await wait_until(lambda: alice.messages and alice.room["count"] == 2, what="alice to see bob")
        await b.queue_song("R1", "t-alice", "1", "100")  # alice's token works on the other node
        await wait_until(lambda: alice.messages[-1]["body"].get("status") == "2", what="alice to be asked")
        await a.ask(alice, True)
        await wait_until(lambda: bob.messages and bob.room["status"] == "1", what="bob to see alice sing")
        await a.boardcast(alice, {"text": "hi"})
        await wait_until(lambda: bob.messages[-1]["type"] == 2, what="bob to get the boardcast")
        self.assertEqual(bob.messages[-1]["body"]["body"], {"text": "hi"})
        self.assertEqual([m["body"]["status"] for m in bob.messages if m["type"] == 1], ["2", "1"])
        self.assertInOrderOnce(alice)
        self.assertInOrderOnce(bob)

    async def test_timers_firing_on_every_node_move_the_room_once(self) -> None:
        a, b, c = await self.node("a"), await self.node("b"), await self.node("c")
        alice = await self.join(a, "alice")
        bob = await self.join(b, "bob")
        carol = await self.join(c, "carol")
        await a.sing(alice, "1", "100")
        await b.sing(bob, "2", "100")
        await c.sing(carol, "3", "100")
        await self.settle()
        before = await self.state()
        assert before is not None
        self.assertEqual(len(self.clock.getDelayedCalls()), 3 + 3)  # a room timer and an upkeep loop per node
        await self.advance(15)  # three nodes' timers fire at once
        after = await self.state()
        assert after is not None
        self.assertEqual(after.version, before.version + 1)
        self.assertEqual(after.status, RoomStatus.ASKING)
        self.assertEqual([s.fullname for s in after.queue], ["bob", "carol"])
        for phone in (alice, bob, carol):
            await wait_until(lambda p=phone: p.room["version"] == after.version, what="everyone to see it")
            self.assertInOrderOnce(phone)

    async def test_racing_asks_from_two_devices_accept_once(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        phone = await self.join(a, "alice")
        tv = await self.join(b, "alice")
        await a.sing(phone, "1", "100")
        await self.settle()
        results = [Deferred.fromCoroutine(a.ask(phone, True)), Deferred.fromCoroutine(b.ask(tv, True))]
        outcomes: list[object] = []
        for d in results:
            try:
                outcomes.append((await d).status)
            except KTVError as e:
                outcomes.append(e.code)
        self.assertEqual(sorted(map(str, outcomes)), sorted([str(RoomStatus.SINGING), "wrong_state"]))

    async def test_dead_node_members_go_away_then_leave(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        await self.join(a, "alice")
        bob = await self.join(b, "bob")
        await self.settle()
        # node a dies: no shutdown, its timers and heartbeats just stop
        a.stop()
        assert a._upkeep is not None
        a._upkeep.stop()
        await self.store_of("a").stop()
        del self.nodes["a"]
        await self.advance(5)
        state = await self.state()
        assert state is not None
        self.assertIsNone(state.member("alice").away_until)  # type: ignore[union-attr]
        await self.advance(6)  # a's heartbeat expired: b reaps its members into the grace
        state = await self.state()
        assert state is not None
        alice = state.member("alice")
        assert alice is not None
        self.assertEqual((alice.nodes, alice.away_until), ((), START + 11 + 30))
        await self.advance(30)
        await wait_until(lambda: bob.room["count"] == 1, what="alice to leave after the grace")

    async def test_stopped_node_hands_members_the_grace_and_they_come_back_elsewhere(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        alice = await self.join(a, "alice")
        bob = await self.join(b, "bob")
        await a.sing(alice, "1", "100")
        await a.shutdown()
        await wait_until(lambda: any(m["body"].get("count") == 2 for m in bob.messages), what="bob's push")
        state = await self.state()
        assert state is not None
        self.assertEqual(state.member("alice").away_until, START + 30)  # type: ignore[union-attr]
        back = await self.join(b, "alice")
        self.assertIsNotNone(back)
        state = await self.state()
        assert state is not None
        self.assertEqual(state.member("alice").nodes, ("b",))  # type: ignore[union-attr]
        self.assertEqual(state.on_mic.fullname, "alice")  # type: ignore[union-attr]

    async def test_sweep_moves_rooms_that_no_node_keeps_time_for(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        alice = await self.join(a, "alice")
        await a.sing(alice, "1", "100")
        a.stop()  # a's timer is gone; b has no member in R1
        await self.settle()
        self.assertNotIn("R1", b.rooms)
        await self.advance(15.5)  # b's sweep finds R1 overdue
        state = await self.state()
        assert state is not None
        self.assertEqual(state.status, RoomStatus.IDLE)

    async def test_a_drop_during_an_outage_is_reconciled_after_it(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        alice = await self.join(a, "alice")
        bob = await self.join(b, "bob")
        await self.redis.stop()
        await wait_until(lambda: not self.store_of("a").connected, what="node a to notice")
        a.connection_lost(alice)  # cannot be written now
        self.flushLoggedErrors(KTVError)
        await self.redis.start()
        for name in ("a", "b"):
            await wait_until(lambda n=name: self.store_of(n).listening, what=f"node {name} to come back")
        await wait_until(
            lambda: bool(bob.messages) and bob.room["members"][0]["online"] is False, what="alice to be marked away"
        )
        state = await self.state()
        assert state is not None
        self.assertEqual(state.member("alice").nodes, ())  # type: ignore[union-attr]
        self.assertTrue(state.member("bob").nodes)  # type: ignore[union-attr]

    async def test_a_node_taken_for_dead_puts_its_connected_members_back(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        alice = await self.join(a, "alice")
        bob = await self.join(b, "bob")
        # b wrongly takes a for dead (say a's heartbeats could not be written)
        await self.store_of("b").update("R1", b._node_gone("a", self.clock.seconds()), None)
        await wait_until(
            lambda: bool(bob.messages) and bob.room["members"][0]["online"] is True and bob.room["version"] >= 4,
            what="alice to be marked present again by her own node",
        )
        state = await self.state()
        assert state is not None
        self.assertEqual(state.member("alice").nodes, ("a",))  # type: ignore[union-attr]
        self.assertIsNone(state.member("alice").away_until)  # type: ignore[union-attr]
        self.assertTrue(alice.messages)

    async def test_no_node_is_reaped_right_after_an_outage_longer_than_the_ttl(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        await self.join(a, "alice")
        bob = await self.join(b, "bob")
        await self.redis.stop()
        await wait_until(lambda: not self.store_of("a").connected, what="the nodes to notice")
        await self.advance(15)  # heartbeats cannot be written for longer than node_ttl
        self.flushLoggedErrors(KTVError)
        await self.redis.start()
        for name in ("a", "b"):
            await wait_until(lambda n=name: self.store_of(n).listening, what=f"node {name} to come back")
        for _ in range(12):  # sweeps every second, past a node_ttl
            await self.advance(1)
        state = await self.state()
        assert state is not None
        self.assertEqual([(m.fullname, m.away_until) for m in state.members], [("alice", None), ("bob", None)])
        self.assertTrue(all(m["online"] for m in bob.room["members"]) if bob.messages else True)

    async def test_the_acting_node_takes_the_new_state_at_once(self) -> None:
        a, b = await self.node("a"), await self.node("b")
        alice = await self.join(a, "alice")
        await self.join(b, "bob")
        state = await a.sing(alice, "1", "100")
        self.assertEqual(a.rooms["R1"].version, state.version)  # before its own event arrives
