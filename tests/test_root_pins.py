"""The pins at the repository root (constraints.txt, requirements.txt) are the locks' pins, line for line: a
`make lock` that forgot them, or a hand edit, fails here rather than letting pip users install other versions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements"


@pytest.mark.parametrize("name", ["constraints.txt", "requirements.txt"])
def test_root_pins_are_the_locks(name):
    sys.path.insert(0, str(REQUIREMENTS))
    try:
        from root_pins import REPO, render
    finally:
        sys.path.remove(str(REQUIREMENTS))
    written = (REPO / name).read_text(encoding="utf-8")
    assert written == render(name), f"{name} differs from its lock: run `cd requirements && python root_pins.py`"
    assert sum(line.count("==") for line in written.splitlines() if not line.startswith("#")) > 50
