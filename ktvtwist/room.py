"""The room: its state and the rules that change it.

Pure data and pure functions: no network, no clock of its own (``now`` is
passed in), no timers.  Every transition takes a :class:`RoomState` and
returns a new one with ``version`` bumped, or raises
:class:`~ktvtwist.errors.KTVError` and changes nothing.  Because the rules are
pure, a store may run them inside whatever atomic step it has (a lock, a Redis
transaction) and retry them safely.

The cycle::

    idle --song queued--> asking --ack 1--> singing --end/cut--> resting
      ^                     |  ack 0 / timeout: drop song            |
      +---- queue empty ----+------------ ask the next <-------------+
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ktvtwist import errors

IDLE_SECONDS = 86400.0
# A timer may fire a hair before the deadline it was armed for (float sums).
EARLY_FIRING = 1e-3


class RoomStatus(IntEnum):
    SINGING = 1
    ASKING = 2
    RESTING = 3
    IDLE = 4


@dataclass(frozen=True)
class Member:
    """A person in a room.

    ``credential`` is what ties the member to their token in open mode (the
    token itself); it is never sent to clients.  Empty when the token itself
    proves identity (signed tokens).

    ``nodes`` names the server processes holding at least one connection of
    the member.  When the last one goes the member is away: they keep their
    place until ``away_until``, and a join before then takes it up again.
    """

    fullname: str
    nick: str
    avatar: str
    credential: str = ""
    nodes: tuple[str, ...] = ()
    away_until: float | None = None


@dataclass(frozen=True)
class Song:
    """A queued, asked or sung song and the member who picked it."""

    sid: str
    name: str
    author: str
    duration: int
    fullname: str
    nick: str
    avatar: str


@dataclass(frozen=True)
class RoomState:
    room: str
    status: RoomStatus
    start_time: float
    duration: float
    members: tuple[Member, ...] = ()
    queue: tuple[Song, ...] = ()
    singing: Song | None = None
    version: int = 0

    @property
    def end_time(self) -> float:
        return self.start_time + self.duration

    @property
    def on_mic(self) -> Song | None:
        """The song being sung, or the asked member's song (head of the queue)."""
        if self.status is RoomStatus.SINGING:
            return self.singing
        if self.status is RoomStatus.ASKING and self.queue:
            return self.queue[0]
        return None

    @property
    def deadline(self) -> float:
        """When the room's one timer must fire: its state's end or an away member's grace end."""
        return min([self.end_time] + [m.away_until for m in self.members if m.away_until is not None])

    def member(self, fullname: str) -> Member | None:
        for m in self.members:
            if m.fullname == fullname:
                return m
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict holding everything (credentials included): for stores."""
        data = dataclasses.asdict(self)
        data["status"] = int(self.status)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoomState:
        singing = data.get("singing")
        return cls(
            room=data["room"],
            status=RoomStatus(data["status"]),
            start_time=float(data["start_time"]),
            duration=float(data["duration"]),
            members=tuple(Member(**{**m, "nodes": tuple(m.get("nodes", ()))}) for m in data["members"]),
            queue=tuple(Song(**s) for s in data["queue"]),
            singing=Song(**singing) if singing else None,
            version=int(data["version"]),
        )


@dataclass(frozen=True)
class RoomRules:
    """The room's timings and limits, and the transitions they govern."""

    ask_seconds: float = 15.0
    rest_seconds: float = 30.0
    max_members: int = 12
    reconnect_grace: float = 30.0

    # -- building blocks -------------------------------------------------

    def create(self, room: str, now: float) -> RoomState:
        return RoomState(room=room, status=RoomStatus.IDLE, start_time=now, duration=IDLE_SECONDS)

    def _enter(self, state: RoomState, status: RoomStatus, now: float, duration: float, **changes: Any) -> RoomState:
        return dataclasses.replace(
            state,
            status=status,
            start_time=now,
            duration=duration,
            version=state.version + 1,
            **changes,
        )

    def _ask_next(self, state: RoomState, now: float, queue: tuple[Song, ...]) -> RoomState:
        """Ask the owner of the queue's head, or go idle when the queue is empty."""
        if queue:
            return self._enter(state, RoomStatus.ASKING, now, self.ask_seconds, queue=queue, singing=None)
        return self._enter(state, RoomStatus.IDLE, now, IDLE_SECONDS, queue=queue, singing=None)

    def _rest(self, state: RoomState, now: float, **changes: Any) -> RoomState:
        return self._enter(state, RoomStatus.RESTING, now, self.rest_seconds, singing=None, **changes)

    def _changed(self, state: RoomState, **changes: Any) -> RoomState:
        return dataclasses.replace(state, version=state.version + 1, **changes)

    # -- transitions ----------------------------------------------------

    def _replace_member(self, state: RoomState, member: Member) -> RoomState:
        members = tuple(member if m.fullname == member.fullname else m for m in state.members)
        return self._changed(state, members=members)

    def join(self, state: RoomState, member: Member, node: str = "") -> RoomState:
        """Add a member connected through ``node``.

        The same member joining again (another device, or back within their
        grace) keeps their place; if nothing changes the state is returned as is.
        """
        present = state.member(member.fullname)
        if present is not None:
            if present.credential != member.credential:
                raise errors.name_in_use()
            nodes = present.nodes if node in present.nodes or not node else present.nodes + (node,)
            back = dataclasses.replace(member, nodes=nodes, away_until=None)
            if back == present:
                return state
            return self._replace_member(state, back)
        if member.credential and any(m.credential == member.credential for m in state.members):
            raise errors.token_in_use()
        if len(state.members) >= self.max_members:
            raise errors.room_full()
        joined = dataclasses.replace(member, nodes=(node,) if node else (), away_until=None)
        return self._changed(state, members=state.members + (joined,))

    def disconnect(self, state: RoomState, fullname: str, node: str, now: float) -> RoomState:
        """The member's last connection through ``node`` is gone (without ``leave``).

        With no connection left anywhere they are away for the reconnect
        grace (or leave at once when there is none).
        """
        present = state.member(fullname)
        if present is None or node not in present.nodes:
            return state
        nodes = tuple(n for n in present.nodes if n != node)
        if nodes:
            return self._replace_member(state, dataclasses.replace(present, nodes=nodes))
        if self.reconnect_grace <= 0:
            return self.leave(state, fullname, now)
        away = dataclasses.replace(present, nodes=(), away_until=now + self.reconnect_grace)
        return self._replace_member(state, away)

    def leave(self, state: RoomState, fullname: str, now: float) -> RoomState:
        """Remove a member and their queued song; hand on the mic they held."""
        if state.member(fullname) is None:
            raise errors.not_in_room()
        members = tuple(m for m in state.members if m.fullname != fullname)
        queue = tuple(s for s in state.queue if s.fullname != fullname)
        on_mic = state.on_mic
        if on_mic is not None and on_mic.fullname == fullname:
            if state.status is RoomStatus.SINGING:
                return self._rest(state, now, members=members, queue=queue)
            return self._ask_next(dataclasses.replace(state, members=members), now, queue)
        return self._changed(state, members=members, queue=queue)

    def disconnect_node(self, state: RoomState, node: str, now: float) -> RoomState:
        """A node is gone (stopped or dead): its members' connections through it are gone."""
        for m in state.members:
            if node in m.nodes:
                state = self.disconnect(state, m.fullname, node, now)
        return state

    def queue_song(self, state: RoomState, song: Song, now: float) -> RoomState:
        """Put a member's song at the back of the queue; an idle room asks at once."""
        if state.member(song.fullname) is None:
            raise errors.not_member()
        if any(s.fullname == song.fullname for s in state.queue):
            raise errors.already_queued()
        queue = state.queue + (song,)
        if state.status is RoomStatus.IDLE:
            return self._ask_next(state, now, queue)
        return self._changed(state, queue=queue)

    def ask(self, state: RoomState, fullname: str, accept: bool, now: float) -> RoomState:
        """The asked member takes the mic (accept) or passes (their song is dropped)."""
        if state.status is not RoomStatus.ASKING or not state.queue:
            raise errors.cannot_ask()
        head = state.queue[0]
        if head.fullname != fullname:
            raise errors.not_your_turn()
        if accept:
            return self._enter(
                state, RoomStatus.SINGING, now, float(head.duration), queue=state.queue[1:], singing=head
            )
        return self._ask_next(state, now, state.queue[1:])

    def cut(self, state: RoomState, fullname: str, now: float, admin: bool = False) -> RoomState:
        """The singer (or an admin) ends the song early; the room rests."""
        if state.status is not RoomStatus.SINGING or state.singing is None:
            raise errors.cannot_cut()
        if state.singing.fullname != fullname and not admin:
            raise errors.not_singer()
        return self._rest(state, now)

    def dequeue(self, state: RoomState, fullname: str, now: float) -> RoomState:
        """Take a member's song out of the queue; if they were being asked, ask the next."""
        if not any(s.fullname == fullname for s in state.queue):
            raise errors.not_queued()
        queue = tuple(s for s in state.queue if s.fullname != fullname)
        if state.status is RoomStatus.ASKING and state.queue[0].fullname == fullname:
            return self._ask_next(state, now, queue)
        return self._changed(state, queue=queue)

    def expire(self, state: RoomState, version: int, now: float) -> RoomState:
        """The timer armed for ``version`` fired: do whatever is due by ``now``.

        Away members whose grace is over leave; then, if the state itself has
        ended, the room moves on.  A timer armed for an older version (the
        room moved on since) changes nothing, so a duplicate or late firing is
        harmless.  Returns the state unchanged when nothing was due.
        """
        if state.version != version:
            return state
        due = now + EARLY_FIRING
        for m in state.members:
            if m.away_until is not None and m.away_until <= due:
                state = self.leave(state, m.fullname, now)
        if state.end_time > due:
            return state
        return self._end_state(state, now)

    def _end_state(self, state: RoomState, now: float) -> RoomState:
        if state.status is RoomStatus.SINGING:
            return self._rest(state, now)
        if state.status is RoomStatus.ASKING:
            return self._ask_next(state, now, state.queue[1:])
        if state.status is RoomStatus.RESTING:
            return self._ask_next(state, now, state.queue)
        return self._enter(state, RoomStatus.IDLE, now, IDLE_SECONDS)
