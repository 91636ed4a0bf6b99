"""Limits that hold under abuse, and liveness: all on a ``task.Clock``, nothing sleeps.

WebSocket connections here are real Autobahn server protocols fed raw bytes:
a ``StringTransport`` where only the bytes matter, and :class:`MemorySocket`
(a real ``twisted.internet.abstract.FileDescriptor`` whose "socket" takes
only what the peer reads) where the server's send buffer matters.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, cast

from treq.testing import StubTreq
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ktvtwist import tap
from ktvtwist.http import HTTPAPI
from ktvtwist.limits import KeyedBuckets, OriginPolicy, TokenBucket, send_buffer_of, unsent_bytes
from ktvtwist.room import RoomRules
from ktvtwist.web import KTVRoot
from ktvtwist.websocket import KTVServerProtocol, KTVWebSocketFactory
from tests.support import RecordingConnection, memory_server

START = 1_600_000_000.0

OPCODE_TEXT, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x1, 0x8, 0x9, 0xA


# -- WebSocket frames by hand ------------------------------------------------


def client_frame(payload: bytes, opcode: int = OPCODE_TEXT) -> bytes:
    """One masked client frame."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each unmasked server frame in ``data``."""
    frames = []
    while data:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


def handshake_request(origin: str | None) -> bytes:
    lines = [
        b"GET / HTTP/1.1",
        b"Host: localhost:8888",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(b"Origin: " + origin.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


class SocketLikeTransport(StringTransport):
    """A StringTransport that, like a TCP transport, lets a producer be unregistered twice.

    (Autobahn unregisters on every drop; over a real connection the taken-over
    twisted.web channel is the registered producer.)
    """

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


class MemorySocket(FileDescriptor):
    """A real FileDescriptor (Twisted's own write buffering) over a pretend socket.

    ``window`` is how many more bytes the peer will read (None: all of them);
    :meth:`pump` is the reactor finding the socket writable.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(cast(IReactorFDSet, clock))
        self.clock = clock
        self.connected = 1
        self.window: int | None = None
        self.delivered = bytearray()
        self.aborted = False
        self.reading = True
        self.protocol: Any = None

    def writeSomeData(self, data: bytes) -> int:
        n = len(data) if self.window is None else min(len(data), self.window)
        if self.window is not None:
            self.window -= n
        self.delivered += bytes(data[:n])
        return n

    def pump(self) -> None:
        if (self._tempDataLen or len(self.dataBuffer) > self.offset) and not self.disconnected:
            self.doWrite()

    def startWriting(self) -> None:
        pass

    def stopWriting(self) -> None:
        pass

    def startReading(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40001)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 8888)

    def abortConnection(self) -> None:
        # As twisted.internet.tcp does: buffers are dropped, connectionLost comes next turn.
        self.aborted = True
        self.stopReading()
        self.clock.callLater(0, self._lost, Failure(ConnectionAborted()))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.clock.callLater(0, self._lost, Failure(ConnectionDone()))

    def _lost(self, reason: Failure) -> None:
        if not self.disconnected:
            FileDescriptor.connectionLost(self, reason)
            self.protocol.connectionLost(reason)


class RawClient:
    """A WebSocket client speaking raw frames to one server protocol."""

    def __init__(self, factory: KTVWebSocketFactory, transport: MemorySocket | None = None) -> None:
        self.transport: SocketLikeTransport | MemorySocket = (
            transport if transport is not None else SocketLikeTransport()
        )
        self.protocol = cast(KTVServerProtocol, factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000)))
        if isinstance(self.transport, MemorySocket):
            self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        self._seen = 0

    def output(self) -> bytes:
        """Everything the server has put on the wire since the last call."""
        if isinstance(self.transport, MemorySocket):
            self.transport.pump()
            data = bytes(self.transport.delivered[self._seen :])
        else:
            data = self.transport.value()[self._seen :]
        self._seen += len(data)
        return data

    def handshake(self, origin: str | None = None) -> bytes:
        """The status line of the server's answer to an opening handshake."""
        self.protocol.dataReceived(handshake_request(origin))
        head, _, rest = self.output().partition(b"\r\n\r\n")
        self._seen -= len(rest)
        return head.split(b"\r\n", 1)[0]

    def send(self, *messages: dict[str, Any] | bytes, opcode: int = OPCODE_TEXT) -> None:
        data = b"".join(client_frame(m if isinstance(m, bytes) else json.dumps(m).encode(), opcode) for m in messages)
        self.protocol.dataReceived(data)

    def frames(self) -> list[tuple[int, bytes]]:
        return server_frames(self.output())

    def replies(self) -> list[dict[str, Any]]:
        return [json.loads(p) for op, p in self.frames() if op == OPCODE_TEXT]

    def close_code(self, frames: list[tuple[int, bytes]]) -> int | None:
        for op, payload in frames:
            if op == OPCODE_CLOSE:
                code: int = struct.unpack("!H", payload[:2])[0]
                return code
        return None

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def error_codes(replies: list[dict[str, Any]]) -> list[str]:
    return [r.get("code", "ok") for r in replies]


class LimitsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.server = memory_server(self.clock, RoomRules(max_members=4, reconnect_grace=0))

    def tearDown(self) -> None:
        self.server.stop()

    def factory(self, **kw: Any) -> KTVWebSocketFactory:
        return KTVWebSocketFactory(self.server, reactor=self.clock, **kw)

    def open(self, factory: KTVWebSocketFactory, transport: MemorySocket | None = None) -> RawClient:
        client = RawClient(factory, transport)
        self.assertEqual(client.handshake(), b"HTTP/1.1 101 Switching Protocols")
        return client

    def joined(self, factory: KTVWebSocketFactory, name: str, transport: MemorySocket | None = None) -> RawClient:
        client = self.open(factory, transport)
        client.send({"action": "join", "room": "R1", "fullname": name, "token": f"t-{name}"})
        [reply] = [r for r in client.replies() if "caller_action" in r]
        self.assertEqual(reply["status"], 0, reply)
        return client


# -- building blocks -------------------------------------------------------------


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_the_rate(self) -> None:
        clock = Clock()
        bucket = TokenBucket(rate=20, burst=40, clock=clock)
        self.assertEqual(sum(bucket.take() for _ in range(50)), 40)
        clock.advance(0.5)
        self.assertEqual(sum(bucket.take() for _ in range(50)), 10)
        clock.advance(0.049)
        self.assertFalse(bucket.take())
        clock.advance(0.002)
        self.assertTrue(bucket.take())

    def test_refills_no_higher_than_the_burst(self) -> None:
        clock = Clock()
        bucket = TokenBucket(rate=1, burst=3, clock=clock)
        clock.advance(3600)
        self.assertEqual(sum(bucket.take() for _ in range(10)), 3)

    def test_refused_takes_do_not_spend(self) -> None:
        clock = Clock()
        bucket = TokenBucket(rate=2, burst=1, clock=clock)
        self.assertTrue(bucket.take())
        for _ in range(100):
            self.assertFalse(bucket.take())
        clock.advance(0.5)
        self.assertTrue(bucket.take())

    def test_bad_parameters(self) -> None:
        for rate, burst in ((0, 1), (-1, 5), (1, 0), (float("nan"), 1)):
            self.assertRaises(ValueError, TokenBucket, rate, burst, Clock())


class KeyedBucketsTests(SynchronousTestCase):
    def test_each_key_has_its_own_bucket(self) -> None:
        clock = Clock()
        buckets = KeyedBuckets(rate=1, burst=2, clock=clock)
        self.assertEqual([buckets.take("a") for _ in range(3)], [True, True, False])
        self.assertEqual([buckets.take("b") for _ in range(3)], [True, True, False])
        clock.advance(1)
        self.assertEqual([buckets.take("a") for _ in range(2)], [True, False])

    def test_idle_keys_are_forgotten(self) -> None:
        clock = Clock()
        buckets = KeyedBuckets(rate=10, burst=20, clock=clock)
        for i in range(100):
            buckets.take(f"token-{i}")
        self.assertEqual(len(buckets), 100)
        clock.advance(1.9)
        buckets.take("fresh")
        self.assertEqual(len(buckets), 101)
        clock.advance(0.1)  # burst / rate = 2 s: the first hundred are full again
        buckets.take("fresh")
        self.assertEqual(len(buckets), 1)

    def test_bounded_however_many_keys(self) -> None:
        clock = Clock()
        buckets = KeyedBuckets(rate=1, burst=1, clock=clock, max_keys=50)
        for i in range(1000):
            self.assertTrue(buckets.take(f"token-{i}"))
        self.assertEqual(len(buckets), 50)
        self.assertFalse(buckets.take("token-999"))

    def test_tokens_are_not_kept(self) -> None:
        buckets = KeyedBuckets(rate=1, burst=1, clock=Clock())
        buckets.take("secret-token")
        self.assertNotIn("secret-token", repr(list(buckets._buckets)))


class OriginPolicyTests(SynchronousTestCase):
    def test_default_allows_anything(self) -> None:
        policy = OriginPolicy()
        for origin in (None, "https://a.example", "http://localhost:3000", "null", "file://", "garbage"):
            self.assertTrue(policy.allows(origin), origin)

    def test_patterns(self) -> None:
        policy = OriginPolicy(["https://ktv.example.com", "https://*.ktv.example.com", "http://localhost:*"])
        allowed = [
            None,
            "https://ktv.example.com",
            "https://KTV.example.com:443",
            "https://room.ktv.example.com",
            "http://localhost:3000",
            "http://localhost",
        ]
        refused = [
            "http://ktv.example.com",
            "https://ktv.example.com:8443",
            "https://evil.com",
            "https://ktv.example.com.evil.com",
            "https://evilktv.example.com",
            "null",
            "file:///tmp/x.html",
            "not a url",
            "https://",
        ]
        for origin in allowed:
            self.assertTrue(policy.allows(origin), origin)
        for origin in refused:
            self.assertFalse(policy.allows(origin), origin)

    def test_any_scheme_null_and_ipv6(self) -> None:
        policy = OriginPolicy(["*.example.com", "null", "http://[::1]:8080"])
        self.assertTrue(policy.allows("https://a.example.com"))
        self.assertTrue(policy.allows("http://a.example.com:8080"))
        self.assertTrue(policy.allows("null"))
        self.assertTrue(policy.allows("http://[::1]:8080"))
        self.assertFalse(policy.allows("http://[::1]:8081"))
        self.assertFalse(policy.allows("https://example.org"))

    def test_an_empty_list_is_refused(self) -> None:
        self.assertRaises(ValueError, OriginPolicy, [])
        self.assertRaises(ValueError, OriginPolicy, [" ", ""])


class SendBufferTests(SynchronousTestCase):
    """``unsent_bytes`` against Twisted's own FileDescriptor buffering."""

    def test_counts_what_the_socket_has_not_taken(self) -> None:
        fd = MemorySocket(Clock())
        fd.window = 0
        self.assertEqual(unsent_bytes(fd), 0)
        fd.write(b"x" * 1000)
        fd.writeSequence([b"y" * 500, b"z" * 500])
        self.assertEqual(unsent_bytes(fd), 2000)
        fd.window = 300
        fd.pump()  # joins the pending list into dataBuffer, sends 300
        self.assertEqual(unsent_bytes(fd), 1700)
        fd.write(b"w" * 100)
        self.assertEqual(unsent_bytes(fd), 1800)
        fd.window = None
        fd.pump()
        fd.pump()
        self.assertEqual(unsent_bytes(fd), 0)
        self.assertEqual(len(fd.delivered), 2100)

    def test_large_backlogs_past_the_send_limit(self) -> None:
        fd = MemorySocket(Clock())
        fd.window = 0
        for _ in range(40):
            fd.write(b"x" * 10_000)
        fd.pump()
        fd.window = 50_000
        fd.pump()
        self.assertEqual(unsent_bytes(fd), 350_000)

    def test_finds_the_descriptor_under_wrappers(self) -> None:
        fd = MemorySocket(Clock())
        self.assertIs(send_buffer_of(fd), fd)

        class Wrapper:
            transport = fd

        self.assertIs(send_buffer_of(Wrapper()), fd)
        self.assertIsNone(send_buffer_of(StringTransport()))
        self.assertIsNone(send_buffer_of(None))


# -- WebSocket ---------------------------------------------------------------------


class RateLimitTests(LimitsTestCase):
    def test_frames_over_the_rate_are_refused_and_not_processed(self) -> None:
        factory = self.factory()
        alice = self.joined(factory, "alice")
        alice.send(*[{"action": "boardcast", "body": {"n": i}} for i in range(45)])
        replies = alice.replies()
        # the join took one token: 39 more boardcasts go through, 6 are refused
        self.assertEqual(error_codes(replies), ["ok"] * 39 + ["rate_limited"] * 6)
        self.assertEqual([r["body"]["body"]["n"] for r in replies[:39]], list(range(39)))
        refused = replies[-1]
        self.assertEqual((refused["status"], refused["body"], refused["caller_action"]), (-1, {}, ""))
        self.assertEqual(refused["message"], "请求过于频繁,请稍后再试")
        self.clock.advance(0.5)  # 10 tokens back
        alice.send(*[{"action": "status"} for _ in range(12)])
        self.assertEqual(error_codes(alice.replies()), ["ok"] * 10 + ["rate_limited"] * 2)
        self.assertFalse(alice.transport.disconnecting)

    def test_other_connections_have_their_own_budget(self) -> None:
        factory = self.factory(rate=1, burst=2)
        alice = self.open(factory)
        bob = self.open(factory)
        alice.send(*[{"action": "status"}] * 5)
        self.assertEqual(error_codes(alice.replies()), ["not_in_room"] * 2 + ["rate_limited"] * 3)
        bob.send(*[{"action": "status"}] * 2)
        self.assertEqual(error_codes(bob.replies()), ["not_in_room"] * 2)

    def test_a_flood_is_closed_with_1008_then_dropped(self) -> None:
        factory = self.factory()
        flooder = self.open(factory)
        flooder.send(*[{"action": "status"}] * 300)
        frames = flooder.frames()
        replies = [json.loads(p) for op, p in frames if op == OPCODE_TEXT]
        # 40 processed, 100 refused, then the close: nothing after it is read
        self.assertEqual(error_codes(replies), ["not_in_room"] * 40 + ["rate_limited"] * 100)
        self.assertEqual(flooder.close_code(frames), 1008)
        self.assertEqual(frames[-1][0], OPCODE_CLOSE)
        self.assertTrue(flooder.transport.disconnecting)  # TCP closes once the close frame is out
        flooder.send(*[{"action": "status"}] * 10)
        self.assertEqual(flooder.frames(), [])
        self.assertFalse(flooder.transport.disconnected)
        self.clock.advance(1)  # a client that does not read its close frame is aborted
        self.assertTrue(flooder.transport.disconnected)

    def test_pings_count_against_the_rate(self) -> None:
        factory = self.factory(rate=1, burst=3, max_refused=5)
        pinger = self.open(factory)
        pinger.send(*[b"p%d" % i for i in range(6)], opcode=OPCODE_PING)
        frames = pinger.frames()
        self.assertEqual(frames, [(OPCODE_PONG, b"p0"), (OPCODE_PONG, b"p1"), (OPCODE_PONG, b"p2")])
        self.assertFalse(pinger.transport.disconnecting)
        pinger.send(*[b"x"] * 3, opcode=OPCODE_PING)  # past max_refused: cut off
        self.assertEqual(pinger.close_code(pinger.frames()), 1008)
        self.assertTrue(pinger.transport.disconnecting)

    def test_a_flood_that_goes_quietly_leaves_no_timer(self) -> None:
        factory = self.factory()
        flooder = self.joined(factory, "mallory")
        flooder.send(*[{"action": "status"}] * 200)
        self.assertTrue(flooder.transport.disconnecting)
        flooder.lose()
        self.assertIsNone(self.server.binding(flooder.protocol))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(factory.open_connections, 0)

    def test_sustained_refusals_are_cut_off_within_the_window(self) -> None:
        # 1 frame/s; up to 5 refusals, earned back at one per 2 s
        factory = self.factory(rate=1, burst=1, max_refused=5)
        slow = self.open(factory)
        for _ in range(30):  # one refusal every 2 s is tolerated forever
            self.clock.advance(2)
            slow.send({"action": "status"}, {"action": "status"})
            self.assertEqual(error_codes(slow.replies()), ["not_in_room", "rate_limited"])
        fast = self.open(factory)
        fast.send({"action": "status"})
        fast.replies()
        closed_after = None
        for second in range(1, 30):  # one refusal a second is not
            self.clock.advance(1)
            fast.send({"action": "status"}, {"action": "status"})
            if fast.close_code(fast.frames()) == 1008:
                closed_after = second
                break
        assert closed_after is not None
        self.assertTrue(5 <= closed_after <= 11, closed_after)


class SlowConsumerTests(LimitsTestCase):
    def test_a_client_that_does_not_read_is_dropped(self) -> None:
        factory = self.factory(max_send_buffer=10_000)
        stuck = MemorySocket(self.clock)
        alice = self.joined(factory, "alice", stuck)
        bob = self.joined(factory, "bob")
        alice.replies()
        stuck.window = 0  # alice stops reading
        body = {"text": "x" * 1500}
        pushes = 0
        while not stuck.aborted:
            bob.send({"action": "boardcast", "body": body})
            self.assertEqual(error_codes(bob.replies()), ["ok"])
            stuck.pump()
            pushes += 1
            self.assertLess(pushes, 20)
        self.assertGreater(pushes, 5)
        self.assertLessEqual(unsent_bytes(stuck), 10_000 + 2000)
        self.assertEqual(alice.protocol.state, alice.protocol.STATE_CLOSED)
        held = unsent_bytes(stuck)
        bob.send({"action": "boardcast", "body": body})
        self.assertEqual(error_codes(bob.replies()), ["ok"])
        self.assertEqual(unsent_bytes(stuck), held)  # nothing more is queued for alice
        self.clock.advance(0)
        self.assertTrue(stuck.disconnected)
        self.assertIsNone(self.server.binding(alice.protocol))
        self.assertEqual(factory.open_connections, 1)

    def test_a_client_that_keeps_up_is_not(self) -> None:
        factory = self.factory(max_send_buffer=10_000)
        sock = MemorySocket(self.clock)
        self.joined(factory, "alice", sock)
        bob = self.joined(factory, "bob")
        for _ in range(50):
            sock.window = 3000  # reads a little more than each push
            bob.send({"action": "boardcast", "body": {"text": "x" * 1500}})
            bob.replies()
            sock.pump()
        self.assertFalse(sock.aborted)
        self.assertLess(unsent_bytes(sock), 10_000)


class HandshakeTests(LimitsTestCase):
    def test_connections_over_the_cap_get_503(self) -> None:
        factory = self.factory(max_connections=2)
        first = self.open(factory)
        self.open(factory)
        third = RawClient(factory)
        self.assertEqual(third.handshake(), b"HTTP/1.1 503 maximum number of connections reached")
        self.assertTrue(third.transport.disconnecting)
        third.lose()
        self.assertEqual(factory.open_connections, 2)
        first.lose()
        self.assertEqual(factory.open_connections, 1)
        self.open(factory)

    def test_disallowed_origins_get_403(self) -> None:
        factory = self.factory(allowed_origins=["https://ktv.example.com", "https://*.ktv.example.com"])
        for origin in (None, "https://ktv.example.com", "https://r1.ktv.example.com"):
            self.assertEqual(RawClient(factory).handshake(origin), b"HTTP/1.1 101 Switching Protocols", origin)
        for origin in ("https://evil.example.com", "http://ktv.example.com", "null"):
            client = RawClient(factory)
            self.assertEqual(client.handshake(origin), b"HTTP/1.1 403 origin not allowed", origin)
            self.assertTrue(client.transport.disconnecting)

    def test_any_origin_by_default(self) -> None:
        factory = self.factory()
        for origin in ("https://anywhere.example", "null"):
            self.assertEqual(RawClient(factory).handshake(origin), b"HTTP/1.1 101 Switching Protocols")

    def test_a_handshake_that_never_comes_times_out(self) -> None:
        client = RawClient(self.factory())
        self.clock.advance(9.9)
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(client.transport.disconnecting)

    def test_bad_factory_parameters(self) -> None:
        bad: list[dict[str, Any]] = [
            {"rate": 0},
            {"burst": 0},
            {"max_refused": 0},
            {"max_send_buffer": 0},
            {"allowed_origins": []},
        ]
        for kw in bad:
            self.assertRaises(ValueError, self.factory, **kw)


class LivenessTests(LimitsTestCase):
    def test_pings_and_a_silent_peer_is_dropped(self) -> None:
        client = self.open(self.factory())
        self.clock.advance(24.9)
        self.assertEqual(client.frames(), [])
        self.clock.advance(0.2)
        [(opcode, payload)] = client.frames()
        self.assertEqual(opcode, OPCODE_PING)
        client.send(payload, opcode=OPCODE_PONG)
        self.clock.advance(10)
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(15)  # the next ping, left unanswered
        self.assertEqual([op for op, _ in client.frames()], [OPCODE_PING])
        self.clock.advance(7.9)
        self.assertFalse(client.transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(client.transport.disconnecting)

    def test_intervals_are_options(self) -> None:
        client = self.open(self.factory(ping_interval=2, ping_timeout=1))
        self.clock.advance(2)
        self.assertEqual([op for op, _ in client.frames()], [OPCODE_PING])
        self.clock.advance(1)
        self.assertTrue(client.transport.disconnecting)

    def test_no_timers_are_left_behind(self) -> None:
        client = self.joined(self.factory(), "alice")
        self.clock.advance(25)
        self.assertEqual([op for op, _ in client.frames()], [OPCODE_PING])  # a ping timeout pending
        client.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])


# -- HTTP ---------------------------------------------------------------------------

URL = "http://localhost:8888/api/v2/singer/create"


class HTTPLimitTests(LimitsTestCase):
    def setUp(self) -> None:
        super().setUp()
        for name in ("alice", "bob"):
            join = self.server.join(RecordingConnection(self.server), "R1", f"tok-{name}", {"fullname": name})
            self.successResultOf(Deferred.fromCoroutine(join))

    def post(self, api: HTTPAPI, **kw: Any) -> tuple[int, dict[str, Any]]:
        treq: Any = StubTreq(api.app.resource())
        response = self.successResultOf(treq.post(URL, **kw))
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_bodies_over_the_limit_are_413(self) -> None:
        api = HTTPAPI(self.server)
        form = b"room=R1&sid=1&token=tok-alice&duration=200&pad="
        big_form = form + b"x" * (64 * 1024 - len(form) + 1)
        code, body = self.post(api, data=big_form, headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((code, body["status"], body["code"], body["body"]), (413, 4, "too_large", {}))
        big_json = json.dumps({"room": "R1", "sid": "1", "token": "tok-alice", "duration": 200, "pad": "x" * 70000})
        code, body = self.post(api, data=big_json.encode(), headers={"Content-Type": "application/json"})
        self.assertEqual((code, body["status"]), (413, 4))
        exactly = form + b"x" * (64 * 1024 - len(form))
        code, body = self.post(api, data=exactly, headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((code, body["status"]), (200, 1), body)

    def test_the_body_limit_is_an_option(self) -> None:
        api = HTTPAPI(self.server, max_body_bytes=100)
        code, body = self.post(
            api, json={"room": "R1", "sid": "1", "token": "tok-alice", "duration": 200, "p": "x" * 50}
        )
        self.assertEqual(code, 413)
        code, body = self.post(api, json={"room": "R1", "sid": "1", "token": "tok-alice", "duration": 200})
        self.assertEqual(code, 200)

    def test_calls_over_the_rate_are_429_per_token(self) -> None:
        api = HTTPAPI(self.server, rate=1, burst=3)
        form = {"room": "R1", "sid": "1", "token": "tok-alice", "duration": "200"}
        codes = [self.post(api, data=form)[0] for _ in range(3)]
        self.assertEqual(codes, [200, 409, 409])  # queued, then already queued
        code, body = self.post(api, data=form)
        self.assertEqual(code, 429)
        self.assertEqual(set(body), {"body", "status", "msg", "code"})
        self.assertEqual((body["body"], body["status"], body["code"]), ({}, 4, "rate_limited"))
        self.assertTrue(body["msg"])
        self.assertEqual(self.post(api, data={**form, "token": "tok-bob"})[0], 200)  # bob has his own
        self.clock.advance(1)
        self.assertEqual(self.post(api, data=form)[0], 409)
        self.assertEqual(self.post(api, data=form)[0], 429)

    def test_json_tokens_count_too(self) -> None:
        api = HTTPAPI(self.server, rate=1, burst=1)
        payload = {"room": "R1", "sid": "1", "token": "tok-alice", "duration": 200}
        self.assertEqual(self.post(api, json=payload)[0], 200)
        self.assertEqual(self.post(api, json=payload)[0], 429)

    def test_through_the_shared_root(self) -> None:
        api = HTTPAPI(self.server, rate=1, burst=1)
        treq: Any = StubTreq(KTVRoot(StringResource(), api.app.resource()))
        form = {"room": "R1", "sid": "1", "token": "tok-alice", "duration": "200"}
        codes = [self.successResultOf(treq.post(URL, data=form)).code for _ in range(2)]
        self.assertEqual(codes, [200, 429])


def StringResource() -> Any:
    from twisted.web.resource import Resource

    class Marker(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            return b"ws"

    return Marker()


# -- twistd options ------------------------------------------------------------------


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(
            [
                options[k]
                for k in (
                    "max-connections",
                    "rate",
                    "burst",
                    "max-send-buffer",
                    "ping-interval",
                    "ping-timeout",
                    "max-frame-bytes",
                )
            ],
            [10000, 20.0, 40, 1048576, 25.0, 8.0, 65536],
        )
        self.assertEqual(options["allowed-origins"], "*")

    def test_values(self) -> None:
        options = self.parse(
            "--rate", "2.5", "--burst", "5", "--allowed-origins", "https://a.example, https://*.b.example"
        )
        self.assertEqual((options["rate"], options["burst"]), (2.5, 5))
        self.assertEqual(options["allowed-origins"], ["https://a.example", "https://*.b.example"])

    def test_bad_values_are_usage_errors(self) -> None:
        for argv in (
            ["--max-connections", "0"],
            ["--rate", "0"],
            ["--rate", "-1"],
            ["--rate", "inf"],
            ["--rate", "nan"],
            ["--burst", "0"],
            ["--burst", "1.5"],
            ["--max-send-buffer", "-5"],
            ["--ping-interval", "0"],
            ["--ping-timeout", "x"],
            ["--allowed-origins", " , "],
            ["--max-frame-bytes", "0"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *argv)

    def test_make_service_passes_them_on(self) -> None:
        made: dict[str, Any] = {}

        class RecordingAPI(HTTPAPI):
            def __init__(self, *args: Any, **kw: Any) -> None:
                made["http"] = kw
                super().__init__(*args, **kw)

        self.patch(tap, "HTTPAPI", RecordingAPI)
        options = self.parse(
            "--listen", "tcp:0:interface=127.0.0.1",
            "--max-connections", "7",
            "--rate", "3",
            "--burst", "4",
            "--max-send-buffer", "5000",
            "--ping-interval", "11",
            "--ping-timeout", "2",
            "--allowed-origins", "https://ktv.example",
            "--max-frame-bytes", "1000",
        )  # fmt: skip
        service: Any = tap.makeService(options, reactor=MemoryReactorClock())
        [site] = [child.factory for child in service if hasattr(child, "factory")]
        factory = site.resource._websocket._factory
        self.assertIsInstance(factory, KTVWebSocketFactory)
        self.assertEqual(
            (factory.maxConnections, factory.rate, factory.burst, factory.max_send_buffer),
            (7, 3.0, 4, 5000),
        )
        self.assertEqual((factory.autoPingInterval, factory.autoPingTimeout), (11.0, 2.0))
        self.assertEqual((factory.maxFramePayloadSize, factory.maxMessagePayloadSize), (1000, 1000))
        self.assertEqual(factory.origins.patterns, ["https://ktv.example"])
        self.assertEqual(made["http"], {"rate": 3.0, "burst": 4})

    def test_default_origins_reach_the_factory_as_a_list(self) -> None:
        service: Any = tap.makeService(
            self.parse("--listen", "tcp:0:interface=127.0.0.1"), reactor=MemoryReactorClock()
        )
        [site] = [child.factory for child in service if hasattr(child, "factory")]
        self.assertEqual(site.resource._websocket._factory.origins.patterns, ["*"])
