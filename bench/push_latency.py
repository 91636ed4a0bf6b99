"""Push latency, throughput and memory of a real ``twistd ktv``.

Starts the service as a separate process (in-memory rooms, or ``--redis URL``
to share a Redis), opens ``--rooms`` x ``--members`` real WebSocket clients in
this process, and has one member per room send ``boardcast`` frames at
``--rate`` a second for ``--seconds``.  Every receiver records the time from
send to arrival.  Prints push latency percentiles, pushes a second, and the
server's resident memory per connection (from /proc).

    python bench/push_latency.py --rooms 20 --members 10 --rate 25 --seconds 10

The clients share one process and one core with each other, so on a small
machine they, not the server, may be the limit: compare runs made the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater, react


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Server(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class Member(WebSocketClientProtocol):
    latencies: list[float]
    joined: Deferred[None]

    def onOpen(self) -> None:
        self.sendMessage(json.dumps(self.factory.join_frame).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        if message.get("caller_action") == "join":
            self.factory.joined.callback(self)
        elif "caller_action" not in message and message.get("type") == 2 and "sent" in message["body"].get("body", {}):
            self.factory.latencies.append(time.perf_counter() - message["body"]["body"]["sent"])


async def connect(port: int, room: str, name: str, latencies: list[float]) -> Member:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}/")
    factory.protocol = Member
    factory.join_frame = {"action": "join", "room": room, "fullname": name, "token": f"t-{name}"}
    factory.latencies = latencies
    factory.joined = Deferred()
    reactor.connectTCP("127.0.0.1", port, factory)
    member: Member = await factory.joined
    return member


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "ktv"]
    argv += ["--listen", f"tcp:{port}:interface=127.0.0.1", "--max-members", str(args.members)]
    argv += ["--rate", str(max(40, args.rate * 2)), "--burst", "200", "--max-connections", "100000"]
    if args.redis:
        argv += ["--redis", args.redis]
    server = Server()
    process = reactor.spawnProcess(server, sys.executable, argv, env=os.environ.copy(), childFDs={1: "r", 2: "r"})
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                await deferLater(reactor, 0.05, lambda: None)
        idle_rss = rss_kib(process.pid)
        latencies: list[float] = []
        senders: list[Member] = []
        for r in range(args.rooms):
            for m in range(args.members):
                member = await connect(port, f"bench-{r}", f"m{r}-{m}", latencies)
                if m == 0:
                    senders.append(member)
        connected_rss = rss_kib(process.pid)
        connections = args.rooms * args.members
        latencies.clear()
        started = time.perf_counter()
        # Spread the senders evenly over each interval, as independent rooms would be.
        slot = 1.0 / (args.rate * len(senders))
        sent = 0
        while time.perf_counter() - started < args.seconds:
            for sender in senders:
                body = {"sent": time.perf_counter(), "pad": "x" * args.payload}
                sender.sendMessage(json.dumps({"action": "boardcast", "body": body}).encode())
                sent += 1
                await deferLater(reactor, slot, lambda: None)
        await deferLater(reactor, 1.0, lambda: None)  # let the last pushes arrive
        elapsed = time.perf_counter() - started
        expected = sent * (args.members - 1)
        ms = [x * 1000 for x in latencies]
        result = {
            "store": "redis" if args.redis else "memory",
            "rooms": args.rooms,
            "members_per_room": args.members,
            "boardcasts_per_second_per_room": args.rate,
            "seconds": args.seconds,
            "pushes_expected": expected,
            "pushes_received": len(ms),
            "pushes_per_second": round(len(ms) / elapsed),
            "latency_ms": {
                "p50": round(percentile(ms, 50), 2),
                "p95": round(percentile(ms, 95), 2),
                "p99": round(percentile(ms, 99), 2),
                "max": round(max(ms), 2),
            }
            if ms
            else {},
            "server_rss_kib": {"idle": idle_rss, "connected": connected_rss, "end": rss_kib(process.pid)},
            "server_kib_per_connection": round((connected_rss - idle_rss) / connections, 1),
        }
        print(json.dumps(result, indent=2))
        for sender in senders:
            sender.sendClose()
    finally:
        process.signalProcess("TERM")
        await server.ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0, help="boardcasts a second per room")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--payload", type=int, default=100, help="bytes of padding per boardcast")
    parser.add_argument("--redis", default=None, help="redis://host:port/db to run the server on Redis")
    args = parser.parse_args()
    react(lambda _reactor: ensureDeferred(run(args)))


if __name__ == "__main__":
    main()
