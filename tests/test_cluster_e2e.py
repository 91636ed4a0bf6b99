"""Scale out on Redis, end to end: real ``twistd ktv`` nodes sharing a real redis-server.

Every test starts its own ``redis-server`` (:class:`~tests.redis_helper.RedisServer`)
and one or two installed ``twistd ktv`` processes pointed at it with short
timings (heartbeats expire after NODE_TTL, members keep their place for GRACE,
the nodes' sweep runs every second), and drives them with the real WebSocket
:class:`~tests.test_e2e.Client` and real HTTP requests (treq).  Nodes are
crashed with SIGKILL, Redis is stopped and started again on the same port.

Where the wire does not show it (which nodes a member is connected through,
when her grace ends, what Redis kept across a restart), an in-process
:class:`~ktvtwist.redis_store.RedisRoomStore` reads the stored room.

Nothing sleeps: every wait is a Deferred bounded by a ``reactor.callLater``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectError
from twisted.logger import Logger
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool, ResponseNeverReceived

from ktvtwist.redis_store import RedisRoomStore
from ktvtwist.room import RoomState, RoomStatus
from tests.redis_helper import RedisServer
from tests.test_e2e import (
    CREATE,
    FRAME_TIMEOUT,
    HOST,
    POLL_SECONDS,
    STARTUP_ATTEMPTS,
    TWISTD,
    Client,
    Frame,
    Match,
    MemberFrames,
    ServerProcess,
    bounded,
    free_port,
    message_push,
    push,
    reactor,
    reply,
    wait,
)
from tests.test_stores import connected_redis_store

PREFIX = "ktv-cluster-test:"
NODE_TTL = 2.0
SWEEP_SECONDS = 1.0  # KTVServer's sweep interval (not an option of twistd ktv)
GRACE = 3.0
ASK_SECONDS = 3.0
REST_SECONDS = 1.0
REDIS_TIMEOUT = 2.0
SLACK = 1.5  # for a loaded two-core CI box
LONG_SONG = "60"
JOIN_ATTEMPTS = 50  # a node answers /healthz a moment before it reaches Redis

_log = Logger()


# -- helpers ---------------------------------------------------------------------


def room_frames(client: Client) -> list[Frame]:
    """Every room frame (push or reply, not errors) the client received, in order."""
    frames = []
    for payload in client.raw:
        try:
            frame = json.loads(payload.decode("utf-8"))
        except ValueError:
            continue
        if isinstance(frame, dict) and frame.get("type") == 1 and frame.get("status") == 0:
            if isinstance(frame.get("body"), dict) and "version" in frame["body"]:
                frames.append(frame)
    return frames


def versions(client: Client) -> list[int]:
    """The room versions the client was sent, ``status`` replies (a re-read) left out."""
    return [f["body"]["version"] for f in room_frames(client) if f.get("caller_action") != "status"]


def boardcasts_from(client: Client, sender: str) -> list[Any]:
    """The ``seq`` of every boardcast by ``sender`` pushed to ``client``, in order of arrival."""
    seqs = []
    for payload in client.raw:
        frame = json.loads(payload.decode("utf-8"))
        if message_push()(frame) and frame["body"].get("fullname") == sender:
            seqs.append(frame["body"]["body"]["seq"])
    return seqs


def boardcast_by(sender: str) -> Match:
    return Match(f"boardcast by {sender}", lambda f: message_push()(f) and f["body"]["fullname"] == sender)


def same_room(frame: Frame) -> dict[str, Any]:
    """A room frame's body without what differs per send (the clock)."""
    return {k: v for k, v in frame["body"].items() if k != "current_time"}


def online(frame: Frame) -> dict[str, bool]:
    """Who of the listed members is online (not away in the reconnect grace)."""
    return {m["fullname"]: m["online"] for m in frame["body"]["members"]}


def status(value: str) -> Match:
    return push(status=value)


