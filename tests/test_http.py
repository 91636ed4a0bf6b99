"""The HTTP API through treq's StubTreq, and the shared root resource."""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from ktvtwist.auth import OpenAuthority
from ktvtwist.catalog import MemoryCatalog
from ktvtwist.errors import Language
from ktvtwist.http import HTTPAPI
from ktvtwist.redis_store import RedisAddress, RedisRoomStore
from ktvtwist.room import RoomRules
from ktvtwist.server import KTVServer
from ktvtwist.web import KTVRoot, redacted_log_formatter
from tests.support import RecordingConnection, memory_server

URL = "http://localhost:8888/api/v2/singer/create"


class HTTPAPITests(SynchronousTestCase):
    language = Language.ZH

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_600_000_000)
        self.server = memory_server(self.clock, RoomRules(max_members=4), max_song_seconds=3600)
        self.api = HTTPAPI(self.server, self.language)
        self.treq: Any = StubTreq(self.api.app.resource())
        self.alice = self.join("alice")

    def join(self, name: str) -> RecordingConnection:
        conn = RecordingConnection(self.server)
        self.successResultOf(Deferred.fromCoroutine(self.server.join(conn, "R1", f"tok-{name}", {"fullname": name})))
        return conn

    def post(self, data: Any = None, json_body: Any = None, **kw: Any) -> tuple[int, dict[str, Any]]:
        if json_body is not None:
            d = self.treq.post(URL, json=json_body, **kw)
        else:
            d = self.treq.post(URL, data=data, **kw)
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"])
        return response.code, json.loads(body)

    def form(self, **overrides: str) -> dict[str, str]:
        return {"room": "R1", "sid": "1", "token": "tok-alice", "duration": "200", **overrides}

    def assertAPIError(self, result: tuple[int, dict[str, Any]], http_status: int, status: int) -> None:
        code, body = result
        self.assertEqual((code, body["status"], body["body"]), (http_status, status, {}), body)
        self.assertTrue(body["msg"])

    def test_form_encoded_success(self) -> None:
        code, body = self.post(self.form())
        self.assertEqual((code, body), (200, {"body": {}, "status": 1, "msg": "success"}))
        pushed = json.loads(self.alice.frames[-1].payload)
        self.assertEqual((pushed["body"]["status"], pushed["body"]["fullname"]), ("2", "alice"))

    def test_json_success_with_numbers(self) -> None:
        code, body = self.post(json_body={"room": "R1", "sid": 1, "token": "tok-alice", "duration": 200})
        self.assertEqual((code, body["status"]), (200, 1))

    def test_errors_use_old_codes(self) -> None:
        self.join("bob")
        self.assertAPIError(self.post(self.form(token="tok-stranger")), 403, 2)
        self.assertAPIError(self.post(self.form(token="")), 401, 3)
        self.assertAPIError(self.post({"room": "R1", "sid": "1", "duration": "200"}), 401, 3)
        self.assertAPIError(self.post(self.form(duration="")), 400, 4)
        self.assertAPIError(self.post({"room": "R1", "token": "tok-alice"}), 400, 4)
        for bad in ("0", "3601", "1.5", "abc", "-5"):
            self.assertAPIError(self.post(self.form(duration=bad)), 400, 4)
        self.assertAPIError(self.post(self.form(room="nope")), 404, 7)
        self.assertAPIError(self.post(self.form(sid="424242")), 404, 7)
        self.assertEqual(self.post(self.form(duration="3600"))[0], 200)
        self.assertAPIError(self.post(self.form(sid="2")), 409, 6)
        self.assertEqual(self.post(self.form(token="tok-bob"))[0], 200)

    def test_error_carries_machine_code_and_chinese_message(self) -> None:
        code, body = self.post(self.form(room="nope"))
        self.assertEqual((body["code"], body["msg"]), ("room_not_found", "房间不存在"))

    def test_malformed_json_bodies(self) -> None:
        for raw in (b"{", b"[1]", b'"x"', b"\xff"):
            d = self.treq.post(URL, data=raw, headers={"Content-Type": "application/json"})
            response = self.successResultOf(d)
            body = json.loads(self.successResultOf(response.content()))
            self.assertEqual((response.code, body["status"]), (400, 4), raw)

    def test_wrongly_typed_json_fields(self) -> None:
        for override in ({"room": ["R1"]}, {"sid": {"a": 1}}, {"token": 5}, {"duration": True}):
            payload: dict[str, Any] = {"room": "R1", "sid": "1", "token": "tok-alice", "duration": "200", **override}
            code, body = self.post(json_body=payload)
            self.assertIn(code, (400, 401), override)
            self.assertIn(body["status"], (3, 4), override)

    def test_get_is_not_allowed_and_unknown_path_is_404(self) -> None:
        response = self.successResultOf(self.treq.get(URL))
        self.assertEqual(response.code, 405)
        response = self.successResultOf(self.treq.get("http://localhost:8888/nope"))
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(self.successResultOf(response.content()))["status"], 7)

    def test_healthz(self) -> None:
        response = self.successResultOf(self.treq.get("http://localhost:8888/healthz"))
        self.assertEqual(response.code, 200)

    def test_unexpected_error_is_500_json(self) -> None:
        async def explode(*args: Any) -> Any:
            raise RuntimeError("bug")

        self.patch(self.server, "queue_song", explode)
        self.assertAPIError(self.post(self.form()), 500, 5)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class EnglishHTTPTests(HTTPAPITests):
    language = Language.EN

    def test_error_carries_machine_code_and_chinese_message(self) -> None:
        code, body = self.post(self.form(room="nope"))
        self.assertEqual((body["code"], body["msg"]), ("room_not_found", "no such room"))


