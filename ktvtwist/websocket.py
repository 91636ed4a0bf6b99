"""The WebSocket translator: frames in, room actions out, errors as frames.

A thin layer over :class:`~ktvtwist.server.KTVServer`.  Wire protocol in
brief (docs/protocol.md has the whole contract)::

    client -> {"action": "join"|"status"|"ask"|"cut"|"boardcast"|"leave",
               "room": "R1", "fullname": "alice", "token": "...",
               "body": {...}, "ack": 1}
    server -> {"status": 0, "type": 1, "body": <room>, "message": "success",
               "timestamp": "1527574165.09"}          (push to every member)
              the same + "caller_action", "caller_fullname"  (reply)
              {"status": -1, "type": 1, "body": {}, "code": "...",
               "message": "...", ...}                  (error, to the sender)

Action fields (``ack``) may sit at the top level or inside ``body``.  After
``join`` a connection is that member in that room, whatever later frames
claim.  No frame can raise out of :meth:`KTVServerProtocol.onMessage`: domain
errors become error frames and anything unexpected is logged and answered
with ``internal_error``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ktvtwist import __version__, errors, wire
from ktvtwist.errors import KTVError, Language
from ktvtwist.limits import DEFAULT_BURST, DEFAULT_RATE, OriginPolicy, TokenBucket, send_buffer_of, unsent_bytes
from ktvtwist.room import RoomState
from ktvtwist.server import IConnection, KTVServer

MAX_MESSAGE_BYTES = 64 * 1024
MAX_REFUSED = 100
"""Over-the-rate frames a connection may send within REFUSAL_WINDOW before it is cut off."""
REFUSAL_WINDOW = 10.0
MAX_SEND_BUFFER = 1024 * 1024
"""Bytes a connection may leave unread before it is dropped."""
MAX_CONNECTIONS = 10000
PING_INTERVAL = 25.0
PING_TIMEOUT = 8.0
OPEN_HANDSHAKE_TIMEOUT = 10.0
CLOSE_POLICY_VIOLATION = 1008

Handler = Callable[["KTVServerProtocol", wire.Request], Coroutine[Any, Any, bytes]]


@implementer(IConnection)
class KTVServerProtocol(WebSocketServerProtocol):
    _log = Logger()
    factory: KTVWebSocketFactory
    connection_id = ""
    _frames: TokenBucket
    _refusals: TokenBucket
    _send_buffer: FileDescriptor | None = None
    _abort_call: IDelayedCall | None = None

    # -- connection lifecycle ---------------------------------------------

    @property
    def ktv(self) -> KTVServer:
        """The room server this connection belongs to."""
        return self.factory.room_server

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn's tcpNoDelay option never reaches the socket when the
        # protocol takes over a twisted.web request; without this a second
        # frame can wait ~40 ms for a delayed ACK (Nagle).
        try:
            cast(Any, self.transport).setTcpNoDelay(True)
        except Exception:
            pass
        factory = self.factory
        self._frames = TokenBucket(factory.rate, factory.burst, factory.clock)
        self._refusals = TokenBucket(factory.max_refused / REFUSAL_WINDOW, factory.max_refused, factory.clock)
        # Over a real socket (the TCP transport taken over from twisted.web,
        # or the one under TLS) this is the transport's write buffer.
        self._send_buffer = send_buffer_of(self.transport)

    def onConnect(self, request: ConnectionRequest) -> None:
        # Over the cap, Autobahn's maxConnections has already answered 503.
        if not self.factory.origins.allows(request.origin):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        self.connection_id = self.ktv.new_connection_id()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # Autobahn leaves its closing-handshake timer running when the
        # connection is lost first; it would keep this protocol alive.
        if self.closeHandshakeTimeoutCall is not None:
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None
        if self._abort_call is not None:
            self._abort_call.cancel()
            self._abort_call = None
        try:
            self.ktv.connection_lost(self)
        except Exception:
            self._log.failure("cleaning up a closed connection")

    # -- IConnection --------------------------------------------------------

    def send(self, frame: wire.Frame) -> None:
        if self.state != self.STATE_OPEN:
            return
        if frame.prepared is None:
            frame.prepared = self.factory.prepareMessage(frame.payload)
        self.sendPreparedMessage(frame.prepared)
        self._check_send_buffer()

    # -- frames in --------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != self.STATE_OPEN:
            return  # closing: whatever else the client sent is ignored
        if not self._frames.take():
            self._refuse()
            return
        try:
            self._dispatch(payload, isBinary)
        except Exception:
            self._log.failure("dispatching a frame")

    def _dispatch(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._send_error(errors.bad_request("binary frames are not accepted; send JSON text"), "")
            return
        try:
            request = wire.parse_request(payload)
        except KTVError as e:
            self._send_error(e, "")
            return
        handler = HANDLERS.get(request.action)
        if handler is None:
            self._send_error(errors.unknown_action(request.action[:64]), request)
            return
        d: Deferred[bytes] = Deferred.fromCoroutine(handler(self, request))
        d.addCallbacks(self._send_payload, self._send_failure, errbackArgs=(request,))

    # -- frames out -------------------------------------------------------

    def _caller(self, request: wire.Request | str) -> tuple[str, str]:
        """The ``caller_action`` and ``caller_fullname`` for a reply to ``request``."""
        if isinstance(request, str):
            return request, ""
        binding = self.ktv.binding(self)
        fullname = binding.identity.fullname if binding else request.claimed_fullname[:64]
        return request.action[:64], fullname

    def _send_payload(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload)
            self._check_send_buffer()

    # -- limits -------------------------------------------------------------

    def onPing(self, payload: bytes) -> None:
        """Pings count against the frame rate too: a ping flood is a flood.

        A ping over the rate gets no pong (and no error frame); a client that
        keeps at it is cut off like any other flooder.
        """
        if self._frames.take():
            super().onPing(payload)
        elif not self._refusals.take():
            self.wasNotCleanReason = f"still flooding after {self.factory.max_refused} frames were refused"
            self._close_for_policy("rate limit exceeded")

    def _refuse(self) -> None:
        """A frame over the rate: answered with ``rate_limited``, not processed.

        A client that keeps at it (more than ``max_refused`` refused frames
        within about REFUSAL_WINDOW seconds) is cut off.
        """
        if self._refusals.take():
            self._send_error(errors.rate_limited(), "")
            return
        # Autobahn logs the drop with this reason.
        self.wasNotCleanReason = f"still flooding after {self.factory.max_refused} frames were refused"
        self._close_for_policy("rate limit exceeded")

    def _close_for_policy(self, reason: str) -> None:
        """Send a 1008 close frame, then drop the connection without waiting for the answer.

        Nothing more from the client is read, not even the rest of what has
        arrived.  The TCP connection closes once the close frame is out; a
        client that does not read it is aborted ``closeHandshakeTimeout``
        (1 s) later.
        """
        self.sendCloseFrame(code=CLOSE_POLICY_VIOLATION, reasonUtf8=reason.encode("utf-8"), isReply=False)
        self.dropConnection(abort=False)
        self._abort_call = self.factory.clock.callLater(self.factory.closeHandshakeTimeout or 1, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        transport = cast(Any, self.transport)
        getattr(transport, "abortConnection", transport.loseConnection)()

    def _check_send_buffer(self) -> None:
        """Drop the connection if the client has left too much unread.

        What was written in this reactor turn counts too (the socket has not
        been tried yet), so ``max_send_buffer`` should be many times the
        largest frame.
        """
        buffer = self._send_buffer
        if buffer is None:
            return
        unsent = unsent_bytes(buffer)
        if unsent > self.factory.max_send_buffer:
            # Autobahn logs the drop with this reason.
            self.wasClean = False
            limit = self.factory.max_send_buffer
            self.wasNotCleanReason = f"the client did not read what it was sent: {unsent} bytes unsent (limit {limit})"
            self.dropConnection(abort=True)

    def _send_error(self, error: KTVError, request: wire.Request | str) -> None:
        action, fullname = self._caller(request)
        message = wire.error_envelope(error, self.ktv.now(), self.factory.language, action, fullname)
        self._send_payload(wire.encode(message))

    def _send_failure(self, failure: Failure, request: wire.Request) -> None:
        if isinstance(failure.value, KTVError):
            self._send_error(failure.value, request)
            return
        self._log.failure("handling {action!r}", failure, action=request.action)
        self._send_error(errors.internal_error(), request)

    def _room_reply(self, state: RoomState, request: wire.Request, fresh: bool = False) -> bytes:
        """The room as a reply: the push frame of this version, plus the caller fields."""
        server = self.ktv
        if fresh:
            now = server.now()
            payload = wire.encode(wire.envelope(wire.room_body(state, now), now))
        else:
            payload = server.room_frame(state).payload
        return wire.reply_payload(payload, *self._caller(request))

    # -- actions: each returns the encoded reply ---------------------------

    async def handle_join(self, request: wire.Request) -> bytes:
        claimed = {
            "fullname": request.raw.get("fullname"),
            "nick": request.get("nick"),
            "avatar": request.get("avatar"),
        }
        state = await self.ktv.join(self, request.raw.get("room"), request.raw.get("token"), claimed)
        return self._room_reply(state, request)

    async def handle_status(self, request: wire.Request) -> bytes:
        state = await self.ktv.status(self)
        return self._room_reply(state, request, fresh=True)

    async def handle_ask(self, request: wire.Request) -> bytes:
        accept = wire.parse_ack(request.get("ack"))
        state = await self.ktv.ask(self, accept)
        return self._room_reply(state, request)

    async def handle_cut(self, request: wire.Request) -> bytes:
        state = await self.ktv.cut(self)
        return self._room_reply(state, request)

    async def handle_boardcast(self, request: wire.Request) -> bytes:
        message = await self.ktv.boardcast(self, request.body)
        return self._message_reply(message, request)

    async def handle_leave(self, request: wire.Request) -> bytes:
        caller = self._caller(request)
        state = await self.ktv.leave(self)
        return wire.reply_payload(self.ktv.room_frame(state).payload, *caller)

    async def handle_reconnect(self, request: wire.Request) -> bytes:
        """The old clients' way back after a dropped connection: a join that keeps one's place."""
        return await self.handle_join(request)

    async def handle_del(self, request: wire.Request) -> bytes:
        state = await self.ktv.dequeue(self, _target(request))
        return self._room_reply(state, request)

    async def handle_kick(self, request: wire.Request) -> bytes:
        state = await self.ktv.kick(self, _target(request))
        return self._room_reply(state, request)

    async def handle_sing(self, request: wire.Request) -> bytes:
        state = await self.ktv.sing(self, request.get("sid"), request.get("duration"))
        return self._room_reply(state, request)

    def _message_reply(self, body: Any, request: wire.Request) -> bytes:
        envelope = wire.envelope(body, self.ktv.now(), kind=wire.TYPE_MESSAGE)
        return wire.encode(wire.as_reply(envelope, *self._caller(request)))

    async def handle_chat(self, request: wire.Request) -> bytes:
        message = await self.ktv.chat(self, request.get("content"))
        return self._message_reply(message, request)

    async def handle_history(self, request: wire.Request) -> bytes:
        return self._message_reply(await self.ktv.history(self), request)

    async def handle_device(self, request: wire.Request) -> bytes:
        message = await self.ktv.device(self, request.get("device"), request.get("value"))
        return self._message_reply(message, request)

    async def handle_heart(self, request: wire.Request) -> bytes:
        return self._message_reply({"heart": "success"}, request)


def _target(request: wire.Request) -> Any:
    """The member an admin action names: ``target``, or ``body.fullname``.

    The top-level ``fullname`` is the sender's own (the old clients send it
    with every frame), so it never names a target.
    """
    target = request.get("target")
    return target if target is not None else request.body.get("fullname")


HANDLERS: dict[str, Handler] = {
    "join": KTVServerProtocol.handle_join,
    "status": KTVServerProtocol.handle_status,
    "ask": KTVServerProtocol.handle_ask,
    "cut": KTVServerProtocol.handle_cut,
    "boardcast": KTVServerProtocol.handle_boardcast,
    "leave": KTVServerProtocol.handle_leave,
    "reconnect": KTVServerProtocol.handle_reconnect,
    "del": KTVServerProtocol.handle_del,
    "kick": KTVServerProtocol.handle_kick,
    "sing": KTVServerProtocol.handle_sing,
    "chat": KTVServerProtocol.handle_chat,
    "history": KTVServerProtocol.handle_history,
    "device": KTVServerProtocol.handle_device,
    "heart": KTVServerProtocol.handle_heart,
}


class KTVWebSocketFactory(WebSocketServerFactory):
    protocol = KTVServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        server: KTVServer,
        *,
        language: Language = Language.ZH,
        reactor: IReactorTime | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        max_refused: int = MAX_REFUSED,
        max_send_buffer: int = MAX_SEND_BUFFER,
        max_connections: int = MAX_CONNECTIONS,
        allowed_origins: list[str] | tuple[str, ...] = ("*",),
        ping_interval: float = PING_INTERVAL,
        ping_timeout: float = PING_TIMEOUT,
        open_handshake_timeout: float = OPEN_HANDSHAKE_TIMEOUT,
        **options: Any,
    ) -> None:
        super().__init__(reactor=reactor, server=f"ktvtwist/{__version__}")
        # Not ``self.server``: Autobahn sends that as the Server header.
        self.room_server = server
        self.language = language
        self.clock: IReactorTime = self.reactor
        TokenBucket(rate, burst, self.clock)  # checks rate and burst
        TokenBucket(max_refused / REFUSAL_WINDOW, max_refused, self.clock)
        if max_send_buffer < 1:
            raise ValueError("max_send_buffer must be at least 1 byte")
        self.rate = rate
        self.burst = burst
        self.max_refused = max_refused
        self.max_send_buffer = max_send_buffer
        self.origins = OriginPolicy(list(allowed_origins))
        # Autobahn's handshake, ping and close timeouts run on the reactor
        # given here (txaio's batched timer would use the global reactor).
        self._batched_timer = _ReactorTimer(self.clock)
        protocol_options: dict[str, Any] = dict(
            maxFramePayloadSize=max_message_bytes,
            maxMessagePayloadSize=max_message_bytes,
            openHandshakeTimeout=open_handshake_timeout,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            # Over the cap the handshake is answered 503 (before onConnect).
            maxConnections=max_connections,
            # Origins are checked in onConnect, which answers 403 (Autobahn's
            # own check answers 400, and refuses "null" unless told).
            allowNullOrigin=True,
            # Send a close frame (1009 for an oversized message) rather than
            # just dropping the TCP connection, so clients learn why.
            failByDrop=False,
            # Invalid UTF-8 gets a bad_request error frame from our parser
            # instead of a dropped connection.
            utf8validateIncoming=False,
        )
        protocol_options.update(options)
        self.setProtocolOptions(**protocol_options)

    @property
    def open_connections(self) -> int:
        """WebSocket connections open now (Autobahn counts them from connectionMade on)."""
        return int(self.countConnections)


class _ReactorTimer:
    """Autobahn's timer interface (``call_later`` returning something to ``cancel``) on one reactor."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kwargs: Any) -> _TimerCall:
        return _TimerCall(self._clock.callLater(delay, func, *args, **kwargs))


class _TimerCall:
    __slots__ = ("_call",)

    def __init__(self, call: IDelayedCall) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()
