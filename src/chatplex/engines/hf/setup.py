"""Build everything the Hugging Face engine runs on: device and dtype, tokenizer, model (with adapters or a score
head), KV cache, block manager, scheduler, runner (with CUDA graphs on a GPU, a compiled decode step on a CPU when
asked for) and prompt preparation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from chatplex.config import ModelArguments
from chatplex.engines.base import PromptPreparer
from chatplex.engines.hf import attention, cpu_decode_kernel, heap, loader, packed_linear, quantization
from chatplex.engines.hf.block_manager import BlockManager
from chatplex.engines.hf.cpu_decode import CompiledCpuDecode
from chatplex.engines.hf.cpu_prefill import CompiledCpuPrefill
from chatplex.engines.hf.cuda_graphs import DecodeGraphs
from chatplex.engines.hf.decode_step import DecodeReplayer
from chatplex.engines.hf.kv_cache import PagedKVCache, budget_bytes, cache_dtype
from chatplex.engines.hf.multimodal import load_family
from chatplex.engines.hf.runner import ModelRunner
from chatplex.engines.hf.scheduler import Scheduler
from chatplex.engines.sequence_text import stop_tokens
from chatplex.errors import ConfigError, EngineError
from chatplex.models.dummy import dummy_model, dummy_tokenizer

logger = logging.getLogger(__name__)

# max_num_batched_tokens when none is given (config.py says why the CPU's is smaller).
GPU_STEP_TOKENS, CPU_STEP_TOKENS = 1024, 256


@dataclass
class EngineParts:
    name: str
    device: torch.device
    dtype: torch.dtype
    tokenizer: Any
    model: Any
    cache: PagedKVCache
    blocks: BlockManager
    scheduler: Scheduler
    runner: ModelRunner
    prompts: PromptPreparer
    eos_ids: frozenset[int]
    template_stops: tuple[str, ...]  # the template's stop words that are not single tokens
    default_adapter: str | None  # an unmerged adapter_name_or_path, for requests that name none
    multimodal: Any = None  # the MediaFamily of an image/video/audio-text model, else None


def build(margs: ModelArguments, name: str) -> EngineParts:
    started = time.perf_counter()
    device = loader.pick_device(margs.device)
    if device.type == "cpu":
        heap.keep_freed_memory()
    score_head = lora = default_adapter = None
    if margs.dummy_weights:
        dtype = loader.resolve_dtype(margs, None, device)
        model = dummy_model(margs.dummy_weights, device, dtype)
        tokenizer = dummy_tokenizer(model.config.vocab_size)
        name = margs.dummy_weights
    else:
        tokenizer = loader.load_tokenizer(margs)
        fmt = loader.score_format(margs)
        model, dtype = _load_weights(
            margs, device, classifier=fmt is not None and fmt.kind == "sequence_classification"
        )
        model, score_head, lora, default_adapter = loader.attach_adapters_and_head(model, margs, fmt, device, dtype)
    multimodal = None
    if not margs.dummy_weights:
        policy = margs.media_policy()
        multimodal = load_family(model, tokenizer, loader.model_source(margs)[0], policy)
    if multimodal is not None:
        # Paged attention is for the decoder; each media tower attends over its own patches or frames.
        model.set_attn_implementation(
            {"text_config": attention.register(), **{tower: "sdpa" for tower in multimodal.towers}}
        )
    else:
        model.set_attn_implementation(attention.register())
    quantized = quantization.is_quantized(model)
    cpu_compiled = device.type == "cpu" and _compiles_on_cpu(margs, multimodal, lora, score_head, quantized)
    # Resident adapters hook the plain layers; a compiled CPU step packs the weights itself (cpu_decode.py).
    if lora is None and not cpu_compiled and packed_linear.supported(device, dtype):
        packed_linear.pack_linears(model, with_head=score_head is None)
    text_config = model.config.get_text_config()
    max_len = margs.max_model_len or getattr(text_config, "max_position_embeddings", None) or 2048
    block_size = margs.kv_block_size
    budget = budget_bytes(device, margs.kv_cache_memory_gb, margs.gpu_memory_utilization)
    kv_dtype = _kv_cache_dtype(margs, dtype, device)
    num_blocks = PagedKVCache.num_blocks_for(model.config, kv_dtype, block_size, budget)
    # No point holding more than every slot filled to the context limit (+1: the scratch block).
    max_blocks = -(-max_len // block_size)  # a sequence's block table at the context limit
    num_blocks = min(num_blocks, margs.max_num_seqs * max_blocks + 1)
    if num_blocks < 2:
        raise EngineError("The KV-cache budget holds no block; raise kv_cache_memory_gb or gpu_memory_utilization.")
    loaded = time.perf_counter()
    cache = PagedKVCache(model.config, num_blocks, block_size, kv_dtype, device)
    if device.type == "cpu" and dtype == kv_dtype == torch.bfloat16:
        cpu_decode_kernel.load()  # decode attention through it from here on (paged_decode.py, attention.py)
    prefix_caching = margs.enable_prefix_caching
    if prefix_caching is None:
        prefix_caching = not margs.batch_invariant
    # Block 0 is scratch: padding rows write there.
    blocks = BlockManager(num_blocks, block_size, reserved=1, prefix_caching=prefix_caching)
    step_tokens = margs.max_num_batched_tokens or (GPU_STEP_TOKENS if device.type == "cuda" else CPU_STEP_TOKENS)
    chunk_align = (
        _invariant_chunk(margs, device, dtype, step_tokens, lora, multimodal, quantized) if margs.batch_invariant else 0
    )
    scheduler = Scheduler(
        blocks, max_num_seqs=margs.max_num_seqs, max_num_batched_tokens=step_tokens, chunk_align=chunk_align
    )
    graphs: DecodeReplayer | None = None
    capturable = quantization.graph_safe(model)
    if device.type == "cuda" and not margs.enforce_eager and not capturable:
        logger.warning("CUDA graphs off: bitsandbytes 8-bit layers cannot be captured (steps run eagerly)")
    if device.type == "cuda" and not margs.enforce_eager and multimodal is None and capturable:  # 1-D positions only
        cuda_graphs = DecodeGraphs(
            model, cache, device, margs.max_num_seqs, max_blocks, compile=margs.compile is not False
        )
        cuda_graphs.capture()
        graphs = cuda_graphs
    prefill = None
    if cpu_compiled:
        compiled = CompiledCpuDecode(model, cache, margs.max_num_seqs, max_blocks)
        compiled.compile()
        graphs = compiled
        prefill = CompiledCpuPrefill(model, cache)
        prefill.compile()
    captured = time.perf_counter()
    pad = margs.pad_tokens_to if margs.pad_tokens_to is not None else (128 if device.type == "cuda" else 0)
    runner = ModelRunner(
        model,
        cache,
        device,
        graphs,
        lora,
        score_head,
        multimodal,
        pad_tokens_to=pad,
        batch_invariant=margs.batch_invariant,
        prefill=prefill,
    )
    prompts = PromptPreparer.for_model(margs, tokenizer, max_len, text_config.vocab_size)
    template = prompts.template
    # A sequence classifier (reward model) has no generation config.
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids, template_stops = stop_tokens(gen_eos, tokenizer, template.stop_words)
    logger.info(
        "Loaded %s on %s (%s%s); KV cache %d blocks x %d tokens (%s); prefix caching %s; decode steps %s",
        name,
        device,
        dtype,
        f", {quantization.describe(model)}" if quantization.is_quantized(model) else "",
        num_blocks,
        block_size,
        str(kv_dtype).removeprefix("torch."),
        "on" if prefix_caching else "off",
        graphs.describe() if graphs else "eager",
    )
    # Where start-up time goes (issue 15's cold starts: mostly compiling and capturing the decode graphs).
    logger.info(
        "Start-up: weights and tokenizer %.1f s, KV cache and decode graphs %.1f s, the rest %.1f s",
        loaded - started,
        captured - loaded,
        time.perf_counter() - captured,
    )
    return EngineParts(
        name,
        device,
        dtype,
        tokenizer,
        model,
        cache,
        blocks,
        scheduler,
        runner,
        prompts,
        eos_ids,
        template_stops,
        default_adapter,
        multimodal,
    )


def _compiles_on_cpu(margs: ModelArguments, multimodal: Any, lora: Any, score_head: Any, quantized: bool) -> bool:
    """Whether steps on the CPU run compiled (`compile: true`, asked for; cpu_decode.py, cpu_prefill.py), saying why
    not."""
    if margs.compile is not True or margs.enforce_eager:
        return False
    reasons = {
        "media models": multimodal is not None,
        "LoRA adapters": lora is not None,
        "reward models": score_head is not None,
        "quantized weights": quantized,
        "batch_invariant (compiled kernels reduce differently per batch size)": margs.batch_invariant,
    }
    refused = [name for name, applies in reasons.items() if applies]
    if refused:
        logger.warning("compile: true is not used on a CPU with %s: steps run eagerly", ", ".join(refused))
    return not refused


def _load_weights(margs: ModelArguments, device: torch.device, classifier: bool) -> tuple[Any, torch.dtype]:
    source, gguf, _ = loader.model_source(margs)
    if quantization.wants_quantized(margs, source, gguf):
        # Quantized layers compute in this dtype; a CPU with bfloat16 matmuls runs them faster in it (bitsandbytes
        # 4-bit on this project's CPU: a decode step 28 -> 18 ms), and they cannot be timed in float32 first.
        dtype = loader.resolve_dtype(margs, None, device)
        if margs.infer_dtype == "auto" and device.type == "cpu" and packed_linear.supported(device, torch.bfloat16):
            dtype = torch.bfloat16
        model = loader.load_model(margs, device, dtype, classifier)
        # A quantizer may choose its own compute dtype (AWQ runs float16 on a GPU): the KV cache follows the model.
        dtype = model.get_input_embeddings().weight.dtype
        return (_in_own_memory(model) if device.type == "cpu" else model), dtype
    if margs.infer_dtype == "auto" and device.type == "cpu":
        model = loader.load_model(margs, device, torch.float32, classifier)
        dtype = loader.resolve_dtype(margs, model, device)
        # Converting to bfloat16 copies every weight out of the checkpoint's memory map; keeping float32 does not.
        return (model.to(dtype) if dtype != torch.float32 else _in_own_memory(model)), dtype
    dtype = loader.resolve_dtype(margs, None, device)
    model = loader.load_model(margs, device, dtype, classifier)
    return (_in_own_memory(model) if device.type == "cpu" else model), dtype


@torch.no_grad()
def _in_own_memory(model: Any) -> Any:
    """Copy the weights out of the checkpoint's memory map. Loaded in the checkpoint's own dtype on a CPU, they stay
    mapped to the safetensors file (4 KiB file pages, no transparent huge pages, and oneDNN's packed weights may
    point into them): decode steps that read every weight ran up to 3x slower, and varied from one load to the next
    (BENCHMARKS.md, section 11). A tied weight is one parameter, copied once, so it stays tied."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if type(tensor) in (torch.nn.Parameter, torch.Tensor):  # bitsandbytes' own parameter types hold copies
            tensor.data = tensor.data.clone()
    return model


