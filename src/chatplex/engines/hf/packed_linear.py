"""bfloat16 linear layers on the CPU with their weights laid out for oneDNN once, at load.

A plain `F.linear` in bfloat16 on the CPU runs oneDNN's matmul, which reorders the weight into its blocked layout
on every call. Decode steps multiply a handful of rows by every weight of the model, so that reorder is a large
part of each matmul: SmolLM2's 210 linear layers took ~10 ms a decode step at 8 streams on the 2-core machine, and
~6.6 ms with weights packed in advance (the oneDNN kernel and the packing that inductor's freezing pass uses, here
without compiling anything). The results are bit-identical to `F.linear`'s (tests/engines/hf/test_packed_linear.py),
so outputs do not change. Float32 is left alone: its packed kernel (oneDNN) is not MKL's sgemm that `F.linear`
runs, and rounds differently.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def supported(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class PackedLinear(nn.Module):
    """`nn.Linear`'s forward over a weight packed for oneDNN (an opaque mkldnn tensor, so held outside the module's
    parameters: nothing may move or save it)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def pack_linears(model: Any) -> int:
    """Replace each plain `nn.Linear` of the text decoder and the LM head with a PackedLinear; returns how many.

    A head tied to the input embeddings is packed too: that keeps a second copy of the embedding matrix (56 MB for
    SmolLM2's 49k x 576) for a matmul that is otherwise the slowest of the step (2.6 -> 1.0 ms at 8 streams).
    Subclasses of nn.Linear (quantized layers, adapters) are not touched."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    targets = [(decoder, name, m) for name, m in decoder.named_modules() if type(m) is nn.Linear]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is nn.Linear:
        targets += [(model, name, m) for name, m in model.named_modules() if m is head]
    for root, name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(root.get_submodule(parent_name) if parent_name else root, attr, PackedLinear(module))
    return len(targets)
