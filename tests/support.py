"""What several test modules share: a recording connection and an in-memory server."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ktvtwist.auth import ITokenAuthority, OpenAuthority
from ktvtwist.catalog import MemoryCatalog
from ktvtwist.room import RoomRules
from ktvtwist.server import IConnection, KTVServer
from ktvtwist.store import MemoryRoomStore
from ktvtwist.wire import Frame


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


def memory_server(
    clock: IReactorTime, rules: RoomRules, authority: ITokenAuthority | None = None, **options: Any
) -> KTVServer:
    """A KTVServer on the in-memory store, the sample catalog and (by default) open auth."""
    return KTVServer(
        store=MemoryRoomStore(),
        catalog=MemoryCatalog.sample(),
        authority=authority or OpenAuthority(),
        clock=clock,
        rules=rules,
        **options,
    )
