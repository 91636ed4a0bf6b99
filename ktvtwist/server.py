"""The room server: members' actions, room timers and pushes.

No network code lives here.  Connections reach the server through
:class:`IConnection` (the WebSocket protocol implements it); rooms live in an
:class:`~ktvtwist.store.IRoomStore`; time comes from an injected
``IReactorTime``.  Each room that has members on this node is a
:class:`LocalRoom`: the connections of its members here and the one
``callLater`` that moves it on when its current state ends.

Every change reaches this server through the store's listener interface
(:meth:`KTVServer.room_changed`), whichever node or timer caused it, so there
is one path for arming timers and pushing to members.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from ktvtwist import errors, wire
from ktvtwist.auth import Identity, ITokenAuthority
from ktvtwist.catalog import CatalogSong, ICatalog
from ktvtwist.room import RoomRules, RoomState, Song
from ktvtwist.store import IRoomListener, IRoomStore
from ktvtwist.wire import Frame

MAX_ROOM_ID_LENGTH = 64


class IConnection(Interface):
    """One client connection, as the room server sees it."""

    connection_id = Attribute("A string unique among this server's connections.")

    def send(frame: Frame) -> None:
        """Queue an encoded frame to the client.  Must not raise."""


@dataclass
class Binding:
    """What a connection became when it joined: a member of one room."""

    room: str
    identity: Identity


@dataclass
class LocalRoom:
    """This node's part of a room: its members' connections and its timer."""

    room: str
    connections: dict[str, set[IConnection]] = field(default_factory=dict)
    timer: IDelayedCall | None = None
    version: int = -1
    frame: Frame | None = None

    def all_connections(self) -> Iterator[IConnection]:
        for conns in self.connections.values():
            yield from conns

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


@implementer(IRoomListener)
class KTVServer:
    _log = Logger()

    def __init__(
        self,
        *,
        store: IRoomStore,
        catalog: ICatalog,
        authority: ITokenAuthority,
        clock: IReactorTime,
        rules: RoomRules | None = None,
        max_song_seconds: int = 3600,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.authority = authority
        self.clock = clock
        self.rules = rules or RoomRules()
        self.max_song_seconds = max_song_seconds
        self.rooms: dict[str, LocalRoom] = {}
        self._bindings: dict[IConnection, Binding] = {}
        self._ids = itertools.count(1)
        store.subscribe(self)

    def new_connection_id(self) -> str:
        return f"c{next(self._ids)}"

    def now(self) -> float:
        return self.clock.seconds()

    def binding(self, conn: IConnection) -> Binding | None:
        return self._bindings.get(conn)

    def _require_binding(self, conn: IConnection) -> Binding:
        binding = self._bindings.get(conn)
        if binding is None:
            raise errors.not_in_room()
        return binding

    def _update(
        self, room_id: str, change: Callable[[RoomState], RoomState | None], origin: str | None
    ) -> Deferred[RoomState | None]:
        """Apply ``change`` to an existing room (a missing room is ``not_in_room``)."""

        def checked(state: RoomState | None) -> RoomState | None:
            if state is None:
                raise errors.not_in_room()
            return change(state)

        return self.store.update(room_id, checked, origin)

    # -- member actions ---------------------------------------------------

    async def join(self, conn: IConnection, room: Any, token: Any, claimed: dict[str, Any]) -> RoomState:
        """Enter a room (created on first join); the connection is that member from now on."""
        if conn in self._bindings:
            raise errors.already_in_room()
        room_id = wire.require_text(room, "room", MAX_ROOM_ID_LENGTH)
        identity = self.authority.identify(token, claimed)
        member = identity.as_member()
        now = self.now()

        def enter(state: RoomState | None) -> RoomState:
            return self.rules.join(state or self.rules.create(room_id, now), member)

        state = await self.store.update(room_id, enter, conn.connection_id)
        assert state is not None
        self._bindings[conn] = Binding(room_id, identity)
        local = self.rooms.setdefault(room_id, LocalRoom(room_id))
        local.connections.setdefault(identity.fullname, set()).add(conn)
        return state

    async def status(self, conn: IConnection) -> RoomState:
        binding = self._require_binding(conn)
        state = await self.store.get(binding.room)
        if state is None:
            raise errors.not_in_room()
        return state

    async def ask(self, conn: IConnection, accept: bool) -> RoomState:
        binding = self._require_binding(conn)
        now = self.now()
        fullname = binding.identity.fullname
        state = await self._update(binding.room, lambda s: self.rules.ask(s, fullname, accept, now), conn.connection_id)
        assert state is not None
        return state

    async def cut(self, conn: IConnection) -> RoomState:
        binding = self._require_binding(conn)
        now = self.now()
        fullname = binding.identity.fullname
        state = await self._update(binding.room, lambda s: self.rules.cut(s, fullname, now), conn.connection_id)
        assert state is not None
        return state

    async def boardcast(self, conn: IConnection, body: dict[str, Any]) -> dict[str, Any]:
        """Relay ``body`` to every member of the room, naming the sender (never their token)."""
        binding = self._require_binding(conn)
        identity = binding.identity
        message = {
            "action": "boardcast",
            "room": binding.room,
            "fullname": identity.fullname,
            "nick": identity.nick,
            "avatar": identity.avatar,
            "body": body,
        }
        await self.store.publish(binding.room, message, conn.connection_id)
        return message

    async def leave(self, conn: IConnection) -> RoomState | None:
        """Leave the room.  The member leaves once their last connection here has left."""
        binding = self._require_binding(conn)
        del self._bindings[conn]
        fullname = binding.identity.fullname
        local = self.rooms.get(binding.room)
        if local is not None:
            conns = local.connections.get(fullname, set())
            conns.discard(conn)
            if conns:
                return await self.store.get(binding.room)
            local.connections.pop(fullname, None)
        now = self.now()

        def depart(state: RoomState | None) -> RoomState | None:
            if state is None or state.member(fullname) is None:
                return state
            left = self.rules.leave(state, fullname, now)
            return left if left.members else None

        return await self.store.update(binding.room, depart, conn.connection_id)

    def connection_lost(self, conn: IConnection) -> None:
        """A connection closed: it leaves whatever room it had joined."""
        if conn not in self._bindings:
            return
        d = Deferred.fromCoroutine(self.leave(conn))
        d.addErrback(lambda f: self._log.failure("leaving after a closed connection", f))

    # -- HTTP API ------------------------------------------------------------

    async def queue_song(self, room: Any, token: Any, sid: Any, duration: Any) -> RoomState:
        """Queue a song from the catalog for the member holding ``token``."""
        room_id = wire.require_text(room, "room", MAX_ROOM_ID_LENGTH)
        sid_text = wire.require_text(sid, "sid", 128)
        seconds = wire.parse_duration(duration, self.max_song_seconds)
        if not isinstance(token, str) or not token:
            raise errors.auth_failed("a non-empty token is required")
        state = await self.store.get(room_id)
        if state is None:
            raise errors.room_not_found()
        identity = self.authority.resolve(token, state)
        found: CatalogSong | None = await maybeDeferred(self.catalog.lookup, sid_text)
        if found is None:
            raise errors.song_not_found()
        song = Song(
            sid=found.sid,
            name=found.name,
            author=found.author,
            duration=seconds,
            fullname=identity.fullname,
            nick=identity.nick,
            avatar=identity.avatar,
        )
        now = self.now()

        def enqueue(state: RoomState | None) -> RoomState:
            if state is None:
                raise errors.room_not_found()
            return self.rules.queue_song(state, song, now)

        queued = await self.store.update(room_id, enqueue, None)
        assert queued is not None
        return queued

    # -- frames ---------------------------------------------------------------

    def room_frame(self, state: RoomState) -> Frame:
        """The push frame for ``state``, encoded once per room version."""
        local = self.rooms.get(state.room)
        if local is not None and local.frame is not None and local.version == state.version:
            return local.frame
        now = self.now()
        return Frame(wire.encode(wire.envelope(wire.room_body(state, now), now)))

    def _push(self, local: LocalRoom, frame: Frame, origin: str | None) -> None:
        for conn in list(local.all_connections()):
            if conn.connection_id == origin:
                continue
            try:
                conn.send(frame)
            except Exception:
                self._log.failure("pushing to {conn}", conn=conn)

    # -- IRoomListener ----------------------------------------------------

    def room_changed(self, room_id: str, state: RoomState | None, origin: str | None) -> None:
        local = self.rooms.get(room_id)
        if state is None:
            if local is not None:
                local.cancel_timer()
                del self.rooms[room_id]
            return
        if local is None:
            local = self.rooms[room_id] = LocalRoom(room_id)
        if state.version <= local.version:
            return
        local.version = state.version
        local.frame = None
        self._arm(local, state)
        local.frame = frame = self.room_frame(state)
        self._push(local, frame, origin)

    def room_message(self, room_id: str, message: dict[str, Any], origin: str | None) -> None:
        local = self.rooms.get(room_id)
        if local is None:
            return
        now = self.now()
        frame = Frame(wire.encode(wire.envelope(message, now, kind=wire.TYPE_MESSAGE)))
        self._push(local, frame, origin)

    # -- timers ---------------------------------------------------------------

    def _arm(self, local: LocalRoom, state: RoomState) -> None:
        """Keep exactly one timer per room: the end of its current state."""
        local.cancel_timer()
        delay = max(0.0, state.end_time - self.now())
        local.timer = self.clock.callLater(delay, self._expire, state.room, state.version)

    def _expire(self, room_id: str, version: int) -> None:
        local = self.rooms.get(room_id)
        if local is not None:
            local.timer = None
        now = self.now()

        def move_on(state: RoomState | None) -> RoomState | None:
            if state is None:
                return None
            return self.rules.expire(state, version, now)

        d = self.store.update(room_id, move_on, None)
        d.addErrback(lambda f: self._log.failure("moving room {room} on", f, room=room_id))

    def stop(self) -> None:
        """Cancel every timer (service shutdown)."""
        for local in self.rooms.values():
            local.cancel_timer()
