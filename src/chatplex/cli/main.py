"""`chatplex <command> [options]`: dispatch to one module per command."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from chatplex import __version__
from chatplex.errors import ChatplexError

# command -> module under chatplex.cli; each module has add_parser(subparsers) and run(namespace) -> int
COMMANDS = ("chat", "serve", "bench", "templates")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatplex", description="Chat with, serve and benchmark LLMs on any engine through one interface."
    )
    parser.add_argument("--version", action="version", version=f"chatplex {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"chatplex.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"chatplex.cli.{name}":
                continue  # command not built in this version
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except ChatplexError as e:
        print(f"chatplex {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
