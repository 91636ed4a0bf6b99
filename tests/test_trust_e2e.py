"""Signed tokens, admins and reconnects over real sockets against a real ``twistd ktv``."""

from __future__ import annotations

import os
import time

from ktvtwist.tokens import mint
from tests.test_e2e import EndToEndHarness, Frame, push

SECRET = b"k" * 48
GRACE = 3.0


class SignedEndToEndTests(EndToEndHarness):
    def server_options(self) -> list[str]:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(SECRET + b"\n")
        return ["--auth", "signed", "--secret-file", path, "--reconnect-grace", str(GRACE), "--ask-timeout", "30"]

    def token(self, name: str) -> str:
        return self.tokens.setdefault(
            name,
            mint(SECRET, name, nick=name.capitalize(), ttl=600, admin=name == "boss", now=time.time()),
        )

    def join_frame(self, name: str, room: str = "R1") -> Frame:
        frame = super().join_frame(name, room)
        frame["fullname"] = "mallory"  # claimed; the token decides
        return frame

    async def test_identity_comes_from_the_token(self) -> None:
        alice = await self.connect("alice")
        frame = await alice.request(self.join_frame("alice"))
        self.assertEqual(frame["caller_fullname"], "alice")
        self.assertEqual([m["fullname"] for m in frame["body"]["members"]], ["alice"])
        intruder = await self.connect("intruder")
        header, payload, signature = self.token("alice").split(".")
        forged = f"{header}.{payload}.{signature[::-1]}"
        refused = await intruder.request({"action": "join", "room": "R1", "fullname": "alice", "token": forged})
        self.assertError(refused, "auth_failed")
        expired = mint(SECRET, "late", ttl=1, now=time.time() - 10)
        refused = await intruder.request({"action": "join", "room": "R1", "fullname": "late", "token": expired})
        self.assertError(refused, "auth_failed")
        code, body = await self.post({"room": "R1", "sid": "1", "token": forged, "duration": "100"})
        self.assertEqual((code, body["status"]), (401, 3))

    async def test_admin_cuts_and_kicks(self) -> None:
        alice, _ = await self.join("alice")
        boss, _ = await self.join("boss")
        await alice.next_frame(push(count=2))
        code, _ = await self.post(self.song("R1", "alice", duration="100"))
        self.assertEqual(code, 200)
        await alice.next_frame(push(status="2"))
        await alice.request({"action": "ask", "ack": 1})
        cut = await boss.request({"action": "cut"})
        self.assertEqual(cut["body"]["status"], "3")
        kicked = await boss.request({"action": "kick", "target": "alice"})
        self.assertEqual(kicked["body"]["count"], 1)
        await alice.next_frame(push(count=1))
        self.assertError(await alice.request({"action": "status"}), "not_in_room")

    async def test_reconnect_within_the_grace_keeps_the_mic(self) -> None:
        alice, _ = await self.join("alice")
        bob, _ = await self.join("bob")
        await alice.next_frame(push(count=2))
        code, _ = await self.post(self.song("R1", "alice", duration="100"))
        self.assertEqual(code, 200)
        await alice.next_frame(push(status="2"))
        singing = await alice.request({"action": "ask", "ack": 1})
        await alice.close()  # the phone's screen locks
        away = await bob.next_frame(lambda f: f.get("type") == 1 and not f["body"]["members"][0]["online"])
        self.assertEqual((away["body"]["status"], away["body"]["fullname"]), ("1", "alice"))
        back, frame = await self.join("alice")
        self.assertEqual(frame["body"]["status"], "1")
        self.assertEqual(frame["body"]["start_time"], singing["body"]["start_time"])
        self.assertEqual(frame["body"]["count"], 2)
        returned = await bob.next_frame(lambda f: f.get("type") == 1 and f["body"]["members"][0]["online"])
        self.assertEqual(returned["body"]["fullname"], "alice")
        self.assertEqual((await back.request({"action": "cut"}))["body"]["status"], "3")
