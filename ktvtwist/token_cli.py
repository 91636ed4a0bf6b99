"""``ktv-token``: mint one signed member token (for testing and operations).

    ktv-token --secret-file /run/secrets/ktv_secret --fullname alice [--nick Alice]
              [--avatar URL] [--ttl SECONDS] [--admin]

prints the token on standard output.  The secret is never printed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from ktvtwist import tokens
from ktvtwist.auth import read_secret_file

DEFAULT_TTL = 86400.0


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ktv-token", description="Print a signed (HS256 JWT) token for a KTV room member."
    )
    parser.add_argument("--secret-file", required=True, metavar="PATH", help="file holding the signing secret")
    parser.add_argument("--fullname", required=True, metavar="NAME", help="who the member is (at most 64 characters)")
    parser.add_argument("--nick", metavar="N", help="display name (default: the fullname)")
    parser.add_argument("--avatar", metavar="URL", help="avatar URL (default: none)")
    parser.add_argument(
        "--ttl",
        type=positive_seconds,
        default=DEFAULT_TTL,
        metavar="SECONDS",
        help=f"seconds the token stays valid (default: {DEFAULT_TTL:.0f})",
    )
    parser.add_argument("--admin", action="store_true", help='give the member the "admin" role')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        secret = read_secret_file(args.secret_file)
        token = tokens.mint(
            secret,
            args.fullname,
            nick=args.nick,
            avatar=args.avatar,
            ttl=args.ttl,
            admin=args.admin,
            now=int(time.time()),
        )
    except ValueError as e:  # TokenError is a ValueError too
        print(f"ktv-token: error: {e}", file=sys.stderr)
        return 2
    print(token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
