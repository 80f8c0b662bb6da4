"""A tokenizer for rendering tests (its own copy: the tests set bos/eos per family) and the reference templates."""

from __future__ import annotations

from pathlib import Path

import pytest

REFERENCE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "chat_templates"


@pytest.fixture(scope="session")
def render_tokenizer(smollm_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference chat templates not found at {REFERENCE_DIR} (<repo>/../shared is absent)")
    return REFERENCE_DIR
