"""End to end: the installed ``twistd ktv`` plugin in a subprocess, over real sockets.

Each test starts the service as a child process on a free port (short ask and
rest timeouts, three members per room), waits until its HTTP side answers, and
drives it with real Autobahn WebSocket clients and real HTTP requests (treq).
Nothing sleeps: every wait is a Deferred bounded by a ``reactor.callLater``.

The server is started with twistd's own entry point
(``python -c "from twisted.scripts.twistd import run; run()" -n --pidfile= ktv
...``): ``python -m twisted`` is the ``twist`` runner, which has no ``-n`` or
``--pidfile`` option.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived

reactor: Any = _reactor

HOST = "127.0.0.1"
ASK_SECONDS = 0.5
REST_SECONDS = 0.5
MAX_MEMBERS = 3
GRACE_SECONDS = 0.5
STARTUP_ATTEMPTS = 200  # polls of /healthz, POLL_SECONDS apart
POLL_SECONDS = 0.05
FRAME_TIMEOUT = 5.0
CREATE = "/api/v2/singer/create"

TWISTD = "from twisted.scripts.twistd import run; run()"

Frame = dict[str, Any]
Predicate = Callable[[Frame], bool]


def wait(seconds: float) -> Deferred[None]:
    """A Deferred that fires after ``seconds`` (reactor.callLater, never time.sleep)."""
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def bounded(d: Deferred[Any], seconds: float, what: str) -> Deferred[Any]:
    """``d``, failing with a clear message if it has not fired within ``seconds``."""
    result: Deferred[Any] = Deferred()

    def expire() -> None:
        result.errback(Failure(unittest.FailTest(f"timed out after {seconds}s waiting for {what}")))

    call = reactor.callLater(seconds, expire)

    def done(value: Any) -> None:
        if call.active():
            call.cancel()
            result.callback(value)

    d.addBoth(done)
    return result


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# -- frame predicates ---------------------------------------------------------


class Match:
    """A frame predicate that names itself in timeout messages."""

    def __init__(self, description: str, test: Predicate) -> None:
        self.description = description
        self.test = test

    def __call__(self, frame: Frame) -> bool:
        try:
            return bool(self.test(frame))
        except (KeyError, TypeError, AttributeError):
            return False

    def __repr__(self) -> str:
        return self.description


def reply(action: str) -> Match:
    """The direct reply (or error) to this client's ``action``."""
    return Match(f"reply to {action!r}", lambda f: f.get("caller_action") == action)


def push(**body: Any) -> Match:
    """A room push (type 1, no caller fields) whose body holds ``body``."""

    def test(f: Frame) -> bool:
        return (
            "caller_action" not in f
            and f["type"] == 1
            and f["status"] == 0
            and all(f["body"].get(k) == v for k, v in body.items())
        )

    return Match(f"room push with {body!r}", test)


def message_push() -> Match:
    return Match("type 2 push", lambda f: "caller_action" not in f and f["type"] == 2)


# -- the server process -------------------------------------------------------


class ServerProcess(ProcessProtocol):
    """The child ``twistd ktv``: its output, kept for failure messages, and its end."""

    def __init__(self) -> None:
        self.output: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.ended: Deferred[None] = Deferred()
        self.exit: Failure | None = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.output.setdefault(childFD, bytearray()).extend(data)

    def processEnded(self, reason: Failure) -> None:
        self.exit = reason
        self.ended.callback(None)

    @property
    def running(self) -> bool:
        return self.exit is None

    def describe(self) -> str:
        status = "running" if self.exit is None else repr(self.exit.value)
        out = self.output[1].decode("utf-8", "replace")[-4000:]
        err = self.output[2].decode("utf-8", "replace")[-4000:]
        return f"process {status}\n--- stderr ---\n{err}\n--- stdout ---\n{out}"

    async def stop(self) -> None:
        if self.exit is not None:
            return
        assert self.transport is not None
        self.transport.signalProcess("TERM")
        try:
            await bounded(self.ended, 5, "the server to exit after SIGTERM")
        except unittest.FailTest:
            if self.exit is None:
                self.transport.signalProcess("KILL")
                await bounded(self.ended, 5, "the server to exit after SIGKILL")


