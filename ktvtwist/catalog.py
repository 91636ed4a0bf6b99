"""The song catalog: which song ids exist, and their names and authors."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from zope.interface import Interface, implementer


@dataclass(frozen=True)
class CatalogSong:
    sid: str
    name: str
    author: str
    lrc: str = ""
    link: str = ""


class ICatalog(Interface):
    def lookup(sid: str) -> CatalogSong | None:
        """The song with this id, or None.  May return a Deferred."""


class CatalogError(ValueError):
    """A catalog file that is not a list of songs."""


def _text(entry: dict[str, Any], key: str, index: int) -> str:
    value = entry.get(key, "")
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CatalogError(f"entry {index}: {key!r} must be a string")
    return str(value)


def parse_catalog(data: Any) -> list[CatalogSong]:
    """Songs from decoded catalog JSON; ``sid`` may be a string or a number."""
    if not isinstance(data, list):
        raise CatalogError("a catalog is a JSON list of {sid, name, author} objects")
    songs = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise CatalogError(f"entry {index} is not an object")
        sid = entry.get("sid")
        if isinstance(sid, bool) or not isinstance(sid, (str, int)) or str(sid) in ("", "0"):
            # "0" is the room body's "no song".
            raise CatalogError(f"entry {index}: 'sid' must be a non-empty string or an integer other than 0")
        songs.append(
            CatalogSong(
                sid=str(sid),
                name=_text(entry, "name", index),
                author=_text(entry, "author", index),
                lrc=_text(entry, "lrc", index),
                link=_text(entry, "link", index),
            )
        )
    return songs


@implementer(ICatalog)
class MemoryCatalog:
    def __init__(self, songs: Iterable[CatalogSong]) -> None:
        self._songs = {song.sid: song for song in songs}

    def __len__(self) -> int:
        return len(self._songs)

    def lookup(self, sid: str) -> CatalogSong | None:
        return self._songs.get(sid)

    @classmethod
    def from_file(cls, path: str) -> MemoryCatalog:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise CatalogError(f"cannot read catalog {path}: {e}") from e
        return cls(parse_catalog(data))

    @classmethod
    def sample(cls) -> MemoryCatalog:
        """The small catalog shipped in the package, so the quick start can queue a song."""
        text = resources.files("ktvtwist").joinpath("data/catalog.json").read_text("utf-8")
        return cls(parse_catalog(json.loads(text)))
