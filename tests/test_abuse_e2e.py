"""Abuse over real sockets: a flooder and a client that never reads do not slow other rooms.

A real :class:`KTVServer` on the real reactor behind the real site
(``make_site``, listening on 127.0.0.1), and real Autobahn clients over TCP,
all in this process.  While a well-behaved room ("CALM") measures the latency
of its pushes, one client floods ("FLOOD") and another stops reading while
three members of its room push it large boardcasts ("SLOW").  Both abusers
must be cut off, and CALM's pushes must stay fast.

Nothing sleeps: every wait is a Deferred bounded by a ``reactor.callLater``.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.trial import unittest

from ktvtwist.auth import OpenAuthority
from ktvtwist.catalog import MemoryCatalog
from ktvtwist.http import HTTPAPI
from ktvtwist.limits import unsent_bytes
from ktvtwist.room import RoomRules
from ktvtwist.server import KTVServer
from ktvtwist.store import MemoryRoomStore
from ktvtwist.web import make_site
from ktvtwist.websocket import KTVServerProtocol, KTVWebSocketFactory

reactor: Any = _reactor

HOST = "127.0.0.1"
MAX_SEND_BUFFER = 64 * 1024
PROBE_SECONDS = 0.01
PROBE_SENDERS = 6
P99_LIMIT = 0.050
WAIT = 5.0
BOARDCAST_BYTES = 3500


def wait(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def until(condition: Callable[[], bool], what: str, seconds: float = WAIT, step: float = 0.005) -> None:
    """Poll ``condition`` on the reactor until it holds, failing after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise unittest.FailTest(f"timed out after {seconds}s waiting for {what}")
        await wait(step)


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    assert len(payload) < 126
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Client(WebSocketClientProtocol):
    """Records frames cheaply: payloads are only decoded when somebody waits for them."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.received = 0
        self.on_payload: Callable[[bytes], None] | None = None
        self._waiting: list[tuple[Callable[[dict[str, Any]], bool], Deferred[dict[str, Any]]]] = []

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received += 1
        if self.on_payload is not None:
            self.on_payload(payload)
        if self._waiting:
            frame = json.loads(payload)
            for entry in list(self._waiting):
                if entry[0](frame):
                    self._waiting.remove(entry)
                    entry[1].callback(frame)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(Failure(unittest.FailTest(f"handshake failed: {reason}")))
        self.closed.callback(None)

    def next_frame(self, match: Callable[[dict[str, Any]], bool]) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiting.append((match, d))
        return d

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        action = frame["action"]
        reply = self.next_frame(lambda f: f.get("caller_action") == action)
        self.sendMessage(json.dumps(frame).encode())
        result: dict[str, Any] = await bounded(reply, f"a reply to {action}")
        return result


async def bounded(d: Deferred[Any], what: str, seconds: float = WAIT) -> Any:
    timer = reactor.callLater(seconds, d.cancel)
    try:
        return await d
    except Exception as e:
        raise unittest.FailTest(f"no {what} within {seconds}s ({e!r})") from e
    finally:
        if timer.active():
            timer.cancel()


class RecordingFactory(KTVWebSocketFactory):
    """Keeps the server protocols it builds, to look at the server's side of a client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built: list[KTVServerProtocol] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = cast(KTVServerProtocol, super().buildProtocol(addr))
        self.built.append(protocol)
        return protocol


class AbuseEndToEndTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.server = KTVServer(
            store=MemoryRoomStore(),
            catalog=MemoryCatalog.sample(),
            authority=OpenAuthority(),
            clock=reactor,
            rules=RoomRules(max_members=12, reconnect_grace=0),
        )
        self.factory = RecordingFactory(self.server, reactor=reactor, max_send_buffer=MAX_SEND_BUFFER)
        self.port = reactor.listenTCP(0, make_site(self.factory, HTTPAPI(self.server)), interface=HOST)
        self.url = f"ws://{HOST}:{self.port.getHost().port}/"
        self.clients: list[Client] = []
        self.addCleanup(lambda: Deferred.fromCoroutine(self.close_everything()))

    async def close_everything(self) -> None:
        for client in self.clients:
            transport = cast(Any, client.transport)
            if transport is not None and not client.closed.called:
                transport.resumeProducing()
                transport.abortConnection()
        for client in self.clients:
            await bounded(client.closed, "the client's connection to close")
        await until(lambda: self.factory.open_connections == 0, "the server to see every connection close")
        await until(lambda: not self.server.rooms, "every room to empty")
        self.server.stop()
        await self.port.stopListening()

    async def connect(self) -> Client:
        factory = WebSocketClientFactory(self.url, reactor=reactor)
        factory.protocol = Client
        client = cast(Client, await TCP4ClientEndpoint(reactor, HOST, self.port.getHost().port).connect(factory))
        self.clients.append(client)
        await bounded(client.opened, "an open WebSocket")
        return client

    async def join(self, room: str, name: str) -> Client:
        client = await self.connect()
        reply = await client.request({"action": "join", "room": room, "fullname": name, "token": f"t-{name}"})
        self.assertEqual(reply["status"], 0, reply)
        return client

    def server_side(self, client: Client) -> KTVServerProtocol:
        port = cast(Any, client.transport).getHost().port
        [protocol] = [p for p in self.factory.built if p.transport and cast(Any, p.transport).getPeer().port == port]
        return protocol

    async def test_abusers_are_cut_off_and_other_rooms_stay_fast(self) -> None:
        # six senders take turns, so each stays under the 20 frames/s limit
        calm_senders = [await self.join("CALM", f"carol{i}") for i in range(PROBE_SENDERS)]
        calm_receiver = await self.join("CALM", "dave")
        flooder = await self.join("FLOOD", "mallory")
        slow = await self.join("SLOW", "sloth")
        pushers = [await self.join("SLOW", f"pusher{i}") for i in range(3)]
        slow_side = self.server_side(slow)
        flooder_side = self.server_side(flooder)

        # Loopback TCP would take a couple of megabytes before Twisted's own
        # buffer grew: a small kernel send buffer for sloth's socket makes
        # the test quick.  Then sloth stops reading.
        cast(Any, slow_side.transport).getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        cast(Any, slow.transport).pauseProducing()

        # CALM: a boardcast every 10 ms, timed from its send to its push reaching dave
        sent: dict[int, float] = {}
        latencies: dict[int, float] = {}

        def on_probe(payload: bytes) -> None:
            if b'"probe"' in payload:
                n = json.loads(payload)["body"]["body"]["probe"]
                latencies[n] = time.perf_counter() - sent[n]

        calm_receiver.on_payload = on_probe
        probe_numbers = iter(range(10**6))

        def probe() -> None:
            n = next(probe_numbers)
            sent[n] = time.perf_counter()
            calm_senders[n % PROBE_SENDERS].sendMessage(
                json.dumps({"action": "boardcast", "body": {"probe": n}}).encode()
            )

        probing = LoopingCall(probe)
        probing.start(PROBE_SECONDS)
        await wait(0.2)  # a baseline before the abuse

        # FLOOD: 300 frames every 5 ms, written raw so the client side costs nothing
        flood = masked_text_frame(b'{"action":"status"}') * 300

        def flood_once() -> None:
            if flooder.transport is not None and flooder.state == flooder.STATE_OPEN:
                flooder.transport.write(flood)

        flooding = LoopingCall(flood_once)
        flooding.start(0.005)

        # SLOW: three members push large boardcasts, a little under the rate they are allowed
        big = json.dumps({"action": "boardcast", "body": {"text": "x" * BOARDCAST_BYTES}}).encode()

        def push() -> None:
            for pusher in pushers:
                pusher.sendMessage(big)

        pushing = LoopingCall(push)
        pushing.start(0.06)

        try:
            await until(lambda: flooder.closed.called, "the flooder to be cut off")
            await until(lambda: slow_side.state == slow_side.STATE_CLOSED, "the slow reader to be dropped")
            await until(lambda: self.server.binding(slow_side) is None, "the slow reader to leave its room")
            await wait(0.2)  # and some more normal traffic
        finally:
            for loop in (probing, flooding, pushing):
                if loop.running:
                    loop.stop()

        self.assertEqual(flooder.remoteCloseCode, 1008)
        self.assertIsNone(self.server.binding(flooder_side))
        self.assertEqual(flooder_side.state, flooder_side.STATE_CLOSED)
        self.assertTrue(slow_side.wasNotCleanReason and "did not read" in slow_side.wasNotCleanReason)
        # what the server held for sloth stopped at the bound (plus the frame that crossed it)
        buffer = slow_side._send_buffer
        assert buffer is not None
        self.assertLessEqual(unsent_bytes(buffer), MAX_SEND_BUFFER + BOARDCAST_BYTES + 1000)
        for member in [*pushers, *calm_senders, calm_receiver]:
            self.assertFalse(member.closed.called)

        await until(lambda: len(latencies) == len(sent), "every probe to arrive", seconds=1)
        ordered = sorted(latencies.values())
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        print(
            f"\n    {len(ordered)} probes: median {ordered[len(ordered) // 2] * 1000:.2f} ms, "
            f"p99 {p99 * 1000:.2f} ms, max {ordered[-1] * 1000:.2f} ms",
            end=" ",
        )
        self.assertGreater(len(ordered), 50)
        self.assertLess(p99, P99_LIMIT, f"p99 push latency {p99 * 1000:.1f} ms")
