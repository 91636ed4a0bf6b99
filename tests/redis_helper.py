"""A real ``redis-server`` for tests, on a free port, started and stopped by the test.

A test that needs Redis fails (never skips) with a clear message when the
binary is missing: CI installs it (see .ci/run).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

REDIS_BINARY = os.environ.get("KTV_TEST_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Output(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[None] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.ended.callback(None)


class RedisServer:
    """One redis-server process; ``start`` again after ``stop`` keeps the same port and data dir."""

    def __init__(self, testcase: TestCase, *, durable: bool = False) -> None:
        if not os.path.exists(REDIS_BINARY):
            testcase.fail(
                f"redis-server is needed for this test and was not found ({REDIS_BINARY}); "
                "install it with `apt-get install redis-server` (.ci/run does) or set KTV_TEST_REDIS_SERVER"
            )
        self.testcase = testcase
        self.port = free_port()
        self.durable = durable
        self.directory = os.path.abspath(testcase.mktemp())
        os.makedirs(self.directory)
        self._process: Any = None
        self._output: _Output | None = None
        testcase.addCleanup(self.stop)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        args = [
            REDIS_BINARY,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.directory,
            "--save",
            "",
            "--appendonly",
            "yes" if self.durable else "no",
            "--appendfsync",
            "always",
        ]
        self._output = _Output()
        self._process = global_reactor.spawnProcess(self._output, REDIS_BINARY, args, env=os.environ.copy())
        for _ in range(200):
            if not self._output.running:
                break
            if self._accepts():
                return
            await deferLater(global_reactor, 0.02, lambda: None)
        output = bytes(self._output.output).decode(errors="replace")
        await self.stop()
        self.testcase.fail(f"redis-server did not start on port {self.port}:\n{output}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (SIGKILL for a crash); wait until it is gone."""
        output = self._output
        if output is None or not output.running:
            return
        self._process.signalProcess(sig)
        await output.ended
        self._output = None

    async def kill(self) -> None:
        await self.stop(signal.SIGKILL)
