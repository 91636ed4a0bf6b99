"""The song catalog in Redis, shared by every node and changed without a restart.

One hash, ``P catalog`` (``P`` is ``--redis-prefix``)::

    Pcatalog   hash: sid -> JSON {"sid", "name", "author", "lrc", "link"}

``ktv-admin load-catalog`` (or :func:`load_catalog`) writes it in one Lua
script, so a node looking a song up sees the old catalog or the new one,
never half of each.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ktvtwist.catalog import CatalogError, CatalogSong, ICatalog, parse_catalog
from ktvtwist.redis_store import RedisRoomStore

# Pairs of HSET arguments sent to one HSET inside the script (Lua's unpack has a stack limit).
_CHUNK = 1000

# KEYS: the catalog hash.  ARGV: "1" to replace (delete first) or "0" to merge,
# then sid, JSON, sid, JSON, ...  Returns the number of songs in the catalog after.
LOAD_SCRIPT = f"""
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
end
for i = 2, #ARGV, {2 * _CHUNK} do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + {2 * _CHUNK - 1}, #ARGV)))
end
return redis.call('HLEN', KEYS[1])
"""


def song_json(song: CatalogSong) -> str:
    """How a song is kept in the catalog hash."""
    return json.dumps(
        {"sid": song.sid, "name": song.name, "author": song.author, "lrc": song.lrc, "link": song.link},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def parse_song(sid: str, text: Any) -> CatalogSong:
    """The song kept under ``sid``; raises :class:`CatalogError` when the entry is not one."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as e:
        raise CatalogError(f"the catalog entry {sid!r} is not JSON: {e}") from None
    [song] = parse_catalog([data])
    if song.sid != sid:
        raise CatalogError(f"the catalog entry {sid!r} holds the song {song.sid!r}")
    return song


def is_wrong_type(failure: Failure) -> bool:
    """Whether a Redis command failed because its key holds another type (a data error, not an outage)."""
    import txredisapi

    return bool(failure.check(txredisapi.ResponseError)) and str(failure.value).startswith("WRONGTYPE")


@implementer(ICatalog)
class RedisCatalog:
    """An :class:`ICatalog` kept in the store's Redis: every lookup asks Redis.

    ``lookup`` fires with the song or None; with ``unavailable`` when Redis is
    down; with :class:`CatalogError` (the client gets ``internal_error``, the
    log says why) when the entry or the key is not what ``load_catalog`` writes.
    """

    _log = Logger()

    def __init__(self, store: RedisRoomStore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"RedisCatalog({self.store.catalog_key()!r})"

    # The server calls it through maybeDeferred; ICatalog's annotation names the plain result.
    def lookup(self, sid: str) -> Deferred[CatalogSong | None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._lookup(sid))

    async def _lookup(self, sid: str) -> CatalogSong | None:
        key = self.store.catalog_key()
        d: Deferred[Any] = self.store.redis().hget(key, sid)  # unavailable at once when Redis is down
        text = await d.addErrback(self._failed, key)
        if text is None:
            return None
        try:
            return parse_song(sid, text)
        except CatalogError as e:
            self._log.error("{error}", error=str(e))
            raise

    def _failed(self, failure: Failure, key: str) -> Failure:
        if is_wrong_type(failure):
            self._log.error("the catalog key {key} is not a hash", key=key)
            raise CatalogError(f"the catalog key {key} is not a hash")
        return self.store._redis_failed(failure)


def load_catalog(
    target: RedisRoomStore | Any,
    songs: Iterable[CatalogSong],
    replace: bool = True,
    *,
    prefix: str = "ktv:",
) -> Deferred[int]:
    """Write ``songs`` to the catalog hash in one atomic step; fires with the catalog's size after.

    ``target`` is a :class:`RedisRoomStore` (its prefix is used, and a
    Redis failure is ``unavailable``) or a txredisapi connection (keys under
    ``prefix``; failures are txredisapi's own).  With ``replace`` the catalog
    holds exactly ``songs`` afterwards; without, they are added to it (a song
    already there under the same sid is overwritten).
    """
    args = ["1" if replace else "0"]
    for song in songs:
        args += [song.sid, song_json(song)]
    if isinstance(target, RedisRoomStore):
        d: Deferred[Any] = target._call("eval", LOAD_SCRIPT, [target.catalog_key()], args)
    else:
        d = target.eval(LOAD_SCRIPT, [f"{prefix}catalog"], args)
    return d.addCallback(int)
