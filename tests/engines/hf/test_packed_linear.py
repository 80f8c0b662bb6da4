"""bfloat16 linear layers packed for oneDNN on the CPU: the same numbers as F.linear, in every layer they replace."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from chatplex.engines.hf import packed_linear

pytestmark = pytest.mark.skipif(
    not packed_linear.supported(torch.device("cpu"), torch.bfloat16), reason="no oneDNN bfloat16 on this CPU"
)


@pytest.mark.parametrize("rows", [1, 8, 150])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_is_bit_identical_to_linear(rows, bias):
    torch.manual_seed(rows)
    linear = nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    x = torch.randn(1, rows, 96, dtype=torch.bfloat16)
    expected = linear(x)
    assert torch.equal(packed_linear.PackedLinear(linear)(x), expected)


@pytest.mark.parametrize("tie", [True, False])
def test_pack_linears_keeps_the_model_output(tie):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, 128, (1, 12))
    with torch.inference_mode():
        expected = model(ids).logits
        count = packed_linear.pack_linears(model)
        got = model(ids).logits
    assert count == 2 * 7 + 1  # q k v o gate up down per layer, and the head
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert isinstance(attention.o_proj, packed_linear.PackedLinear)
    # q/k/v and gate/up read one input each: one matmul per group, split (the equality above covers it)
    assert attention.q_proj.shared is attention.k_proj.shared is attention.v_proj.shared
    assert mlp.gate_proj.shared is mlp.up_proj.shared is not attention.q_proj.shared
    assert isinstance(mlp.down_proj, packed_linear.PackedLinear)
    assert isinstance(model.lm_head, packed_linear.PackedLinear)
    assert isinstance(model.get_input_embeddings(), nn.Embedding)  # a tied embedding still looks tokens up
    assert torch.equal(got, expected)


def test_unpack_linears_restores_plain_layers_with_the_same_weights():
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    weight = model.model.layers[1].mlp.down_proj.weight.clone()
    ids = torch.randint(0, 128, (1, 12))
    with torch.inference_mode():
        expected = model(ids).logits
        packed_linear.pack_linears(model)
        assert packed_linear.unpack_linears(model) == 15
        got = model(ids).logits
    assert type(model.model.layers[1].mlp.down_proj) is nn.Linear and type(model.lm_head) is nn.Linear
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, weight)
    assert torch.equal(got, expected)


def test_shared_matmul_recomputes_for_another_input_and_keeps_biases():
    """A sibling called with a different tensor (or the same one changed in place) gets its own product; biases are
    kept per layer (Qwen2's q/k/v have them)."""
    torch.manual_seed(2)
    layers = [nn.Linear(64, n, bias=True).to(torch.bfloat16) for n in (64, 32, 32)]
    parent = nn.Module()
    parent.q_proj, parent.k_proj, parent.v_proj = layers
    assert packed_linear.pack_linears(parent, with_head=False) == 3
    x, y = torch.randn(2, 64, dtype=torch.bfloat16), torch.randn(2, 64, dtype=torch.bfloat16)
    assert torch.equal(parent.q_proj(x), layers[0](x))
    assert torch.equal(parent.k_proj(y), layers[1](y))  # another input: computed for it
    y.mul_(2)  # changed in place: not the cached product
    assert torch.equal(parent.v_proj(y), layers[2](y))
    assert torch.equal(parent.q_proj(y), layers[0](y))
    assert torch.equal(parent.k_proj(y), layers[1](y))  # all three served: the step's tensors are let go
    assert parent.q_proj.shared._input is None and parent.q_proj.shared._outputs == ()
    assert packed_linear.unpack_linears(parent) == 3
    assert torch.equal(parent.k_proj.weight, layers[1].weight) and torch.equal(parent.k_proj.bias, layers[1].bias)
