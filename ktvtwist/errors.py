"""Domain errors: one exception type carrying a stable code and a message.

The room logic raises :class:`KTVError`; the WebSocket and HTTP layers turn it
into their own error shapes (``code`` for WebSocket frames, the old API's
numeric ``status`` and an HTTP status for the HTTP API).  Messages come in
Chinese (the old server's wording, which clients may display) and English.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Language(StrEnum):
    ZH = "zh"
    EN = "en"


@dataclass(frozen=True)
class ErrorKind:
    """A class of error: its wire code and how the HTTP API reports it."""

    code: str
    api_status: int
    http_status: int


BAD_REQUEST = ErrorKind("bad_request", 4, 400)
UNKNOWN_ACTION = ErrorKind("unknown_action", 4, 400)
NOT_IN_ROOM = ErrorKind("not_in_room", 2, 403)
ALREADY_IN_ROOM = ErrorKind("already_in_room", 6, 409)
ROOM_FULL = ErrorKind("room_full", 2, 403)
AUTH_FAILED = ErrorKind("auth_failed", 3, 401)
TOKEN_IN_USE = ErrorKind("token_in_use", 6, 409)
NAME_IN_USE = ErrorKind("name_in_use", 6, 409)
WRONG_STATE = ErrorKind("wrong_state", 2, 409)
NOT_YOUR_TURN = ErrorKind("not_your_turn", 2, 403)
NOT_SINGER = ErrorKind("not_singer", 2, 403)
ALREADY_QUEUED = ErrorKind("already_queued", 6, 409)
NOT_MEMBER = ErrorKind("not_member", 2, 403)
ROOM_NOT_FOUND = ErrorKind("room_not_found", 7, 404)
SONG_NOT_FOUND = ErrorKind("song_not_found", 7, 404)
NOT_FOUND = ErrorKind("not_found", 7, 404)
NOT_QUEUED = ErrorKind("not_queued", 7, 404)
FORBIDDEN = ErrorKind("forbidden", 2, 403)
TOO_LARGE = ErrorKind("too_large", 4, 413)
SERVER_BUSY = ErrorKind("server_busy", 5, 503)
UNAVAILABLE = ErrorKind("unavailable", 5, 503)
INTERNAL_ERROR = ErrorKind("internal_error", 5, 500)


class KTVError(Exception):
    """A request that cannot be carried out, with words a client may show."""

    def __init__(self, kind: ErrorKind, zh: str, en: str) -> None:
        super().__init__(en)
        self.kind = kind
        self.zh = zh
        self.en = en

    @property
    def code(self) -> str:
        return self.kind.code

    def message(self, language: Language) -> str:
        return self.zh if language == Language.ZH else self.en

    def __repr__(self) -> str:
        return f"KTVError({self.kind.code!r}, {self.en!r})"


def bad_request(en: str, zh: str = "请求格式错误") -> KTVError:
    return KTVError(BAD_REQUEST, f"{zh}: {en}", en)


def unknown_action(action: str) -> KTVError:
    return KTVError(UNKNOWN_ACTION, f"未知操作: {action}", f"unknown action: {action}")


def not_in_room() -> KTVError:
    return KTVError(NOT_IN_ROOM, "请先进入房间", "join a room first")


def already_in_room() -> KTVError:
    return KTVError(ALREADY_IN_ROOM, "你已在房间中", "you are already in the room")


def room_full() -> KTVError:
    return KTVError(ROOM_FULL, "房间人数已满", "the room is full")


def auth_failed(en: str = "missing or invalid token") -> KTVError:
    return KTVError(AUTH_FAILED, "用户验证失败", en)


def token_in_use() -> KTVError:
    return KTVError(
        TOKEN_IN_USE,
        "该 token 已被房间内其他成员使用",
        "another member of the room joined with this token",
    )


def name_in_use() -> KTVError:
    return KTVError(
        NAME_IN_USE,
        "该用户已在房间中(token 不一致)",
        "a member with this fullname is in the room with another token",
    )


def cannot_ask() -> KTVError:
    return KTVError(WRONG_STATE, "当前状态不能上麦/不能重复上麦", "nobody is being asked to take the mic now")


def not_your_turn() -> KTVError:
    return KTVError(NOT_YOUR_TURN, "不能演唱不是自己点的歌~", "you can't sing a song you didn't pick")


def cannot_cut() -> KTVError:
    return KTVError(WRONG_STATE, "当前不可切歌", "no song is being sung")


def not_singer() -> KTVError:
    return KTVError(NOT_SINGER, "只有演唱者才能切歌", "only the singer can cut the song")


def already_queued() -> KTVError:
    return KTVError(ALREADY_QUEUED, "不能重复排麦", "you already have a song in the queue")


def not_member() -> KTVError:
    return KTVError(NOT_MEMBER, "你不在该房间中", "you are not a member of this room")


def room_not_found() -> KTVError:
    return KTVError(ROOM_NOT_FOUND, "房间不存在", "no such room")


def song_not_found() -> KTVError:
    return KTVError(SONG_NOT_FOUND, "歌曲不存在", "no such song")


def not_queued() -> KTVError:
    return KTVError(NOT_QUEUED, "未找到已点歌曲", "no queued song to cancel")


def forbidden() -> KTVError:
    return KTVError(FORBIDDEN, "没有权限", "only an admin may do that")


def too_large(what: str, limit: int) -> KTVError:
    return KTVError(TOO_LARGE, f"消息过长(最多 {limit} 字节)", f"{what} is larger than {limit} bytes")


def too_many_rooms() -> KTVError:
    return KTVError(SERVER_BUSY, "服务器繁忙,无法创建新房间", "this server cannot open more rooms now")


def unavailable() -> KTVError:
    return KTVError(UNAVAILABLE, "服务暂时不可用,请稍后重试", "the room store is unavailable; try again shortly")


def server_busy() -> KTVError:
    return KTVError(SERVER_BUSY, "服务器繁忙,请稍后重试", "the room is too busy; try again")


def internal_error() -> KTVError:
    return KTVError(INTERNAL_ERROR, "服务器内部错误", "internal server error")


RATE_LIMITED = ErrorKind("rate_limited", 4, 429)


def rate_limited() -> KTVError:
    return KTVError(RATE_LIMITED, "请求过于频繁,请稍后再试", "too many requests; slow down")