# -- the WebSocket client -----------------------------------------------------


class _ClientProtocol(WebSocketClientProtocol):
    client: Client

    def onOpen(self) -> None:
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.client._received(payload, isBinary)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.client._lost(reason)


class _ClientFactory(WebSocketClientFactory):
    protocol = _ClientProtocol

    def __init__(self, client: Client, url: str) -> None:
        super().__init__(url)
        self.client = client

    def buildProtocol(self, addr: Any) -> _ClientProtocol:
        proto = cast(_ClientProtocol, super().buildProtocol(addr))
        proto.client = self.client
        return proto

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.client._lost(reason)


class _Waiter:
    def __init__(self, predicate: Predicate | None, d: Deferred[Frame], call: IDelayedCall | None = None) -> None:
        self.predicate = predicate
        self.d = d
        self.call = call


class Client:
    """One WebSocket client: every frame it receives, in order, and waits for them.

    ``frames`` is the queue of received frames not yet claimed by
    :meth:`next_frame`; ``raw`` keeps every payload ever received (for checks
    such as "no token in any frame").
    """

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.frames: list[Frame] = []
        self.raw: list[bytes] = []
        self.proto: _ClientProtocol | None = None
        self.closed: Deferred[None] = Deferred()
        self._open: Deferred[Client] = Deferred()
        self._waiters: list[_Waiter] = []
        self.factory = _ClientFactory(self, f"ws://{HOST}:{port}/")
        self.port = port

    async def connect(self) -> Client:
        reactor.connectTCP(HOST, self.port, self.factory, timeout=5)
        client: Client = await bounded(self._open, FRAME_TIMEOUT, f"{self.name}'s WebSocket to open")
        return client

    # protocol callbacks

    def _opened(self, proto: _ClientProtocol) -> None:
        self.proto = proto
        if not self._open.called:
            self._open.callback(self)

    def _received(self, payload: bytes, is_binary: bool) -> None:
        self.raw.append(payload)
        try:
            frame = json.loads(payload.decode("utf-8"))
        except ValueError:
            frame = {"__undecodable__": payload.decode("utf-8", "replace")}
        if is_binary:
            frame = {"__binary__": frame}
        for waiter in self._waiters:
            if waiter.predicate is None or waiter.predicate(frame):
                self._waiters.remove(waiter)
                if waiter.call is not None and waiter.call.active():
                    waiter.call.cancel()
                waiter.d.callback(frame)
                return
        self.frames.append(frame)

    def _lost(self, reason: Failure) -> None:
        if not self._open.called:
            self._open.errback(reason)
        if not self.closed.called:
            self.closed.callback(None)

    # the API tests use

    def send(self, message: Frame | bytes | str, binary: bool = False) -> None:
        """Send a frame: a dict as JSON text, or raw text/bytes as given."""
        assert self.proto is not None, f"{self.name} is not connected"
        if isinstance(message, dict):
            payload = json.dumps(message).encode("utf-8")
        elif isinstance(message, str):
            payload = message.encode("utf-8")
        else:
            payload = message
        self.proto.sendMessage(payload, isBinary=binary)

    def next_frame(self, predicate: Predicate | None = None, timeout: float = FRAME_TIMEOUT) -> Deferred[Frame]:
        """The first received frame matching ``predicate`` (any frame without one).

        Frames received before it that do not match stay queued for later calls.
        """
        for i, frame in enumerate(self.frames):
            if predicate is None or predicate(frame):
                del self.frames[i]
                return succeed(frame)
        d: Deferred[Frame] = Deferred()
        waiter = _Waiter(predicate, d)

        def expire() -> None:
            self._waiters.remove(waiter)
            what = "any frame" if predicate is None else repr(predicate)
            d.errback(
                Failure(
                    unittest.FailTest(f"{self.name}: no {what} within {timeout}s; unclaimed frames: {self.frames!r}")
                )
            )

        waiter.call = reactor.callLater(timeout, expire)
        self._waiters.append(waiter)
        return d

    async def request(self, message: Frame, timeout: float = FRAME_TIMEOUT) -> Frame:
        """Send ``message`` and wait for the reply to its action."""
        self.send(message)
        frame: Frame = await self.next_frame(reply(str(message.get("action"))), timeout)
        return frame

    async def close(self) -> None:
        """Close the connection (cleanly if possible) and wait until the socket is gone."""
        if self.closed.called:
            return
        if self.proto is None:
            # Connecting or failed: nothing open to close but the attempt.
            await bounded(self.closed, FRAME_TIMEOUT, f"{self.name}'s connection attempt to end")
            return
        self.proto.sendClose()
        try:
            await bounded(self.closed, 2, f"{self.name}'s connection to close")
        except unittest.FailTest:
            if self.proto.transport is not None:
                cast(Any, self.proto.transport).abortConnection()
            await bounded(self.closed, 2, f"{self.name}'s connection to abort")


