"""One twisted.web resource for both protocols on one port."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

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


def make_site(factory: KTVWebSocketFactory, api: HTTPAPI) -> Site:
    site = Site(KTVRoot(WebSocketResource(factory), api.app.resource()))
    site.displayTracebacks = False
    return site
