"""The room server with a task.Clock: timers, pushes, bindings."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ktvtwist.auth import Identity, ITokenAuthority, OpenAuthority
from ktvtwist.errors import KTVError
from ktvtwist.room import RoomRules, RoomState, RoomStatus
from ktvtwist.server import IConnection
from ktvtwist.wire import Frame
from tests.support import RecordingConnection, memory_server

START = 1_500_000_000.0


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
    grace = 0.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.server = memory_server(
            self.clock,
            RoomRules(ask_seconds=15, rest_seconds=30, max_members=4, reconnect_grace=self.grace),
            max_song_seconds=600,
            max_rooms=3,
        )
        self.store = self.server.store

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
        self.assertRefused("not_in_room", Deferred.fromCoroutine(self.server.leave(conn)))

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

    def test_connection_lost_without_grace_leaves(self) -> None:
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


@implementer(ITokenAuthority)
class AdminAwareAuthority(OpenAuthority):
    """Open mode, except that a token starting with ``admin:`` makes an admin."""

    def identify(self, token: Any, claimed: Any) -> Identity:
        identity = super().identify(token, claimed)
        return dataclasses.replace(identity, admin=str(token).startswith("admin:"))


class GraceTests(ServerTestCase):
    grace = 30.0

    def test_dropped_member_keeps_place_song_and_ask_until_grace_ends(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.queue("alice")
        self.queue("bob", sid="2")
        self.clock.advance(2)
        self.server.connection_lost(alice)
        state = self.state()
        assert state is not None
        self.assertEqual([m.fullname for m in state.members], ["alice", "bob"])
        self.assertEqual(bob.last["body"]["fullname"], "alice")
        self.assertEqual(bob.last["body"]["count"], 2)
        self.assertEqual([m["online"] for m in bob.last["body"]["members"]], [False, True])
        self.assertOneTimerAt(START + 15)
        back = self.join("alice")
        self.ask(back)
        self.assertEqual(bob.last["body"]["status"], "1")
        state = self.state()
        assert state is not None
        self.assertEqual(len(state.members), 2)
        self.assertIsNone(state.members[0].away_until)

    def test_singer_keeps_the_mic_through_a_drop(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.queue("alice", duration="100")
        self.ask(alice)
        self.server.connection_lost(alice)
        self.assertOneTimerAt(START + 30)
        self.clock.advance(29.9)
        self.assertEqual(bob.last["body"]["status"], "1")
        self.clock.advance(0.1)
        self.assertEqual(bob.last["body"]["status"], "3")
        self.assertEqual(bob.last["body"]["count"], 1)
        self.assertOneTimerAt(START + 30 + 30)

    def test_asked_member_whose_grace_ends_passes_the_turn_at_once(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.queue("bob", sid="2")
        self.ask(bob)
        self.queue("alice")
        self.server.connection_lost(alice)
        self.clock.advance(30)  # grace ends mid-song: alice leaves, her song goes
        state = self.state()
        assert state is not None
        self.assertEqual(state.queue, ())
        self.assertEqual([m.fullname for m in state.members], ["bob"])

    def test_grace_end_of_the_last_member_deletes_the_room(self) -> None:
        alice = self.join("alice")
        self.server.connection_lost(alice)
        self.assertOneTimerAt(START + 30)
        self.clock.advance(30)
        self.assertIsNone(self.state())
        self.assertFalse(self.clock.calls)

    def test_explicit_leave_lets_the_other_devices_go(self) -> None:
        tv, phone = self.join("alice"), self.join("alice")
        bob = self.join("bob")
        result(Deferred.fromCoroutine(self.server.leave(phone)))
        self.assertIsNone(self.server.binding(tv))
        self.assertEqual(tv.last["body"]["count"], 1)
        self.assertEqual(bob.last["body"]["count"], 1)


class ActionTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.server.authority = AdminAwareAuthority()

    def call(self, coro: Any) -> Any:
        return result(Deferred.fromCoroutine(coro))

    def join_admin(self, name: str = "boss") -> RecordingConnection:
        conn = self.connect()
        self.call(self.server.join(conn, "R1", f"admin:{name}", {"fullname": name}))
        return conn

    def test_sing_over_the_socket(self) -> None:
        alice = self.join("alice")
        state = self.call(self.server.sing(alice, 3, "180"))
        self.assertEqual((state.on_mic.name, state.on_mic.duration), ("后来", 180))
        self.assertRefused("already_queued", Deferred.fromCoroutine(self.server.sing(alice, "4", "100")))
        self.assertRefused("bad_request", Deferred.fromCoroutine(self.server.sing(alice, "4", "0")))
        self.assertRefused("song_not_found", Deferred.fromCoroutine(self.server.sing(alice, "404", "10")))

    def test_del_own_song_and_nothing_to_delete(self) -> None:
        self.join("alice")
        bob = self.join("bob")
        self.queue("alice")
        self.queue("bob")
        state = self.call(self.server.dequeue(bob))
        self.assertEqual([s.fullname for s in state.queue], ["alice"])
        self.assertRefused("not_queued", Deferred.fromCoroutine(self.server.dequeue(bob)))
        self.assertRefused("forbidden", Deferred.fromCoroutine(self.server.dequeue(bob, "alice")))

    def test_admin_removes_any_song_cuts_any_song_and_kicks(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        boss = self.join_admin()
        self.queue("alice")
        self.queue("bob")
        self.call(self.server.dequeue(boss, "bob"))
        self.ask(alice)
        self.assertEqual(self.call(self.server.cut(boss)).status, 3)
        state = self.call(self.server.kick(boss, "bob"))
        self.assertEqual([m.fullname for m in state.members], ["alice", "boss"])
        self.assertIsNone(self.server.binding(bob))
        self.assertEqual(bob.last["body"]["count"], 2)
        self.assertRefused("not_in_room", Deferred.fromCoroutine(self.server.status(bob)))
        self.assertRefused("not_member", Deferred.fromCoroutine(self.server.kick(boss, "bob")))

    def test_members_may_not_kick(self) -> None:
        alice = self.join("alice")
        self.join("bob")
        self.assertRefused("forbidden", Deferred.fromCoroutine(self.server.kick(alice, "bob")))

    def test_chat_history_newest_first_and_bounded(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        for i in range(205):
            self.call(self.server.chat(alice, f"line {i}"))
        self.assertEqual(bob.last["type"], 2)
        self.assertEqual(bob.last["body"]["content"], "line 204")
        self.assertNotIn(b"tok-alice", bob.frames[-1].payload)
        history = self.call(self.server.history(bob))
        self.assertEqual(len(history), 200)
        self.assertEqual((history[0]["content"], history[-1]["content"]), ("line 204", "line 5"))
        self.assertRefused("bad_request", Deferred.fromCoroutine(self.server.chat(alice, "")))
        self.assertRefused("too_large", Deferred.fromCoroutine(self.server.chat(alice, "x" * 5000)))

    def test_device_is_relayed(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.call(self.server.device(alice, "mic", 0))
        self.assertEqual(
            {k: bob.last["body"][k] for k in ("action", "fullname", "device", "value")},
            {"action": "device", "fullname": "alice", "device": "mic", "value": 0},
        )
        self.assertRefused("bad_request", Deferred.fromCoroutine(self.server.device(alice, "mic", [1])))

    def test_boardcast_over_the_size_limit_is_refused(self) -> None:
        alice = self.join("alice")
        self.assertRefused("too_large", Deferred.fromCoroutine(self.server.boardcast(alice, {"x": "y" * 4100})))

    def test_rooms_per_process_are_capped(self) -> None:
        for room in ("R1", "R2", "R3"):
            self.join("alice", room=room)
        conn = self.connect()
        d = Deferred.fromCoroutine(self.server.join(conn, "R4", "tok-z", {"fullname": "z"}))
        self.assertRefused("server_busy", d)
        self.join("bob", room="R2")


class LastMemberTests(ServerTestCase):
    def test_last_member_leaving_is_answered_with_the_room_as_they_left_it(self) -> None:
        alice = self.join("alice")
        before = self.state()
        assert before is not None
        left = result(Deferred.fromCoroutine(self.server.leave(alice)))
        self.assertEqual(left.members, ())
        self.assertEqual(left.version, before.version + 1)
        self.assertIsNone(self.state())


class StaleRoomTests(ServerTestCase):
    def test_join_moves_on_a_room_whose_deadline_passed_unattended(self) -> None:
        alice = self.join("alice")
        self.queue("alice", duration="100")
        self.ask(alice)
        self.server.stop()  # nobody keeps the room's time (every node was down)
        self.clock.advance(150)
        bob = self.connect()
        state = result(Deferred.fromCoroutine(self.server.join(bob, "R1", "tok-bob", {"fullname": "bob"})))
        self.assertEqual(state.status, RoomStatus.RESTING)
        self.assertEqual(state.start_time, START + 150)

    def test_a_reply_never_shows_an_older_room_than_a_push_did(self) -> None:
        self.join("alice")
        older = self.state()
        assert older is not None
        self.join("bob")
        newer = self.state()
        assert newer is not None
        self.assertEqual(json.loads(self.server.room_frame(older).payload)["body"]["version"], newer.version)
