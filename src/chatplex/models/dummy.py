"""Random-weight models in the exact shapes of real ones, for benchmarks that must not download anything.

`dummy_weights: llama-3.1-8b` builds the model from its config on the target device with random weights and a
word-level tokenizer of the same vocabulary size (token i decodes as "t<i> "). Speed equals the real model's:
the same shapes run the same kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatplex.errors import ConfigError

if TYPE_CHECKING:
    import torch

_LLAMA3 = dict(
    vocab_size=128256,
    rope_theta=500000.0,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
)
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-3.2-1b": (
        "LlamaConfig",
        dict(
            _LLAMA3,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.2-3b": (
        "LlamaConfig",
        dict(
            _LLAMA3,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=True,
        ),
    ),
    "llama-3.1-8b": (
        "LlamaConfig",
        dict(
            _LLAMA3,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=False,
        ),
    ),
    "qwen2.5-0.5b": (
        "Qwen2Config",
        dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-7b": (
        "Qwen2Config",
        dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            tie_word_embeddings=False,
        ),
    ),
    "smollm2-135m": (
        "LlamaConfig",
        dict(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        ),
    ),
}
CAUSAL_LM = {"LlamaConfig": "LlamaForCausalLM", "Qwen2Config": "Qwen2ForCausalLM"}


def check_shape(name: str) -> None:
    if name not in SHAPES:
        raise ConfigError(
            f"dummy_weights: {name!r} is not a known shape; choose one of {', '.join(SHAPES)}.", param="dummy_weights"
        )


def shape_vocab_size(name: str) -> int:
    """The vocabulary size of shape `name` (what its dummy tokenizer needs, without building the model)."""
    check_shape(name)
    return SHAPES[name][1]["vocab_size"]


def dummy_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i} ": i for i in range(vocab_size - 2)}
    vocab["<s>"] = vocab_size - 2
    vocab["</s>"] = vocab_size - 1
    raw = Tokenizer(models.WordLevel(vocab, unk_token="t0 "))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


def dummy_model(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    # Imported here: `chatplex serve`'s frontend checks the shape and builds the tokenizer without torch, which
    # costs seconds to import on a GPU host before the engine process can start.
    import torch
    import transformers

    check_shape(name)
    config_cls, fields = SHAPES[name]
    config = getattr(transformers, config_cls)(**fields)
    config.eos_token_id = fields["vocab_size"] - 1
    # Seeded: every load of a shape holds the same weights, so runs in two processes (a server and an in-process
    # engine, the prefix cache off and on) compute the same thing. The caller's CPU random state is left as it was.
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = getattr(transformers, CAUSAL_LM[config_cls])(config).to(dtype)
    return model.eval()
