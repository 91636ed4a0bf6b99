"""Property-based: random frames from several members never break a room.

Hypothesis sends random sequences of valid and malformed frames from several
members (through real Autobahn protocols over iosim), closes and reopens
connections and advances the clock between them; after every step nothing
has raised and every room's invariants hold.
"""

from __future__ import annotations

import json
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from ktvtwist.auth import OpenAuthority
from ktvtwist.catalog import MemoryCatalog
from ktvtwist.errors import KTVError
from ktvtwist.room import RoomRules, RoomState, RoomStatus
from ktvtwist.server import KTVServer
from ktvtwist.store import MemoryRoomStore
from ktvtwist.websocket import KTVServerProtocol, KTVWebSocketFactory

NAMES = ["alice", "bob", "carol", "dave"]
ROOMS = ["R1", "R2"]


class Client(WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append(json.loads(payload))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)

valid_frames = st.one_of(
    st.builds(lambda room: {"action": "join", "room": room}, st.sampled_from(ROOMS)),
    st.builds(lambda room: {"action": "reconnect", "room": room}, st.sampled_from(ROOMS)),
    st.just({"action": "status"}),
    st.builds(lambda ack: {"action": "ask", "ack": ack}, st.sampled_from([0, 1, "1"])),
    st.builds(lambda ack: {"action": "ask", "body": {"ack": ack}}, st.sampled_from([0, 1])),
    st.just({"action": "cut"}),
    st.just({"action": "leave"}),
    st.just({"action": "del"}),
    st.just({"action": "heart"}),
    st.just({"action": "history"}),
    st.builds(lambda text: {"action": "chat", "content": text}, st.text(min_size=1, max_size=10)),
    st.builds(lambda body: {"action": "boardcast", "body": body}, st.dictionaries(st.text(max_size=4), json_values)),
    st.builds(
        lambda sid, duration: {"action": "sing", "sid": sid, "duration": duration},
        st.sampled_from(["1", "2", 3, "999"]),
        st.sampled_from(["1", "5", 30, "0", "x", 99999]),
    ),
    st.builds(lambda value: {"action": "device", "device": "mic", "value": value}, st.sampled_from([0, 1, "on"])),
)

malformed_frames = st.one_of(
    st.binary(max_size=20),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.builds(
        lambda action, extra: {"action": action, **extra},
        st.text(max_size=8) | st.integers(),
        st.dictionaries(st.sampled_from(["room", "fullname", "token", "body", "ack", "sid", "duration"]), json_values),
    ),
)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("frame"), st.integers(0, len(NAMES) - 1), valid_frames),
        st.tuples(st.just("frame"), st.integers(0, len(NAMES) - 1), malformed_frames),
        st.tuples(st.just("binary"), st.integers(0, len(NAMES) - 1), st.binary(max_size=10)),
        st.tuples(st.just("close"), st.integers(0, len(NAMES) - 1), st.none()),
        st.tuples(st.just("http"), st.integers(0, len(NAMES) - 1), st.sampled_from(ROOMS)),
        st.tuples(st.just("advance"), st.just(0), st.floats(0, 40)),
    ),
    max_size=40,
)


