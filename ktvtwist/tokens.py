"""Signed member tokens: compact JWTs (RFC 7519) with HS256, standard library only.

A token is ``base64url(header) "." base64url(payload) "." base64url(signature)``
(URL-safe base64 without ``=`` padding), the header is exactly
``{"alg": "HS256", "typ": "JWT"}`` as far as ``alg`` goes, and the signature
is HMAC-SHA256 over the ASCII bytes ``header "." payload`` keyed with the
shared secret.  The payload's claims:

``fullname``  required, a non-empty string of at most 64 characters with no
              control characters: who the member is
``nick``      optional, the same limits (default: the fullname)
``avatar``    optional, a string of at most 1024 characters (default ``""``)
``exp``       required, expiry in Unix seconds (int or float); a token is
              expired from ``exp`` on (``exp <= now``)
``iat``       optional, issue time in Unix seconds
``nbf``       optional, not valid before this Unix time
``role``      optional, ``"admin"`` for an administrator

Nothing here logs, and no :class:`TokenError` reason quotes the token or a
claim's value, so errors can be shown to clients and written to logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from typing import Any

ALGORITHM = "HS256"
MAX_TOKEN_LENGTH = 4096
MIN_SECRET_BYTES = 32
# The same limits as ktvtwist.auth.OpenAuthority applies to a join frame.
MAX_NAME_LENGTH = 64
MAX_AVATAR_LENGTH = 1024
ADMIN_ROLE = "admin"

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.-]*")
_HEADER = {"alg": ALGORITHM, "typ": "JWT"}


class TokenError(ValueError):
    """A token that proves nothing; ``reason`` says why, without quoting it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_secret(secret: bytes) -> None:
    """Refuse a secret too weak to sign with (``ValueError``)."""
    if not isinstance(secret, bytes):
        raise ValueError("the secret must be bytes")
    if not secret:
        raise ValueError("the secret is empty")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret is {len(secret)} bytes long; at least {MIN_SECRET_BYTES} are needed")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(segment: str, what: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise TokenError(f"the {what} is not URL-safe base64 without padding")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenError(f"the {what} is not URL-safe base64 without padding") from None
    if _b64encode(data) != segment:
        # Stray bits in the last character: another spelling of the same bytes.
        raise TokenError(f"the {what} is not canonical base64")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TokenError(f"the {what} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"the {what} is not a JSON object")
    return value


def _sign(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def _text(claims: dict[str, Any], name: str, limit: int, required: bool) -> str:
    value = claims.get(name)
    if value is None or value == "":
        if required:
            raise TokenError(f"the {name!r} claim is required")
        return ""
    if not isinstance(value, str):
        raise TokenError(f"the {name!r} claim must be a string")
    if len(value) > limit:
        raise TokenError(f"the {name!r} claim is longer than {limit} characters")
    if any(ord(c) < 0x20 for c in value):
        raise TokenError(f"the {name!r} claim contains control characters")
    return value


def _time(claims: dict[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise TokenError(f"the {name!r} claim is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenError(f"the {name!r} claim must be a number of Unix seconds")
    return float(value)


def _numeric_date(seconds: float) -> int | float:
    return int(seconds) if float(seconds).is_integer() else seconds


def mint(
    secret: bytes,
    fullname: str,
    *,
    nick: str | None = None,
    avatar: str | None = None,
    ttl: float,
    admin: bool = False,
    now: float,
) -> str:
    """A token for ``fullname`` valid for ``ttl`` seconds from ``now``.

    Raises :class:`TokenError` for claims that :func:`verify` would refuse.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not (math.isfinite(ttl) and ttl > 0):
        raise TokenError("the ttl must be a positive number of seconds")
    claims: dict[str, Any] = {"fullname": fullname}
    if nick is not None:
        claims["nick"] = nick
    if avatar is not None:
        claims["avatar"] = avatar
    claims["iat"] = _numeric_date(now)
    claims["exp"] = _numeric_date(now + ttl)
    if admin:
        claims["role"] = ADMIN_ROLE
    _check_claims(claims)
    header = _b64encode(json.dumps(_HEADER, separators=(",", ":")).encode("ascii"))
    payload = _b64encode(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    signing_input = f"{header}.{payload}"
    token = f"{signing_input}.{_b64encode(_sign(secret, signing_input.encode('ascii')))}"
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(f"the token would be longer than {MAX_TOKEN_LENGTH} characters")
    return token


def _check_claims(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims with ``nick`` and ``avatar`` filled in; raises :class:`TokenError`."""
    fullname = _text(claims, "fullname", MAX_NAME_LENGTH, required=True)
    nick = _text(claims, "nick", MAX_NAME_LENGTH, required=False) or fullname
    avatar = _text(claims, "avatar", MAX_AVATAR_LENGTH, required=False)
    _time(claims, "exp", required=True)
    _time(claims, "iat", required=False)
    _time(claims, "nbf", required=False)
    role = claims.get("role")
    if role is not None and not isinstance(role, str):
        raise TokenError("the 'role' claim must be a string")
    return {**claims, "fullname": fullname, "nick": nick, "avatar": avatar}


def verify(secret: bytes, token: str, now: float) -> dict[str, Any]:
    """The claims of a genuine, unexpired ``token``; raises :class:`TokenError`.

    The returned dict is the payload with ``nick`` (default: the fullname) and
    ``avatar`` (default ``""``) always present.
    """
    if not isinstance(token, str) or not token:
        raise TokenError("no token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError(f"the token is longer than {MAX_TOKEN_LENGTH} characters")
    if not _TOKEN_CHARS.fullmatch(token):
        raise TokenError("the token is not URL-safe base64 segments")
    segments = token.split(".")
    if len(segments) != 3:
        raise TokenError("a token has three dot-separated segments")
    header_b64, payload_b64, signature_b64 = segments
    header = _json_object(_b64decode(header_b64, "header"), "header")
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"the token's alg must be {ALGORITHM}")
    if "crit" in header:
        raise TokenError("the token's header has critical extensions")
    signature = _b64decode(signature_b64, "signature")
    expected = _sign(secret, f"{header_b64}.{payload_b64}".encode("ascii"))
    if not hmac.compare_digest(expected, signature):
        raise TokenError("the signature does not match")
    claims = _check_claims(_json_object(_b64decode(payload_b64, "payload"), "payload"))
    if claims["exp"] <= now:
        raise TokenError("the token has expired")
    nbf = claims.get("nbf")
    if nbf is not None and now < nbf:
        raise TokenError("the token is not valid yet")
    return claims


def is_admin(claims: dict[str, Any]) -> bool:
    return claims.get("role") == ADMIN_ROLE
