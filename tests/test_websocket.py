"""The WebSocket translator in memory: real Autobahn client and server over iosim."""

from __future__ import annotations

import json
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from ktvtwist.errors import Language
from ktvtwist.room import RoomRules
from ktvtwist.websocket import KTVServerProtocol, KTVWebSocketFactory
from tests.support import memory_server

START = 1_527_574_165.09

ROOM_FIELD_TYPES: dict[str, type] = {
    "count": int,
    "status": str,
    "room": str,
    "current_time": int,
    "start_time": str,
    "end_time": str,
    "duration": str,
    "sid": str,
    "name": str,
    "author": str,
    "nick": str,
    "fullname": str,
    "members": list,
    "songs": list,
    "version": int,
}


class RecordingClient(WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.opened = False
        self.close_code: int | None = None

    def onOpen(self) -> None:
        self.opened = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append(payload)
        self.received.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code


class WebSocketTestCase(SynchronousTestCase):
    language = Language.ZH

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.server = memory_server(
            self.clock, RoomRules(ask_seconds=15, rest_seconds=30, max_members=2, reconnect_grace=0)
        )
        self.factory = KTVWebSocketFactory(self.server, language=self.language, reactor=self.clock)
        self.pumps: list[iosim.IOPump] = []

    def tearDown(self) -> None:
        self.server.stop()

    def connect(self) -> tuple[RecordingClient, KTVServerProtocol]:
        server_proto = cast(KTVServerProtocol, self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000)))
        client_factory = WebSocketClientFactory("ws://localhost:8888/", reactor=self.clock)
        client_factory.protocol = RecordingClient
        client = cast(RecordingClient, client_factory.buildProtocol(None))
        server_t = iosim.FakeTransport(server_proto, isServer=True)
        client_t = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server_proto, server_t, client, client_t, greet=False)
        self.pumps.append(pump)
        pump.flush()
        self.assertTrue(client.opened, "WebSocket handshake did not complete")
        return client, server_proto

    def flush(self) -> None:
        for _ in range(3):
            for pump in self.pumps:
                pump.flush()

    def send(self, client: RecordingClient, frame: Any, binary: bool = False) -> dict[str, Any]:
        """Send a frame and return the one reply it gets."""
        before = len(client.received)
        payload = frame if isinstance(frame, bytes) else json.dumps(frame).encode()
        client.sendMessage(payload, isBinary=binary)
        self.flush()
        replies = [m for m in client.received[before:] if "caller_action" in m]
        self.assertEqual(len(replies), 1, f"expected one reply, got {client.received[before:]}")
        return replies[0]

    def join(self, name: str, room: str = "R1", **body: Any) -> RecordingClient:
        client, _ = self.connect()
        reply = self.send(
            client, {"action": "join", "room": room, "fullname": name, "token": f"t-{name}", "body": body}
        )
        self.assertEqual(reply["status"], 0, reply)
        return client

    def assertError(self, reply: dict[str, Any], code: str) -> None:
        self.assertEqual((reply["status"], reply["code"], reply["body"]), (-1, code, {}), reply)
        self.assertIsInstance(reply["message"], str)
        self.assertTrue(reply["message"])


