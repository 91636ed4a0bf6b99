"""Who is who: turning a token into a member.

Token checking sits behind :class:`ITokenAuthority` so that open mode (this
module) and signed tokens can be swapped without touching the room logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from ktvtwist import errors, tokens
from ktvtwist.room import Member, RoomState

if TYPE_CHECKING:  # importing txredisapi would install the default reactor
    from ktvtwist.redis_store import RedisRoomStore

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


@implementer(ITokenAuthority)
class RedisTokenAuthority:
    """Tokens are keys of Redis hashes that the app's backend writes (``--auth redis``).

    ``{prefix}token:{token}`` holds ``fullname`` (required), ``nick``,
    ``avatar`` and ``role`` (``"admin"`` for an administrator); the backend
    sets the key's TTL, and deleting the key revokes the token.  Like
    :class:`SignedAuthority`, the member is whoever the record names (the
    frame's own ``fullname`` is ignored), the token is not kept, and
    :meth:`resolve` does not look at the room (the rules check membership).

    Both methods return Deferreds: ``auth_failed`` for a missing, unknown or
    expired token or a record that breaks the field limits; ``unavailable``
    when Redis is down.
    """

    open = False
    _log = Logger()

    def __init__(self, store: RedisRoomStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"RedisTokenAuthority({self.store.token_key('*')!r})"

    # The server calls both through maybeDeferred; the interface's annotations name the plain result.
    def identify(self, token: Any, claimed: Mapping[str, Any]) -> Deferred[Identity]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._lookup(token))

    def resolve(self, token: Any, state: RoomState) -> Deferred[Identity]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._lookup(token))

    async def _lookup(self, token: Any) -> Identity:
        if not isinstance(token, str) or not token:
            raise errors.auth_failed("a non-empty token is required")
        if len(token) > tokens.MAX_TOKEN_LENGTH:
            raise errors.auth_failed(f"the token is longer than {tokens.MAX_TOKEN_LENGTH} characters")
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.auth_failed("the token is not valid text") from None
        d: Deferred[Any] = self.store.redis().hgetall(self.store.token_key(token))
        record = await d.addErrback(self._failed)
        if not record:
            raise errors.auth_failed("unknown or expired token")
        try:
            return self._identity(record)
        except errors.KTVError as e:
            # The backend wrote a bad record; the reason never quotes the token.
            self._log.warn("a token record in Redis is invalid: {reason}", reason=e.en)
            raise errors.auth_failed(f"the token's record is invalid: {e.en}") from None

    @staticmethod
    def _identity(record: Mapping[Any, Any]) -> Identity:
        fullname = _short_text(record.get("fullname"), "fullname", MAX_NAME_LENGTH, required=True)
        nick = _short_text(record.get("nick"), "nick", MAX_NAME_LENGTH, required=False) or fullname
        avatar = _short_text(record.get("avatar"), "avatar", MAX_AVATAR_LENGTH, required=False)
        role = record.get("role")
        if role is not None and not isinstance(role, str):
            raise errors.bad_request("'role' must be a string")
        return Identity(fullname, nick, avatar, admin=role == tokens.ADMIN_ROLE)

    def _failed(self, failure: Failure) -> Failure:
        import txredisapi

        if failure.check(txredisapi.ResponseError) and str(failure.value).startswith("WRONGTYPE"):
            self._log.warn("a token key in Redis is not a hash")
            raise errors.auth_failed("the token's record is invalid: not a hash")
        return self.store._redis_failed(failure)
