"""`chatplex templates`: list the built-in chat templates with their aliases, stop words and reply parsers."""

from __future__ import annotations

import argparse

from chatplex.templates.registry import FAMILIES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("templates", help="list the built-in chat templates and their stop words")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    rows = [("NAME", "ALIASES", "STOP WORDS", "TOOL PARSER", "REASONING", "FORMAT")]
    for f in FAMILIES:
        rows.append((f.name, ", ".join(f.aliases) or "-", " ".join(f.stop_words) or "-", f.tool_parser or "-",
                     f.reasoning_parser or "-", f.description))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[5])
    return 0
