"""``twistd ktv``: the plugin, its options and the service tree."""

from __future__ import annotations

import json
from typing import cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ktvtwist.server import LocalRoom
from ktvtwist.tap import DEFAULT_LISTEN, Options, ServerService, exposure_problem, is_loopback_only, makeService


class PluginTests(SynchronousTestCase):
    def test_plugin_is_discoverable(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("ktv", makers)
        self.assertIsInstance(makers["ktv"].options(), Options)


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(options["listen"], [DEFAULT_LISTEN])
        self.assertEqual((options["ask-timeout"], options["rest-timeout"]), (15.0, 30.0))
        self.assertEqual((options["max-members"], options["max-song-seconds"]), (12, 3600))
        self.assertGreater(len(options["catalog_songs"]), 0)

    def test_listen_repeats_and_fractional_seconds(self) -> None:
        options = self.parse("--listen", "tcp:1", "--listen", "unix:/tmp/x", "--ask-timeout", "0.5")
        self.assertEqual(options["listen"], ["tcp:1", "unix:/tmp/x"])
        self.assertEqual(options["ask-timeout"], 0.5)

    def test_bad_values_are_usage_errors(self) -> None:
        for argv in (
            ["--ask-timeout", "0"],
            ["--rest-timeout", "-1"],
            ["--ask-timeout", "nan"],
            ["--max-members", "0"],
            ["--max-song-seconds", "x"],
            ["--language", "fr"],
            ["--catalog", "/nonexistent/catalog.json"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *argv)

    def test_catalog_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump([{"sid": 42, "name": "n", "author": "a"}], f)
        options = self.parse("--catalog", path)
        self.assertEqual(options["catalog_songs"].lookup("42").name, "n")

    def test_bad_catalog_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"sid": 1}, f)
        self.assertRaises(usage.UsageError, self.parse, "--catalog", path)


class MakeServiceTests(SynchronousTestCase):
    def test_one_listener_per_address_and_timers_stop_with_the_service(self) -> None:
        reactor = MemoryReactorClock()
        options = Options()
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--listen", "tcp:0", "--insecure-open"])
        service = cast(MultiService, makeService(options, reactor=reactor))
        self.assertIsInstance(service, MultiService)
        children = list(service)
        self.assertEqual(sum(isinstance(c, StreamServerEndpointService) for c in children), 2)
        [server_service] = [c for c in children if isinstance(c, ServerService)]
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 2)
        room = server_service.server.rooms["R1"] = LocalRoom("R1")
        room.timer = reactor.callLater(10, lambda: None)
        service.stopService()
        self.assertFalse(reactor.getDelayedCalls())


class ExposureTests(SynchronousTestCase):
    def test_loopback_descriptions(self) -> None:
        for description in (
            "tcp:8888:interface=127.0.0.1",
            "tcp:8888:interface=localhost",
            "tcp6:8888:interface=\\:\\:1",
            "tcp:8888:interface=127.0.0.2",
            "unix:/run/ktv.sock",
        ):
            self.assertTrue(is_loopback_only(description), description)
        for description in (
            "tcp:8888",
            "tcp:8888:interface=0.0.0.0",
            "tcp:8888:interface=10.0.0.5",
            "systemd:domain=INET:index=0",
        ):
            self.assertFalse(is_loopback_only(description), description)

    def test_open_mode_refuses_a_public_address_in_one_line(self) -> None:
        options = Options()
        options.parseOptions(["--listen", "tcp:8888:interface=0.0.0.0"])
        with self.assertRaises(SystemExit) as caught:
            makeService(options, reactor=MemoryReactorClock())
        message = str(caught.exception.code)
        self.assertIn("--insecure-open", message)
        self.assertNotIn("\n", message)

    def test_insecure_open_or_loopback_starts(self) -> None:
        for argv in (["--listen", "tcp:0", "--insecure-open"], ["--listen", "tcp:0:interface=127.0.0.1"]):
            options = Options()
            options.parseOptions(argv)
            self.assertIsNone(exposure_problem(options))

    def test_grace_and_room_options(self) -> None:
        options = Options()
        options.parseOptions(["--reconnect-grace", "0", "--max-rooms", "5", "--max-message-bytes", "100"])
        service = cast(MultiService, makeService(options, reactor=MemoryReactorClock()))
        [server_service] = [c for c in service if isinstance(c, ServerService)]
        server = server_service.server
        self.assertEqual(server.rules.reconnect_grace, 0)
        self.assertEqual((server.max_rooms, server.max_message_bytes), (5, 100))
        self.assertRaises(usage.UsageError, Options().parseOptions, ["--reconnect-grace", "-1"])
