"""One twisted.web resource for both protocols on one port."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web.http import combinedLogFormatter
from twisted.web.iweb import IAccessLogFormatter, IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from zope.interface import provider

from ktvtwist.http import HTTPAPI
from ktvtwist.websocket import KTVWebSocketFactory


class KTVRoot(Resource):
    """A WebSocket upgrade on any path goes to Autobahn, every other request to Klein."""

    isLeaf = True

    def __init__(self, websocket: IResource, http: IResource) -> None:
        super().__init__()
        self._websocket = websocket
        self._http = http

    def render(self, request: IRequest) -> Any:
        upgrade = request.getHeader(b"upgrade") or b""
        if upgrade.lower() == b"websocket":
            return self._websocket.render(request)
        return self._http.render(request)


def _without_query(uri: bytes) -> bytes:
    path, question, _ = uri.partition(b"?")
    return path + (b"?..." if question else b"")


class _RedactedRequest:
    """A request as the access log sees it: no query strings, which may hold tokens."""

    def __init__(self, request: IRequest) -> None:
        self._request = request
        self.uri = _without_query(request.uri)

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return _without_query(value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


@provider(IAccessLogFormatter)
def redacted_log_formatter(timestamp: str, request: IRequest) -> str:
    """Twisted's combined log line, minus query strings (tokens never reach the log)."""
    line: str = combinedLogFormatter(timestamp, _RedactedRequest(request))
    return line


def make_site(factory: KTVWebSocketFactory, api: HTTPAPI) -> Site:
    site = Site(KTVRoot(WebSocketResource(factory), api.app.resource()), logFormatter=redacted_log_formatter)
    site.displayTracebacks = False
    return site
