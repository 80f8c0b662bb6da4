"""Exit non-zero unless every package a lock pins is installed at exactly that version.

Run by the Makefile after each locked install (`python requirements/check_installed.py requirements/main.txt`), so
an environment that drifted from its lock (a stale venv, a package installed by hand) is named, not tested."""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version


def pins(lock: str) -> dict[str, str]:
    found = {}
    for line in open(lock, encoding="utf-8"):
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            found[match[1]] = match[2]
    return found


def main(lock: str) -> int:
    wrong = []
    pinned = pins(lock)
    for name, wanted in pinned.items():
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "missing"
        if have != wanted:
            wrong.append(f"  {name}: lock {wanted}, installed {have}")
    if wrong:
        print(f"{lock}: {len(wrong)} package(s) differ from the lock:\n" + "\n".join(wrong), file=sys.stderr)
        return 1
    print(f"{lock}: all {len(pinned)} pinned packages installed at the locked versions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
