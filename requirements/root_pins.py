"""Write the pins of the locks into the repository root, where pip users and tools look for them.

`constraints.txt` gets every pin of requirements/main.txt (the versions the test suite passed with) and
`requirements.txt` those of requirements/chat.txt (what `make chat` installs), as plain `name==version` lines, so
`pip install -c constraints.txt -e ".[server,bench]"` or `pip install -r requirements.txt -e .` installs exactly
those versions, not the newest of the day. `make lock` runs this after refreshing the locks;
tests/test_root_pins.py fails if the root files and the locks ever disagree.

    python requirements/root_pins.py            # rewrite both files
"""

from __future__ import annotations

import sys
from pathlib import Path

from check_installed import pins

REPO = Path(__file__).resolve().parents[1]
HEADERS = {
    "constraints.txt": (
        "# Constraints for any pip install of chatplex: the versions the test suite passed with, all of\n"
        "# requirements/main.txt (made by `make lock`, written here by requirements/root_pins.py; do not edit).\n"
        '# pip install -c constraints.txt -e ".[server,bench]"    installs exactly these, not the newest.\n'
        "# CPython 3.11, x86-64 Linux; torch is the CPU build (elsewhere add\n"
        "# --extra-index-url https://download.pytorch.org/whl/cpu).\n"
    ),
    "requirements.txt": (
        "# What `make chat` installs (chatplex's server and bench extras) at the versions the test suite passed with:\n"
        "# requirements/chat.txt, written here by requirements/root_pins.py (do not edit).\n"
        "# pip install -r requirements.txt -e .    without the Makefile. CPython 3.11, x86-64 Linux; torch is the CPU\n"
        "# build (elsewhere add --extra-index-url https://download.pytorch.org/whl/cpu).\n"
    ),
}
SOURCES = {"constraints.txt": "requirements/main.txt", "requirements.txt": "requirements/chat.txt"}


def render(name: str) -> str:
    """The root file `name` as the lock it comes from says it must read."""
    lines = [f"{package}=={version}\n" for package, version in sorted(pins(str(REPO / SOURCES[name])).items())]
    return HEADERS[name] + "".join(lines)


def main() -> int:
    for name in SOURCES:
        (REPO / name).write_text(render(name), encoding="utf-8")
        print(f"{SOURCES[name]} -> {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