class Node:
    """One ``twistd ktv`` process sharing ``redis``: started, crashed, stopped by the test."""

    def __init__(self, case: ClusterTestCase, node_id: str, redis: RedisServer) -> None:
        self.case = case
        self.node_id = node_id
        self.redis = redis
        self.port = 0
        self.process = ServerProcess()

    def args(self) -> list[str]:
        return [
            sys.executable, "-c", TWISTD, "-n", "--pidfile=", "ktv",
            "--listen", f"tcp:{self.port}:interface={HOST}",
            "--redis", self.redis.url,
            "--redis-prefix", PREFIX,
            "--redis-timeout", str(REDIS_TIMEOUT),
            "--node-id", self.node_id,
            "--node-ttl", str(NODE_TTL),
            "--reconnect-grace", str(GRACE),
            "--ask-timeout", str(ASK_SECONDS),
            "--rest-timeout", str(REST_SECONDS),
        ]  # fmt: skip

    async def start(self) -> None:
        last = ""
        for _ in range(3):  # a new port if another process took ours meanwhile
            self.port = free_port()
            self.process = ServerProcess()
            reactor.spawnProcess(self.process, sys.executable, self.args(), env=os.environ)
            self.case.addCleanup(self._log_output, self.process)
            self.case.addCleanup(self.process.stop)
            if await self._wait_until_up():
                return
            last = self.process.describe()
        self.case.fail(f"node {self.node_id} never answered on its port:\n{last}")

    async def _wait_until_up(self) -> bool:
        url = f"http://{HOST}:{self.port}/healthz"
        for _ in range(STARTUP_ATTEMPTS):
            if not self.process.running:
                return False
            try:
                response = await treq.get(url, pool=self.case.pool)
                await treq.content(response)
            except (ConnectError, ResponseNeverReceived):
                await wait(POLL_SECONDS)
                continue
            return bool(response.code == 200)
        self.case.fail(f"node {self.node_id} did not answer /healthz:\n{self.process.describe()}")

    async def kill(self) -> None:
        """Crash the node: SIGKILL, no hand-over; wait until the process is gone."""
        assert self.process.transport is not None and self.process.running
        self.process.transport.signalProcess("KILL")
        await bounded(self.process.ended, 5, f"node {self.node_id} to die")

    async def terminate(self) -> None:
        """Stop the node as a rolling restart does: SIGTERM; wait until the process is gone."""
        assert self.process.transport is not None and self.process.running
        self.process.transport.signalProcess("TERM")
        await bounded(self.process.ended, 10, f"node {self.node_id} to stop")

    def _log_output(self, process: ServerProcess) -> None:
        _log.info("node {node}: {output}", node=self.node_id, output=process.describe())


