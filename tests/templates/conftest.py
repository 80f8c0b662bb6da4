"""A tokenizer for rendering tests (its own copy: the tests set bos/eos per family) and the reference templates."""

from __future__ import annotations

from pathlib import Path

import pytest

# Reference templates kept in the repository (tests/fixtures): its README names each file's source, path, commit
# and licence.
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"


@pytest.fixture(scope="session")
def render_tokenizer(smollm_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE_DIR