class RootResourceTests(SynchronousTestCase):
    def test_plain_requests_go_to_http_and_upgrades_to_websocket(self) -> None:
        from twisted.web.resource import Resource

        class Marker(Resource):
            isLeaf = True

            def __init__(self, name: bytes) -> None:
                super().__init__()
                self.name = name

            def render(self, request: Any) -> bytes:
                return self.name

        treq: Any = StubTreq(KTVRoot(Marker(b"ws"), Marker(b"http")))
        plain = self.successResultOf(treq.get("http://localhost/any/path"))
        self.assertEqual(self.successResultOf(plain.content()), b"http")
        upgrade = self.successResultOf(treq.get("http://localhost/any/path", headers={"Upgrade": "WebSocket"}))
        self.assertEqual(self.successResultOf(upgrade.content()), b"ws")


class AccessLogTests(SynchronousTestCase):
    def test_query_strings_and_referers_are_redacted(self) -> None:
        request: Any = DummyRequest([b"api"])
        request.uri = b"/api/v2/singer/create?token=s3cret&room=R1"
        request.method = b"POST"
        request.code = 200
        request.sentLength = 10
        request.clientproto = b"HTTP/1.1"
        request.requestHeaders.setRawHeaders(b"referer", [b"http://app/x?token=s3cret"])
        line = redacted_log_formatter("[now]", request)
        self.assertNotIn("s3cret", line)
        self.assertIn("/api/v2/singer/create?...", line)


class HealthTests(SynchronousTestCase):
    def test_healthz_is_503_while_the_shared_store_is_unreachable(self) -> None:
        store = RedisRoomStore(RedisAddress(), reactor=MemoryReactorClock())  # never connected
        server = KTVServer(store=store, catalog=MemoryCatalog.sample(), authority=OpenAuthority(), clock=Clock())
        treq: Any = StubTreq(HTTPAPI(server).app.resource())
        response = self.successResultOf(treq.get("http://localhost/healthz"))
        self.assertEqual(response.code, 503)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(body["code"], "unavailable")