def _kv_cache_dtype(margs: ModelArguments, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    kv_dtype = cache_dtype(margs.kv_cache_dtype, dtype)
    if kv_dtype == torch.float8_e4m3fn and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise ConfigError(
            "kv_cache_dtype: fp8 (e4m3) needs a GPU of compute capability 8.9 or newer (Ada, Hopper); this one is "
            f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}. Use fp8_e5m2 or auto.",
            param="kv_cache_dtype",
        )
    if kv_dtype != dtype and margs.batch_invariant:
        raise ConfigError("kv_cache_dtype: leave it at auto with batch_invariant.", param="kv_cache_dtype")
    return kv_dtype


def _invariant_chunk(
    margs: ModelArguments,
    device: torch.device,
    dtype: torch.dtype,
    step_tokens: int,
    lora: Any,
    multimodal: Any,
    quantized: bool,
) -> int:
    """batch_invariant's prefill chunk size, after checking it can hold here.

    It holds where every matmul gives a row the same numbers whatever rows share it: oneDNN's bfloat16 kernels on
    a CPU do, from two rows up (a single row takes another path: the runner pads it); MKL's float32 kernels round
    1-3 rows differently from more, and cuBLAS picks kernels by batch size. Resident LoRA adapters run their own
    matmuls on each adapter's rows, and media models' towers batch a step's images: both are refused. A chunk
    leaves room in a step for every sequence's decode token, so a whole chunk always fits beside them."""
    if device.type != "cpu" or dtype != torch.bfloat16:
        raise ConfigError(
            f"batch_invariant runs on a CPU in bfloat16 (this engine: {device.type}, "
            f"{str(dtype).removeprefix('torch.')}): use infer_dtype bfloat16 on a CPU, or turn it off.",
            param="batch_invariant",
        )
    if quantized:  # LLM.int8 picks outlier columns over the whole step's rows; other kernels are unverified
        raise ConfigError(
            "batch_invariant: not with quantized weights; serve the full-precision model.", param="batch_invariant"
        )
    if lora is not None or multimodal is not None:
        what = "resident LoRA adapters (merge them: merge_lora true)" if lora is not None else "a media model"
        raise ConfigError(f"batch_invariant: not with {what}.", param="batch_invariant")
    chunk = step_tokens - margs.max_num_seqs
    if chunk < 1:
        raise ConfigError(
            f"batch_invariant needs max_num_batched_tokens ({step_tokens}) above max_num_seqs ({margs.max_num_seqs}): "
            "a prefill chunk runs beside every sequence's decode token.",
            param="max_num_batched_tokens",
        )
    return chunk
