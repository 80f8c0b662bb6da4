"""A GPU decode step compiled one decoder layer at a time: one compile serves every layer of the model.

Why: torch.compile of the whole step traces and compiles each layer of the model apart, though they run the same
code on weights of the same shapes, and that was most of a GPU engine's start (the 8B shape on an H100: 42.6 s
cold, 9.1 s with the compile caches warm, BENCHMARKS.md section 12). Here each layer class's forward is compiled
once, with the layer as an argument (Dynamo lifts its weights to inputs), so the first layer's compile serves the
other 31: on the 2-core CPU, a 32-layer Llama's step compiled in 41.4 s whole and in 8.4 s a layer at a time.

A layer reaches its part of the paged cache by its index (`module.layer_idx`), which the compiled code would be
specialized to (a recompile per layer): here the layer's keys and values are passed in as an argument instead
(`chatplex_layer_cache`, read by attention.paged_attention_forward).

What it costs: the step's CUDA graph replays the same kernels, except that Inductor no longer fuses across a
layer's edges (its last residual add and the next layer's norm are two kernels) and the embedding, rotary
tables, final norm and LM head run as eager kernels in the graph: ~40 small kernels a step more for a 32-layer
model, ~2 us each in a graph, so ~1% of an 8B decode step by that count (not yet timed on a GPU). Only the
CUDA-graph step uses it: a graph replays without Python, so the per-layer calls cost nothing after capture, where a
compiled CPU step (cpu_decode.py) would pay them every step.

The compiled forwards run only inside `running()`: every other forward of the model (prefill chunks, eager steps)
calls the layers as they are.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from chatplex.engines.hf.attention import ATTENTION_NAME
from chatplex.engines.hf.compile_cache import compile_step
from chatplex.engines.hf.kv_cache import PagedKVCache

logger = logging.getLogger(__name__)


def _attention_index(module: torch.nn.Module) -> int | None:
    """The cache index of an attention module that runs chatplex's paged attention, else None."""
    index = getattr(module, "layer_idx", None)
    implementation = getattr(getattr(module, "config", None), "_attn_implementation", None)
    return index if isinstance(index, int) and implementation == ATTENTION_NAME else None


def decoder_layers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, int]] | None:
    """The decoder's layers, each with the cache index of its paged attention: the ModuleList whose items cover
    every cache index, one each (a Gemma 3 layer holds its index as its attention does: one index, two modules).
    None when there is none, or a layer already has a forward of its own (the step is then compiled whole)."""
    indices = {id(m): i for m in model.modules() if (i := _attention_index(m)) is not None}
    wanted = set(indices.values())
    if not wanted:
        return None
    for candidate in model.modules():
        if not isinstance(candidate, torch.nn.ModuleList):
            continue
        layers = []
        for layer in candidate:
            inside = {indices[id(m)] for m in layer.modules() if id(m) in indices}
            if len(inside) != 1 or "forward" in vars(layer):  # e.g. accelerate's hooks, which compiling would skip
                break
            layers.append((layer, inside.pop()))
        else:
            if sorted(index for _, index in layers) == sorted(wanted):
                return layers
    return None


class CompiledLayers:
    """Each decoder layer's forward swapped for one that, inside `running()`, calls its class's compiled forward
    with its cache passed in, and otherwise the layer's own forward."""

    def __init__(self, layers: list[tuple[torch.nn.Module, int]], cache: PagedKVCache) -> None:
        # Process-wide, not per thread: only the engine thread runs the model, and only capture runs the step.
        self._running = False
        compiled: dict[type, Callable[..., Any]] = {}  # one compile per layer class (hybrid models have several)
        for layer, index in layers:
            kind = type(layer)
            if kind not in compiled:
                # The class's own forward, without transformers' wrappers (a renamed keyword, gradient
                # checkpointing): their one code object, shared by every model's layers, would share Dynamo's
                # limit of compiles per code object across all of them.
                compiled[kind] = compile_step(inspect.unwrap(kind.forward), fixed_model=False)
            # An instance attribute: nn.Module's __call__ (and hooks, peft's wrappers) still run around it.
            layer.forward = functools.partial(
                self._forward, layer, layer.forward, compiled[kind], (cache.keys[index], cache.values[index])
            )
        self.compiled_classes = len(compiled)

    @classmethod
    def install(cls, model: torch.nn.Module, cache: PagedKVCache) -> CompiledLayers | None:
        layers = decoder_layers(model)
        if layers is None:
            logger.info("Decode step compiled whole: its decoder layers were not found")
            return None
        return cls(layers, cache)

    @contextmanager
    def running(self) -> Iterator[None]:
        self._running = True
        try:
            yield
        finally:
            self._running = False

    def _forward(
        self,
        layer: torch.nn.Module,
        eager: Callable[..., Any],
        compiled: Callable[..., Any],
        layer_cache: tuple[torch.Tensor, torch.Tensor],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if not self._running:
            return eager(*args, **kwargs)
        # The batch dimension of what comes from outside the layer (decode_step.py marks the step's own inputs):
        # one compile for every batch size. Rotary tables come as (cos, sin), or one tensor (Llama 4's).
        hidden_states = args[0] if args else kwargs["hidden_states"]
        tables = kwargs.get("position_embeddings")
        for tensor in (hidden_states, *((tables,) if isinstance(tables, torch.Tensor) else tables or ())):
            if tensor.dim() > 1:
                torch._dynamo.maybe_mark_dynamic(tensor, 1)
        return compiled(layer, *args, chatplex_layer_cache=layer_cache, **kwargs)
