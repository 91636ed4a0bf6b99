"""Who is who: turning a token into a member.

Token checking sits behind :class:`ITokenAuthority` so that open mode (this
module) and signed tokens can be swapped without touching the room logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zope.interface import Interface, implementer

from ktvtwist import errors
from ktvtwist.room import Member, RoomState

MAX_NAME_LENGTH = 64
MAX_AVATAR_LENGTH = 1024


@dataclass(frozen=True)
class Identity:
    fullname: str
    nick: str
    avatar: str
    admin: bool = False
    credential: str = ""

    def as_member(self) -> Member:
        return Member(self.fullname, self.nick, self.avatar, self.credential)


class ITokenAuthority(Interface):
    open: bool
    """True when tokens prove nothing and a frame's ``fullname`` is believed."""

    def identify(token: Any, claimed: Mapping[str, Any]) -> Identity:
        """The member a ``join`` frame's token stands for; raises ``auth_failed``.

        ``claimed`` holds the frame's own ``fullname``, ``nick`` and ``avatar``.
        """

    def resolve(token: Any, state: RoomState) -> Identity:
        """The member an HTTP call's token stands for in ``state``'s room.

        Raises ``auth_failed`` for a bad token and ``not_member`` for a good
        token of somebody who is not in the room.
        """


def _short_text(value: Any, field: str, limit: int, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise errors.bad_request(f"{field!r} is required")
        return ""
    if not isinstance(value, str):
        raise errors.bad_request(f"{field!r} must be a string")
    if len(value) > limit:
        raise errors.bad_request(f"{field!r} is longer than {limit} characters")
    if any(ord(c) < 0x20 for c in value):
        raise errors.bad_request(f"{field!r} contains control characters")
    return value


@implementer(ITokenAuthority)
class OpenAuthority:
    """Any non-empty token is accepted and the member is who the frame says.

    The token is kept as the member's credential so that the HTTP API, which
    has no ``fullname``, can tell who a token belongs to; a second member
    cannot join with a token somebody in the room already holds.
    """

    open = True

    def identify(self, token: Any, claimed: Mapping[str, Any]) -> Identity:
        token = _short_text(token, "token", 4096, required=False)
        if not token:
            raise errors.auth_failed("a non-empty token is required")
        fullname = _short_text(claimed.get("fullname"), "fullname", MAX_NAME_LENGTH, required=True)
        nick = _short_text(claimed.get("nick"), "nick", MAX_NAME_LENGTH, required=False) or fullname
        avatar = _short_text(claimed.get("avatar"), "avatar", MAX_AVATAR_LENGTH, required=False)
        return Identity(fullname, nick, avatar, credential=token)

    def resolve(self, token: Any, state: RoomState) -> Identity:
        if not isinstance(token, str) or not token:
            raise errors.auth_failed("a non-empty token is required")
        for m in state.members:
            if m.credential == token:
                return Identity(m.fullname, m.nick, m.avatar, credential=token)
        raise errors.not_member()
