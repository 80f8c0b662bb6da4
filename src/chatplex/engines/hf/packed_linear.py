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


class _SharedMatmul:
    """The weights of one or more layers that read one input, packed as one matrix. With siblings, the first of them
    to run computes every layer's output, and the others take theirs while the input is the same tensor, unchanged."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        self.sizes = [linear.out_features for linear in linears]
        weights = [linear.weight.detach() for linear in linears]
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(
            weights[0] if len(weights) == 1 else torch.cat(weights)
        )
        biases = [linear.bias.detach() for linear in linears if linear.bias is not None]
        self.bias = torch.cat(biases) if biases else None
        self._input: torch.Tensor | None = None
        self._version = -1
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._served: set[int] = set()

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if len(self.sizes) == 1:
            return self._matmul(x)
        version = -1 if x.is_inference() else x._version  # inference tensors keep no version counter
        if x is not self._input or version != self._version or index in self._served:
            self._input, self._version, self._served = x, version, set()
            self._outputs = self._matmul(x).split(self.sizes, dim=-1)
        result = self._outputs[index]
        self._served.add(index)
        if len(self._served) == len(self.sizes):  # every layer has its part: hold no step's tensors past it
            self._input, self._outputs = None, ()
        return result


class PackedLinear(nn.Module):
    """`nn.Linear`'s forward over a weight packed for oneDNN (an opaque mkldnn tensor, so held outside the module's
    parameters: nothing may move or save it): alone, or part `index` of a matmul shared with its siblings."""

    def __init__(self, linear: nn.Linear, shared: _SharedMatmul | None = None, index: int = 0) -> None:
        super().__init__()
        self.shared, self.index = shared or _SharedMatmul([linear]), index
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.output(x, self.index)

    def unpacked(self) -> nn.Linear:
        """The plain layer again, with the same weight (oneDNN converts its layout back exactly)."""
        start = sum(self.shared.sizes[: self.index])
        rows = slice(start, start + self.out_features)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.shared.bias is not None, device="meta")
        linear.weight = nn.Parameter(self.shared.packed_weight.to_dense()[rows].clone(), requires_grad=False)
        if self.shared.bias is not None:
            linear.bias = nn.Parameter(self.shared.bias[rows].clone(), requires_grad=False)
        return linear

    def extra_repr(self) -> str:
        part = f", part {self.index} of one matmul" if len(self.shared.sizes) > 1 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN{part}"


# Sibling layers that transformers' modules call with the same input, in this order.
_SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _shared_layers(module: nn.Module, wanted: set[int]) -> dict[int, nn.Module]:
    """PackedLinear parts of one matmul (by id of the layer each replaces) for the sibling groups of `module`."""
    made: dict[int, nn.Module] = {}
    for names in _SHARED_INPUT:
        linears = [m for m in (getattr(module, name, None) for name in names) if isinstance(m, nn.Linear)]
        if len(linears) < len(names) or any(id(m) not in wanted for m in linears):
            continue
        if len({(m.in_features, m.bias is None) for m in linears}) != 1:
            continue
        shared = _SharedMatmul(linears)
        made.update({id(m): PackedLinear(m, shared, i) for i, m in enumerate(linears)})
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
    return _replace(model, lambda m: m.unpacked() if isinstance(m, PackedLinear) else None)


def _replace(model: Any, make: Callable[[nn.Module], nn.Module | None]) -> int:
    """Swap every submodule for which `make` returns a module (once per module, however many names it has)."""
    made = [(name, make(module)) for name, module in model.named_modules()]
    swaps = [(name, new) for name, new in made if new is not None]
    for name, new in swaps:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return len(swaps)
