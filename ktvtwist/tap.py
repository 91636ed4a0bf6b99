"""``twistd ktv``: options and the service tree."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from ktvtwist.auth import ITokenAuthority, OpenAuthority, RedisTokenAuthority, SignedAuthority, read_secret_file
from ktvtwist.catalog import CatalogError, ICatalog, MemoryCatalog
from ktvtwist.errors import Language
from ktvtwist.http import HTTPAPI
from ktvtwist.limits import OriginPolicy
from ktvtwist.redis_catalog import RedisCatalog
from ktvtwist.redis_store import RedisAddress, RedisRoomStore, new_node_id
from ktvtwist.room import RoomRules
from ktvtwist.server import KTVServer
from ktvtwist.store import IRoomStore, MemoryRoomStore
from ktvtwist.web import make_site
from ktvtwist.websocket import KTVWebSocketFactory

DEFAULT_LISTEN = "tcp:8888:interface=127.0.0.1"


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return seconds


def _non_negative_seconds(value: str) -> float:
    seconds = float(value)
    if not 0 <= seconds < float("inf"):
        raise ValueError("must be a number of seconds, 0 or more")
    return seconds


def is_loopback_only(description: str) -> bool:
    """Whether a listen endpoint description can only be reached from this machine."""
    parts = re.split(r"(?<!\\):", description)
    kind = parts[0].strip().lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    options = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
    interface = options.get("interface", "").replace("\\:", ":").strip("[]")
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False


def exposure_problem(config: Options) -> str | None:
    """Why this configuration must not start, in one line, or None."""
    if config["auth"] != "open" or config["insecure-open"]:
        return None
    exposed = [d for d in config["listen"] if not is_loopback_only(d)]
    if not exposed:
        return None
    return (
        f"refusing to start: --auth open on {', '.join(exposed)} lets anyone on the network act as anyone; "
        "use --auth signed --secret-file PATH, listen on 127.0.0.1 only, or pass --insecure-open"
    )


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be a whole number of at least 1")
    return number


def _language(value: str) -> Language:
    return Language(value)


def _auth_mode(value: str) -> str:
    if value not in ("open", "signed", "redis"):
        raise ValueError("must be open, signed or redis")
    return value


def _positive_number(value: str) -> float:
    number = float(value)
    if not 0 < number < float("inf"):
        raise ValueError("must be a positive number")
    return number


def _origins(value: str) -> list[str]:
    origins = [o.strip() for o in value.split(",") if o.strip()]
    OriginPolicy(origins)  # raises ValueError for an empty list
    return origins


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run the KTV room server: the WebSocket room protocol and the HTTP API on each --listen address."
    optFlags = [
        ["insecure-open", None, "Allow --auth open on addresses other than loopback (anyone can be anyone)."],
        ["catalog-redis", None, "Look songs up in the catalog hash in Redis (needs --redis; see ktv-admin)."],
    ]
    optParameters = [
        ["ask-timeout", None, 15.0, "Seconds a member has to take the mic when asked.", _positive_seconds],
        ["rest-timeout", None, 30.0, "Seconds of rest between songs.", _positive_seconds],
        [
            "reconnect-grace",
            None,
            30.0,
            "Seconds a member whose last connection dropped keeps their place (0: leave at once).",
            _non_negative_seconds,
        ],
        [
            "max-rooms",
            None,
            10000,
            "Rooms this process holds; a join that would open another is refused.",
            _positive_int,
        ],
        [
            "max-message-bytes",
            None,
            4096,
            "Largest boardcast body, chat line or device value, in bytes.",
            _positive_int,
        ],
        ["redis", None, None, "Keep rooms in Redis, shared with other nodes: redis://[:password@]host[:port][/db]."],
        ["redis-prefix", None, "ktv:", "Prefix of every Redis key and channel."],
        [
            "redis-timeout",
            None,
            2.0,
            "Seconds to wait for a Redis reply before answering 'unavailable'.",
            _positive_seconds,
        ],
        ["node-id", None, None, "This node's name among those sharing Redis (default: random per process)."],
        [
            "node-ttl",
            None,
            10.0,
            "Seconds after its last heartbeat that a silent node counts as dead.",
            _positive_seconds,
        ],
        ["catalog", None, None, "Path of a JSON song catalog (default: the sample shipped with ktvtwist)."],
        ["max-members", None, 12, "Members per room; a join beyond it is refused.", _positive_int],
        ["max-song-seconds", None, 3600, "Longest accepted song duration, in seconds.", _positive_int],
        ["max-connections", None, 10000, "WebSocket connections per process; more are refused (503).", _positive_int],
        ["rate", None, 20.0, "Frames a second one connection (or HTTP calls one token) may send.", _positive_number],
        ["burst", None, 40, "Frames one connection may send at once above --rate.", _positive_int],
        ["max-send-buffer", None, 1048576, "Unread bytes a connection may hold before it is dropped.", _positive_int],
        ["ping-interval", None, 25.0, "Seconds between WebSocket pings.", _positive_seconds],
        ["ping-timeout", None, 8.0, "Seconds a client has to answer a ping before it is dropped.", _positive_seconds],
        ["allowed-origins", None, "*", "Comma-separated browser Origins allowed (wildcards: *).", _origins],
        ["max-frame-bytes", None, 65536, "Largest WebSocket frame or message, in bytes.", _positive_int],
        ["language", None, "zh", "Language of error messages: zh or en.", _language],
        [
            "auth",
            None,
            "open",
            "How tokens are checked: open, signed (HS256 JWTs) or redis (token records in Redis; needs --redis).",
            _auth_mode,
        ],
        ["secret-file", None, None, "File holding the signing secret for --auth signed (at least 32 bytes)."],
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
        self["redis_address"] = None
        if self["redis"]:
            try:
                self["redis_address"] = RedisAddress.parse(self["redis"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        if self["catalog-redis"]:
            if not self["redis"]:
                raise usage.UsageError("--catalog-redis needs --redis")
            if self["catalog"]:
                raise usage.UsageError("--catalog and --catalog-redis cannot be used together")
            self["catalog_songs"] = None
        elif self["catalog"]:
            try:
                self["catalog_songs"] = MemoryCatalog.from_file(self["catalog"])
            except CatalogError as e:
                raise usage.UsageError(str(e)) from None
        else:
            self["catalog_songs"] = MemoryCatalog.sample()
        self["secret"] = None
        if self["auth"] == "signed":
            if not self["secret-file"]:
                raise usage.UsageError("--auth signed needs --secret-file")
            try:
                self["secret"] = read_secret_file(self["secret-file"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None
        elif self["secret-file"]:
            raise usage.UsageError("--secret-file is only used with --auth signed")
        if self["auth"] == "redis" and not self["redis"]:
            raise usage.UsageError("--auth redis needs --redis")


class ServerService(Service):
    """Stops the room timers when the application stops."""

    _log = Logger()

    def __init__(self, server: KTVServer, redis: RedisRoomStore | None = None) -> None:
        self.server = server
        self.redis = redis

    def startService(self) -> None:
        super().startService()
        if self.redis is not None:
            self.redis.start()
        self.server.start()
        if self.server.authority.open:
            self._log.warn(
                "Auth is open: any non-empty token is accepted and members are who their frames say. "
                "Use it only for local development."
            )

    async def _stop(self) -> None:
        await self.server.shutdown()
        if self.redis is not None:
            await self.redis.stop()

    def stopService(self) -> Any:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())


def makeService(config: Options, reactor: Any = None) -> IService:
    problem = exposure_problem(config)
    if problem:
        raise SystemExit(f"ktv: {problem}")
    if reactor is None:
        from twisted.internet import reactor
    clock: IReactorTime = reactor
    rules = RoomRules(
        ask_seconds=config["ask-timeout"],
        rest_seconds=config["rest-timeout"],
        max_members=config["max-members"],
        reconnect_grace=config["reconnect-grace"],
    )
    store: IRoomStore
    redis: RedisRoomStore | None = None
    if config["redis"]:
        store = redis = RedisRoomStore(
            config["redis_address"],
            reactor=reactor,
            prefix=config["redis-prefix"],
            reply_timeout=config["redis-timeout"],
        )
    else:
        store = MemoryRoomStore()
    authority: ITokenAuthority
    if config["auth"] == "signed":
        authority = SignedAuthority(config["secret"], clock)
    elif config["auth"] == "redis":
        assert redis is not None  # postOptions requires --redis
        authority = RedisTokenAuthority(redis)
    else:
        authority = OpenAuthority()
    catalog: ICatalog = config["catalog_songs"]
    if config["catalog-redis"]:
        assert redis is not None  # postOptions requires --redis
        catalog = RedisCatalog(redis)
    server = KTVServer(
        store=store,
        node_id=config["node-id"] or new_node_id(),
        node_ttl=config["node-ttl"],
        catalog=catalog,
        authority=authority,
        clock=clock,
        rules=rules,
        max_song_seconds=config["max-song-seconds"],
        max_rooms=config["max-rooms"],
        max_message_bytes=config["max-message-bytes"],
    )
    language = Language(config["language"])
    origins = config["allowed-origins"]  # the default is the string "*"
    if isinstance(origins, str):
        origins = _origins(origins)
    websocket = KTVWebSocketFactory(
        server,
        language=language,
        reactor=reactor,
        max_message_bytes=config["max-frame-bytes"],
        rate=config["rate"],
        burst=config["burst"],
        max_send_buffer=config["max-send-buffer"],
        max_connections=config["max-connections"],
        allowed_origins=origins,
        ping_interval=config["ping-interval"],
        ping_timeout=config["ping-timeout"],
    )
    api = HTTPAPI(server, language, rate=config["rate"], burst=config["burst"])
    site = make_site(websocket, api)

    top = MultiService()
    ServerService(server, redis).setServiceParent(top)
    for description in config["listen"]:
        StreamServerEndpointService(serverFromString(reactor, description), site).setServiceParent(top)
    return top
