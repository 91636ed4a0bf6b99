"""The HTTP API (Klein), served on the same port as the WebSocket.

``POST /api/v2/singer/create`` queues a song, answering the old API's shape
``{"body": {}, "status": 1, "msg": "success"}``; errors keep that shape with
the old numeric codes (2 not allowed, 3 bad token, 4 bad data, 6 already
queued, 7 no such room or song) and a fitting HTTP status.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ktvtwist import errors
from ktvtwist.errors import KTVError, Language
from ktvtwist.limits import DEFAULT_BURST, DEFAULT_RATE, KeyedBuckets
from ktvtwist.server import KTVServer

MAX_BODY_BYTES = 64 * 1024
MAX_TRACKED_TOKENS = 10000
API_OK = 1


def _api_response(request: IRequest, status: int, msg: str, http_status: int = 200, **extra: Any) -> bytes:
    request.setResponseCode(http_status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps({"body": {}, "status": status, "msg": msg, **extra}, ensure_ascii=False).encode("utf-8")


def _body_size(request: IRequest) -> int:
    """The size of the request body twisted.web has buffered (in memory or a temporary file)."""
    content = request.content
    if content is None:
        return 0
    position = content.tell()
    content.seek(0, 2)
    size: int = content.tell()
    content.seek(position)
    return size


def _read_params(request: IRequest) -> dict[str, Any]:
    """Form-encoded or JSON parameters (the query string counts too).

    The body's size has been checked already.
    """
    params: dict[str, Any] = {}
    for key, values in (request.args or {}).items():
        if values:
            try:
                params[key.decode("utf-8")] = values[-1].decode("utf-8")
            except UnicodeDecodeError:
                raise errors.bad_request("parameters must be UTF-8") from None
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type == b"application/json":
        request.content.seek(0)
        raw = request.content.read()
        try:
            data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (ValueError, RecursionError):
            raise errors.bad_request("request body is not JSON") from None
        if not isinstance(data, dict):
            raise errors.bad_request("request body must be a JSON object")
        params.update(data)
    return params


class HTTPAPI:
    """The HTTP side of one :class:`KTVServer`."""

    app = Klein()
    _log = Logger()

    def __init__(
        self,
        server: KTVServer,
        language: Language = Language.ZH,
        *,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_tracked_tokens: int = MAX_TRACKED_TOKENS,
        clock: IReactorTime | None = None,
    ) -> None:
        self.server = server
        self.language = language
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self.max_body_bytes = max_body_bytes
        # Calls per token, as for WebSocket frames per connection.
        self._token_buckets = KeyedBuckets(rate, burst, clock or server.clock, max_tracked_tokens)

    def _check_request(self, request: IRequest) -> dict[str, Any]:
        """The request's parameters, once its size and its token's rate are within limits.

        twisted.web has buffered the body by now; a body over the limit is
        refused (413) before anything parses it.
        """
        if _body_size(request) > self.max_body_bytes:
            raise errors.too_large("request body", self.max_body_bytes)
        params = _read_params(request)
        token = params.get("token")
        if isinstance(token, str) and token and not self._token_buckets.take(token):
            raise errors.rate_limited()
        return params

    @app.route("/api/v2/singer/create", methods=["POST"])
    async def create_singer(self, request: IRequest) -> bytes:
        params = self._check_request(request)
        missing = [k for k in ("room", "sid", "token", "duration") if params.get(k) in (None, "")]
        if missing == ["token"]:
            raise errors.auth_failed("a non-empty token is required")
        if missing:
            raise errors.bad_request("missing " + ", ".join(missing))
        await self.server.queue_song(params["room"], params["token"], params["sid"], params["duration"])
        return _api_response(request, API_OK, "success")

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        """For load balancers: 200 while this node can serve, 503 while its Redis is unreachable."""
        if not self.server.healthy():
            error = errors.unavailable()
            return _api_response(request, error.kind.api_status, error.message(self.language), 503, code=error.code)
        return _api_response(request, API_OK, "ok")

    @app.handle_errors(KTVError)
    def domain_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, KTVError)
        return _api_response(
            request, error.kind.api_status, error.message(self.language), error.kind.http_status, code=error.code
        )

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        return _api_response(request, errors.NOT_FOUND.api_status, "not found", 404, code="not_found")

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return _api_response(request, errors.BAD_REQUEST.api_status, "method not allowed", 405, code="bad_request")

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        self._log.failure("handling {path}", failure, path=request.path)
        error = errors.internal_error()
        return _api_response(request, error.kind.api_status, error.message(self.language), 500, code=error.code)
