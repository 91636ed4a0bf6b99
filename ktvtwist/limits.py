"""Limits that hold under abuse: token buckets, allowed origins, send backlogs.

Nothing here does I/O.  Time comes from an injected ``IReactorTime`` so that
tests can drive the buckets with a ``task.Clock``.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from urllib.parse import urlsplit

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IReactorTime

DEFAULT_RATE = 20.0
"""Frames (or HTTP calls) a second one connection (or token) may make, sustained."""

DEFAULT_BURST = 40
"""How many frames above the rate a client may send at once after a quiet spell."""


class TokenBucket:
    """At most ``burst`` at once, refilled at ``rate`` a second.

    :meth:`take` is O(1): the bucket refills lazily from the clock when asked.
    """

    __slots__ = ("rate", "burst", "_clock", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: float, clock: IReactorTime) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, not {rate!r}, {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock.seconds()

    def take(self) -> bool:
        """Spend one token if there is one; False means the caller is over the limit."""
        now = self._clock.seconds()
        elapsed = now - self._stamp
        self._stamp = now
        tokens = self._tokens
        if elapsed > 0:
            tokens = min(self.burst, tokens + elapsed * self.rate)
        if tokens >= 1:
            self._tokens = tokens - 1
            return True
        self._tokens = tokens
        return False

    @property
    def last_used(self) -> float:
        """When :meth:`take` was last called (or the bucket was made)."""
        return self._stamp


class KeyedBuckets:
    """One :class:`TokenBucket` per key (an HTTP token, say), in bounded memory.

    A key unused for ``burst / rate`` seconds would have a full bucket again,
    so it is forgotten without changing any answer.  Beyond ``max_keys`` live
    keys the least recently used one is forgotten early (it starts afresh if
    it comes back): a flood of distinct keys costs at most ``max_keys``
    buckets.  Keys are stored as a short digest, so tokens are not kept.
    """

    def __init__(self, rate: float, burst: float, clock: IReactorTime, max_keys: int = 10000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        TokenBucket(rate, burst, clock)  # validate the parameters now
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._idle_seconds = burst / rate
        # least recently used first
        self._buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> bool:
        """Spend one of ``key``'s tokens; False means ``key`` is over the limit."""
        self._forget_idle()
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        bucket = self._buckets.get(digest)
        if bucket is None:
            bucket = self._buckets[digest] = TokenBucket(self.rate, self.burst, self._clock)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(digest)
        return bucket.take()

    def _forget_idle(self) -> None:
        horizon = self._clock.seconds() - self._idle_seconds
        buckets = self._buckets
        while buckets:
            digest, bucket = next(iter(buckets.items()))
            if bucket.last_used > horizon:
                return
            del buckets[digest]


class OriginPolicy:
    """Which browser pages may open a WebSocket, by their ``Origin`` header.

    Patterns use ``*`` as a wildcard: ``"*"`` (anything, the default),
    ``"https://ktv.example.com"``, ``"https://*.example.com"``,
    ``"*.example.com"`` (any scheme).  A pattern without a port matches the
    scheme's default port (any port when the scheme is a wildcard or
    missing).  ``"null"`` allows the ``null`` origin (sandboxed and
    ``file://`` pages).  A request without an ``Origin`` header does not
    come from a browser page and is always allowed.
    """

    def __init__(self, patterns: list[str] | tuple[str, ...] = ("*",)) -> None:
        self.patterns = [p.strip() for p in patterns if p.strip()]
        if not self.patterns:
            raise ValueError("at least one allowed origin pattern is needed ('*' allows any)")
        self.allow_any = "*" in self.patterns
        self.allow_null = self.allow_any or any(p.lower() == "null" for p in self.patterns)
        self._compiled = [
            re.compile("^" + ".*".join(re.escape(part) for part in _normalized_pattern(p.lower()).split("*")) + "$")
            for p in self.patterns
            if p.lower() != "null"
        ]

    def allows(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header (None or "": none) may go on."""
        if not origin or self.allow_any:
            return True
        origin = origin.strip().lower()
        if origin == "null" or origin.startswith("file:"):
            return self.allow_null
        try:
            parts = urlsplit(origin)
            host, port = parts.hostname, parts.port
        except ValueError:
            return False
        if not parts.scheme or not host:
            return False
        if port is None:
            port = _DEFAULT_PORTS.get(parts.scheme)
        if ":" in host:
            host = f"[{host}]"
        normalized = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
        return any(p.match(normalized) for p in self._compiled)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _normalized_pattern(pattern: str) -> str:
    """``pattern`` in the ``scheme://host:port`` form origins are compared in."""
    scheme, sep, rest = pattern.partition("://")
    if not sep:
        scheme, rest = "*", pattern
    rest = rest.rstrip("/")
    host_end = rest.rfind("]") + 1  # an IPv6 literal keeps its colons
    if ":" in rest[host_end:]:
        return f"{scheme}://{rest}"
    port = _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{rest}:{port if port is not None else '*'}"


def send_buffer_of(transport: object) -> FileDescriptor | None:
    """The Twisted file descriptor that buffers what ``transport`` writes, if any.

    For TCP that is the transport itself; for TLS (a protocol wrapper) the
    TCP transport under it.  None for transports that are not file
    descriptors (in-memory test transports, say).
    """
    for _ in range(4):
        if isinstance(transport, FileDescriptor) and hasattr(transport, "_tempDataLen"):
            return transport
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def unsent_bytes(fd: FileDescriptor) -> int:
    """Bytes written to ``fd`` that the kernel has not accepted yet.

    ``FileDescriptor.write`` appends to ``_tempDataBuffer`` (its total in
    ``_tempDataLen``); ``doWrite`` joins that into ``dataBuffer`` and sends
    from ``offset`` on.  Three attribute reads: cheap enough for every push.
    """
    return len(fd.dataBuffer) - fd.offset + fd._tempDataLen
