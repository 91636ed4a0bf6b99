"""The room rules: every transition and every refusal, as pure functions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from ktvtwist.errors import KTVError
from ktvtwist.room import IDLE_SECONDS, Member, RoomRules, RoomState, RoomStatus, Song

RULES = RoomRules(ask_seconds=15, rest_seconds=30, max_members=3)


def member(name: str, credential: str = "") -> Member:
    return Member(fullname=name, nick=name.title(), avatar=f"http://a/{name}.png", credential=credential)


def song(name: str, sid: str = "1", duration: int = 200) -> Song:
    return Song(sid=sid, name=f"song {sid}", author="x", duration=duration, fullname=name, nick=name.title(), avatar="")


def room_with(*names: str, now: float = 1000.0) -> RoomState:
    state = RULES.create("R1", now)
    for name in names:
        state = RULES.join(state, member(name, credential=f"tok-{name}"))
    return state


class RulesTestCase(SynchronousTestCase):
    def assertRefused(self, code: str, f: Callable[..., object], *args: object) -> None:
        error = self.assertRaises(KTVError, f, *args)
        self.assertEqual(error.code, code)


class JoinLeaveTests(RulesTestCase):
    def test_create_is_idle_for_a_day(self) -> None:
        state = RULES.create("R1", 1000.0)
        self.assertEqual(state.status, RoomStatus.IDLE)
        self.assertEqual(state.duration, IDLE_SECONDS)
        self.assertEqual(state.end_time, 1000.0 + IDLE_SECONDS)
        self.assertEqual(state.members, ())

    def test_join_adds_member_and_bumps_version(self) -> None:
        state = room_with("alice")
        new = RULES.join(state, member("bob", "tok-bob"))
        self.assertEqual([m.fullname for m in new.members], ["alice", "bob"])
        self.assertEqual(new.version, state.version + 1)

    def test_same_member_same_token_changes_nothing(self) -> None:
        state = room_with("alice")
        self.assertIs(RULES.join(state, member("alice", "tok-alice")), state)

    def test_same_name_other_token_refused(self) -> None:
        self.assertRefused("name_in_use", RULES.join, room_with("alice"), member("alice", "other"))

    def test_token_held_by_other_member_refused(self) -> None:
        self.assertRefused("token_in_use", RULES.join, room_with("alice"), member("mallory", "tok-alice"))

    def test_signed_members_without_credential_can_share_nothing(self) -> None:
        state = RULES.join(RULES.create("R1", 0), member("alice"))
        self.assertIs(RULES.join(state, member("alice")), state)
        self.assertEqual(len(RULES.join(state, member("bob")).members), 2)

    def test_room_full(self) -> None:
        self.assertRefused("room_full", RULES.join, room_with("a", "b", "c"), member("d", "tok-d"))

    def test_leave_removes_member_and_their_song(self) -> None:
        state = RULES.queue_song(room_with("alice", "bob", "carol"), song("alice"), 1000)
        state = RULES.queue_song(state, song("bob"), 1000)
        state = RULES.ask(state, "alice", True, 1001)
        state = RULES.queue_song(state, song("carol"), 1002)
        left = RULES.leave(state, "carol", 1003)
        self.assertEqual([m.fullname for m in left.members], ["alice", "bob"])
        self.assertEqual([s.fullname for s in left.queue], ["bob"])
        self.assertEqual(left.status, RoomStatus.SINGING)
        self.assertEqual(left.start_time, state.start_time)

    def test_leave_by_non_member_refused(self) -> None:
        self.assertRefused("not_in_room", RULES.leave, room_with("alice"), "bob", 1000)

    def test_singer_leaving_rests_the_room(self) -> None:
        state = RULES.ask(RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000), "alice", True, 1000)
        left = RULES.leave(state, "alice", 1050)
        self.assertEqual(left.status, RoomStatus.RESTING)
        self.assertIsNone(left.singing)
        self.assertEqual((left.start_time, left.duration), (1050, 30))

    def test_asked_member_leaving_asks_next_at_once(self) -> None:
        state = RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000)
        state = RULES.queue_song(state, song("bob", sid="2"), 1001)
        left = RULES.leave(state, "alice", 1005)
        self.assertEqual(left.status, RoomStatus.ASKING)
        self.assertEqual(left.on_mic, song("bob", sid="2"))
        self.assertEqual((left.start_time, left.duration), (1005, 15))

    def test_asked_member_leaving_last_goes_idle(self) -> None:
        state = RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000)
        left = RULES.leave(state, "alice", 1005)
        self.assertEqual(left.status, RoomStatus.IDLE)
        self.assertEqual(left.queue, ())


class CycleTests(RulesTestCase):
    def test_queue_in_idle_room_asks_owner_at_once(self) -> None:
        state = RULES.queue_song(room_with("alice"), song("alice"), 1000)
        self.assertEqual(state.status, RoomStatus.ASKING)
        self.assertEqual((state.start_time, state.duration), (1000, 15))
        self.assertEqual(state.on_mic, song("alice"))
        self.assertEqual(state.queue, (song("alice"),))

    def test_queue_while_busy_appends(self) -> None:
        state = RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000)
        new = RULES.queue_song(state, song("bob"), 1003)
        self.assertEqual(new.status, RoomStatus.ASKING)
        self.assertEqual(new.start_time, 1000)
        self.assertEqual([s.fullname for s in new.queue], ["alice", "bob"])

    def test_one_queued_song_per_member(self) -> None:
        state = RULES.queue_song(room_with("alice"), song("alice"), 1000)
        self.assertRefused("already_queued", RULES.queue_song, state, song("alice", sid="2"), 1000)

    def test_queue_by_non_member_refused(self) -> None:
        self.assertRefused("not_member", RULES.queue_song, room_with("alice"), song("bob"), 1000)

    def test_ack_1_sings_for_the_song_duration(self) -> None:
        state = RULES.queue_song(room_with("alice"), song("alice", duration=245), 1000)
        sung = RULES.ask(state, "alice", True, 1004)
        self.assertEqual(sung.status, RoomStatus.SINGING)
        self.assertEqual((sung.start_time, sung.duration), (1004, 245))
        self.assertEqual(sung.on_mic, song("alice", duration=245))
        self.assertEqual(sung.queue, ())

    def test_ack_0_drops_song_and_asks_next(self) -> None:
        state = RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000)
        state = RULES.queue_song(state, song("bob", sid="2"), 1000)
        passed = RULES.ask(state, "alice", False, 1002)
        self.assertEqual(passed.status, RoomStatus.ASKING)
        self.assertEqual([s.fullname for s in passed.queue], ["bob"])
        self.assertEqual(passed.start_time, 1002)

    def test_ack_0_last_song_goes_idle(self) -> None:
        state = RULES.queue_song(room_with("alice"), song("alice"), 1000)
        passed = RULES.ask(state, "alice", False, 1002)
        self.assertEqual(passed.status, RoomStatus.IDLE)
        self.assertEqual(passed.duration, IDLE_SECONDS)

    def test_ask_by_other_member_refused(self) -> None:
        state = RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000)
        self.assertRefused("not_your_turn", RULES.ask, state, "bob", True, 1001)

    def test_ask_when_nobody_asked_refused(self) -> None:
        self.assertRefused("wrong_state", RULES.ask, room_with("alice"), "alice", True, 1001)

    def test_cut_by_singer_rests(self) -> None:
        state = RULES.ask(RULES.queue_song(room_with("alice"), song("alice"), 1000), "alice", True, 1000)
        cut = RULES.cut(state, "alice", 1010)
        self.assertEqual(cut.status, RoomStatus.RESTING)
        self.assertEqual((cut.start_time, cut.duration), (1010, 30))
        self.assertIsNone(cut.on_mic)

    def test_cut_by_other_refused(self) -> None:
        state = RULES.ask(RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000), "alice", True, 1000)
        self.assertRefused("not_singer", RULES.cut, state, "bob", 1010)

    def test_cut_when_not_singing_refused(self) -> None:
        state = RULES.queue_song(room_with("alice"), song("alice"), 1000)
        self.assertRefused("wrong_state", RULES.cut, state, "alice", 1010)

    def test_refusals_change_nothing(self) -> None:
        state = RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000)
        snapshot = state.to_dict()
        self.assertRefused("not_your_turn", RULES.ask, state, "bob", True, 1001)
        self.assertEqual(state.to_dict(), snapshot)


class ExpireTests(SynchronousTestCase):
    def test_song_end_rests(self) -> None:
        state = RULES.ask(RULES.queue_song(room_with("alice"), song("alice"), 1000), "alice", True, 1000)
        self.assertEqual(RULES.expire(state, state.version, 1200).status, RoomStatus.RESTING)

    def test_ask_timeout_drops_song_like_ack_0(self) -> None:
        state = RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000)
        state = RULES.queue_song(state, song("bob", sid="2"), 1000)
        timed_out = RULES.expire(state, state.version, 1015)
        self.assertEqual(timed_out.status, RoomStatus.ASKING)
        self.assertEqual(timed_out.on_mic, song("bob", sid="2"))

    def test_rest_end_asks_queue_head(self) -> None:
        state = RULES.ask(RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000), "alice", True, 1000)
        state = RULES.queue_song(state, song("bob", sid="2"), 1001)
        rested = RULES.expire(state, state.version, 1200)
        after = RULES.expire(rested, rested.version, 1230)
        self.assertEqual(after.status, RoomStatus.ASKING)
        self.assertEqual(after.on_mic, song("bob", sid="2"))

    def test_rest_end_with_empty_queue_goes_idle(self) -> None:
        state = RULES.cut(
            RULES.ask(RULES.queue_song(room_with("alice"), song("alice"), 1000), "alice", True, 1000), "alice", 1001
        )
        self.assertEqual(RULES.expire(state, state.version, 1031).status, RoomStatus.IDLE)

    def test_idle_end_opens_a_new_idle_window(self) -> None:
        state = room_with("alice")
        renewed = RULES.expire(state, state.version, 1000 + IDLE_SECONDS)
        self.assertEqual(renewed.status, RoomStatus.IDLE)
        self.assertEqual(renewed.start_time, 1000 + IDLE_SECONDS)
        self.assertEqual(renewed.version, state.version + 1)

    def test_stale_version_is_a_no_op(self) -> None:
        state = RULES.queue_song(room_with("alice"), song("alice"), 1000)
        self.assertIs(RULES.expire(state, state.version - 1, 1015), state)


class SerializationTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        state = RULES.ask(RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000), "alice", True, 1000)
        state = RULES.queue_song(state, song("bob", sid="7"), 1001)
        self.assertEqual(RoomState.from_dict(state.to_dict()), state)


class PresenceTests(RulesTestCase):
    grace_rules = RoomRules(ask_seconds=15, rest_seconds=30, max_members=3, reconnect_grace=30)

    def joined(self, *names: str, node: str = "n1") -> RoomState:
        state = self.grace_rules.create("R1", 1000.0)
        for name in names:
            state = self.grace_rules.join(state, member(name), node)
        return state

    def test_join_records_the_node(self) -> None:
        state = self.joined("alice")
        self.assertEqual(state.members[0].nodes, ("n1",))
        again = self.grace_rules.join(state, member("alice"), "n2")
        self.assertEqual(again.members[0].nodes, ("n1", "n2"))
        self.assertIs(self.grace_rules.join(again, member("alice"), "n2"), again)

    def test_disconnect_from_one_of_two_nodes_keeps_member_present(self) -> None:
        state = self.grace_rules.join(self.joined("alice"), member("alice"), "n2")
        gone = self.grace_rules.disconnect(state, "alice", "n1", 1010)
        self.assertEqual(gone.members[0].nodes, ("n2",))
        self.assertIsNone(gone.members[0].away_until)

    def test_last_disconnect_starts_grace_and_moves_deadline(self) -> None:
        state = self.grace_rules.queue_song(self.joined("alice", "bob"), song("alice"), 1000)
        away = self.grace_rules.disconnect(state, "alice", "n1", 1005)
        self.assertEqual(away.member("alice"), dataclasses.replace(member("alice"), away_until=1035))
        self.assertEqual(away.status, RoomStatus.ASKING)
        self.assertEqual(away.deadline, 1015)
        sung = self.grace_rules.ask(away, "alice", True, 1006)
        self.assertEqual(sung.deadline, 1035)

    def test_grace_end_leaves_and_passes_the_mic(self) -> None:
        state = self.grace_rules.queue_song(self.joined("alice", "bob"), song("alice"), 1000)
        state = self.grace_rules.ask(state, "alice", True, 1000)
        away = self.grace_rules.disconnect(state, "alice", "n1", 1010)
        self.assertIs(self.grace_rules.expire(away, away.version, 1039.9), away)
        gone = self.grace_rules.expire(away, away.version, 1040)
        self.assertEqual([m.fullname for m in gone.members], ["bob"])
        self.assertEqual(gone.status, RoomStatus.RESTING)

    def test_rejoin_within_grace_keeps_place(self) -> None:
        state = self.grace_rules.queue_song(self.joined("alice", "bob"), song("alice"), 1000)
        away = self.grace_rules.disconnect(state, "alice", "n1", 1005)
        back = self.grace_rules.join(away, member("alice"), "n3")
        self.assertEqual(back.member("alice"), dataclasses.replace(member("alice"), nodes=("n3",)))
        self.assertEqual(back.queue, state.queue)
        self.assertEqual([m.fullname for m in back.members], ["alice", "bob"])

    def test_disconnect_without_grace_leaves(self) -> None:
        state = RULES.join(RULES.create("R1", 0), member("alice"), "n1")
        self.assertEqual(RULES.disconnect(state, "alice", "n1", 5).member("alice").away_until, 35)  # type: ignore[union-attr]
        no_grace = RoomRules(reconnect_grace=0)
        state = no_grace.join(no_grace.join(no_grace.create("R1", 0), member("a"), "n1"), member("b"), "n1")
        self.assertEqual([m.fullname for m in no_grace.disconnect(state, "a", "n1", 5).members], ["b"])

    def test_disconnect_of_unknown_member_or_node_changes_nothing(self) -> None:
        state = self.joined("alice")
        self.assertIs(self.grace_rules.disconnect(state, "bob", "n1", 5), state)
        self.assertIs(self.grace_rules.disconnect(state, "alice", "n9", 5), state)


class DequeueAndAdminTests(RulesTestCase):
    def test_dequeue_own_song(self) -> None:
        state = RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000)
        state = RULES.queue_song(state, song("bob"), 1000)
        removed = RULES.dequeue(state, "bob", 1001)
        self.assertEqual([s.fullname for s in removed.queue], ["alice"])
        self.assertEqual(removed.start_time, 1000)

    def test_dequeue_asked_song_asks_next(self) -> None:
        state = RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000)
        state = RULES.queue_song(state, song("bob"), 1000)
        removed = RULES.dequeue(state, "alice", 1003)
        self.assertEqual(removed.on_mic, song("bob"))
        self.assertEqual(removed.start_time, 1003)

    def test_dequeue_nothing_queued(self) -> None:
        self.assertRefused("not_queued", RULES.dequeue, room_with("alice"), "alice", 1000)

    def test_admin_cuts_anyones_song(self) -> None:
        state = RULES.ask(RULES.queue_song(room_with("alice", "bob"), song("alice"), 1000), "alice", True, 1000)
        self.assertEqual(RULES.cut(state, "bob", 1001, admin=True).status, RoomStatus.RESTING)