# -- the tests ----------------------------------------------------------------


class MemberFrames:
    """Tokens and join frames of test members (``self.tokens`` keeps the tokens handed out)."""

    tokens: dict[str, str]

    def token(self, name: str) -> str:
        return self.tokens.setdefault(name, f"secret-token-of-{name}-{id(self):x}")

    def join_frame(self, name: str, room: str = "R1") -> Frame:
        return {
            "action": "join",
            "room": room,
            "fullname": name,
            "token": self.token(name),
            "nick": name.capitalize(),
            "avatar": f"http://img.example/{name}.png",
        }


class EndToEndHarness(MemberFrames, unittest.TestCase):
    """Starts a real ``twistd ktv`` per test; subclasses hold the tests."""

    timeout = 30

    async def setUp(self) -> None:  # type: ignore[override]
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.clients: list[Client] = []
        self.tokens: dict[str, str] = {}
        self.addCleanup(self._check_no_token_leaked)
        await self._start_server()

    async def _start_server(self) -> None:
        last = ""
        for _ in range(3):  # a new port if another process took ours meanwhile
            self.port = free_port()
            self.server = ServerProcess()
            args = [
                sys.executable, "-c", TWISTD, "-n", "--pidfile=", "ktv",
                "--listen", f"tcp:{self.port}:interface={HOST}",
                *self.server_options(),
            ]  # fmt: skip
            reactor.spawnProcess(self.server, sys.executable, args, env=os.environ)
            self.addCleanup(self.server.stop)
            if await self._wait_until_up():
                return
            last = self.server.describe()
        self.fail(f"twistd ktv never answered on its port:\n{last}")

    def server_options(self) -> list[str]:
        return [
            "--ask-timeout", str(ASK_SECONDS),
            "--rest-timeout", str(REST_SECONDS),
            "--max-members", str(MAX_MEMBERS),
            "--reconnect-grace", str(GRACE_SECONDS),
        ]  # fmt: skip

    async def _wait_until_up(self) -> bool:
        url = f"http://{HOST}:{self.port}/healthz"
        for _ in range(STARTUP_ATTEMPTS):
            if not self.server.running:
                return False
            try:
                response = await treq.get(url, pool=self.pool)
                body = await treq.json_content(response)
            except (ConnectError, ResponseNeverReceived):
                await wait(POLL_SECONDS)
                continue
            self.assertEqual((response.code, body), (200, {"body": {}, "status": 1, "msg": "ok"}))
            return True
        self.fail(f"twistd ktv did not accept connections on port {self.port}:\n{self.server.describe()}")

    def _check_no_token_leaked(self) -> None:
        for client in self.clients:
            for payload in client.raw:
                for name, token in self.tokens.items():
                    self.assertNotIn(token.encode(), payload, f"{name}'s token reached {client.name}")

    # helpers

    async def connect(self, name: str) -> Client:
        client = Client(name, self.port)
        self.clients.append(client)
        self.addCleanup(client.close)
        return await client.connect()

    async def join(self, name: str, room: str = "R1") -> tuple[Client, Frame]:
        client = await self.connect(name)
        frame = await client.request(self.join_frame(name, room))
        self.assertOK(frame, "join", name)
        return client, frame

    async def post(self, params: dict[str, str], as_json: bool = False) -> tuple[int, Any]:
        url = f"http://{HOST}:{self.port}{CREATE}"
        if as_json:
            response = await treq.post(url, json=params, pool=self.pool)
        else:
            response = await treq.post(url, data=params, pool=self.pool)
        body = await treq.json_content(response)
        return response.code, body

    def song(self, room: str, name: str, sid: str = "1", duration: str = "2") -> dict[str, str]:
        return {"room": room, "sid": sid, "token": self.token(name), "duration": duration}

    def assertEnvelope(self, frame: Frame, kind: int = 1) -> None:
        self.assertEqual(frame["status"], 0, frame)
        self.assertEqual(frame["type"], kind, frame)
        self.assertEqual(frame["message"], "success", frame)
        self.assertIsInstance(frame["timestamp"], str)
        self.assertLess(abs(float(frame["timestamp"]) - time.time()), 60)

    def assertOK(self, frame: Frame, action: str, fullname: str) -> None:
        self.assertEnvelope(frame)
        self.assertEqual((frame["caller_action"], frame["caller_fullname"]), (action, fullname), frame)

    def assertPush(self, frame: Frame) -> None:
        self.assertEnvelope(frame)
        self.assertNotIn("caller_action", frame)
        self.assertNotIn("caller_fullname", frame)

    def assertError(self, frame: Frame, code: str) -> None:
        self.assertEqual(frame["status"], -1, frame)
        self.assertEqual(frame["code"], code, frame)
        self.assertEqual(frame["body"], {}, frame)
        self.assertIsInstance(frame["message"], str)
        self.assertTrue(frame["message"])

    def assertRoomBody(self, body: Frame, room: str = "R1") -> None:
        """Every documented field of the room object, with its documented JSON type."""
        self.assertEqual(body["room"], room)
        self.assertIs(type(body["count"]), int)
        self.assertIs(type(body["current_time"]), int)
        self.assertLess(abs(body["current_time"] - time.time()), 60)
        for name in ("status", "room", "start_time", "end_time", "duration", "sid", "name", "author", "nick",
                     "fullname"):  # fmt: skip
            self.assertIs(type(body[name]), str, f"{name}: {body[name]!r}")
        self.assertIn(body["status"], {"1", "2", "3", "4"})
        for name in ("start_time", "end_time", "duration"):
            int(body[name])
        self.assertIsInstance(body["members"], list)
        self.assertEqual(body["count"], len(body["members"]))
        for member in body["members"]:
            self.assertEqual(set(member), {"nick", "fullname", "avatar", "online"})
            for name in ("nick", "fullname", "avatar"):
                self.assertIs(type(member[name]), str)
            self.assertIs(type(member["online"]), bool)
        self.assertIsInstance(body["songs"], list)
        for song in body["songs"]:
            for name in ("sid", "name", "author", "nick", "fullname", "duration"):
                self.assertIs(type(song[name]), str, f"song {name}: {song[name]!r}")

    # (1) join


