"""Shared fixtures: the embedded SmolLM2 model and tiny random-weight models built from real configs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Third-party scripts kept as fixtures (LLaMA-Factory's api_example/test_*.py) are run by tests, not collected.
collect_ignore_glob = ["fixtures/*"]


@pytest.fixture(scope="session")
def smollm_dir() -> str:
    """The embedded SmolLM2-135M-Instruct as a safetensors directory (converted once, cached)."""
    from chatplex.models.embedded import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm_dir)


@pytest.fixture(scope="session")
def chat_model(smollm_dir: str) -> Iterator["ChatModel"]:  # noqa: F821
    """One SmolLM2 ChatModel in fp32 shared by the end-to-end tests (greedy output is then exact)."""
    from chatplex import ChatModel

    model = ChatModel({"infer_dtype": "float32"})
    yield model
    model.close()


TINY_CONFIGS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm_tokenizer) -> Callable[[str], str]:
    """Build (once per family) a tiny random-weight model of a real architecture with the SmolLM2 tokenizer."""
    import torch
    import transformers

    built: dict[str, str] = {}

    def build(family: str) -> str:
        if family in built:
            return built[family]
        config_cls, model_cls = TINY_CONFIGS[family]
        config = getattr(transformers, config_cls)(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=len(smollm_tokenizer),
            max_position_embeddings=512,
            bos_token_id=smollm_tokenizer.bos_token_id,
            eos_token_id=smollm_tokenizer.eos_token_id,
            pad_token_id=smollm_tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(config)
        path = tmp_path_factory.mktemp(f"tiny-{family}")
        model.save_pretrained(path)
        smollm_tokenizer.save_pretrained(path)
        built[family] = str(path)
        return built[family]

    return build


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