class World:
    """One server, its clock, and a connection per member name (reopened after a close)."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_600_000_000)
        self.rules = RoomRules(ask_seconds=5, rest_seconds=3, max_members=3, reconnect_grace=4)
        self.server = KTVServer(
            store=MemoryRoomStore(),
            catalog=MemoryCatalog.sample(),
            authority=OpenAuthority(),
            clock=self.clock,
            rules=self.rules,
            max_song_seconds=60,
        )
        # Autobahn's own timers (handshakes, pings) run on another clock so
        # that self.clock holds room timers only.
        self.factory = KTVWebSocketFactory(self.server, reactor=Clock())
        self.clients: dict[int, tuple[Client, iosim.IOPump]] = {}
        self.versions: dict[str, int] = {}
        self.unexpected: list[Failure] = []

    def client(self, index: int) -> tuple[Client, iosim.IOPump]:
        if index not in self.clients:
            server = cast(KTVServerProtocol, self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)))
            client_factory = WebSocketClientFactory("ws://localhost/", reactor=Clock())
            client_factory.protocol = Client
            client = cast(Client, client_factory.buildProtocol(None))
            pump = iosim.connect(
                server,
                iosim.FakeTransport(server, isServer=True),
                client,
                iosim.FakeTransport(client, isServer=False),
                greet=False,
            )
            pump.flush()
            self.clients[index] = (client, pump)
        return self.clients[index]

    def send(self, index: int, frame: Any, binary: bool = False) -> None:
        client, pump = self.client(index)
        if isinstance(frame, dict):
            frame = {"fullname": NAMES[index], "token": f"t-{NAMES[index]}", **frame}
            frame = json.dumps(frame).encode()
        client.sendMessage(frame, isBinary=binary)
        pump.flush()

    def close(self, index: int) -> None:
        if index in self.clients:
            client, pump = self.clients.pop(index)
            cast(Any, client.transport).loseConnection()
            pump.flush()

    def http_queue(self, index: int, room: str) -> None:
        d = Deferred.fromCoroutine(self.server.queue_song(room, f"t-{NAMES[index]}", "1", "10"))
        d.addErrback(lambda f: f.trap(KTVError))
        d.addErrback(self.unexpected.append)

    def states(self) -> dict[str, RoomState]:
        store = cast(MemoryRoomStore, self.server.store)
        return dict(store._rooms)


class RoomInvariantTests(SynchronousTestCase):
    def check(self, world: World) -> None:
        states = world.states()
        for deleted in set(world.versions) - set(states):
            del world.versions[deleted]  # a room made again starts over
        timers = world.clock.getDelayedCalls()
        self.assertEqual(len(timers), len(states), "exactly one timer armed per room")
        self.assertEqual(set(world.server.rooms), set(states))
        for room_id, state in states.items():
            names = [m.fullname for m in state.members]
            self.assertTrue(names, "a room without members is deleted")
            self.assertEqual(len(names), len(set(names)), "each member listed once")
            self.assertLessEqual(len(names), world.rules.max_members)
            owners = [s.fullname for s in state.queue]
            self.assertEqual(len(owners), len(set(owners)), "one queued song per member")
            self.assertTrue(set(owners) <= set(names), "queued songs belong to members")
            if state.on_mic is not None:
                self.assertIn(state.on_mic.fullname, names, "the singer or asked member is a member")
            if state.status is RoomStatus.ASKING:
                self.assertTrue(state.queue)
            if state.status is RoomStatus.SINGING:
                self.assertIsNotNone(state.singing)
            else:
                self.assertIsNone(state.singing)
            local = world.server.rooms[room_id]
            self.assertIsNotNone(local.timer)
            assert local.timer is not None
            self.assertTrue(local.timer.active())
            self.assertAlmostEqual(local.timer.getTime(), max(state.deadline, world.clock.seconds()), places=3)
            self.assertGreaterEqual(state.version, world.versions.get(room_id, -1), "versions never go back")
            world.versions[room_id] = state.version
        for client, _ in world.clients.values():
            for message in client.received:
                self.assertIn(message["status"], (0, -1))
                self.assertNotEqual(message.get("code"), "internal_error", message)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(world.unexpected, [])

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], report_multiple_bugs=False)
    @given(steps)
    def test_random_frames_keep_rooms_consistent(self, script: list[tuple[str, int, Any]]) -> None:
        world = World()
        try:
            for kind, index, arg in script:
                if kind == "frame":
                    world.send(index, arg)
                elif kind == "binary":
                    world.send(index, arg, binary=True)
                elif kind == "close":
                    world.close(index)
                elif kind == "http":
                    world.http_queue(index, arg)
                else:
                    world.clock.advance(arg)
                self.check(world)
        finally:
            world.server.stop()