class EndToEndTests(EndToEndHarness):
    async def test_join_reply_and_push(self) -> None:
        alice, first = await self.join("alice")
        self.assertRoomBody(first["body"])
        self.assertEqual(first["body"]["count"], 1)
        self.assertEqual(first["body"]["status"], "4")

        bob = await self.connect("bob")
        joined = await bob.request(self.join_frame("bob"))
        self.assertOK(joined, "join", "bob")
        body = joined["body"]
        self.assertRoomBody(body)
        self.assertEqual(body["count"], 2)
        self.assertEqual(body["status"], "4")
        self.assertEqual(body["songs"], [])
        self.assertEqual(
            body["members"],
            [
                {"nick": "Alice", "fullname": "alice", "avatar": "http://img.example/alice.png", "online": True},
                {"nick": "Bob", "fullname": "bob", "avatar": "http://img.example/bob.png", "online": True},
            ],
        )

        pushed = await alice.next_frame()
        self.assertPush(pushed)
        self.assertRoomBody(pushed["body"])
        self.assertEqual(pushed["body"]["count"], 2)
        self.assertEqual(pushed["body"]["members"], body["members"])
        self.assertEqual(bob.frames, [])

    # (2)-(4) a song's whole cycle

    async def test_song_cycle(self) -> None:
        alice, _ = await self.join("alice")
        bob, _ = await self.join("bob")
        await alice.next_frame(push(count=2))

        # (2) queue over HTTP, form-encoded: the room asks alice at once.
        self.assertEqual(await self.post(self.song("R1", "alice")), (200, {"body": {}, "status": 1, "msg": "success"}))
        for client in (alice, bob):
            asking = await client.next_frame(push(status="2"))
            self.assertPush(asking)
            body = asking["body"]
            self.assertRoomBody(body)
            self.assertEqual((body["fullname"], body["nick"]), ("alice", "Alice"))
            self.assertEqual((body["sid"], body["name"], body["author"]), ("1", "月亮代表我的心", "邓丽君"))
            self.assertEqual([s["sid"] for s in body["songs"]], ["1"])
            self.assertEqual(body["songs"][0]["fullname"], "alice")
            self.assertEqual(body["songs"][0]["duration"], "2")

        # (3) bob cannot answer alice's ask; his connection still works.
        refused = await bob.request({"action": "ask", "ack": 1})
        self.assertError(refused, "not_your_turn")
        self.assertEqual((refused["caller_action"], refused["caller_fullname"]), ("ask", "bob"))
        status = await bob.request({"action": "status"})
        self.assertOK(status, "status", "bob")
        self.assertEqual(status["body"]["status"], "2")

        # (4) alice takes the mic, then cuts; the room rests, then goes idle on its own.
        singing = await alice.request({"action": "ask", "ack": 1})
        self.assertOK(singing, "ask", "alice")
        body = singing["body"]
        self.assertRoomBody(body)
        self.assertEqual((body["status"], body["duration"], body["sid"], body["fullname"]), ("1", "2", "1", "alice"))
        self.assertEqual((body["name"], body["author"]), ("月亮代表我的心", "邓丽君"))
        self.assertEqual(body["songs"], [])
        self.assertEqual(int(body["end_time"]) - int(body["start_time"]), 2)
        self.assertEqual((await bob.next_frame(push(status="1")))["body"]["fullname"], "alice")

        resting = await alice.request({"action": "cut"})
        self.assertOK(resting, "cut", "alice")
        self.assertEqual(resting["body"]["status"], "3")
        self.assertEqual((resting["body"]["sid"], resting["body"]["fullname"]), ("0", ""))
        await bob.next_frame(push(status="3"))

        for client in (alice, bob):
            idle = await client.next_frame(push(status="4"))
            self.assertPush(idle)
            self.assertRoomBody(idle["body"])
            self.assertEqual(idle["body"]["songs"], [])

    # (5) the HTTP API's errors

    async def test_http_errors(self) -> None:
        alice, _ = await self.join("alice")
        bob, _ = await self.join("bob")

        async def refused(params: dict[str, str], http_status: int, api_status: int, as_json: bool = False) -> None:
            code, body = await self.post(params, as_json)
            self.assertEqual((code, body["status"]), (http_status, api_status), (params, body))
            self.assertEqual(body["body"], {})
            self.assertIsInstance(body["msg"], str)

        # The JSON variant queues too; alice takes the mic for a long song, so the
        # queue below stands still while bob's requests run.
        self.assertEqual(
            await self.post(self.song("R1", "alice", sid="2", duration="600"), as_json=True),
            (200, {"body": {}, "status": 1, "msg": "success"}),
        )
        await alice.next_frame(push(status="2"))
        self.assertEqual((await alice.request({"action": "ask", "ack": 1}))["body"]["status"], "1")

        valid = self.song("R1", "bob")
        missing = dict(valid)
        del missing["duration"]
        await refused(missing, 400, 4)
        await refused({**valid, "token": "a-token-nobody-in-the-room-holds"}, 403, 2)
        await refused({**valid, "token": ""}, 401, 3)
        await refused({**valid, "room": "no-such-room"}, 404, 7)
        await refused({**valid, "sid": "no-such-song"}, 404, 7)
        for duration in ("0", "abc", "99999"):
            await refused({**valid, "duration": duration}, 400, 4)
            await refused({**valid, "duration": duration}, 400, 4, as_json=True)

        self.assertEqual((await self.post(valid))[0], 200)
        with_song = Match("room push with a queued song", lambda f: push(status="1")(f) and bool(f["body"]["songs"]))
        queued = await bob.next_frame(with_song)
        self.assertEqual([(s["sid"], s["fullname"]) for s in queued["body"]["songs"]], [("1", "bob")])
        await refused(valid, 409, 6)
        await refused(self.song("R1", "bob", sid="3"), 409, 6)

    # (6) malformed frames

    async def test_malformed_frames(self) -> None:
        carol = await self.connect("carol")
        cases: list[tuple[bytes, bool, str]] = [
            (b"this is not json", False, "bad_request"),
            (b"[1, 2, 3]", False, "bad_request"),
            (b'{"action": "join"}', True, "bad_request"),
            (b'{"room": "R1", "fullname": "carol"}', False, "bad_request"),
            (b'{"action": "sing-loudly"}', False, "unknown_action"),
            (b'{"action": "status"}', False, "not_in_room"),
        ]
        for payload, binary, code in cases:
            carol.send(payload, binary=binary)
            error = await carol.next_frame()
            self.assertError(error, code)
            self.assertEqual(error["type"], 1)
            self.assertIsInstance(error["timestamp"], str)
            float(error["timestamp"])
        # Still usable: carol can join and ask for the room.
        joined = await carol.request(self.join_frame("carol"))
        self.assertOK(joined, "join", "carol")
        status = await carol.request({"action": "status"})
        self.assertOK(status, "status", "carol")
        self.assertRoomBody(status["body"])
        self.assertEqual(status["body"]["count"], 1)

    # (7) boardcast

    async def test_boardcast(self) -> None:
        alice, _ = await self.join("alice")
        bob, _ = await self.join("bob")
        await alice.next_frame(push(count=2))

        original = {"text": "大家好", "emoji": ["🎤"], "n": 1}
        sent = await alice.request(
            {
                "action": "boardcast",
                "room": "R1",
                "fullname": "mallory",  # ignored: the connection is alice since her join
                "token": self.token("alice"),
                "body": original,
            }
        )
        self.assertEnvelope(sent, kind=2)
        self.assertEqual((sent["caller_action"], sent["caller_fullname"]), ("boardcast", "alice"))
        self.assertEqual(sent["body"]["body"], original)

        relayed = await bob.next_frame(message_push())
        self.assertEnvelope(relayed, kind=2)
        self.assertNotIn("caller_action", relayed)
        body = relayed["body"]
        self.assertEqual((body["fullname"], body["nick"], body["room"]), ("alice", "Alice", "R1"))
        self.assertEqual(body["body"], original)
        self.assertNotIn("token", body)

        # No token in any raw payload anybody received.
        for client in (alice, bob):
            for payload in client.raw:
                for token in self.tokens.values():
                    self.assertNotIn(token.encode(), payload)
        self.assertEqual(alice.frames, [])

    # (8) room full

    async def test_room_full(self) -> None:
        for name in ("alice", "bob", "carol"):
            await self.join(name)
        dave = await self.connect("dave")
        full = await dave.request(self.join_frame("dave"))
        self.assertError(full, "room_full")
        self.assertEqual((full["caller_action"], full["caller_fullname"]), ("join", "dave"))
        # dave is nobody yet: he can still enter another room.
        other = await dave.request(self.join_frame("dave", room="R2"))
        self.assertOK(other, "join", "dave")
        self.assertEqual((other["body"]["room"], other["body"]["count"]), ("R2", 1))

    # (9) leaving

    async def test_leave_and_disconnect(self) -> None:
        alice, _ = await self.join("alice")
        bob, _ = await self.join("bob")
        carol, _ = await self.join("carol")
        await alice.next_frame(push(count=3))
        await bob.next_frame(push(count=3))

        left = await carol.request({"action": "leave"})
        self.assertOK(left, "leave", "carol")
        for client in (alice, bob):
            pushed = await client.next_frame(push(count=2))
            self.assertPush(pushed)
            self.assertRoomBody(pushed["body"])
            self.assertEqual([m["fullname"] for m in pushed["body"]["members"]], ["alice", "bob"])

        # bob's connection closes without a leave: he keeps his place for the
        # reconnect grace, then he is removed all the same.
        await bob.close()
        gone = await alice.next_frame(push(count=1))
        self.assertPush(gone)
        self.assertEqual([m["fullname"] for m in gone["body"]["members"]], ["alice"])
        status = await alice.request({"action": "status"})
        self.assertEqual(status["body"]["count"], 1)
