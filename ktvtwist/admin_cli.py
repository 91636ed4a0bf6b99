"""``ktv-admin``: write what the nodes read from Redis (for deployments and tests).

    ktv-admin load-catalog FILE --redis URL [--redis-prefix P] [--merge]
    ktv-admin set-token TOKEN --fullname NAME [--nick N] [--avatar URL] [--admin]
                        [--ttl SECONDS] --redis URL [--redis-prefix P]

``load-catalog`` checks the file as ``--catalog`` would and replaces the
catalog hash (``P catalog``) with it in one atomic step (``--merge`` adds to
it instead).  ``set-token`` writes the ``P token:TOKEN`` hash that
``--auth redis`` reads, replacing any record already there.

Exit status: 0 done; 1 Redis could not be reached or refused the command;
2 bad arguments or input.  Errors are one line on standard error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn, TextIO

from twisted.internet.defer import Deferred

from ktvtwist import errors, tokens
from ktvtwist.auth import MAX_AVATAR_LENGTH, MAX_NAME_LENGTH, _short_text
from ktvtwist.catalog import CatalogError, CatalogSong, parse_catalog
from ktvtwist.redis_store import RedisAddress
from ktvtwist.token_cli import positive_seconds

PROG = "ktv-admin"
DEFAULT_TIMEOUT = 10.0

# KEYS: the token key.  ARGV: TTL in milliseconds ("0": none), then field, value, ...
SET_TOKEN_SCRIPT = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if ARGV[1] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


class AdminError(Exception):
    """A failure to report in one line, with the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Write the catalog and token records that ktv nodes read from Redis."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def redis_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--redis", required=True, metavar="URL", help="redis://[:password@]host[:port][/db]")
        command.add_argument("--redis-prefix", default="ktv:", metavar="P", help="key prefix (default: ktv:)")
        command.add_argument(
            "--timeout",
            type=positive_seconds,
            default=DEFAULT_TIMEOUT,
            metavar="SECONDS",
            help=f"seconds to wait for Redis to connect and to answer (default: {DEFAULT_TIMEOUT:.0f})",
        )

    load = commands.add_parser("load-catalog", help="replace the song catalog in Redis with a JSON file")
    load.add_argument("file", metavar="FILE", help="JSON list of {sid, name, author[, lrc, link]} objects")
    load.add_argument("--merge", action="store_true", help="add the songs to the catalog instead of replacing it")
    redis_options(load)

    token = commands.add_parser("set-token", help="store a member's token record for --auth redis")
    token.add_argument("token", metavar="TOKEN", help="the token (visible to local users in the process list)")
    token.add_argument("--fullname", required=True, metavar="NAME", help="who the member is (at most 64 characters)")
    token.add_argument("--nick", metavar="N", help="display name (default: the fullname)")
    token.add_argument("--avatar", metavar="URL", help="avatar URL (default: none)")
    token.add_argument("--admin", action="store_true", help='give the member the "admin" role')
    token.add_argument(
        "--ttl", type=positive_seconds, metavar="SECONDS", help="seconds until the token expires (default: never)"
    )
    redis_options(token)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def read_catalog(path: str) -> list[CatalogSong]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise AdminError(f"cannot read catalog {path}: {e}", 2) from None
    try:
        songs = parse_catalog(data)
    except CatalogError as e:
        raise AdminError(f"{path}: {e}", 2) from None
    if not songs:
        raise AdminError(f"{path}: the catalog is empty", 2)
    return songs


def token_record(args: argparse.Namespace) -> list[str]:
    """The token hash's fields and values, checked as ``--auth redis`` will check them."""
    token: str = args.token
    if not token:
        raise AdminError("the token must not be empty", 2)
    if len(token) > tokens.MAX_TOKEN_LENGTH:
        raise AdminError(f"the token is longer than {tokens.MAX_TOKEN_LENGTH} characters", 2)
    try:
        fields = {
            "fullname": _short_text(args.fullname, "fullname", MAX_NAME_LENGTH, required=True),
            "nick": _short_text(args.nick, "nick", MAX_NAME_LENGTH, required=False),
            "avatar": _short_text(args.avatar, "avatar", MAX_AVATAR_LENGTH, required=False),
            "role": tokens.ADMIN_ROLE if args.admin else "",
        }
    except errors.KTVError as e:
        raise AdminError(e.en, 2) from None
    record: list[str] = []
    for name, value in fields.items():
        if value:
            record += [name, value]
    return record


async def _connect(address: RedisAddress, timeout: float) -> Any:
    import txredisapi

    try:
        return await txredisapi.Connection(
            address.host,
            address.port,
            dbid=address.db,
            reconnect=False,
            password=address.password,
            connectTimeout=timeout,
            replyTimeout=timeout,
            convertNumbers=False,
        )
    except Exception as e:
        message = str(e).removeprefix("Redis error: ")
        raise AdminError(f"cannot use Redis at {address.host}:{address.port}: {message}", 1) from None


async def _command(d: Deferred[Any]) -> Any:
    import txredisapi

    try:
        return await d
    except txredisapi.ResponseError as e:
        raise AdminError(f"Redis refused the command: {e}", 1) from None
    except (txredisapi.RedisError, ConnectionError, TimeoutError) as e:
        raise AdminError(f"Redis failed: {e or type(e).__name__}", 1) from None


async def _load_catalog(connection: Any, args: argparse.Namespace, songs: list[CatalogSong], out: TextIO) -> None:
    from ktvtwist.redis_catalog import load_catalog

    key = f"{args.redis_prefix}catalog"
    total = await _command(load_catalog(connection, songs, replace=not args.merge, prefix=args.redis_prefix))
    loaded = len({song.sid for song in songs})
    if args.merge:
        print(f"loaded {loaded} songs into {key} ({total} in all)", file=out)
    else:
        print(f"loaded {loaded} songs into {key}", file=out)


async def _set_token(connection: Any, args: argparse.Namespace, record: list[str], out: TextIO) -> None:
    key = f"{args.redis_prefix}token:{args.token}"
    ttl_ms = max(1, round(args.ttl * 1000)) if args.ttl is not None else 0
    await _command(connection.eval(SET_TOKEN_SCRIPT, [key], [str(ttl_ms), *record]))
    expiry = f"expires in {args.ttl:g} s" if args.ttl is not None else "never expires"
    # The token is a secret: name the member, not the key.
    print(f"stored the token of {args.fullname} ({expiry})", file=out)


async def execute(argv: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command (in a running reactor); the exit status.  Argument errors raise SystemExit(2)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    args = _parser().parse_args(argv)
    try:
        try:
            address = RedisAddress.parse(args.redis)
        except ValueError as e:
            raise AdminError(str(e), 2) from None
        if args.command == "load-catalog":
            songs = read_catalog(args.file)
            connection = await _connect(address, args.timeout)
            try:
                await _load_catalog(connection, args, songs, out)
            finally:
                await connection.disconnect()
        else:
            record = token_record(args)
            connection = await _connect(address, args.timeout)
            try:
                await _set_token(connection, args, record, out)
            finally:
                await connection.disconnect()
    except AdminError as e:
        print(f"{PROG}: error: {_one_line(str(e))}", file=err)
        return e.status
    return 0


def main(argv: list[str] | None = None) -> NoReturn:
    from twisted.internet.task import react

    arguments = list(sys.argv[1:] if argv is None else argv)
    _parser().parse_args(arguments)  # usage errors before the reactor starts

    async def run(reactor: Any) -> None:
        status = await execute(arguments)
        if status:
            raise SystemExit(status)

    react(run)


if __name__ == "__main__":
    main()
