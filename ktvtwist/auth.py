"""Who is who: turning a token into a member.

Token checking sits behind :class:`ITokenAuthority` so that open mode (this
module) and signed tokens can be swapped without touching the room logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface, implementer

from ktvtwist import errors, tokens
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


MAX_SECRET_FILE_BYTES = 64 * 1024


def read_secret_file(path: str) -> bytes:
    """The signing secret kept in ``path``, less trailing whitespace.

    Raises ``ValueError`` with a one-line reason (never the secret) when the
    file cannot be read or the secret is empty or shorter than 32 bytes.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as e:
        raise ValueError(f"cannot read the secret file {path}: {e.strerror or e}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"the secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    secret = data.rstrip()
    try:
        tokens.check_secret(secret)
    except ValueError as e:
        raise ValueError(f"the secret file {path}: {e}") from None
    return secret


@implementer(ITokenAuthority)
class SignedAuthority:
    """Tokens are HS256 JWTs (see :mod:`ktvtwist.tokens`) and say who the member is.

    A ``join`` frame's own ``fullname``, ``nick`` and ``avatar`` are ignored.
    The token is not kept (the member's credential is empty): any genuine,
    unexpired token naming a member identifies them, so :meth:`resolve` does
    not look at the room; the server refuses a non-member's song itself
    (``not_member``, from :meth:`~ktvtwist.room.RoomRules.queue_song`).
    """

    open = False

    def __init__(self, secret: bytes, clock: IReactorTime) -> None:
        tokens.check_secret(secret)
        self._secret = secret
        self._clock = clock

    def __repr__(self) -> str:
        return "SignedAuthority(<secret>)"

    def _verify(self, token: Any) -> Identity:
        if not isinstance(token, str) or not token:
            raise errors.auth_failed("a non-empty token is required")
        try:
            claims = tokens.verify(self._secret, token, self._clock.seconds())
        except tokens.TokenError as e:
            raise errors.auth_failed(f"invalid token: {e.reason}") from None
        return Identity(claims["fullname"], claims["nick"], claims["avatar"], admin=tokens.is_admin(claims))

    def identify(self, token: Any, claimed: Mapping[str, Any]) -> Identity:
        return self._verify(token)

    def resolve(self, token: Any, state: RoomState) -> Identity:
        return self._verify(token)
