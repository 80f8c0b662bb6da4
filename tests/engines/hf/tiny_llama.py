"""A tiny random Llama checkpoint with a word-level tokenizer, for the decode-path equality tests (CUDA graphs,
the compiled CPU step): its output layer is scaled so greedy picks have clear margins (near-ties would make
rounding differences between kernels decide)."""

from __future__ import annotations

from pathlib import Path

import torch


def write_tiny_llama(path: Path, vocab: int, max_positions: int) -> str:
    import transformers

    from chatplex.models.dummy import dummy_tokenizer

    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_positions, eos_token_id=vocab - 1, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)
    model.save_pretrained(path)
    dummy_tokenizer(vocab).save_pretrained(path)
    return str(path)
