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
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ktvtwist import errors, wire
from ktvtwist.errors import KTVError, Language
from ktvtwist.room import RoomState
from ktvtwist.server import IConnection, KTVServer

MAX_MESSAGE_BYTES = 64 * 1024

Handler = Callable[["KTVServerProtocol", wire.Request], Coroutine[Any, Any, bytes]]


@implementer(IConnection)
class KTVServerProtocol(WebSocketServerProtocol):
    _log = Logger()
    factory: KTVWebSocketFactory
    connection_id = ""

    # -- connection lifecycle ---------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn's tcpNoDelay option never reaches the socket when the
        # protocol takes over a twisted.web request; without this a second
        # frame can wait ~40 ms for a delayed ACK (Nagle).
        try:
            cast(Any, self.transport).setTcpNoDelay(True)
        except Exception:
            pass

    def onConnect(self, request: ConnectionRequest) -> None:
        self.connection_id = self.factory.server.new_connection_id()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
            self.factory.server.connection_lost(self)
        except Exception:
            self._log.failure("cleaning up a closed connection")

    # -- IConnection --------------------------------------------------------

    def send(self, frame: wire.Frame) -> None:
        if self.state != self.STATE_OPEN:
            return
        if frame.prepared is None:
            frame.prepared = self.factory.prepareMessage(frame.payload)
        self.sendPreparedMessage(frame.prepared)

    # -- frames in --------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
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
        binding = self.factory.server.binding(self)
        fullname = binding.identity.fullname if binding else request.claimed_fullname[:64]
        return request.action[:64], fullname

    def _send_payload(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload)

    def _send_error(self, error: KTVError, request: wire.Request | str) -> None:
        action, fullname = self._caller(request)
        message = wire.error_envelope(error, self.factory.server.now(), self.factory.language, action, fullname)
        self._send_payload(wire.encode(message))

    def _send_failure(self, failure: Failure, request: wire.Request) -> None:
        if isinstance(failure.value, KTVError):
            self._send_error(failure.value, request)
            return
        self._log.failure("handling {action!r}", failure, action=request.action)
        self._send_error(errors.internal_error(), request)

    def _room_reply(self, state: RoomState, request: wire.Request, fresh: bool = False) -> bytes:
        """The room as a reply: the push frame of this version, plus the caller fields."""
        server = self.factory.server
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
        state = await self.factory.server.join(self, request.raw.get("room"), request.raw.get("token"), claimed)
        return self._room_reply(state, request)

    async def handle_status(self, request: wire.Request) -> bytes:
        state = await self.factory.server.status(self)
        return self._room_reply(state, request, fresh=True)

    async def handle_ask(self, request: wire.Request) -> bytes:
        accept = wire.parse_ack(request.get("ack"))
        state = await self.factory.server.ask(self, accept)
        return self._room_reply(state, request)

    async def handle_cut(self, request: wire.Request) -> bytes:
        state = await self.factory.server.cut(self)
        return self._room_reply(state, request)

    async def handle_boardcast(self, request: wire.Request) -> bytes:
        message = await self.factory.server.boardcast(self, request.body)
        now = self.factory.server.now()
        envelope = wire.envelope(message, now, kind=wire.TYPE_MESSAGE)
        return wire.encode(wire.as_reply(envelope, *self._caller(request)))

    async def handle_leave(self, request: wire.Request) -> bytes:
        server = self.factory.server
        binding = server.binding(self)
        caller = self._caller(request)
        state = await server.leave(self)
        if state is None:
            assert binding is not None
            state = server.rules.create(binding.room, server.now())
        now = server.now()
        return wire.encode(wire.as_reply(wire.envelope(wire.room_body(state, now), now), *caller))


HANDLERS: dict[str, Handler] = {
    "join": KTVServerProtocol.handle_join,
    "status": KTVServerProtocol.handle_status,
    "ask": KTVServerProtocol.handle_ask,
    "cut": KTVServerProtocol.handle_cut,
    "boardcast": KTVServerProtocol.handle_boardcast,
    "leave": KTVServerProtocol.handle_leave,
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
        **options: Any,
    ) -> None:
        super().__init__(reactor=reactor)
        self.server = server
        self.language = language
        self.setProtocolOptions(
            maxFramePayloadSize=max_message_bytes,
            maxMessagePayloadSize=max_message_bytes,
            openHandshakeTimeout=10,
            # Send a close frame (1009 for an oversized message) rather than
            # just dropping the TCP connection, so clients learn why.
            failByDrop=False,
            # Invalid UTF-8 gets a bad_request error frame from our parser
            # instead of a dropped connection.
            utf8validateIncoming=False,
            **options,
        )
