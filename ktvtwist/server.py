"""The room server: members' actions, room timers and pushes.

No network code lives here.  Connections reach the server through
:class:`IConnection` (the WebSocket protocol implements it); rooms live in an
:class:`~ktvtwist.store.IRoomStore`; time comes from an injected
``IReactorTime``.  Each room that has members on this node is a
:class:`LocalRoom`: the connections of its members here and the one
``callLater`` that moves it on at its next deadline (the end of its state, or
the end of an away member's reconnect grace).

Every change reaches this server through the store's listener interface
(:meth:`KTVServer.room_changed`), whichever node, timer or HTTP call caused
it, so there is one path for arming timers, pushing to members and letting go
of connections whose member is no longer in the room.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from ktvtwist import errors, wire
from ktvtwist.auth import Identity, ITokenAuthority
from ktvtwist.catalog import CatalogSong, ICatalog
from ktvtwist.room import RoomRules, RoomState, Song
from ktvtwist.store import Change, IRoomListener, IRoomStore, ISharedRoomStore
from ktvtwist.wire import Frame

MAX_ROOM_ID_LENGTH = 64
# The sweep leaves rooms that came due this long ago to the nodes whose timers
# are armed for them; it is for rooms nobody keeps time for.
SWEEP_SLACK = 0.25
HISTORY_LENGTH = 200


class IConnection(Interface):
    """One client connection, as the room server sees it."""

    connection_id = Attribute("A string unique among this server's connections.")

    def send(frame: Frame) -> None:
        """Queue an encoded frame to the client.  Must not raise."""


def on_existing(change: Callable[[RoomState], RoomState]) -> Change:
    """A store change for upkeep: a missing room stays missing, a room left empty is deleted."""

    def apply(state: RoomState | None) -> RoomState | None:
        if state is None:
            return None
        changed = change(state)
        return changed if changed.members else None

    return apply


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
    state: RoomState | None = None
    """The newest state of the room this node has seen (and pushed)."""
    frame: Frame | None = None

    @property
    def version(self) -> int:
        return self.state.version if self.state is not None else -1

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
        max_rooms: int = 10000,
        max_message_bytes: int = 4096,
        node_id: str = "local",
        node_ttl: float = 10.0,
        sweep_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.authority = authority
        self.clock = clock
        self.rules = rules or RoomRules()
        self.max_song_seconds = max_song_seconds
        self.max_rooms = max_rooms
        self.max_message_bytes = max_message_bytes
        self.node_id = node_id
        self.node_ttl = node_ttl
        self.sweep_interval = sweep_interval
        self.shared: ISharedRoomStore | None = ISharedRoomStore(store, None)
        self._upkeep: LoopingCall | None = None
        self._stopping = False
        self._alive_until = 0.0
        """When this node's last heartbeat in the shared store runs out."""
        self.rooms: dict[str, LocalRoom] = {}
        self._bindings: dict[IConnection, Binding] = {}
        # joins waiting for the store: (room, fullname) -> how many
        self._joining: Counter[tuple[str, str]] = Counter()
        # members being marked present again: (room, fullname)
        self._repairing: set[tuple[str, str]] = set()
        # no node is reaped before this time (see _maintain)
        self._reap_after = 0.0
        self._ids = itertools.count(1)
        store.subscribe(self)

    def new_connection_id(self) -> str:
        return f"{self.node_id}/{next(self._ids)}"

    def now(self) -> float:
        return self.clock.seconds()

    def binding(self, conn: IConnection) -> Binding | None:
        return self._bindings.get(conn)

    def _require_binding(self, conn: IConnection) -> Binding:
        binding = self._bindings.get(conn)
        if binding is None:
            raise errors.not_in_room()
        return binding

    async def _update(self, room_id: str, change: Change, origin: str | None) -> RoomState | None:
        """``store.update``, then take the stored state as this node's view if it is newer.

        With a shared store the change's own event comes later, on another
        connection; taking the state now means that no older event can be
        pushed after this reply (and members here see the change at once).
        """
        state = await self.store.update(room_id, change, origin)
        if state is not None:
            self._adopt(state, origin)
        return state

    def _adopt(self, state: RoomState, origin: str | None) -> None:
        """Take a state read or written through the store as this node's view, if it is newer."""
        local = self.rooms.get(state.room)
        if local is not None and state.version > local.version:
            self._show(local, state, origin)

    async def _change(self, conn: IConnection, change: Callable[[RoomState, Binding, float], RoomState]) -> RoomState:
        """Apply a member's action to their room."""
        binding = self._require_binding(conn)
        return await self._apply(binding.room, lambda s: change(s, binding, self.now()), conn.connection_id)

    async def _apply(self, room_id: str, change: Callable[[RoomState], RoomState], origin: str | None) -> RoomState:
        """Apply ``change`` to an existing room, deleting the room when nobody is left in it.

        Returns the changed state even when the room was deleted, so that the
        last member to leave is answered with the room as they left it.
        """
        outcome: list[RoomState] = []

        def checked(state: RoomState | None) -> RoomState | None:
            if state is None:
                raise errors.not_in_room()
            changed = change(state)
            outcome[:] = [changed]
            return changed if changed.members else None

        stored = await self._update(room_id, checked, origin)
        return stored if stored is not None else outcome[-1]

    def _check_size(self, what: str, value: Any) -> None:
        size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
        if size > self.max_message_bytes:
            raise errors.too_large(what, self.max_message_bytes)

    # -- joining and leaving -----------------------------------------------

    async def join(self, conn: IConnection, room: Any, token: Any, claimed: dict[str, Any]) -> RoomState:
        """Enter a room (created on first join); the connection is that member from now on.

        A member already in the room (another device, or back within the
        reconnect grace) keeps their place, queued song and mic.
        """
        if conn in self._bindings:
            raise errors.already_in_room()
        room_id = wire.require_text(room, "room", MAX_ROOM_ID_LENGTH)
        identity: Identity = await maybeDeferred(self.authority.identify, token, claimed)
        if room_id not in self.rooms and len(self.rooms) >= self.max_rooms:
            raise errors.too_many_rooms()
        member = identity.as_member()
        now = self.now()

        def enter(state: RoomState | None) -> RoomState:
            if state is None:
                return self.rules.join(self.rules.create(room_id, now), member, self.node_id)
            # A room whose deadline passed while no node kept its time (all
            # were down) moves on first, so the joiner never sees it stale.
            return self.rules.join(self.rules.expire(state, state.version, now), member, self.node_id)

        # Watch before changing, so that no change after ours is missed.
        local = self.rooms.setdefault(room_id, LocalRoom(room_id))
        joining = (room_id, identity.fullname)
        self._joining[joining] += 1
        state: RoomState | None = None
        try:
            await self.store.watch(room_id)
            if self.shared is not None:
                await self._heartbeat_once()
                await self.shared.remember_room(self.node_id, room_id)
            state = await self._update(room_id, enter, conn.connection_id)
        finally:
            self._joining[joining] -= 1
            if not self._joining[joining]:
                del self._joining[joining]
            if state is None:  # refused, or the store failed
                self._release_if_unused(local)
        assert state is not None
        self._bindings[conn] = Binding(room_id, identity)
        local.connections.setdefault(identity.fullname, set()).add(conn)
        return state

    def healthy(self) -> bool:
        """Whether this node can serve: its store is reachable."""
        return self.shared is None or bool(self.shared.connected and self.shared.listening)

    def _release_if_unused(self, local: LocalRoom) -> None:
        """With a shared store, a room without members on this node is not this node's to watch.

        Other nodes (or the store's sweep) keep its time.  With the in-memory
        store every room stays until it is deleted (only a room that was never
        made, after a refused join, goes at once).
        """
        if local.connections or self.rooms.get(local.room) is not local:
            return
        if any(room == local.room for room, _ in self._joining):
            return  # a join is under way: its connection is about to be bound
        if self.shared is None and local.version >= 0:
            return
        local.cancel_timer()
        del self.rooms[local.room]
        self.store.unwatch(local.room)

    def _unbind(self, conn: IConnection) -> tuple[Binding, bool]:
        """Forget a connection; also says whether it was its member's last one here."""
        binding = self._bindings.pop(conn)
        fullname = binding.identity.fullname
        local = self.rooms.get(binding.room)
        if local is None:
            return binding, True
        conns = local.connections.get(fullname, set())
        conns.discard(conn)
        if conns:
            return binding, False
        local.connections.pop(fullname, None)
        self._release_if_unused(local)
        return binding, True

    async def leave(self, conn: IConnection) -> RoomState:
        """Leave the room for good: the member's place, song and mic go at once.

        The member's other connections are let go too (they get the push).
        """
        self._require_binding(conn)
        binding, _ = self._unbind(conn)
        fullname = binding.identity.fullname

        def depart(state: RoomState) -> RoomState:
            if state.member(fullname) is None:
                return state
            return self.rules.leave(state, fullname, self.now())

        return await self._apply(binding.room, depart, conn.connection_id)

    def connection_lost(self, conn: IConnection) -> None:
        """A connection closed without ``leave``.

        When it was its member's last connection on this node, the member is
        away: they keep their place for the reconnect grace.
        """
        if conn not in self._bindings:
            return
        binding, last = self._unbind(conn)
        if not last or self._stopping:
            return
        fullname = binding.identity.fullname
        now = self.now()
        away = on_existing(lambda s: self.rules.disconnect(s, fullname, self.node_id, now))
        d = self.store.update(binding.room, away, None)
        d.addErrback(lambda f: self._log.failure("marking {member} away", f, member=fullname))

    # -- the mic ------------------------------------------------------------

    async def status(self, conn: IConnection) -> RoomState:
        binding = self._require_binding(conn)
        state = await self.store.get(binding.room)
        if state is None:
            raise errors.not_in_room()
        self._adopt(state, conn.connection_id)
        local = self.rooms.get(binding.room)
        if local is not None and local.state is not None and local.state.version > state.version:
            return local.state  # a newer change arrived while the read was under way
        return state

    async def ask(self, conn: IConnection, accept: bool) -> RoomState:
        return await self._change(conn, lambda s, b, now: self.rules.ask(s, b.identity.fullname, accept, now))

    async def cut(self, conn: IConnection) -> RoomState:
        """The singer ends their song; an admin may end anyone's."""
        return await self._change(
            conn, lambda s, b, now: self.rules.cut(s, b.identity.fullname, now, admin=b.identity.admin)
        )

    def _target(self, binding: Binding, target: Any) -> str:
        """The member an action names: oneself unless an admin names another."""
        if target is None or target == "":
            return binding.identity.fullname
        name = wire.require_text(target, "target")
        if name != binding.identity.fullname and not binding.identity.admin:
            raise errors.forbidden()
        return name

    async def dequeue(self, conn: IConnection, target: Any = None) -> RoomState:
        """Cancel a queued song: one's own, or (admins) anyone's."""
        binding = self._require_binding(conn)
        fullname = self._target(binding, target)
        return await self._change(conn, lambda s, b, now: self.rules.dequeue(s, fullname, now))

    async def kick(self, conn: IConnection, target: Any) -> RoomState:
        """(Admins) remove a member from the room, as if they had left."""
        binding = self._require_binding(conn)
        if not binding.identity.admin:
            raise errors.forbidden()
        fullname = wire.require_text(target, "target")

        def remove(state: RoomState, b: Binding, now: float) -> RoomState:
            if state.member(fullname) is None:
                raise errors.not_member()
            return self.rules.leave(state, fullname, now)

        return await self._change(conn, remove)

    async def sing(self, conn: IConnection, sid: Any, duration: Any) -> RoomState:
        """Queue a song over the socket: the HTTP API's rules and errors."""
        binding = self._require_binding(conn)
        return await self._queue(binding.room, binding.identity, sid, duration, conn.connection_id)

    async def queue_song(self, room: Any, token: Any, sid: Any, duration: Any) -> RoomState:
        """(HTTP) queue a song from the catalog for the member holding ``token``."""
        room_id = wire.require_text(room, "room", MAX_ROOM_ID_LENGTH)
        wire.require_text(sid, "sid", 128)
        wire.parse_duration(duration, self.max_song_seconds)
        if not isinstance(token, str) or not token:
            raise errors.auth_failed("a non-empty token is required")
        state = await self.store.get(room_id)
        if state is None:
            raise errors.room_not_found()
        identity: Identity = await maybeDeferred(self.authority.resolve, token, state)
        return await self._queue(room_id, identity, sid, duration, None)

    async def _queue(self, room_id: str, identity: Identity, sid: Any, duration: Any, origin: str | None) -> RoomState:
        sid_text = wire.require_text(sid, "sid", 128)
        seconds = wire.parse_duration(duration, self.max_song_seconds)
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

        queued = await self._update(room_id, enqueue, origin)
        assert queued is not None
        return queued

    # -- messages -------------------------------------------------------------

    def _message(self, binding: Binding, action: str, **fields: Any) -> dict[str, Any]:
        """A relayed message: names the sender, never carries their token."""
        identity = binding.identity
        return {
            "action": action,
            "room": binding.room,
            "fullname": identity.fullname,
            "nick": identity.nick,
            "avatar": identity.avatar,
            **fields,
        }

    async def _relay(self, conn: IConnection, message: dict[str, Any]) -> dict[str, Any]:
        binding = self._require_binding(conn)
        await self.store.publish(binding.room, message, conn.connection_id)
        return message

    async def boardcast(self, conn: IConnection, body: dict[str, Any]) -> dict[str, Any]:
        """Relay ``body`` to every member of the room, naming the sender."""
        binding = self._require_binding(conn)
        self._check_size("body", body)
        return await self._relay(conn, self._message(binding, "boardcast", body=body))

    async def chat(self, conn: IConnection, content: Any) -> dict[str, Any]:
        """Relay a chat line to the room and keep it in the room's history."""
        binding = self._require_binding(conn)
        if not isinstance(content, str) or not content:
            raise errors.bad_request("'content' must be a non-empty string")
        self._check_size("content", content)
        message = self._message(binding, "chat", content=content, time=wire.timestamp(self.now()))
        await self.store.add_history(binding.room, message, HISTORY_LENGTH)
        return await self._relay(conn, message)

    async def history(self, conn: IConnection) -> list[dict[str, Any]]:
        """The room's last chat messages, newest first."""
        binding = self._require_binding(conn)
        return await self.store.history(binding.room)

    async def device(self, conn: IConnection, device: Any, value: Any) -> dict[str, Any]:
        """Tell the room that a member's mic or camera went on or off."""
        binding = self._require_binding(conn)
        name = wire.require_text(device, "device", 32)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise errors.bad_request("'value' must be a string or an integer")
        self._check_size("value", value)
        return await self._relay(conn, self._message(binding, "device", device=name, value=value))

    # -- frames ---------------------------------------------------------------

    def room_frame(self, state: RoomState) -> Frame:
        """The push frame for ``state``, encoded once per room version.

        When a newer version of the room has already been pushed here (a
        shared store delivers other nodes' changes on their own connection),
        that one is returned: a reply never shows a member an older room than
        a push already did.
        """
        local = self.rooms.get(state.room)
        if local is not None and local.frame is not None and local.version >= state.version:
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
        if local is None or self._stopping:
            return  # not a room of this node (any more)
        if state is None:
            local.cancel_timer()
            del self.rooms[room_id]
            self.store.unwatch(room_id)
            self._let_go(local, set())
            return
        if state.version <= local.version:
            return
        self._show(local, state, origin)

    def _show(self, local: LocalRoom, state: RoomState, origin: str | None) -> None:
        """Take ``state`` as the room's: re-arm its timer, push it, let go of those who left."""
        self._repair_presence(local, state)
        local.state = state
        local.frame = None
        self._arm(local, state)
        local.frame = frame = self.room_frame(state)
        self._push(local, frame, origin)
        self._let_go(local, {m.fullname for m in state.members})

    def _repair_presence(self, local: LocalRoom, state: RoomState) -> None:
        """Members connected here whom ``state`` no longer places on this node are put back.

        Another node may have taken this one for dead (its heartbeats could
        not be written, say, while Redis was unreachable) and marked its
        members away; they are here, so they are back at once.
        """
        for fullname in local.connections:
            member = state.member(fullname)
            key = (state.room, fullname)
            if member is None or self.node_id in member.nodes or key in self._repairing:
                continue
            self._repairing.add(key)
            Deferred.fromCoroutine(self._mark_present(state.room, fullname))

    async def _mark_present(self, room_id: str, fullname: str) -> None:
        self._log.info("{member} is connected here; marking them present again", member=fullname)
        try:
            await self._update(room_id, partial(self._present, fullname=fullname), None)
        except errors.KTVError as e:
            self._log.warn("could not mark {member} present: {error}", member=fullname, error=e.en)
        except Exception:
            self._log.failure("marking {member} present", member=fullname)
        finally:
            self._repairing.discard((room_id, fullname))

    def _present(self, state: RoomState | None, fullname: str) -> RoomState | None:
        if state is None:
            return None
        member = state.member(fullname)
        local = self.rooms.get(state.room)
        if member is None or local is None or fullname not in local.connections:
            return state
        return self.rules.join(state, member, self.node_id)

    def _let_go(self, local: LocalRoom, members: set[str]) -> None:
        """Unbind the connections of members who are no longer in the room (left, kicked)."""
        for fullname in [name for name in local.connections if name not in members]:
            for conn in local.connections.pop(fullname):
                self._bindings.pop(conn, None)
        self._release_if_unused(local)

    def room_message(self, room_id: str, message: dict[str, Any], origin: str | None) -> None:
        local = self.rooms.get(room_id)
        if local is None:
            return
        now = self.now()
        frame = Frame(wire.encode(wire.envelope(message, now, kind=wire.TYPE_MESSAGE)))
        self._push(local, frame, origin)

    # -- timers ---------------------------------------------------------------

    def _arm(self, local: LocalRoom, state: RoomState) -> None:
        """Keep exactly one timer per room, at its next deadline."""
        local.cancel_timer()
        delay = max(0.0, state.deadline - self.now())
        local.timer = self.clock.callLater(delay, self._expire, state.room, state.version)

    def _expire(self, room_id: str, version: int) -> None:
        local = self.rooms.get(room_id)
        if local is not None:
            local.timer = None
        now = self.now()
        d = self.store.update(room_id, on_existing(lambda s: self.rules.expire(s, version, now)), None)
        d.addErrback(lambda f: self._log.failure("moving room {room} on", f, room=room_id))

    def stop(self) -> None:
        """Cancel every timer."""
        for local in self.rooms.values():
            local.cancel_timer()

    # -- a shared store: sweeps, heartbeats, catching up ---------------------------

    def start(self) -> None:
        """Begin this node's share of the upkeep of a shared store's rooms."""
        if self.shared is None:
            return
        self.shared.on_resubscribed = self.refresh
        self._upkeep = LoopingCall(self._maintain)
        self._upkeep.clock = self.clock
        self._upkeep.start(self.sweep_interval, now=True).addErrback(
            lambda f: self._log.failure("room upkeep stopped", f)
        )

    async def shutdown(self) -> None:
        """Stop: with a shared store, this node's members keep their places for the grace.

        Their connections are about to close; marking them away now (instead
        of waiting for other nodes to notice this one is gone) starts their
        grace at once, so a rolling restart costs nobody their turn.
        """
        self._stopping = True
        if self._upkeep is not None and self._upkeep.running:
            self._upkeep.stop()
        self.stop()
        if self.shared is None:
            return
        now = self.now()
        for room_id in list(self.rooms):
            try:
                await self.store.update(room_id, self._node_gone(self.node_id, now), None)
            except Exception:
                self._log.failure("handing over room {room}", room=room_id)
        try:
            await self.shared.node_left(self.node_id)
        except Exception:
            self._log.failure("leaving the node list")

    def _node_gone(self, node: str, now: float) -> Change:
        return on_existing(lambda s: self.rules.disconnect_node(s, node, now))

    async def _heartbeat(self, now: float) -> None:
        assert self.shared is not None
        await self.shared.heartbeat(self.node_id, now + self.node_ttl)
        self._alive_until = max(self._alive_until, now + self.node_ttl)

    async def _heartbeat_once(self) -> None:
        """Be in the store's node list before taking on members there.

        Other nodes only notice the death of a node that is in the list: a
        node that died before its first sweep's heartbeat (or whose last one
        ran out) would leave its members in their rooms for ever.
        """
        now = self.now()
        if self._alive_until <= now:
            await self._heartbeat(now)

    async def _maintain(self) -> None:
        """Once a sweep interval: heartbeat, fire overdue rooms, reap dead nodes' members."""
        shared = self.shared
        assert shared is not None
        now = self.now()
        try:
            await self._heartbeat(now)
            for room_id in await shared.overdue_rooms(now - SWEEP_SLACK):
                await self.store.update(room_id, self._overdue(now), None)
            if now < self._reap_after:
                return
            for node, rooms in await shared.claim_dead_nodes(now):
                self._log.warn("node {node} is gone; its members are away", node=node)
                for room_id in rooms:
                    await self.store.update(room_id, self._node_gone(node, now), None)
        except errors.KTVError as e:
            if e.kind is not errors.UNAVAILABLE:
                self._log.failure("room upkeep")
        except Exception:
            self._log.failure("room upkeep")

    def _overdue(self, now: float) -> Change:
        return on_existing(lambda s: self.rules.expire(s, s.version, now))

    def refresh(self) -> None:
        """Catch up after the store reconnected: changes may have been missed, and writes lost.

        No node is reaped for a ``node_ttl`` after this: the others could not
        write their heartbeats either, and need a moment to write them again.

        Every watched room is read again; and every room this node has had
        members in is reconciled with the connections it really has (a
        connection that closed, or a ``leave``, while the store was down
        could not be written).
        """
        self._reap_after = self.now() + self.node_ttl
        for room_id in list(self.rooms):
            d = self.store.get(room_id)
            d.addCallback(self._refreshed, room_id)
            d.addErrback(lambda f: self._log.failure("catching up", f))
        Deferred.fromCoroutine(self._reconcile()).addErrback(lambda f: self._log.failure("reconciling", f))

    async def _reconcile(self) -> None:
        shared = self.shared
        assert shared is not None
        now = self.now()
        for room_id in await shared.node_rooms(self.node_id):
            await self.store.update(room_id, on_existing(partial(self._gone_from_here, now=now)), None)

    def _gone_from_here(self, state: RoomState, now: float) -> RoomState:
        """Members listed on this node who have no connection (or join under way) here are disconnected."""
        local = self.rooms.get(state.room)
        here = set(local.connections) if local is not None else set()
        here |= {name for room, name in self._joining if room == state.room}
        for m in state.members:
            if self.node_id in m.nodes and m.fullname not in here:
                state = self.rules.disconnect(state, m.fullname, self.node_id, now)
        return state

    def _refreshed(self, state: RoomState | None, room_id: str) -> None:
        local = self.rooms.get(room_id)
        if local is None:
            return
        if state is None:
            self.room_changed(room_id, None, None)
        elif state.version != local.version:
            self._show(local, state, None)
