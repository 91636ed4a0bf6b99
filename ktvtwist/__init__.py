"""ktvtwist: the real-time server behind KTV (karaoke) rooms."""

__version__ = "0.1.0"
