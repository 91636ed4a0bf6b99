"""The wire format: parsing client frames and building server frames.

Every server frame is the envelope::

    {"status": 0 | -1, "type": 1 | 2, "body": ..., "message": "...",
     "timestamp": "1527574165.09"}

plus ``caller_action``/``caller_fullname`` on a direct reply and ``code`` on
an error.  See docs/protocol.md for the whole contract.  Nothing here does
I/O; the functions are shared by the WebSocket and HTTP layers.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ktvtwist import errors
from ktvtwist.errors import KTVError, Language
from ktvtwist.room import Member, RoomState, Song

STATUS_OK = 0
STATUS_ERROR = -1
TYPE_ROOM = 1
TYPE_MESSAGE = 2


class Frame:
    """One encoded server frame, shared by every connection it is sent to.

    ``payload`` is encoded once; a transport may cache its own framing of it
    in ``prepared`` (the WebSocket layer keeps an Autobahn PreparedMessage).
    """

    __slots__ = ("payload", "prepared")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.prepared: Any = None


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def timestamp(now: float) -> str:
    return f"{now:.2f}"


def _whole_seconds(seconds: float) -> str:
    return str(max(0, math.ceil(seconds - 1e-6)))


def member_body(member: Member) -> dict[str, Any]:
    """The documented member object, plus ``online`` (false while away in the reconnect grace)."""
    return {
        "nick": member.nick,
        "fullname": member.fullname,
        "avatar": member.avatar,
        "online": member.away_until is None,
    }


def song_body(song: Song) -> dict[str, str]:
    return {
        "sid": song.sid,
        "name": song.name,
        "author": song.author,
        "nick": song.nick,
        "fullname": song.fullname,
        "avatar": song.avatar,
        "duration": str(song.duration),
    }


def room_body(state: RoomState, now: float) -> dict[str, Any]:
    """The documented room object, with its documented JSON types."""
    on_mic = state.on_mic
    return {
        "count": len(state.members),
        "status": str(int(state.status)),
        "room": state.room,
        "current_time": int(now),
        "start_time": str(int(state.start_time)),
        "end_time": str(int(state.end_time)),
        "duration": _whole_seconds(state.duration),
        "sid": on_mic.sid if on_mic else "0",
        "name": on_mic.name if on_mic else "",
        "author": on_mic.author if on_mic else "",
        "nick": on_mic.nick if on_mic else "",
        "fullname": on_mic.fullname if on_mic else "",
        "members": [member_body(m) for m in state.members],
        "songs": [song_body(s) for s in state.queue],
        "version": state.version,
    }


def envelope(body: Any, now: float, *, kind: int = TYPE_ROOM) -> dict[str, Any]:
    return {
        "status": STATUS_OK,
        "type": kind,
        "body": body,
        "message": "success",
        "timestamp": timestamp(now),
    }


def as_reply(message: dict[str, Any], action: str, fullname: str) -> dict[str, Any]:
    """A copy of ``message`` addressed to the client whose action it answers."""
    return {**message, "caller_action": action, "caller_fullname": fullname}


def error_envelope(error: KTVError, now: float, language: Language, action: str, fullname: str) -> dict[str, Any]:
    return {
        "status": STATUS_ERROR,
        "type": TYPE_ROOM,
        "body": {},
        "message": error.message(language),
        "code": error.code,
        "timestamp": timestamp(now),
        "caller_action": action,
        "caller_fullname": fullname,
    }


@dataclass(frozen=True)
class Request:
    """A client frame, checked for shape but not for meaning."""

    action: str
    raw: dict[str, Any]
    body: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        """An action field, at the top level (old clients) or inside ``body``."""
        if name in self.raw:
            return self.raw[name]
        return self.body.get(name)

    @property
    def claimed_fullname(self) -> str:
        value = self.raw.get("fullname")
        return value if isinstance(value, str) else ""


def parse_request(payload: bytes) -> Request:
    """Decode a text frame's payload; raises ``bad_request`` for anything malformed."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise errors.bad_request("frame is not UTF-8 text") from None
    except (ValueError, RecursionError):
        raise errors.bad_request("frame is not JSON") from None
    if not isinstance(data, dict):
        raise errors.bad_request("frame is not a JSON object")
    action = data.get("action")
    if action is None:
        raise errors.bad_request("'action' is required")
    if not isinstance(action, str):
        raise errors.bad_request("'action' must be a string")
    body = data.get("body")
    if body is None:
        body = {}
    elif not isinstance(body, dict):
        raise errors.bad_request("'body' must be an object")
    return Request(action=action, raw=data, body=body)


def require_text(value: Any, name: str, limit: int = 64) -> str:
    """A required short string field (numbers are accepted and turned into text)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise errors.bad_request(f"{name!r} must be a non-empty string")
    if len(value) > limit or any(ord(c) < 0x20 for c in value):
        raise errors.bad_request(f"{name!r} must be at most {limit} printable characters")
    return value


def parse_ack(value: Any) -> bool:
    """``ack`` 1 (take the mic) or 0 (pass); the strings "1" and "0" are accepted."""
    if isinstance(value, bool) or value not in (0, 1, "0", "1"):
        raise errors.bad_request("'ack' must be 1 or 0")
    return value in (1, "1")


def parse_duration(value: Any, limit: int) -> int:
    """A song length: a whole number of seconds from 1 to ``limit``."""
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]{1,9}\s*", value):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise errors.bad_request(f"'duration' must be a whole number of seconds from 1 to {limit}")
    return value


def reply_payload(payload: bytes, action: str, fullname: str) -> bytes:
    """An encoded push turned into the reply to one client, without re-encoding it.

    ``payload`` is an encoded JSON object; the caller fields are spliced in
    before its closing brace.
    """
    extra = encode({"caller_action": action, "caller_fullname": fullname})
    return payload[:-1] + b"," + extra[1:]
