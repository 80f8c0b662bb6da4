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

from collections.abc import Callable
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

    def unpacked(self) -> nn.Linear:
        """The plain layer again, with the same weight (oneDNN converts its layout back exactly)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter(self.packed_weight.to_dense(), requires_grad=False)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def pack_linears(model: Any, with_head: bool = True) -> int:
    """Replace each plain `nn.Linear` of the text decoder and (`with_head`) the LM head with a PackedLinear;
    returns how many.

    A head tied to the input embeddings is packed too: that keeps a second copy of the embedding matrix (56 MB for
    SmolLM2's 49k x 576) for a matmul that is otherwise the slowest of the step (2.6 -> 1.0 ms at 8 streams).
    Subclasses of nn.Linear (quantized layers, adapters) are not touched."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    wanted = {id(m) for m in decoder.modules() if type(m) is nn.Linear}
    head = model.get_output_embeddings() if with_head and hasattr(model, "get_output_embeddings") else None
    if type(head) is nn.Linear:
        wanted.add(id(head))
    return _replace(model, lambda m: PackedLinear(m) if isinstance(m, nn.Linear) and id(m) in wanted else None)


def unpack_linears(model: Any) -> int:
    """Put plain `nn.Linear` layers back where pack_linears put PackedLinear ones (peft wraps only those, for a LoRA
    adapter loaded while the engine runs); returns how many."""
    return _replace(model, lambda m: m.unpacked() if isinstance(m, PackedLinear) else None)


def _replace(model: Any, make: Callable[[nn.Module], nn.Module | None]) -> int:
    """Swap every submodule for which `make` returns a module (once per module, however many names it has)."""
    made = [(name, make(module)) for name, module in model.named_modules()]
    swaps = [(name, new) for name, new in made if new is not None]
    for name, new in swaps:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return len(swaps)
