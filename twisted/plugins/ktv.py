"""twistd plugin: ``twistd ktv``.

Imports stay lazy (a string path to the tap module): importing klein or
txredisapi here would install the default reactor before twistd reads
``--reactor``.
"""

from twisted.application.service import ServiceMaker

ktv = ServiceMaker(
    "ktvtwist",
    "ktvtwist.tap",
    "KTV room server: WebSocket room protocol and HTTP API on one port",
    "ktv",
)
