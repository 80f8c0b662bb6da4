"""`chatplex templates`: list the template names `template:` takes, with their stop words and reply parsers.

First LLaMA-Factory's formats (its names mean its format, token for token), then chatplex's Jinja built-ins.
"""

from __future__ import annotations

import argparse

from chatplex.templates import LF_TOOL_PARSERS, llamafactory
from chatplex.templates.registry import FAMILIES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("templates", help="list the chat template names and their stop words")
    p.set_defaults(run=run)


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


def run(args: argparse.Namespace) -> int:
    print(f"LLaMA-Factory's formats ({len(llamafactory.names())}; encoded as LLaMA-Factory encodes them):")
    rows: list[tuple[str, ...]] = [("NAME", "STOP WORDS", "TOOL PARSER", "REASONING", "DEFAULT SYSTEM")]
    for name in llamafactory.names():
        fmt = llamafactory.load(name)
        system = fmt.default_system.replace("\n", " ")
        rows.append(
            (
                name,
                " ".join(fmt.stop_words) or "-",
                LF_TOOL_PARSERS.get(fmt.tool_format, "-"),
                "think" if fmt.reasoning else "-",
                (system[:48] + "...") if len(system) > 48 else system or "-",
            )
        )
    _table(rows)
    print("\nchatplex's Jinja built-ins (models' own templates):")
    rows = [("NAME", "ALIASES", "STOP WORDS", "TOOL PARSER", "REASONING", "FORMAT")]
    for f in FAMILIES:
        rows.append(
            (
                f.name,
                ", ".join(f.aliases) or "-",
                " ".join(f.stop_words) or "-",
                f.tool_parser or "-",
                f.reasoning_parser or "-",
                f.description,
            )
        )
    _table(rows)
    return 0