class ContractTests(WebSocketTestCase):
    def test_join_reply_has_documented_fields_and_types(self) -> None:
        client, _ = self.connect()
        reply = self.send(
            client,
            {"action": "join", "room": "R123", "fullname": "15608059720", "token": "t", "body": {"avatar": "http://a"}},
        )
        self.assertEqual(reply["status"], 0)
        self.assertEqual(reply["type"], 1)
        self.assertEqual(reply["message"], "success")
        self.assertEqual(reply["timestamp"], "1527574165.09")
        self.assertEqual((reply["caller_action"], reply["caller_fullname"]), ("join", "15608059720"))
        body = reply["body"]
        self.assertEqual(set(body), set(ROOM_FIELD_TYPES))
        for name, kind in ROOM_FIELD_TYPES.items():
            self.assertIs(type(body[name]), kind, name)
        self.assertEqual(
            {k: body[k] for k in ("count", "status", "room", "current_time", "start_time", "end_time", "duration")},
            {
                "count": 1,
                "status": "4",
                "room": "R123",
                "current_time": 1527574165,
                "start_time": "1527574165",
                "end_time": "1527660565",
                "duration": "86400",
            },
        )
        self.assertEqual((body["sid"], body["name"], body["fullname"], body["songs"]), ("0", "", "", []))
        self.assertEqual(
            body["members"], [{"nick": "15608059720", "fullname": "15608059720", "avatar": "http://a", "online": True}]
        )

    def test_asking_and_singing_describe_the_member_on_the_mic(self) -> None:
        alice = self.join("alice", nick="Alice")
        Deferred.fromCoroutine(self.server.queue_song("R1", "t-alice", "4", "245"))
        self.flush()
        body = alice.received[-1]["body"]
        self.assertNotIn("caller_action", alice.received[-1])
        self.assertEqual(
            {k: body[k] for k in ("status", "fullname", "nick", "sid", "name", "author", "duration")},
            {
                "status": "2",
                "fullname": "alice",
                "nick": "Alice",
                "sid": "4",
                "name": "晴天",
                "author": "周杰伦",
                "duration": "15",
            },
        )
        self.assertEqual(
            body["songs"],
            [
                {
                    "sid": "4",
                    "name": "晴天",
                    "author": "周杰伦",
                    "nick": "Alice",
                    "fullname": "alice",
                    "avatar": "",
                    "duration": "245",
                }
            ],
        )
        reply = self.send(alice, {"action": "ask", "ack": 1})
        self.assertEqual((reply["body"]["status"], reply["body"]["duration"]), ("1", "245"))
        self.assertEqual(reply["body"]["songs"], [])
        self.assertEqual(reply["body"]["sid"], "4")

    def test_push_to_others_and_reply_to_caller(self) -> None:
        alice = self.join("alice")
        bob = self.join("bob")
        push = alice.received[-1]
        self.assertNotIn("caller_action", push)
        self.assertEqual(push["body"]["count"], 2)
        self.assertEqual(len(bob.received), 1)


class ActionTests(WebSocketTestCase):
    def queue(self, name: str) -> None:
        Deferred.fromCoroutine(self.server.queue_song("R1", f"t-{name}", "1", "100"))
        self.flush()

    def test_ack_at_top_level_or_in_body_or_as_string(self) -> None:
        for frame in (
            {"action": "ask", "ack": 0},
            {"action": "ask", "body": {"ack": 0}},
            {"action": "ask", "ack": "0"},
        ):
            alice = self.join("alice")
            self.queue("alice")
            reply = self.send(alice, frame)
            self.assertEqual(reply["body"]["status"], "4", frame)
            self.send(alice, {"action": "leave"})

    def test_bad_ack(self) -> None:
        alice = self.join("alice")
        self.queue("alice")
        for ack in (2, None, "yes", True, [1]):
            self.assertError(self.send(alice, {"action": "ask", "ack": ack}), "bad_request")
        self.assertEqual(self.send(alice, {"action": "status"})["body"]["status"], "2")

    def test_identity_is_bound_at_join(self) -> None:
        alice = self.join("alice")
        bob = self.join("bob")
        self.queue("alice")
        # bob claims to be alice in another room: he is still bob in R1
        reply = self.send(bob, {"action": "ask", "ack": 1, "fullname": "alice", "room": "R9", "token": "t-alice"})
        self.assertError(reply, "not_your_turn")
        self.assertEqual(reply["caller_fullname"], "bob")
        status = self.send(bob, {"action": "status", "room": "R9"})
        self.assertEqual(status["body"]["room"], "R1")
        self.assertEqual(self.send(alice, {"action": "ask", "ack": 1})["body"]["status"], "1")
        self.assertError(self.send(bob, {"action": "cut", "fullname": "alice"}), "not_singer")
        self.assertEqual(self.send(alice, {"action": "cut"})["body"]["status"], "3")

    def test_cut_when_not_singing(self) -> None:
        alice = self.join("alice")
        reply = self.send(alice, {"action": "cut"})
        self.assertError(reply, "wrong_state")
        self.assertEqual(reply["message"], "当前不可切歌")

    def test_boardcast_relays_body_without_token(self) -> None:
        alice = self.join("alice", nick="Alice")
        bob = self.join("bob")
        reply = self.send(alice, {"action": "boardcast", "token": "t-alice", "body": {"text": "干杯"}})
        self.assertEqual((reply["type"], reply["caller_action"]), (2, "boardcast"))
        push = bob.received[-1]
        self.assertEqual(push["type"], 2)
        self.assertEqual(push["body"]["fullname"], "alice")
        self.assertEqual(push["body"]["nick"], "Alice")
        self.assertEqual(push["body"]["body"], {"text": "干杯"})
        for raw in alice.raw + bob.raw:
            self.assertNotIn(b"t-alice", raw)

    def test_leave_then_actions_need_join(self) -> None:
        alice = self.join("alice")
        bob = self.join("bob")
        reply = self.send(alice, {"action": "leave"})
        self.assertEqual(reply["body"]["count"], 1)
        self.assertEqual(bob.received[-1]["body"]["count"], 1)
        self.assertError(self.send(alice, {"action": "status"}), "not_in_room")

    def test_room_full(self) -> None:
        self.join("alice")
        self.join("bob")
        carol, _ = self.connect()
        reply = self.send(carol, {"action": "join", "room": "R1", "fullname": "carol", "token": "t-carol"})
        self.assertError(reply, "room_full")
        self.assertEqual(reply["message"], "房间人数已满")

    def test_join_twice(self) -> None:
        alice = self.join("alice")
        reply = self.send(alice, {"action": "join", "room": "R1", "fullname": "alice", "token": "t-alice"})
        self.assertError(reply, "already_in_room")
        self.assertEqual(reply["message"], "你已在房间中")

    def test_closing_the_socket_without_grace_leaves(self) -> None:
        alice = self.join("alice")
        bob = self.join("bob")
        bob.sendClose()
        self.flush()
        self.assertEqual(alice.received[-1]["body"]["count"], 1)