class ClusterTestCase(MemberFrames, unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.tokens: dict[str, str] = {}
        self.clients: list[Client] = []
        self.addCleanup(self._check_no_token_leaked)

    def _check_no_token_leaked(self) -> None:
        for client in self.clients:
            for payload in client.raw:
                for name, token in self.tokens.items():
                    self.assertNotIn(token.encode(), payload, f"{name}'s token reached {client.name}")

    # processes

    async def redis(self, durable: bool = False) -> RedisServer:
        server = RedisServer(self, durable=durable)
        await server.start()
        return server

    async def nodes(self, redis: RedisServer, *node_ids: str) -> list[Node]:
        nodes = [Node(self, node_id, redis) for node_id in node_ids]
        await gatherResults([Deferred.fromCoroutine(node.start()) for node in nodes])
        return nodes

    async def observer(self, redis: RedisServer) -> RedisRoomStore:
        """A store in this process, to read what the nodes stored."""
        return await connected_redis_store(self, redis, prefix=PREFIX)

    # clients

    async def connect(self, node: Node, name: str) -> Client:
        client = Client(f"{name}@{node.node_id}", node.port)
        self.clients.append(client)
        self.addCleanup(client.close)
        return await client.connect()

    async def join(self, node: Node, name: str, room: str = "R1") -> tuple[Client, Frame]:
        """Join ``room`` through ``node``, again while the node is still reaching Redis."""
        client = await self.connect(node, name)
        for _ in range(JOIN_ATTEMPTS):
            frame = await client.request(self.join_frame(name, room))
            if frame.get("code") != "unavailable":
                break
            await wait(0.1)
        self.assertOK(frame, "join", name)
        return client, frame

    async def post(self, node: Node, params: dict[str, str]) -> tuple[int, Any]:
        response = await treq.post(f"http://{HOST}:{node.port}{CREATE}", data=params, pool=self.pool)
        body = await treq.json_content(response)
        return response.code, body

    async def queue(self, node: Node, name: str, sid: str = "1", duration: str = LONG_SONG) -> None:
        params = {"room": "R1", "sid": sid, "token": self.token(name), "duration": duration}
        self.assertEqual(await self.post(node, params), (200, {"body": {}, "status": 1, "msg": "success"}))

    async def no_frame(self, client: Client, predicate: Match, seconds: float) -> None:
        """Wait ``seconds``; fail if ``client`` got a frame matching ``predicate`` meanwhile."""
        try:
            frame = await client.next_frame(predicate, timeout=seconds)
        except unittest.FailTest:
            return
        self.fail(f"{client.name} got an unexpected {predicate!r}: {frame!r}")

    async def stored(
        self, observer: RedisRoomStore, test: Callable[[RoomState], bool], what: str, seconds: float = 5.0
    ) -> RoomState:
        """The stored R1, once ``test`` holds for it (read every 50 ms, for at most ``seconds``)."""
        deadline = time.monotonic() + seconds
        while True:
            state = await observer.get("R1")
            try:
                if state is not None and test(state):
                    return state
            except AttributeError:  # a member it looks at is not there
                pass
            if time.monotonic() > deadline:
                self.fail(f"the stored room never had {what} within {seconds}s: {state!r}")
            await wait(0.05)

    # checks

    def assertOK(self, frame: Frame, action: str, fullname: str) -> None:
        self.assertEqual((frame["status"], frame["type"]), (0, 1), frame)
        self.assertEqual((frame["caller_action"], frame["caller_fullname"]), (action, fullname), frame)

    def assertError(self, frame: Frame, code: str) -> None:
        self.assertEqual((frame["status"], frame.get("code"), frame["body"]), (-1, code, {}), frame)

    def assertMembers(self, frame: Frame, *names: str) -> None:
        self.assertEqual([m["fullname"] for m in frame["body"]["members"]], list(names), frame)

    def assertInOrder(self, *clients: Client) -> None:
        """Every room version reached each client once, in increasing order."""
        for client in clients:
            seen = versions(client)
            self.assertEqual(seen, sorted(set(seen)), f"{client.name}: versions out of order or repeated")

    def timing(self, what: str, seconds: float) -> None:
        _log.info("{test}: {what} after {seconds:.2f}s", test=self.id(), what=what, seconds=seconds)


# -- the tests -------------------------------------------------------------------


class TwoNodeTests(ClusterTestCase):
    async def test_pushes_across_nodes_and_a_crashed_node(self) -> None:
        redis = await self.redis()
        a, b = await self.nodes(redis, "node-a", "node-b")
        alice, _ = await self.join(a, "alice")
        bob, joined = await self.join(b, "bob")
        self.assertMembers(joined, "alice", "bob")
        self.assertMembers(await alice.next_frame(push(count=2)), "alice", "bob")

        # Relayed messages, interleaved from both nodes: each arrives once, in order.
        for seq in range(5):
            alice.send({"action": "boardcast", "body": {"seq": seq}})
            bob.send({"action": "boardcast", "body": {"seq": seq}})
        for client, other in ((alice, "bob"), (bob, "alice")):
            for _ in range(5):
                await client.next_frame(reply("boardcast"))
            for _ in range(5):
                await client.next_frame(boardcast_by(other))

        # alice's song, queued over HTTP on B with her token; bob's, queued and
        # withdrawn on B; alice takes the mic on A.
        await self.queue(b, "alice", sid="1")
        for client in (alice, bob):
            asked = await client.next_frame(status("2"))
            self.assertEqual((asked["body"]["fullname"], asked["body"]["sid"]), ("alice", "1"))
        sung = await bob.request({"action": "sing", "sid": "2", "duration": LONG_SONG})
        self.assertOK(sung, "sing", "bob")
        self.assertEqual([s["fullname"] for s in sung["body"]["songs"]], ["alice", "bob"])
        self.assertEqual(same_room(await alice.next_frame(push())), same_room(sung))
        withdrawn = await bob.request({"action": "del"})
        self.assertOK(withdrawn, "del", "bob")
        self.assertEqual(same_room(await alice.next_frame(push())), same_room(withdrawn))
        singing = await alice.request({"action": "ask", "ack": 1})
        self.assertOK(singing, "ask", "alice")
        self.assertEqual((singing["body"]["status"], singing["body"]["fullname"]), ("1", "alice"))
        self.assertEqual(same_room(await bob.next_frame(push())), same_room(singing))

        # Both saw every version since bob joined, once each, in order, and the same rooms.
        self.assertInOrder(alice, bob)
        first = joined["body"]["version"]
        alice_rooms = {f["body"]["version"]: same_room(f) for f in room_frames(alice) if f["body"]["version"] >= first}
        bob_rooms = {f["body"]["version"]: same_room(f) for f in room_frames(bob)}
        self.assertEqual(alice_rooms, bob_rooms)
        self.assertEqual(boardcasts_from(alice, "bob"), list(range(5)))
        self.assertEqual(boardcasts_from(bob, "alice"), list(range(5)))
        self.assertEqual((alice.frames, bob.frames), ([], []))

        # Node A crashes mid-song.  B notices once A's heartbeat expires: alice is
        # away but still listed (and still singing) for the grace.
        observer = await self.observer(redis)
        killed = time.monotonic()
        await a.kill()
        await bounded(alice.closed, FRAME_TIMEOUT, "alice's connection to drop with node A")
        away = await bob.next_frame(push(), timeout=NODE_TTL + SWEEP_SECONDS + 2 * SLACK)
        noticed = time.monotonic()
        self.timing("node A's crash noticed", noticed - killed)
        self.assertLess(noticed - killed, NODE_TTL + SWEEP_SECONDS + SLACK)
        self.assertMembers(away, "alice", "bob")
        self.assertEqual(online(away), {"alice": False, "bob": True})
        self.assertEqual((away["body"]["status"], away["body"]["fullname"]), ("1", "alice"))
        self.assertGreater(away["body"]["version"], singing["body"]["version"])
        state = await observer.get("R1")
        assert state is not None
        gone = state.member("alice")
        assert gone is not None and gone.away_until is not None
        self.assertEqual(gone.nodes, ())
        self.assertEqual(state.member("bob").nodes, ("node-b",))  # type: ignore[union-attr]
        self.assertLess(abs(gone.away_until - (time.time() + GRACE)), SLACK)

        # After the grace she leaves: her song ends, the room rests, then goes idle.
        resting = await bob.next_frame(push(), timeout=GRACE + 2 * SLACK)
        left = time.monotonic()
        self.timing("alice removed after being away", left - noticed)
        self.assertGreater(left - noticed, GRACE - 0.5)
        self.assertMembers(resting, "bob")
        self.assertEqual((resting["body"]["status"], resting["body"]["sid"]), ("3", "0"))
        idle = await bob.next_frame(push(), timeout=REST_SECONDS + 2 * SLACK)
        self.timing("the room idle after resting", time.monotonic() - left)
        self.assertEqual((idle["body"]["status"], idle["body"]["songs"]), ("4", []))
        self.assertMembers(idle, "bob")

        # Not stuck: bob's song is asked at once.
        asked = await bob.request({"action": "sing", "sid": "3", "duration": "5"})
        self.assertOK(asked, "sing", "bob")
        self.assertEqual((asked["body"]["status"], asked["body"]["fullname"]), ("2", "bob"))
        self.assertInOrder(alice, bob)
        self.assertEqual(bob.frames, [])

    async def test_sigterm_hands_members_the_grace_at_once(self) -> None:
        redis = await self.redis()
        a, b = await self.nodes(redis, "node-a", "node-b")
        alice, _ = await self.join(a, "alice")
        bob, _ = await self.join(b, "bob")
        await alice.next_frame(push(count=2))
        await alice.request({"action": "sing", "sid": "1", "duration": LONG_SONG})
        singing = await alice.request({"action": "ask", "ack": 1})
        await bob.next_frame(status("1"))
        stopped = time.monotonic()
        await a.terminate()
        # A stopped node hands over at once, without waiting for its heartbeat to expire.
        alice_away = Match("alice away", lambda f: push()(f) and not online(f)["alice"])
        away = await bob.next_frame(alice_away, timeout=NODE_TTL)
        self.timing("node A's SIGTERM seen", time.monotonic() - stopped)
        self.assertEqual(online(away), {"alice": False, "bob": True})
        self.assertEqual((away["body"]["status"], away["body"]["fullname"]), ("1", "alice"))
        again, back = await self.join(b, "alice")  # the rolling restart put her on node B
        self.assertEqual(online(back), {"alice": True, "bob": True})
        for field in ("status", "fullname", "sid", "start_time"):
            self.assertEqual(back["body"][field], singing["body"][field], field)

    async def test_rejoining_another_node_within_the_grace_keeps_the_place(self) -> None:
        redis = await self.redis()
        a, b = await self.nodes(redis, "node-a", "node-b")
        alice, _ = await self.join(a, "alice")
        bob, _ = await self.join(b, "bob")
        await alice.next_frame(push(count=2))
        asked = await alice.request({"action": "sing", "sid": "1", "duration": LONG_SONG})
        self.assertEqual(asked["body"]["status"], "2")
        singing = await alice.request({"action": "ask", "ack": 1})
        self.assertEqual((singing["body"]["status"], singing["body"]["fullname"]), ("1", "alice"))
        self.assertEqual(same_room(await bob.next_frame(push())), same_room(asked))
        self.assertEqual(same_room(await bob.next_frame(push())), same_room(singing))

        observer = await self.observer(redis)
        killed = time.monotonic()
        await a.kill()
        away = await bob.next_frame(push(), timeout=NODE_TTL + SWEEP_SECONDS + 2 * SLACK)
        self.timing("node A's crash noticed", time.monotonic() - killed)
        self.assertMembers(away, "alice", "bob")
        self.assertEqual(online(away), {"alice": False, "bob": True})
        state = await observer.get("R1")
        assert state is not None
        gone = state.member("alice")
        assert gone is not None and gone.away_until is not None
        grace_ends = gone.away_until

        # alice comes back through node B within the grace: still singing her song.
        again, back = await self.join(b, "alice")
        self.assertLess(time.time(), grace_ends)
        self.assertMembers(back, "alice", "bob")
        self.assertEqual(online(back), {"alice": True, "bob": True})
        for field in ("status", "fullname", "sid", "start_time", "end_time"):
            self.assertEqual(back["body"][field], singing["body"][field], field)
        self.assertEqual(same_room(await bob.next_frame(push())), same_room(back))
        state = await observer.get("R1")
        assert state is not None
        self.assertEqual(state.member("alice"), dataclasses.replace(gone, nodes=("node-b",), away_until=None))

        # Her old grace runs out and nothing happens: she is not removed.
        await self.no_frame(bob, push(), grace_ends - time.time() + SWEEP_SECONDS + 0.5)
        checked = await again.request({"action": "status"})
        self.assertMembers(checked, "alice", "bob")
        self.assertEqual((checked["body"]["status"], checked["body"]["fullname"]), ("1", "alice"))

        # And she still holds the mic: she can cut her song, from node B.
        cut = await again.request({"action": "cut"})
        self.assertOK(cut, "cut", "alice")
        self.assertEqual(cut["body"]["status"], "3")
        self.assertEqual(same_room(await bob.next_frame(push())), same_room(cut))
        self.assertInOrder(alice, again, bob)


class RestartTests(ClusterTestCase):
    async def test_room_survives_node_and_redis_restarts(self) -> None:
        song_seconds = 3
        redis = await self.redis(durable=True)
        (first,) = await self.nodes(redis, "node-1")
        alice, _ = await self.join(first, "alice")
        bob, _ = await self.join(first, "bob")
        await alice.next_frame(push(count=2))
        await self.queue(first, "alice", sid="1", duration=str(song_seconds))
        await alice.next_frame(status("2"))
        singing = await alice.request({"action": "ask", "ack": 1})
        song_over = time.time() + song_seconds
        self.assertEqual((singing["body"]["status"], singing["body"]["fullname"]), ("1", "alice"))
        await self.queue(first, "bob", sid="2")
        queued = await alice.next_frame(push())
        self.assertEqual([s["fullname"] for s in queued["body"]["songs"]], ["bob"])
        last_version = queued["body"]["version"]

        # The node crashes mid-song, then Redis restarts (SIGTERM; the AOF keeps the data).
        await first.kill()
        await redis.stop()
        await redis.start()
        observer = await self.observer(redis)
        stored = await observer.get("R1")
        assert stored is not None
        self.assertEqual(stored.version, last_version)
        self.assertEqual(stored.status, RoomStatus.SINGING)
        self.assertEqual([m.fullname for m in stored.members], ["alice", "bob"])
        self.assertEqual([(s.fullname, s.sid) for s in stored.queue], [("bob", "2")])

        # The song ends while no node runs.
        if song_over + 0.2 > time.time():
            await wait(song_over + 0.2 - time.time())

        # A new node on the same Redis: bob is back within the grace.
        started = time.monotonic()
        (second,) = await self.nodes(redis, "node-2")
        up = time.monotonic()
        self.timing("node-2 up", up - started)
        bob2, joined = await self.join(second, "bob")
        self.assertMembers(joined, "alice", "bob")
        self.assertEqual(joined["body"]["room"], "R1")
        self.assertGreaterEqual(joined["body"]["version"], last_version)
        rejoined = time.monotonic()

        # The song's end came due in the downtime: it fires at once (by the
        # node's sweep, or the timer armed when bob joined), not a song later.
        frame = joined
        while frame["body"]["status"] == "1":
            self.assertEqual(frame["body"]["fullname"], "alice")
            self.assertLess(int(frame["body"]["end_time"]), time.time())
            frame = await bob2.next_frame(push(), timeout=SLACK)
        self.timing(f"the overdue song ended (join answered {joined['body']['status']!r})", time.monotonic() - rejoined)
        self.assertLess(time.monotonic() - rejoined, 1.0)
        self.assertIn(frame["body"]["status"], {"3", "2"})
        self.assertMembers(frame, "alice", "bob")
        self.assertEqual([(s["fullname"], s["sid"]) for s in frame["body"]["songs"]], [("bob", "2")])

        # The room goes on: after the rest bob is asked for his song and sings it.
        if frame["body"]["status"] == "3":
            frame = await bob2.next_frame(status("2"), timeout=REST_SECONDS + 2 * SLACK)
        self.assertEqual((frame["body"]["fullname"], frame["body"]["sid"]), ("bob", "2"))
        sung = await bob2.request({"action": "ask", "ack": 1})
        self.assertOK(sung, "ask", "bob")
        self.assertEqual((sung["body"]["status"], sung["body"]["fullname"]), ("1", "bob"))
        self.assertInOrder(alice, bob, bob2)

        # alice (of the dead node) is away, not gone: node-2's sweep claimed node-1's
        # members, once a node TTL had passed since node-2 reached Redis (the time
        # live nodes get to write their heartbeats again after an outage).
        state = await self.stored(observer, lambda s: s.member("alice").away_until is not None, "alice away")  # type: ignore[union-attr]
        self.timing("node-1's members claimed after node-2 was up", time.monotonic() - up)
        self.assertLess(time.monotonic() - up, NODE_TTL + SWEEP_SECONDS + SLACK)
        self.assertEqual(state.member("bob").nodes, ("node-2",))  # type: ignore[union-attr]
        self.assertIn(state.status, (RoomStatus.SINGING, RoomStatus.ASKING))


class RedisOutageTests(ClusterTestCase):
    async def test_redis_outage_and_recovery(self) -> None:
        redis = await self.redis(durable=True)
        (node,) = await self.nodes(redis, "node-1")
        alice, _ = await self.join(node, "alice")
        bob, _ = await self.join(node, "bob")
        await alice.next_frame(push(count=2))
        await self.queue(node, "alice", sid="1")
        asked = await alice.next_frame(status("2"))
        singing = await alice.request({"action": "ask", "ack": 1})
        self.assertEqual((singing["body"]["status"], singing["body"]["fullname"]), ("1", "alice"))
        for expected in (asked, singing):
            self.assertEqual(same_room(await bob.next_frame(push())), same_room(expected))

        # Redis goes away: the node knows at once and says so.
        await redis.stop()
        for action in ({"action": "status"}, {"action": "ask", "ack": 1}):
            sent = time.monotonic()
            refused = await alice.request(action, timeout=REDIS_TIMEOUT + SLACK)
            took = time.monotonic() - sent
            self.timing(f"{action['action']} refused during the outage", took)
            self.assertError(refused, "unavailable")
            self.assertEqual(refused["caller_action"], action["action"])
            self.assertLess(took, REDIS_TIMEOUT / 4)
        posted = time.monotonic()
        params = {"room": "R1", "sid": "2", "token": self.token("bob"), "duration": LONG_SONG}
        code, body = await self.post(node, params)
        self.timing("HTTP queue refused during the outage", time.monotonic() - posted)
        self.assertEqual((code, body["status"], body["code"]), (503, 5, "unavailable"), body)
        self.assertLess(time.monotonic() - posted, REDIS_TIMEOUT / 2)

        # Redis is back on the same port: the node reconnects on its own.
        await redis.start()
        restarted = time.monotonic()
        for _ in range(100):
            answer = await alice.request({"action": "status"})
            if answer["status"] == 0:
                break
            self.assertError(answer, "unavailable")
            await wait(0.1)
        reconnected = time.monotonic() - restarted
        self.timing("node reconnected to Redis", reconnected)
        self.assertOK(answer, "status", "alice")
        self.assertLess(reconnected, 6.0)
        # The room went on from its stored state: alice still sings the same song.
        for field in ("status", "fullname", "sid", "start_time", "end_time", "version", "members"):
            self.assertEqual(answer["body"][field], singing["body"][field], field)

        # Changes over HTTP reach alice as pushes again: the subscription is back
        # (the second one cannot be the catch-up after the reconnect).
        await self.queue(node, "bob", sid="2")
        first = await alice.next_frame(push(), timeout=REDIS_TIMEOUT + 2 * SLACK)
        self.assertEqual([s["fullname"] for s in first["body"]["songs"]], ["bob"])
        await self.queue(node, "alice", sid="3")
        second = await alice.next_frame(push(), timeout=FRAME_TIMEOUT)
        self.assertEqual([s["fullname"] for s in second["body"]["songs"]], ["bob", "alice"])
        self.assertEqual(second["body"]["version"], first["body"]["version"] + 1)
        self.timing("pushes flowing again after Redis came back", time.monotonic() - restarted)
        # bob's connection on the same node got them too, and alice can act again.
        for expected in (first, second):
            self.assertEqual(same_room(await bob.next_frame(push())), same_room(expected))
        cut = await alice.request({"action": "cut"})
        self.assertOK(cut, "cut", "alice")
        self.assertEqual(cut["body"]["status"], "3")
        self.assertEqual(same_room(await bob.next_frame(push())), same_room(cut))
        self.assertInOrder(alice, bob)
        self.assertEqual((alice.frames, bob.frames), ([], []))
