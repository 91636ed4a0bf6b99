"""The room server with a task.Clock: timers, pushes, bindings."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ktvtwist.auth import OpenAuthority
from ktvtwist.catalog import MemoryCatalog
from ktvtwist.errors import KTVError
from ktvtwist.room import RoomRules, RoomState
from ktvtwist.server import IConnection, KTVServer
from ktvtwist.store import MemoryRoomStore
from ktvtwist.wire import Frame

START = 1_500_000_000.0


@implementer(IConnection)
class RecordingConnection:
    """An IConnection that keeps what it is sent."""

    def __init__(self, server: KTVServer) -> None:
        self.connection_id = server.new_connection_id()
        self.frames: list[Frame] = []

    def send(self, frame: Frame) -> None:
        self.frames.append(frame)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(f.payload) for f in self.frames]

    @property
    def last(self) -> dict[str, Any]:
        return self.messages[-1]


@implementer(IConnection)
class BrokenConnection(RecordingConnection):
    def send(self, frame: Frame) -> None:
        raise RuntimeError("transport exploded")


def result(d: Deferred[Any]) -> Any:
    """The result of an already-fired Deferred (the memory store is synchronous)."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "Deferred did not fire"
    if isinstance(box[0], Exception) or hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


class ServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.store = MemoryRoomStore()
        self.server = KTVServer(
            store=self.store,
            catalog=MemoryCatalog.sample(),
            authority=OpenAuthority(),
            clock=self.clock,
            rules=RoomRules(ask_seconds=15, rest_seconds=30, max_members=4),
            max_song_seconds=600,
        )

    def connect(self) -> RecordingConnection:
        return RecordingConnection(self.server)

    def join(self, name: str, room: str = "R1", conn: RecordingConnection | None = None) -> RecordingConnection:
        conn = conn or self.connect()
        result(Deferred.fromCoroutine(self.server.join(conn, room, f"tok-{name}", {"fullname": name})))
        return conn

    def queue(self, name: str, room: str = "R1", sid: str = "1", duration: Any = "200") -> RoomState:
        return result(Deferred.fromCoroutine(self.server.queue_song(room, f"tok-{name}", sid, duration)))

    def ask(self, conn: RecordingConnection, accept: bool = True) -> RoomState:
        return result(Deferred.fromCoroutine(self.server.ask(conn, accept)))

    def state(self, room: str = "R1") -> RoomState | None:
        return result(self.store.get(room))

    def assertRefused(self, code: str, d: Deferred[Any]) -> None:
        failure = self.failureResultOf(d, KTVError)
        self.assertEqual(failure.value.code, code)

    def assertOneTimerAt(self, when: float) -> None:
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [when])


