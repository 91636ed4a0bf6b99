"""Signed tokens: the HS256 codec, SignedAuthority, ktv-token and --auth signed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from typing import Any, cast

from treq.testing import StubTreq
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ktvtwist import auth, tokens
from ktvtwist.auth import Identity, OpenAuthority, SignedAuthority, read_secret_file
from ktvtwist.errors import KTVError, Language
from ktvtwist.http import HTTPAPI
from ktvtwist.room import RoomRules, RoomState
from ktvtwist.tap import Options, ServerService, makeService
from ktvtwist.token_cli import main as token_main
from ktvtwist.tokens import TokenError, mint, verify
from tests.support import RecordingConnection, memory_server

SECRET = b"0123456789abcdef0123456789abcdef-test"
OTHER_SECRET = b"fedcba9876543210fedcba9876543210-test"
NOW = 1_700_000_000.0
HTTP_URL = "http://localhost:8888/api/v2/singer/create"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def forge(header: Any, claims: Any, secret: bytes = SECRET) -> str:
    """A token with any header and payload, signed with HMAC-SHA256 under ``secret``."""
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def good_claims(**changes: Any) -> dict[str, Any]:
    return {"fullname": "alice", "exp": NOW + 60, **changes}


class MintVerifyTests(SynchronousTestCase):
    def assertRejected(self, token: str, now: float = NOW, secret: bytes = SECRET) -> TokenError:
        return self.assertRaises(TokenError, verify, secret, token, now)

    def test_round_trip(self) -> None:
        token = mint(SECRET, "alice", nick="Al", avatar="https://a/x.png", ttl=60, now=NOW)
        claims = verify(SECRET, token, NOW)
        self.assertEqual(
            (claims["fullname"], claims["nick"], claims["avatar"], claims["iat"], claims["exp"]),
            ("alice", "Al", "https://a/x.png", int(NOW), int(NOW) + 60),
        )
        self.assertNotIn("role", claims)
        self.assertFalse(tokens.is_admin(claims))

    def test_format(self) -> None:
        token = mint(SECRET, "爱丽丝", ttl=60, now=NOW)
        head, body, signature = token.split(".")
        self.assertNotIn("=", token)
        self.assertEqual(json.loads(unb64(head)), {"alg": "HS256", "typ": "JWT"})
        self.assertEqual(json.loads(unb64(body)), {"fullname": "爱丽丝", "iat": int(NOW), "exp": int(NOW) + 60})
        self.assertEqual(unb64(signature), hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest())

    def test_signature_matches_the_jwt_io_example(self) -> None:
        # The well-known example token from jwt.io (RFC 7519 HS256); it has no
        # fullname or exp, so it gets past the signature and stops at the claims.
        token = (
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
            ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
            ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        )
        reason = self.assertRejected(token, secret=b"your-256-bit-secret").reason
        self.assertIn("fullname", reason)
        self.assertIn("signature", self.assertRejected(token, secret=b"your-256-bit-secreT").reason)

    def test_defaults_for_nick_and_avatar(self) -> None:
        claims = verify(SECRET, forge({"alg": "HS256"}, good_claims()), NOW)
        self.assertEqual((claims["nick"], claims["avatar"]), ("alice", ""))

    def test_a_token_from_another_encoder(self) -> None:
        # Spaces in the JSON, no typ, a float exp: still a good token.
        token = forge({"alg": "HS256"}, good_claims(exp=NOW + 0.5, iat=NOW - 1.25))
        self.assertEqual(verify(SECRET, token, NOW)["fullname"], "alice")

    def test_admin_role(self) -> None:
        claims = verify(SECRET, mint(SECRET, "root", ttl=60, admin=True, now=NOW), NOW)
        self.assertEqual(claims["role"], "admin")
        self.assertTrue(tokens.is_admin(claims))
        self.assertFalse(tokens.is_admin(verify(SECRET, forge({"alg": "HS256"}, good_claims(role="dj")), NOW)))

    def test_tampered_payload(self) -> None:
        head, _, signature = mint(SECRET, "alice", ttl=60, now=NOW).split(".")
        body = b64(json.dumps({"fullname": "mallory", "exp": NOW + 60}).encode())
        self.assertIn("signature", self.assertRejected(f"{head}.{body}.{signature}").reason)

    def test_tampered_signature(self) -> None:
        head, body, signature = mint(SECRET, "alice", ttl=60, now=NOW).split(".")
        raw = bytearray(unb64(signature))
        raw[0] ^= 1
        self.assertRejected(f"{head}.{body}.{b64(bytes(raw))}")
        self.assertRejected(f"{head}.{body}.{b64(bytes(raw[:-1]))}")
        self.assertRejected(f"{head}.{body}.")

    def test_wrong_secret(self) -> None:
        self.assertRejected(mint(OTHER_SECRET, "alice", ttl=60, now=NOW))

    def test_alg_none(self) -> None:
        head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        body = b64(json.dumps(good_claims()).encode())
        for token in (f"{head}.{body}.", f"{head}.{body}", forge({"alg": "none"}, good_claims())):
            self.assertRejected(token)

    def test_other_algorithms(self) -> None:
        for header in ({"alg": "HS512"}, {"alg": "RS256"}, {"alg": "hs256"}, {"typ": "JWT"}, {"alg": ["HS256"]}):
            self.assertIn("alg", self.assertRejected(forge(header, good_claims())).reason, header)

    def test_critical_header(self) -> None:
        self.assertRejected(forge({"alg": "HS256", "crit": ["exp"]}, good_claims()))

    def test_garbage(self) -> None:
        good = mint(SECRET, "alice", ttl=60, now=NOW)
        head, body, signature = good.split(".")
        for token in (
            "",
            "garbage",
            "a.b",
            "a.b.c.d",
            good + ".",
            good + "=",
            f"{head}=.{body}.{signature}",
            f"{head}.{body}.{signature}=",
            f"{head}.{body}+.{signature}",
            f"{head}.{body}/.{signature}",
            f"{head}.{body}é.{signature}",
            f" {good}",
            f"{good}\n",
            "a.b.c",
            "....",
        ):
            self.assertRejected(token)

    def test_non_string_token(self) -> None:
        self.assertRaises(TokenError, verify, SECRET, cast(str, None), NOW)
        self.assertRaises(TokenError, verify, SECRET, cast(str, b"a.b.c"), NOW)

    def test_non_canonical_base64(self) -> None:
        head, body, signature = mint(SECRET, "alice", ttl=60, now=NOW).split(".")
        # 32 bytes encode to 43 characters, the last carrying 2 unused bits.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        last = alphabet.index(signature[-1])
        other = signature[:-1] + alphabet[last ^ 1]
        self.assertNotEqual(other, signature)
        self.assertEqual(unb64(other), unb64(signature))
        self.assertRejected(f"{head}.{body}.{other}")

    def test_bad_json(self) -> None:
        def signed(head: bytes, body: bytes) -> str:
            h, b = b64(head), b64(body)
            return f"{h}.{b}.{b64(hmac.new(SECRET, f'{h}.{b}'.encode(), hashlib.sha256).digest())}"

        ok_head = json.dumps({"alg": "HS256"}).encode()
        ok_body = json.dumps(good_claims()).encode()
        self.assertEqual(verify(SECRET, signed(ok_head, ok_body), NOW)["fullname"], "alice")
        for head, body in (
            (b"not json", ok_body),
            (b'["HS256"]', ok_body),
            (b"\xff\xfe", ok_body),
            (ok_head, b"not json"),
            (ok_head, b'"alice"'),
            (ok_head, b"[]"),
            (ok_head, b"null"),
            (ok_head, b"\xff"),
            (ok_head, b'{"fullname": "alice", "exp": NaN}'),
            (ok_head, b'{"fullname": "alice", "exp": Infinity}'),
            (ok_head, b"[" * 100_000),
        ):
            self.assertRejected(signed(head, body))

    def test_too_long(self) -> None:
        token = forge({"alg": "HS256"}, good_claims(pad="x" * 3000))
        self.assertGreater(len(token), tokens.MAX_TOKEN_LENGTH)
        self.assertIn("longer", self.assertRejected(token).reason)
        self.assertRejected("a" * 5000)

    def test_expiry(self) -> None:
        token = mint(SECRET, "alice", ttl=60, now=NOW)
        self.assertEqual(verify(SECRET, token, NOW + 59.999)["fullname"], "alice")
        self.assertIn("expired", self.assertRejected(token, now=NOW + 60).reason)
        self.assertRejected(token, now=NOW + 3600)

    def test_bad_exp(self) -> None:
        for claims in (
            {"fullname": "alice"},
            good_claims(exp=None),
            good_claims(exp="1900000000"),
            good_claims(exp=True),
            good_claims(exp=[NOW + 60]),
            good_claims(iat="yesterday"),
        ):
            self.assertRejected(forge({"alg": "HS256"}, claims))

    def test_not_before(self) -> None:
        token = forge({"alg": "HS256"}, good_claims(nbf=NOW + 10))
        self.assertRejected(token, now=NOW + 9)
        self.assertEqual(verify(SECRET, token, NOW + 10)["fullname"], "alice")

    def test_fullname(self) -> None:
        for claims in (
            {"exp": NOW + 60},
            good_claims(fullname=""),
            good_claims(fullname=None),
            good_claims(fullname=42),
            good_claims(fullname="x" * 65),
            good_claims(fullname="ali\nce"),
            good_claims(fullname="ali\x00ce"),
            good_claims(nick="n" * 65),
            good_claims(nick=7),
            good_claims(avatar="a" * 1025),
            good_claims(avatar="a\tb"),
            good_claims(role=1),
        ):
            self.assertRejected(forge({"alg": "HS256"}, claims))
        self.assertEqual(verify(SECRET, forge({"alg": "HS256"}, good_claims(fullname="x" * 64)), NOW)["nick"], "x" * 64)

    def test_limits_match_open_mode(self) -> None:
        self.assertEqual(
            (tokens.MAX_NAME_LENGTH, tokens.MAX_AVATAR_LENGTH), (auth.MAX_NAME_LENGTH, auth.MAX_AVATAR_LENGTH)
        )

    def test_mint_refuses_what_verify_would(self) -> None:
        self.assertRaises(TokenError, mint, SECRET, "", ttl=60, now=NOW)
        self.assertRaises(TokenError, mint, SECRET, "x" * 65, ttl=60, now=NOW)
        self.assertRaises(TokenError, mint, SECRET, "alice", nick="a\nb", ttl=60, now=NOW)
        self.assertRaises(TokenError, mint, SECRET, "alice", avatar="a" * 1025, ttl=60, now=NOW)
        for ttl in (0, -1, float("nan"), float("inf")):
            self.assertRaises(TokenError, mint, SECRET, "alice", ttl=ttl, now=NOW)

    def test_reasons_do_not_quote_the_token(self) -> None:
        token = forge({"alg": "HS256"}, good_claims(fullname="secret-name" * 10))
        reason = self.assertRejected(token).reason
        self.assertNotIn("secret-name", reason)
        self.assertNotIn(token, reason)


class SecretTests(SynchronousTestCase):
    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_trailing_whitespace_is_stripped(self) -> None:
        self.assertEqual(read_secret_file(self.write(SECRET + b"\n")), SECRET)
        self.assertEqual(read_secret_file(self.write(SECRET + b" \r\n\t")), SECRET)

    def test_empty_secret(self) -> None:
        for data in (b"", b"\n", b"  \n\n"):
            e = self.assertRaises(ValueError, read_secret_file, self.write(data))
            self.assertIn("empty", str(e))

    def test_short_secret(self) -> None:
        e = self.assertRaises(ValueError, read_secret_file, self.write(b"x" * 31 + b"\n"))
        self.assertIn("31 bytes", str(e))
        self.assertNotIn("x" * 31, str(e))
        self.assertEqual(read_secret_file(self.write(b"x" * 32)), b"x" * 32)

    def test_missing_file(self) -> None:
        e = self.assertRaises(ValueError, read_secret_file, self.mktemp())
        self.assertIn("cannot read", str(e))
        self.assertNotIn("\n", str(e))

    def test_huge_file(self) -> None:
        self.assertRaises(ValueError, read_secret_file, self.write(b"x" * (auth.MAX_SECRET_FILE_BYTES + 1)))

    def test_authority_refuses_a_weak_secret(self) -> None:
        self.assertRaises(ValueError, SignedAuthority, b"", Clock())
        self.assertRaises(ValueError, SignedAuthority, b"short", Clock())


def refused(code: str, f: Any, *args: Any) -> KTVError:
    try:
        f(*args)
    except KTVError as e:
        assert e.code == code, (e.code, code)
        return e
    raise AssertionError(f"no {code}")


class SignedAuthorityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.authority = SignedAuthority(SECRET, self.clock)
        self.state = RoomRules().create("R1", NOW)

    def token(self, fullname: str = "alice", **kw: Any) -> str:
        return mint(SECRET, fullname, ttl=kw.pop("ttl", 60), now=NOW, **kw)

    def test_not_open(self) -> None:
        self.assertFalse(self.authority.open)
        self.assertTrue(OpenAuthority.open)
        self.assertNotIn(SECRET.decode(), repr(self.authority))

    def test_identify_ignores_the_claimed_identity(self) -> None:
        token = self.token(nick="Al", avatar="https://a/1.png")
        identity = self.authority.identify(token, {"fullname": "mallory", "nick": "M", "avatar": "x"})
        self.assertEqual(identity, Identity("alice", "Al", "https://a/1.png", admin=False, credential=""))

    def test_identify_admin(self) -> None:
        self.assertTrue(self.authority.identify(self.token("root", admin=True), {}).admin)
        self.assertFalse(self.authority.identify(self.token(), {}).admin)

    def test_identify_refuses_bad_tokens(self) -> None:
        for token in (None, "", 42, "garbage", mint(OTHER_SECRET, "alice", ttl=60, now=NOW)):
            refused("auth_failed", self.authority.identify, token, {"fullname": "alice"})

    def test_expiry_follows_the_clock(self) -> None:
        token = self.token(ttl=60)
        self.clock.advance(59.5)
        self.assertEqual(self.authority.identify(token, {}).fullname, "alice")
        self.clock.advance(0.5)
        e = refused("auth_failed", self.authority.identify, token, {})
        self.assertIn("expired", e.en)
        refused("auth_failed", self.authority.resolve, token, self.state)

    def test_resolve(self) -> None:
        # Membership is the server's business (queue_song refuses a non-member).
        identity = self.authority.resolve(self.token(nick="Al"), self.state)
        self.assertEqual((identity.fullname, identity.nick, identity.credential), ("alice", "Al", ""))
        for token in (None, "", "a.b.c", mint(OTHER_SECRET, "alice", ttl=60, now=NOW)):
            refused("auth_failed", self.authority.resolve, token, self.state)

    def test_error_messages_do_not_carry_the_token(self) -> None:
        token = mint(OTHER_SECRET, "alice", ttl=60, now=NOW)
        e = refused("auth_failed", self.authority.identify, token, {})
        for text in (e.en, e.zh, str(e), repr(e)):
            self.assertNotIn(token, text)
            self.assertNotIn(token.split(".")[2], text)


class TokenCLITests(SynchronousTestCase):
    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = token_main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def secret_file(self, data: bytes = SECRET + b"\n") -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_prints_a_token_that_verifies(self) -> None:
        path = self.secret_file()
        code, out, err = self.run_cli("--secret-file", path, "--fullname", "alice", "--nick", "Al", "--ttl", "120")
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.count("\n"), 1)
        claims = verify(SECRET, out.strip(), NOW)
        self.assertEqual((claims["fullname"], claims["nick"], claims["avatar"]), ("alice", "Al", ""))
        self.assertEqual(claims["exp"] - claims["iat"], 120)
        self.assertIsInstance(claims["iat"], int)
        self.assertNotIn(SECRET.decode(), out)

    def test_defaults_and_admin(self) -> None:
        code, out, _ = self.run_cli("--secret-file", self.secret_file(), "--fullname", "root", "--admin")
        self.assertEqual(code, 0)
        claims = verify(SECRET, out.strip(), NOW)
        self.assertEqual(claims["exp"] - claims["iat"], 86400)
        self.assertEqual(claims["role"], "admin")

    def test_errors(self) -> None:
        code, out, err = self.run_cli("--secret-file", self.secret_file(b"short\n"), "--fullname", "alice")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("ktv-token: error:", err)
        self.assertNotIn("short", err.replace("shorter", ""))
        code, out, err = self.run_cli("--secret-file", self.secret_file(), "--fullname", "x" * 65)
        self.assertEqual((code, out), (2, ""))
        with redirect_stderr(io.StringIO()):
            self.assertRaises(SystemExit, token_main, ["--fullname", "alice"])
            self.assertRaises(SystemExit, token_main, ["--secret-file", "x", "--fullname", "a", "--ttl", "0"])


class TapTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def secret_file(self, data: bytes = SECRET + b"\n") -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def authority(self, options: Options) -> Any:
        service = cast(MultiService, makeService(options, reactor=MemoryReactorClock()))
        [server_service] = [c for c in service if isinstance(c, ServerService)]
        return server_service.server.authority

    def test_default_is_open(self) -> None:
        options = self.parse()
        self.assertEqual(options["auth"], "open")
        self.assertIsInstance(self.authority(options), OpenAuthority)

    def test_signed_needs_a_secret_file(self) -> None:
        e = self.assertRaises(usage.UsageError, self.parse, "--auth", "signed")
        self.assertIn("--secret-file", str(e))

    def test_bad_secret_files(self) -> None:
        for path in (self.mktemp(), self.secret_file(b""), self.secret_file(b"x" * 31)):
            self.assertRaises(usage.UsageError, self.parse, "--auth", "signed", "--secret-file", path)

    def test_bad_mode(self) -> None:
        self.assertRaises(usage.UsageError, self.parse, "--auth", "jwt")

    def test_secret_file_without_signed(self) -> None:
        self.assertRaises(usage.UsageError, self.parse, "--secret-file", self.secret_file())

    def test_signed_builds_a_signed_authority(self) -> None:
        reactor = MemoryReactorClock()
        reactor.advance(NOW)
        options = self.parse("--auth", "signed", "--secret-file", self.secret_file())
        service = cast(MultiService, makeService(options, reactor=reactor))
        [server_service] = [c for c in service if isinstance(c, ServerService)]
        authority = server_service.server.authority
        self.assertIsInstance(authority, SignedAuthority)
        identity = authority.identify(mint(SECRET, "alice", ttl=60, now=NOW), {"fullname": "bob"})
        self.assertEqual(identity.fullname, "alice")
        refused("auth_failed", authority.identify, mint(OTHER_SECRET, "alice", ttl=60, now=NOW), {})


class SignedServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.server = memory_server(
            self.clock, RoomRules(max_members=4), SignedAuthority(SECRET, self.clock), max_song_seconds=600
        )
        self.store = self.server.store
        self.treq: Any = StubTreq(HTTPAPI(self.server, Language.EN).app.resource())

    def token(self, fullname: str, **kw: Any) -> str:
        return mint(SECRET, fullname, ttl=3600, now=NOW, **kw)

    def join(self, token: Any, claimed: dict[str, Any]) -> Deferred[RoomState]:
        conn = RecordingConnection(self.server)
        return Deferred.fromCoroutine(self.server.join(conn, "R1", token, claimed))

    def post(self, **form: str) -> tuple[int, dict[str, Any]]:
        data = {"room": "R1", "sid": "1", "duration": "200", **form}
        response = self.successResultOf(self.treq.post(HTTP_URL, data=data))
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_join_under_the_tokens_identity(self) -> None:
        state = self.successResultOf(self.join(self.token("alice", nick="Al"), {"fullname": "mallory", "nick": "M"}))
        [member] = state.members
        self.assertEqual((member.fullname, member.nick, member.credential), ("alice", "Al", ""))

    def test_same_member_on_two_devices(self) -> None:
        self.successResultOf(self.join(self.token("alice"), {"fullname": "alice"}))
        state = self.successResultOf(self.join(self.token("alice"), {"fullname": "alice"}))
        self.assertEqual([m.fullname for m in state.members], ["alice"])

    def test_join_with_a_forged_or_expired_token(self) -> None:
        for token in ("", "forged", mint(OTHER_SECRET, "alice", ttl=60, now=NOW), self.token("alice") + "x"):
            failure = self.failureResultOf(self.join(token, {"fullname": "alice"}), KTVError)
            self.assertEqual(failure.value.code, "auth_failed")
        expiring = mint(SECRET, "alice", ttl=10, now=NOW)
        self.clock.advance(10)
        self.assertEqual(self.failureResultOf(self.join(expiring, {}), KTVError).value.code, "auth_failed")
        self.assertIsNone(self.successResultOf(self.store.get("R1")))

    def test_http_queue_song(self) -> None:
        self.successResultOf(self.join(self.token("alice"), {"fullname": "alice"}))
        # A genuine token of somebody who is not in the room.
        code, body = self.post(token=self.token("bob"))
        self.assertEqual((code, body["code"]), (403, "not_member"))
        # A forged token naming a member.
        code, body = self.post(token=mint(OTHER_SECRET, "alice", ttl=60, now=NOW))
        self.assertEqual((code, body["code"], body["status"]), (401, "auth_failed", 3))
        # The member's own (fresh) token.
        code, body = self.post(token=self.token("alice"))
        self.assertEqual((code, body["status"]), (200, 1))
        state = self.successResultOf(self.store.get("R1"))
        assert state is not None
        self.assertEqual([s.fullname for s in state.queue], ["alice"])
