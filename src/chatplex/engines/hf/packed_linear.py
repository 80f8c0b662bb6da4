"""bfloat16 linear layers on the CPU with their weights laid out for oneDNN once, at load.

A plain `F.linear` in bfloat16 on the CPU runs oneDNN's matmul, which reorders the weight into its blocked layout
on every call. Decode steps multiply a handful of rows by every weight of the model, so that reorder is a large
part of each matmul: SmolLM2's 210 linear layers took ~10 ms a decode step at 8 streams on the 2-core machine, and
~6.6 ms with weights packed in advance (the oneDNN kernel and the packing that inductor's freezing pass uses, here
without compiling anything). The results are bit-identical to `F.linear`'s (tests/engines/hf/test_packed_linear.py),
so outputs do not change. Float32 is left alone: its packed kernel (oneDNN) is not MKL's sgemm that `F.linear`
runs, and rounds differently.

Layers that read the same input in the same module (an attention's q/k/v projections, an MLP's gate and up) are
packed as one weight and run as one matmul, split per layer: at decode sizes a matmul's fixed cost is as large as
reading a small weight (q+k+v of SmolLM2: 46 -> 23 us a token; gate+up: 54 -> 40), and the split outputs are
bit-identical to the separate layers' (oneDNN reduces each output column the same way).
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


class _SharedMatmul:
    """One packed matmul for several layers that read one input; the first of them to run computes every layer's
    output, the others take theirs while the input is the same tensor, unchanged."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.sizes = [linear.out_features for linear in linears]
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(
            torch.cat([lin.weight.detach() for lin in linears])
        )
        biases = [linear.bias for linear in linears]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases if b is not None])
        self._input: torch.Tensor | None = None
        self._version = -1
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._served: set[int] = set()

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version counter
        if x is not self._input or version != self._version or index in self._served:
            out = torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")
            self._input, self._version, self._outputs, self._served = x, version, out.split(self.sizes, dim=-1), set()
        result = self._outputs[index]
        self._served.add(index)
        if len(self._served) == len(self.sizes):  # every layer has its part: hold no step's tensors past it
            self._input, self._outputs = None, ()
        return result


class SharedPackedLinear(nn.Module):
    """One of the layers of a _SharedMatmul (its `index`), in the place of the nn.Linear it was."""

    def __init__(self, shared: _SharedMatmul, index: int, in_features: int) -> None:
        super().__init__()
        self.shared, self.index = shared, index
        self.in_features, self.out_features = in_features, shared.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.output(x, self.index)

    def unpacked(self) -> nn.Linear:
        start = sum(self.shared.sizes[: self.index])
        rows = slice(start, start + self.out_features)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.shared.bias is not None, device="meta")
        linear.weight = nn.Parameter(self.shared.packed_weight.to_dense()[rows].clone(), requires_grad=False)
        if self.shared.bias is not None:
            linear.bias = nn.Parameter(self.shared.bias[rows].clone(), requires_grad=False)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, part {self.index} of one matmul"


# Sibling layers that transformers' modules call with the same input, in this order.
_SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _shared_layers(module: nn.Module, wanted: set[int]) -> dict[int, nn.Module]:
    """SharedPackedLinear replacements (by id of the layer replaced) for the sibling groups of `module`."""
    made: dict[int, nn.Module] = {}
    for names in _SHARED_INPUT:
        layers = [getattr(module, name, None) for name in names]
        if not all(isinstance(layer, nn.Linear) and id(layer) in wanted for layer in layers):
            continue
        linears = [layer for layer in layers if isinstance(layer, nn.Linear)]
        if len({lin.in_features for lin in linears}) != 1 or len({lin.bias is None for lin in linears}) != 1:
            continue
        shared = _SharedMatmul(linears)
        made.update({id(lin): SharedPackedLinear(shared, i, lin.in_features) for i, lin in enumerate(linears)})
    return made


def pack_linears(model: Any, with_head: bool = True) -> int:
    """Replace each plain `nn.Linear` of the text decoder and (`with_head`) the LM head with a PackedLinear;
    returns how many.

    A head tied to the input embeddings is packed too: that keeps a second copy of the embedding matrix (56 MB for
    SmolLM2's 49k x 576) for a matmul that is otherwise the slowest of the step (2.6 -> 1.0 ms at 8 streams).
    Subclasses of nn.Linear (quantized layers, adapters) are not touched."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    # compressed-tensors' decompressed layers are nn.Linear whose forward (an instance attribute) still quantizes
    # their inputs (W8A8 schemes): packing would drop that.
    wanted = {id(m) for m in decoder.modules() if type(m) is nn.Linear and not hasattr(m, "quantization_scheme")}
    head = model.get_output_embeddings() if with_head and hasattr(model, "get_output_embeddings") else None
    if type(head) is nn.Linear:
        wanted.add(id(head))
    shared: dict[int, nn.Module] = {}
    for module in decoder.modules():
        shared.update(_shared_layers(module, wanted))

    def make(m: nn.Module) -> nn.Module | None:
        if id(m) in shared:
            return shared[id(m)]
        return PackedLinear(m) if isinstance(m, nn.Linear) and id(m) in wanted else None

    return _replace(model, make)


def unpack_linears(model: Any) -> int:
    """Put plain `nn.Linear` layers back where pack_linears put PackedLinear ones (peft wraps only those, for a LoRA
    adapter loaded while the engine runs); returns how many."""
    return _replace(model, lambda m: m.unpacked() if isinstance(m, PackedLinear | SharedPackedLinear) else None)


def _replace(model: Any, make: Callable[[nn.Module], nn.Module | None]) -> int:
    """Swap every submodule for which `make` returns a module (once per module, however many names it has)."""
    made = [(name, make(module)) for name, module in model.named_modules()]
    swaps = [(name, new) for name, new in made if new is not None]
    for name, new in swaps:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return len(swaps)
