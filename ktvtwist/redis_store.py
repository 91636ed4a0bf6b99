"""Rooms in Redis, shared by several ``twistd ktv`` nodes.

Redis is the distributed engine; there is no cluster protocol of our own.

Keys (``P`` is ``--redis-prefix``; every key of one room shares the hash tag
``{room}``, so Redis Cluster keeps a room on one slot)::

    P{room}:room      hash: "state" (JSON of RoomState, credentials included), "version"
    P{room}:history   list: chat messages, newest first
    P{room}:events    pub/sub channel: every change and relayed message, in order
    Pdue              sorted set: room -> its next deadline (the timer sweep's index)
    Pnodes            sorted set: node id -> when its heartbeat expires
    Pnode:<id>:rooms  set: rooms where the node has (or had) members

A change is optimistic: read the state, apply the pure change function, then
one Lua script checks that the version is still the one read, writes the new
state and its deadline, and publishes it, atomically; on a conflict the change
is applied again to the newer state.  So two nodes racing on one room can
never both pop the queue head or double-ask.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import txredisapi
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTCP
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ktvtwist import errors
from ktvtwist.room import RoomState
from ktvtwist.store import Change, IRoomListener, ISharedRoomStore

MAX_ATTEMPTS = 50

# KEYS: room hash, due index, chat history.  ARGV: expected version ("" = must
# not exist), new state JSON ("" = delete), new version, deadline, room id,
# channel, event.
CHANGE_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('ZREM', KEYS[2], ARGV[5])
else
  redis.call('HSET', KEYS[1], 'state', ARGV[2], 'version', ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"""


