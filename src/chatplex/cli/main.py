"""`chatplex <command> [options]`: dispatch to one module per command."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from chatplex import __version__
from chatplex.errors import ChatplexError

# command -> module under chatplex.cli; each module has add_parser(subparsers) and run(namespace) -> int
COMMANDS = ("chat", "serve", "webchat", "bench", "templates")


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


# Commands that load a model and so take LLaMA-Factory's argument forms too (cli.options.llamafactory_argv).
MODEL_COMMANDS = ("chat", "serve", "api", "webchat")


def _translated(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    from chatplex.cli.options import llamafactory_argv

    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    takes_value = False  # the item is the value of the global option before it (`--log-level info serve ...`)
    for i, item in enumerate(argv):
        if takes_value:
            takes_value = False
            continue
        if sub is not None and item in MODEL_COMMANDS and item in sub.choices:
            return argv[: i + 1] + llamafactory_argv(sub.choices[item], argv[i + 1 :])
        if not item.startswith("-"):
            break
        option = parser._option_string_actions.get(item)
        takes_value = option is not None and option.nargs != 0
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_translated(parser, list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except ChatplexError as e:
        print(f"chatplex {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`chatplex templates | head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail too
        return 0


if __name__ == "__main__":
    sys.exit(main())