class PushTests(ServerTestCase):
    def test_join_pushes_to_others_not_to_the_joiner(self) -> None:
        alice = self.join("alice")
        bob = self.join("bob")
        self.assertEqual(bob.frames, [])
        self.assertEqual(alice.last["body"]["count"], 2)
        self.assertNotIn("caller_action", alice.last)

    def test_one_frame_object_for_every_member(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.join("carol")
        self.assertIs(alice.frames[-1], bob.frames[-1])

    def test_pushes_stay_in_their_room(self) -> None:
        alice = self.join("alice", room="R1")
        other = self.join("zed", room="R2")
        self.join("bob", room="R1")
        self.assertEqual(len(alice.frames), 1)
        self.assertEqual(other.frames, [])

    def test_http_queue_pushes_to_every_member(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.queue("alice")
        for conn in (alice, bob):
            self.assertEqual(conn.last["body"]["status"], "2")
            self.assertEqual(conn.last["body"]["fullname"], "alice")

    def test_broken_connection_does_not_stop_the_push(self) -> None:
        alice = self.join("alice")
        self.join("bob", conn=BrokenConnection(self.server))
        self.join("carol")
        self.assertEqual(alice.last["body"]["count"], 3)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_boardcast_names_sender_and_carries_no_token(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        message = result(Deferred.fromCoroutine(self.server.boardcast(alice, {"text": "hi"})))
        self.assertEqual(message["body"], {"text": "hi"})
        pushed = bob.last
        self.assertEqual(pushed["type"], 2)
        self.assertEqual((pushed["body"]["fullname"], pushed["body"]["nick"]), ("alice", "alice"))
        self.assertNotIn(b"tok-alice", bob.frames[-1].payload)
        self.assertEqual(len(alice.frames), 1)  # the sender gets the reply, not a push

    def test_action_before_join_refused(self) -> None:
        conn = self.connect()
        self.assertRefused("not_in_room", Deferred.fromCoroutine(self.server.status(conn)))
        self.assertRefused("not_in_room", Deferred.fromCoroutine(self.server.cut(conn)))

    def test_join_twice_on_one_connection_refused(self) -> None:
        alice = self.join("alice")
        d = Deferred.fromCoroutine(self.server.join(alice, "R2", "tok-x", {"fullname": "x"}))
        self.assertRefused("already_in_room", d)
        self.assertIsNone(self.state("R2"))

    def test_refused_join_leaves_connection_unbound(self) -> None:
        self.join("alice")
        mallory = self.connect()
        d = Deferred.fromCoroutine(self.server.join(mallory, "R1", "tok-alice", {"fullname": "mallory"}))
        self.assertRefused("token_in_use", d)
        self.assertIsNone(self.server.binding(mallory))


class ConnectionTests(ServerTestCase):
    def test_two_connections_of_one_member_count_once(self) -> None:
        tv, phone = self.join("alice"), self.join("alice")
        state = self.state()
        assert state is not None
        self.assertEqual(len(state.members), 1)
        self.queue("alice")
        self.assertEqual(tv.last["body"]["status"], "2")
        self.assertEqual(phone.last["body"]["status"], "2")

    def test_closing_one_of_two_connections_changes_nothing(self) -> None:
        tv, phone = self.join("alice"), self.join("alice")
        bob = self.join("bob")
        before = self.state()
        self.server.connection_lost(phone)
        self.assertEqual(self.state(), before)
        self.assertIsNone(self.server.binding(phone))
        self.assertIsNotNone(self.server.binding(tv))
        self.assertEqual(bob.frames, [])

    def test_connection_lost_leaves(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.queue("bob")
        self.server.connection_lost(bob)
        state = self.state()
        assert state is not None
        self.assertEqual([m.fullname for m in state.members], ["alice"])
        self.assertEqual(state.queue, ())
        self.assertEqual(alice.last["body"]["status"], "4")

    def test_last_member_leaving_deletes_room_and_timer(self) -> None:
        alice = self.join("alice")
        self.queue("alice")
        result(Deferred.fromCoroutine(self.server.leave(alice)))
        self.assertIsNone(self.state())
        self.assertEqual(self.server.rooms, {})
        self.assertFalse(self.clock.calls)

    def test_leave_then_join_again(self) -> None:
        alice = self.join("alice")
        self.join("bob")
        result(Deferred.fromCoroutine(self.server.leave(alice)))
        self.join("alice", conn=alice)
        state = self.state()
        assert state is not None
        self.assertEqual([m.fullname for m in state.members], ["bob", "alice"])

    def test_stop_cancels_timers(self) -> None:
        self.join("alice")
        self.join("bob", room="R2")
        self.assertEqual(len(self.clock.calls), 2)
        self.server.stop()
        self.assertFalse(self.clock.calls)


class TimerTests(ServerTestCase):
    def test_idle_room_has_one_timer_a_day_away(self) -> None:
        self.join("alice")
        self.assertOneTimerAt(START + 86400)

    def test_ask_timeout_either_side_of_the_deadline(self) -> None:
        alice = self.join("alice")
        self.queue("alice")
        self.assertOneTimerAt(START + 15)
        self.clock.advance(14.9)
        self.assertEqual(alice.last["body"]["status"], "2")
        self.clock.advance(0.1)
        self.assertEqual(alice.last["body"]["status"], "4")
        state = self.state()
        assert state is not None
        self.assertEqual(state.queue, ())
        self.assertOneTimerAt(START + 15 + 86400)

    def test_ask_timeout_asks_next_member(self) -> None:
        _alice, bob = self.join("alice"), self.join("bob")
        self.queue("alice")
        self.queue("bob", sid="2")
        self.clock.advance(15)
        self.assertEqual(bob.last["body"]["fullname"], "bob")
        self.assertEqual(bob.last["body"]["status"], "2")
        self.assertOneTimerAt(START + 30)

    def test_full_cycle(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.queue("alice", duration="200")
        self.queue("bob", sid="2", duration="100")
        self.clock.advance(3)
        self.ask(alice)
        self.assertOneTimerAt(START + 3 + 200)
        self.assertEqual(bob.last["body"]["status"], "1")
        self.assertEqual(bob.last["body"]["duration"], "200")
        self.clock.advance(199.9)
        self.assertEqual(bob.last["body"]["status"], "1")
        self.clock.advance(0.1)
        self.assertEqual(bob.last["body"]["status"], "3")
        self.assertOneTimerAt(START + 203 + 30)
        self.clock.advance(30)
        self.assertEqual(bob.last["body"]["status"], "2")
        self.assertEqual(bob.last["body"]["fullname"], "bob")
        self.ask(bob)
        self.clock.advance(100)
        self.clock.advance(30)
        self.assertEqual(alice.last["body"]["status"], "4")
        self.assertOneTimerAt(START + 3 + 200 + 30 + 100 + 30 + 86400)

    def test_cut_rests_and_rearms(self) -> None:
        alice = self.join("alice")
        self.queue("alice")
        self.ask(alice)
        self.clock.advance(10)
        result(Deferred.fromCoroutine(self.server.cut(alice)))
        self.assertOneTimerAt(START + 10 + 30)

    def test_ack_answered_just_before_timeout_wins(self) -> None:
        alice = self.join("alice")
        self.queue("alice")
        self.clock.advance(14.99)
        self.ask(alice)
        self.clock.advance(0.02)
        state = self.state()
        assert state is not None
        self.assertEqual(int(state.status), 1)

    def test_asked_member_disconnecting_asks_next_at_once(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.queue("alice")
        self.queue("bob", sid="2")
        self.clock.advance(5)
        self.server.connection_lost(alice)
        self.assertEqual(bob.last["body"]["fullname"], "bob")
        self.assertOneTimerAt(START + 5 + 15)
        self.clock.advance(14.9)
        self.assertEqual(bob.last["body"]["status"], "2")

    def test_stale_timer_firing_changes_nothing(self) -> None:
        alice = self.join("alice")
        self.queue("alice")
        state = self.state()
        assert state is not None
        self.ask(alice)
        before = self.state()
        self.server._expire("R1", state.version)
        self.assertEqual(self.state(), before)

    def test_timer_for_deleted_room_is_harmless(self) -> None:
        alice = self.join("alice")
        state = self.state()
        assert state is not None
        result(Deferred.fromCoroutine(self.server.leave(alice)))
        self.server._expire("R1", state.version)
        self.assertIsNone(self.state())


class QueueSongTests(ServerTestCase):
    def queue_refused(self, code: str, **kw: Any) -> None:
        args = {"room": "R1", "token": "tok-alice", "sid": "1", "duration": "200", **kw}
        self.assertRefused(code, Deferred.fromCoroutine(self.server.queue_song(**args)))

    def test_song_details_come_from_catalog_and_member(self) -> None:
        self.join("alice")
        state = self.queue("alice", sid="4", duration=245)
        head = state.queue[0]
        self.assertEqual((head.sid, head.name, head.author), ("4", "晴天", "周杰伦"))
        self.assertEqual((head.fullname, head.duration), ("alice", 245))

    def test_numeric_sid_in_catalog(self) -> None:
        self.join("alice")
        self.assertEqual(self.queue("alice", sid="11").queue[0].name, "Let It Go")

    def test_refusals(self) -> None:
        self.join("alice")
        self.queue_refused("room_not_found", room="nope")
        self.queue_refused("not_member", token="tok-nobody")
        self.queue_refused("auth_failed", token="")
        self.queue_refused("song_not_found", sid="999")
        for bad in ("0", "-1", "601", "2.5", "abc", "", None, True, 1.5, [200]):
            self.queue_refused("bad_request", duration=bad)
        self.queue("alice")
        self.queue_refused("already_queued", sid="2")

    def test_duration_bounds_are_inclusive(self) -> None:
        self.join("alice")
        self.join("bob")
        self.assertEqual(self.queue("alice", duration="1").queue[0].duration, 1)
        self.assertEqual(self.queue("bob", duration=600).queue[1].duration, 600)