class MalformedFrameTests(WebSocketTestCase):
    CASES: list[tuple[Any, str]] = [
        (b"not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b'"join"', "bad_request"),
        (b"\xff\xfe", "bad_request"),
        ({}, "bad_request"),
        ({"action": 7}, "bad_request"),
        ({"action": "dance"}, "unknown_action"),
        ({"action": "status"}, "not_in_room"),
        ({"action": "ask", "ack": 1}, "not_in_room"),
        ({"action": "join", "room": "R1", "fullname": "a", "token": "t", "body": []}, "bad_request"),
        ({"action": "join", "fullname": "a", "token": "t"}, "bad_request"),
        ({"action": "join", "room": {"x": 1}, "fullname": "a", "token": "t"}, "bad_request"),
        ({"action": "join", "room": "R1", "token": "t"}, "bad_request"),
        ({"action": "join", "room": "R1", "fullname": ["a"], "token": "t"}, "bad_request"),
        ({"action": "join", "room": "R1", "fullname": "a"}, "auth_failed"),
        ({"action": "join", "room": "R1", "fullname": "a", "token": 5}, "bad_request"),
        ({"action": "join", "room": "x" * 65, "fullname": "a", "token": "t"}, "bad_request"),
        ({"action": "join", "room": "R1", "fullname": "a|$|b\n", "token": "t"}, "bad_request"),
    ]

    def test_every_malformed_frame_gets_an_error_and_the_connection_survives(self) -> None:
        client, _ = self.connect()
        for frame, code in self.CASES:
            with self.subTest(frame=frame):
                self.assertError(self.send(client, frame), code)
        reply = self.send(client, {"action": "join", "room": "R1", "fullname": "a", "token": "t"})
        self.assertEqual(reply["status"], 0)
        self.assertEqual(self.server.rooms.keys(), {"R1"})

    def test_binary_frame(self) -> None:
        client, _ = self.connect()
        self.assertError(self.send(client, b'{"action": "status"}', binary=True), "bad_request")
        self.assertEqual(client.close_code, None)

    def test_unexpected_exception_becomes_internal_error(self) -> None:
        alice = self.join("alice")

        async def explode(conn: Any) -> Any:
            raise RuntimeError("bug")

        self.patch(self.server, "status", explode)
        self.assertError(self.send(alice, {"action": "status"}), "internal_error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.send(alice, {"action": "boardcast", "body": {}})["status"], 0)

    def test_oversized_frame_closes_with_1009(self) -> None:
        client, _ = self.connect()
        client.sendMessage(json.dumps({"action": "boardcast", "body": {"x": "y" * 70000}}).encode())
        self.flush()
        self.assertEqual(client.close_code, 1009)


class EnglishTests(WebSocketTestCase):
    language = Language.EN

    def test_messages_in_english(self) -> None:
        client, _ = self.connect()
        self.assertEqual(self.send(client, {"action": "status"})["message"], "join a room first")