@dataclass(frozen=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """``redis://[:password@]host[:port][/db]``"""
        parsed = urlparse(url)
        if parsed.scheme != "redis" or not parsed.hostname:
            raise ValueError(f"not a redis://host:port/db URL: {url!r}")
        db_text = parsed.path.lstrip("/")
        if db_text and not db_text.isdigit():
            raise ValueError(f"the database in {url!r} must be a number")
        return cls(
            host=parsed.hostname,
            port=parsed.port or 6379,
            db=int(db_text or 0),
            password=unquote(parsed.password) if parsed.password else None,
        )


class _Subscriber(txredisapi.SubscriberProtocol):
    store: RedisRoomStore

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.store._event(channel, message)


class _CommandFactory(txredisapi.RedisFactory):
    """The command connection pool; tells the store when a connection is ready."""

    store: RedisRoomStore

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        self.store._maybe_caught_up()

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        if not self.size:
            # Writes may fail until it is back: catch up then, as after a resubscription.
            self.store._catch_up_pending = True


class _SubscriberFactory(txredisapi.SubscriberFactory):
    protocol = _Subscriber

    def __init__(self, store: RedisRoomStore) -> None:
        super().__init__(isLazy=True)
        self.store = store
        self.replyTimeout = store.reply_timeout
        self.convertNumbers = False
        self.password = store.address.password

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.store = self.store
        # txredisapi does not restore subscriptions after a reconnect.
        protocol.whenConnected().addCallback(self.store._subscriber_ready)
        protocol.whenDisconnected().addCallback(self.store._subscriber_lost)
        return protocol


@implementer(ISharedRoomStore)
class RedisRoomStore:
    """An :class:`ISharedRoomStore` in Redis: durable rooms that several nodes share."""

    _log = Logger()

    def __init__(
        self,
        address: RedisAddress,
        *,
        reactor: IReactorTCP,
        prefix: str = "ktv:",
        reply_timeout: float = 2.0,
        pool_size: int = 1,
    ) -> None:
        self.address = address
        self.reactor = reactor
        self.prefix = prefix
        self.reply_timeout = reply_timeout
        self.pool_size = pool_size
        self._listeners: list[IRoomListener] = []
        self._watched: set[str] = set()
        self._subscriber: _Subscriber | None = None
        self._commands: Any = None
        self._command_factory: Any = None
        self._subscriber_factory: _SubscriberFactory | None = None
        self.on_resubscribed: Callable[[], None] | None = None
        self._catch_up_pending = False
        self.listening = False
        """True while the subscriber connection is up and subscribed to every watched room."""

    # -- keys -----------------------------------------------------------------

    def room_key(self, room_id: str) -> str:
        return f"{self.prefix}{{{room_id}}}:room"

    def history_key(self, room_id: str) -> str:
        return f"{self.prefix}{{{room_id}}}:history"

    def channel(self, room_id: str) -> str:
        return f"{self.prefix}{{{room_id}}}:events"

    @property
    def due_key(self) -> str:
        return f"{self.prefix}due"

    @property
    def nodes_key(self) -> str:
        return f"{self.prefix}nodes"

    def node_rooms_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:rooms"

    def catalog_key(self) -> str:
        return f"{self.prefix}catalog"

    def token_key(self, token: str) -> str:
        return f"{self.prefix}token:{token}"

    # -- connections ----------------------------------------------------------

    def start(self) -> None:
        """Connect (and keep reconnecting) in the background; never waits for Redis."""
        endpoint = TCP4ClientEndpoint(self.reactor, self.address.host, self.address.port, timeout=5)
        # One pipelined connection (pool_size 1) keeps this node's commands in
        # the order they were issued: with several, txredisapi sends each
        # command on one picked at random, so a member's messages (PUBLISH)
        # and chat lines could overtake each other on their way to Redis.
        factory = _CommandFactory(
            f"{self.address.host}:{self.address.port}",
            self.address.db,
            self.pool_size,
            isLazy=True,
            password=self.address.password,
            replyTimeout=self.reply_timeout,
            convertNumbers=False,
        )
        factory.maxDelay = 2
        factory.store = self
        factory.startConnecting(endpoint)
        self._command_factory = factory
        self._commands = factory.handler
        subscriber = _SubscriberFactory(self)
        subscriber.maxDelay = 2
        subscriber.startConnecting(endpoint)
        self._subscriber_factory = subscriber

    def stop(self) -> Deferred[Any]:
        factories = [f for f in (self._command_factory, self._subscriber_factory) if f is not None]
        self._command_factory = self._subscriber_factory = None
        return DeferredList([f.disconnect() for f in factories], consumeErrors=True)

    @property
    def connected(self) -> bool:
        factory = self._command_factory
        return factory is not None and factory.size > 0

    def redis(self) -> Any:
        """The command connection pool, or ``unavailable`` at once when Redis is down."""
        if not self.connected:
            raise errors.unavailable()
        return self._commands

    def _redis_failed(self, failure: Failure) -> Failure:
        """Turn a lost connection or a reply timeout into ``unavailable``.

        Error replies (a wrong type, a script error) are bugs, not outages:
        they go on as they are and end up as ``internal_error``.
        """
        if failure.check(txredisapi.ConnectionError, ConnectionError, TimeoutError):
            self._log.warn("Redis command failed: {error}", error=failure.getErrorMessage())
            raise errors.unavailable()
        return failure

    @inlineCallbacks
    def _call(self, method: str, *args: Any) -> Any:
        result = yield getattr(self.redis(), method)(*args).addErrback(self._redis_failed)
        return result

    # -- pub/sub ----------------------------------------------------------------

    def _subscriber_ready(self, protocol: _Subscriber) -> None:
        self._subscriber = protocol
        channels = [self.channel(room) for room in self._watched]
        d = protocol.subscribe(channels) if channels else succeed(None)

        def resubscribed(_: Any) -> None:
            self.listening = True
            self._catch_up_pending = True
            self._maybe_caught_up()

        d.addCallback(resubscribed)
        d.addErrback(lambda f: self._log.failure("re-subscribing", f))

    def _maybe_caught_up(self) -> None:
        """Once both connections are back after a (re)subscription, let the server catch up."""
        if self._catch_up_pending and self.listening and self.connected:
            self._catch_up_pending = False
            if self.on_resubscribed is not None:
                self.on_resubscribed()

    def _subscriber_lost(self, protocol: _Subscriber) -> None:
        if self._subscriber is protocol:
            self._subscriber = None
            self.listening = False

    def watch(self, room_id: str) -> Deferred[None]:
        """Receive the room's events from now on (before acting on it, so nothing is missed)."""
        if room_id in self._watched:
            return succeed(None)
        self._watched.add(room_id)
        if self._subscriber is None:
            return succeed(None)  # subscribed on (re)connect
        d: Deferred[Any] = self._subscriber.subscribe(self.channel(room_id))
        d.addErrback(self._redis_failed)
        return d.addCallback(lambda _: None)

    def unwatch(self, room_id: str) -> None:
        if room_id not in self._watched:
            return
        self._watched.discard(room_id)
        if self._subscriber is not None:
            self._subscriber.unsubscribe(self.channel(room_id)).addErrback(lambda f: None)

    def _event(self, channel: Any, message: Any) -> None:
        try:
            event = json.loads(message)
            room_id = event["room"]
            origin = event.get("origin")
            if event["kind"] == "state":
                data = event["state"]
                state = RoomState.from_dict(data) if data is not None else None
                for listener in list(self._listeners):
                    listener.room_changed(room_id, state, origin)
            elif event["kind"] == "message":
                for listener in list(self._listeners):
                    listener.room_message(room_id, event["message"], origin)
        except Exception:
            self._log.failure("handling an event on {channel}", channel=channel)

    # -- IRoomStore -------------------------------------------------------------

    def subscribe(self, listener: IRoomListener) -> None:
        self._listeners.append(listener)

    @inlineCallbacks
    def _read(self, room_id: str) -> Any:
        state_json, version = yield self._call("hmget", self.room_key(room_id), ["state", "version"])
        if state_json is None:
            return None, None
        return RoomState.from_dict(json.loads(state_json)), version

    def get(self, room_id: str) -> Deferred[RoomState | None]:
        return self._read(room_id).addCallback(lambda pair: pair[0])

    @inlineCallbacks
    def update(self, room_id: str, change: Change, origin: str | None) -> Any:
        for _ in range(MAX_ATTEMPTS):
            old, version = yield self._read(room_id)
            new = change(old)
            if new is old:
                return new
            event = {
                "kind": "state",
                "room": room_id,
                "origin": origin,
                "state": new.to_dict() if new is not None else None,
            }
            done = yield self._call(
                "eval",
                CHANGE_SCRIPT,
                [self.room_key(room_id), self.due_key, self.history_key(room_id)],
                [
                    version if version is not None else "",
                    json.dumps(event["state"]) if new is not None else "",
                    str(new.version) if new is not None else "",
                    repr(new.deadline) if new is not None else "",
                    room_id,
                    self.channel(room_id),
                    json.dumps(event),
                ],
            )
            if int(done) == 1:
                return new
        raise errors.server_busy()

    def publish(self, room_id: str, message: dict[str, Any], origin: str | None) -> Deferred[None]:
        event = {"kind": "message", "room": room_id, "origin": origin, "message": message}
        return self._call("publish", self.channel(room_id), json.dumps(event)).addCallback(lambda _: None)

    @inlineCallbacks
    def add_history(self, room_id: str, message: dict[str, Any], limit: int) -> Any:
        key = self.history_key(room_id)
        yield self._call("lpush", key, json.dumps(message))
        yield self._call("ltrim", key, 0, limit - 1)

    @inlineCallbacks
    def history(self, room_id: str) -> Any:
        items = yield self._call("lrange", self.history_key(room_id), 0, -1)
        return [json.loads(item) for item in items]

    # -- nodes and timers -------------------------------------------------------

    def heartbeat(self, node_id: str, expires: float) -> Deferred[Any]:
        return self._call("zadd", self.nodes_key, repr(expires), node_id)

    @inlineCallbacks
    def node_left(self, node_id: str) -> Any:
        yield self._call("zrem", self.nodes_key, node_id)
        yield self._call("delete", self.node_rooms_key(node_id))

    @inlineCallbacks
    def node_rooms(self, node_id: str) -> Any:
        rooms = yield self._call("smembers", self.node_rooms_key(node_id))
        return sorted(rooms)

    def remember_room(self, node_id: str, room_id: str) -> Deferred[Any]:
        return self._call("sadd", self.node_rooms_key(node_id), room_id)

    @inlineCallbacks
    def overdue_rooms(self, before: float, limit: int = 200) -> Any:
        """Rooms whose deadline is before ``before``: the sweep's work."""
        rooms = yield self._call("zrangebyscore", self.due_key, "-inf", repr(before), False, 0, limit)
        return list(rooms)

    @inlineCallbacks
    def claim_dead_nodes(self, now: float) -> Any:
        """Nodes whose heartbeat expired, each with its rooms; each dead node goes to one claimer."""
        dead = yield self._call("zrangebyscore", self.nodes_key, "-inf", repr(now))
        claimed = []
        for node_id in dead:
            removed = yield self._call("zrem", self.nodes_key, node_id)
            if int(removed) == 1:
                rooms = yield self._call("smembers", self.node_rooms_key(node_id))
                yield self._call("delete", self.node_rooms_key(node_id))
                claimed.append((node_id, sorted(rooms)))
        return claimed


def new_node_id() -> str:
    return uuid.uuid4().hex[:12]
