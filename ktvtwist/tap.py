"""``twistd ktv``: options and the service tree."""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from ktvtwist.auth import OpenAuthority
from ktvtwist.catalog import CatalogError, MemoryCatalog
from ktvtwist.errors import Language
from ktvtwist.http import HTTPAPI
from ktvtwist.room import RoomRules
from ktvtwist.server import KTVServer
from ktvtwist.store import MemoryRoomStore
from ktvtwist.web import make_site
from ktvtwist.websocket import KTVWebSocketFactory

DEFAULT_LISTEN = "tcp:8888:interface=127.0.0.1"


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return seconds


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def _language(value: str) -> Language:
    return Language(value)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run the KTV room server: the WebSocket room protocol and the HTTP API on each --listen address."
    optParameters = [
        ["ask-timeout", None, 15.0, "Seconds a member has to take the mic when asked.", _positive_seconds],
        ["rest-timeout", None, 30.0, "Seconds of rest between songs.", _positive_seconds],
        ["catalog", None, None, "Path of a JSON song catalog (default: the sample shipped with ktvtwist)."],
        ["max-members", None, 12, "Members per room; a join beyond it is refused.", _positive_int],
        ["max-song-seconds", None, 3600, "Longest accepted song duration, in seconds.", _positive_int],
        ["language", None, "zh", "Language of error messages: zh or en.", _language],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Twisted endpoint to listen on, may repeat [default: tcp:8888:interface=127.0.0.1]."""
        self["listen"].append(description)

    def postOptions(self) -> None:
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["catalog"]:
            try:
                self["catalog_songs"] = MemoryCatalog.from_file(self["catalog"])
            except CatalogError as e:
                raise usage.UsageError(str(e)) from None
        else:
            self["catalog_songs"] = MemoryCatalog.sample()


class ServerService(Service):
    """Stops the room timers when the application stops."""

    _log = Logger()

    def __init__(self, server: KTVServer) -> None:
        self.server = server

    def startService(self) -> None:
        super().startService()
        if self.server.authority.open:
            self._log.warn(
                "Auth is open: any non-empty token is accepted and members are who their frames say. "
                "Use it only for local development."
            )

    def stopService(self) -> Any:
        self.server.stop()
        return super().stopService()


def makeService(config: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    clock: IReactorTime = reactor
    rules = RoomRules(
        ask_seconds=config["ask-timeout"],
        rest_seconds=config["rest-timeout"],
        max_members=config["max-members"],
    )
    server = KTVServer(
        store=MemoryRoomStore(),
        catalog=config["catalog_songs"],
        authority=OpenAuthority(),
        clock=clock,
        rules=rules,
        max_song_seconds=config["max-song-seconds"],
    )
    language = Language(config["language"])
    site = make_site(KTVWebSocketFactory(server, language=language, reactor=reactor), HTTPAPI(server, language))

    top = MultiService()
    ServerService(server).setServiceParent(top)
    for description in config["listen"]:
        StreamServerEndpointService(serverFromString(reactor, description), site).setServiceParent(top)
    return top
