"""Where rooms live, and how their changes reach every listener.

:class:`IRoomStore` is the seam for scale-out: its methods return Deferreds so
a store backed by Redis (shared by several nodes) can stand in for the
in-memory one.  A store applies a pure change function atomically and then
tells every subscribed listener (on every node, for a shared store) about the
new state, in version order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Attribute, Interface, implementer

from ktvtwist.room import RoomState

Change = Callable[[RoomState | None], RoomState | None]


class IRoomListener(Interface):
    def room_changed(room_id: str, state: RoomState | None, origin: str | None) -> None:
        """``room_id`` now holds ``state`` (None: the room was deleted).

        ``origin`` names the connection whose action caused the change (it
        gets the new state as its reply), or None.
        """

    def room_message(room_id: str, message: dict[str, Any], origin: str | None) -> None:
        """A message (such as a ``boardcast``) for every member of ``room_id``."""


class IRoomStore(Interface):
    def watch(room_id: str) -> Deferred[None]:
        """Deliver the room's changes and messages to the listeners from now on."""

    def unwatch(room_id: str) -> None:
        """Stop delivering the room's changes (no member of this node is in it)."""

    def get(room_id: str) -> Deferred[RoomState | None]:
        """The room's current state, or None if there is no such room."""

    def update(room_id: str, change: Change, origin: str | None) -> Deferred[RoomState | None]:
        """Atomically replace the room's state with ``change(state)``.

        ``change`` is pure and may be called more than once (a store may
        retry it).  It raises to refuse the change; it returns the very
        object it was given to change nothing (nobody is told), or None to
        delete the room.  The Deferred fires with the stored result.
        """

    def publish(room_id: str, message: dict[str, Any], origin: str | None) -> Deferred[None]:
        """Deliver ``message`` to every listener's ``room_message``."""

    def subscribe(listener: IRoomListener) -> None:
        """Tell ``listener`` about every change and message from now on."""

    def add_history(room_id: str, message: dict[str, Any], limit: int) -> Deferred[None]:
        """Keep ``message`` as the room's newest chat message, and at most ``limit`` of them."""

    def history(room_id: str) -> Deferred[list[dict[str, Any]]]:
        """The room's kept chat messages, newest first."""


@implementer(IRoomStore)
class MemoryRoomStore:
    """Rooms in a dict of one process: the embedded default.

    Changes are applied and announced synchronously, so listeners hear of a
    change before the caller's Deferred fires.  Every room is this node's, so
    watching is a no-op.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, RoomState] = {}
        self._history: dict[str, deque[dict[str, Any]]] = {}
        self._listeners: list[IRoomListener] = []

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, room_id: str) -> Deferred[RoomState | None]:
        return succeed(self._rooms.get(room_id))

    def watch(self, room_id: str) -> Deferred[None]:
        return succeed(None)

    def unwatch(self, room_id: str) -> None:
        pass

    def update(self, room_id: str, change: Change, origin: str | None) -> Deferred[RoomState | None]:
        old = self._rooms.get(room_id)
        try:
            new = change(old)
        except Exception:
            return fail()
        if new is old:
            return succeed(new)
        if new is None:
            del self._rooms[room_id]
            self._history.pop(room_id, None)
        else:
            self._rooms[room_id] = new
        for listener in list(self._listeners):
            listener.room_changed(room_id, new, origin)
        return succeed(new)

    def publish(self, room_id: str, message: dict[str, Any], origin: str | None) -> Deferred[None]:
        for listener in list(self._listeners):
            listener.room_message(room_id, message, origin)
        return succeed(None)

    def subscribe(self, listener: IRoomListener) -> None:
        self._listeners.append(listener)

    def add_history(self, room_id: str, message: dict[str, Any], limit: int) -> Deferred[None]:
        kept = self._history.get(room_id)
        if kept is None or kept.maxlen != limit:
            kept = self._history[room_id] = deque(kept or (), maxlen=limit)
        kept.appendleft(message)
        return succeed(None)

    def history(self, room_id: str) -> Deferred[list[dict[str, Any]]]:
        return succeed(list(self._history.get(room_id, ())))


class ISharedRoomStore(IRoomStore):
    """A store that several nodes share (Redis).

    A node then watches only the rooms its members are in; the nodes keep
    time for all rooms together through the store's due index (the sweep),
    and notice each other's death through heartbeats.
    """

    on_resubscribed = Attribute("Called with no arguments after the store reconnected (changes may have been missed).")
    connected = Attribute("True while the store can be reached.")
    listening = Attribute("True while changes from other nodes are being received.")

    def remember_room(node_id: str, room_id: str) -> Deferred[Any]:
        """Note that ``node_id`` has members in ``room_id`` (for when it dies)."""

    def heartbeat(node_id: str, expires: float) -> Deferred[Any]:
        """``node_id`` is alive until ``expires``."""

    def node_left(node_id: str) -> Deferred[Any]:
        """``node_id`` stopped cleanly."""

    def node_rooms(node_id: str) -> Deferred[list[str]]:
        """The rooms ``node_id`` has had members in (see ``remember_room``)."""

    def overdue_rooms(before: float) -> Deferred[list[str]]:
        """Rooms whose deadline came before ``before``."""

    def claim_dead_nodes(now: float) -> Deferred[list[tuple[str, list[str]]]]:
        """Nodes whose heartbeat expired, each with its rooms; every dead node is claimed once."""
