"""Arguments: dict, YAML file or command line -> validated dataclasses.

Keys follow LLaMA-Factory's inference arguments where they exist, so its users' YAML files work unchanged.
Every other key of LLaMA-Factory's inference parser is translated, ignored with a warning (training-only) or
refused with a reason (`llamafactory_keys`); any other unknown key is a `ConfigError` listing the valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import yaml

from chatplex.engines import BACKENDS
from chatplex.errors import ConfigError

if TYPE_CHECKING:
    from chatplex.media import MediaPolicy

logger = logging.getLogger(__name__)

BACKEND_ALIASES = {"hf": "huggingface", "llamacpp": "llama.cpp", "llama_cpp": "llama.cpp"}
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
TASKS = ("auto", "generate", "score", "embed")
ROPE_SCALINGS = ("linear", "dynamic", "yarn", "llama3")


@dataclass
class ModelArguments:
    """Which model, how to load it and which engine runs it."""

    model_name_or_path: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    adapter_name_or_path: str | None = (
        None  # one path or a comma-separated list (merged in order unless merge_lora: false)
    )
    # Named LoRA adapters a request picks by its `model` field: {name: path}, or "name=path,name2=path2".
    lora_modules: dict[str, str] | list[str] | str | None = None
    max_loras: int = 8  # how many named adapters may be resident at once (lora_modules + loaded at run time)
    merge_lora: bool = True  # merge adapter_name_or_path into the weights; false keeps a single one per-request
    # generate; score (a reward model); embed (a sentence-transformers embedding model: modules.json + Pooling);
    # auto: embed when modules.json has a Pooling module, score *ForSequenceClassification models (an encoder one
    # with one label is a cross-encoder for rerank), else generate.
    task: str = "auto"
    template: str | None = None  # None: the tokenizer's own chat template
    chat_template: str | None = None  # a Jinja file (or inline template) that overrides both
    # A template that does not render `tools` gets chatplex's generic tool prompt (templates.tool_prompt).
    generic_tool_prompt: bool = True
    infer_backend: str = "huggingface"
    infer_dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    default_system: str | None = None
    enable_thinking: bool | None = None
    # LLaMA-Factory's format switches (its templates only): the tool format replacing the template's own, and
    # whether past replies keep their thoughts.
    tool_format: str | None = None
    preserve_thinking: bool = False
    cache_dir: str | None = None
    model_revision: str = "main"
    hf_hub_token: str | None = None  # for gated or private models on the Hugging Face Hub
    # LLaMA-Factory's RoPE scaling for a longer context: linear, dynamic, yarn or llama3, factor 2 (as its inference)
    rope_scaling: str | None = None
    # Hugging Face engine: scheduler and KV cache.
    max_model_len: int | None = None  # None: the model's own context length
    max_num_seqs: int = 64
    # Tokens per step. None: 1024 on a GPU; 256 on a CPU, where a step's time grows with its tokens: smaller prefill
    # chunks keep other streams' inter-token latency down and spread prompts that arrive together over steps, so they
    # finish apart and the next ones arrive apart instead of all waiting for one long prefill (BENCHMARKS.md, 10).
    max_num_batched_tokens: int | None = None
    kv_cache_memory_gb: float | None = None  # None: 2 GiB on CPU, gpu_memory_utilization on GPU
    gpu_memory_utilization: float = 0.85
    kv_block_size: int = 16
    max_waiting_requests: int | None = None  # None: unbounded
    enforce_eager: bool = False  # True: no CUDA graphs (and no torch.compile) for decode steps
    # torch.compile the decode step: on a GPU (unset: on) before CUDA-graph capture; on a CPU (unset: off) only when
    # true, at a start-up cost of a minute or two (engines/hf/cpu_decode.py).
    compile: bool | None = None
    # Launch step N+1 before step N's sampled tokens reach the host (engines/hf/steps.py); false runs one step at
    # a time (the same output, slower on a GPU; for comparisons). None: on a GPU, off on a CPU (a CPU's launch runs
    # the whole step, so overlapping only holds each step's tokens back one step).
    async_scheduling: bool | None = None
    # Eager steps round their token count up to a multiple of this: on a GPU cuBLAS picks kernels per matrix shape
    # on the host, and an unpadded count is a new shape almost every step. None: 128 on a GPU, 0 (off) elsewhere.
    pad_tokens_to: int | None = None
    # Greedy output independent of which other requests share a step (CPU, bfloat16): decode attention runs per
    # sequence and prefill chunks end at fixed positions of each prompt. It costs throughput (BENCHMARKS.md, 10).
    batch_invariant: bool = False
    # Reuse the KV cache of prompt prefixes earlier requests computed (a conversation's past turns, a shared system
    # prompt). None: on, except with batch_invariant (a cached prefix was computed in other company).
    enable_prefix_caching: bool | None = None
    # Run the Hugging Face engine (scheduler, model, detokenizing) in a process of its own, so the HTTP frontend does
    # not compete with it for the interpreter lock (engines/process). None: on under `chatplex serve` with a GPU.
    engine_process: bool | None = None
    dummy_weights: str | None = None  # a named model shape with random weights (benchmarks): see models/dummy.py
    # Quantized weights (Hugging Face engine; engines/hf/quantization.py). LLaMA-Factory's keys: quantization_bit
    # 4 or 8 quantizes while loading (bitsandbytes: quantization_type nf4|fp4, double_quantization for 4-bit).
    # A pre-quantized checkpoint (GPTQ, AWQ, FP8, compressed-tensors, a bitsandbytes save) loads as it is.
    quantization_method: str = "bnb"
    quantization_bit: int | None = None
    quantization_type: str = "nf4"
    double_quantization: bool = True
    quantization_device_map: str | None = None
    # The KV cache's element type: auto (the model's dtype) or fp8 (= fp8_e4m3) / fp8_e5m2, half the bytes per
    # token so twice the tokens fit (vLLM's names; unscaled, as vLLM without calibrated scales).
    kv_cache_dtype: str = "auto"
    # Engine pass-through for later backends (kept so LLaMA-Factory configs load).
    vllm_maxlen: int = 4096
    vllm_gpu_util: float = 0.7
    vllm_enforce_eager: bool = False
    vllm_max_lora_rank: int = 32
    vllm_config: dict[str, Any] | None = None
    sglang_maxlen: int = 4096
    sglang_mem_fraction: float = 0.7
    sglang_tp_size: int = -1
    sglang_config: dict[str, Any] | None = None
    # More than one device or machine (vllm and sglang; engines/parallel.py): -1 is one per visible GPU, as
    # LLaMA-Factory's vLLM engine does. nnodes > 1: node 0 serves, nodes 1.. run workers (chatplex serve --node-rank).
    tensor_parallel_size: int = -1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # vllm: mp, ray or uni; None: vLLM's choice
    ray_address: str | None = None  # the Ray cluster vLLM's ray executor joins (else RAY_ADDRESS or a local one)
    nnodes: int = 1
    node_rank: int = 0
    dist_init_addr: str | None = None  # node 0's host:port for torch.distributed, the same on every node
    api_base: str | None = None  # infer_backend=openai: the server's base URL
    api_key: str | None = None
    # Free-form settings for the chosen engine (llama.cpp: n_threads, n_batch...; openai: max_retries, timeout...;
    # launched servers: launch_timeout, stop_timeout).
    engine_config: dict[str, Any] | None = None
    # Media limits and sources for image/audio models (chatplex.media.MediaPolicy fields: max_images,
    # max_item_bytes, allow_remote, allow_private_addresses, local_root...).
    media: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.infer_backend = BACKEND_ALIASES.get(self.infer_backend, self.infer_backend)
        _check_choice("infer_backend", self.infer_backend, BACKENDS)
        _check_choice("infer_dtype", self.infer_dtype, DTYPES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("task", self.task, TASKS)
        if self.rope_scaling is not None:
            _check_choice("rope_scaling", self.rope_scaling, ROPE_SCALINGS)
            if self.infer_backend != "huggingface":
                raise ConfigError(
                    "rope_scaling: applies on infer_backend huggingface only (LLaMA-Factory refuses it on "
                    "vLLM too); give the engine a model whose config has the scaling instead.",
                    param="rope_scaling",
                )
        self.lora_modules = parse_lora_modules(self.lora_modules)
        _check_positive("max_loras", self.max_loras)
        if len(self.lora_modules) > self.max_loras:
            raise ConfigError(
                f"lora_modules: {len(self.lora_modules)} adapters but max_loras is {self.max_loras}.", param="max_loras"
            )
        if not self.merge_lora and len(self.adapter_paths) > 1:
            raise ConfigError(
                "merge_lora: false keeps one adapter_name_or_path unmerged; several are stacked by merging them. "
                "Name the others in lora_modules to pick them per request.",
                param="merge_lora",
            )
        path = self.model_name_or_path
        if path is not None and _looks_local(path) and not os.path.exists(path):
            raise ConfigError(
                f"model_name_or_path: {path!r} does not exist. Give an existing model "
                "directory or .gguf file, or leave it out to use the embedded SmolLM2-135M-Instruct.",
                param="model_name_or_path",
            )
        if self.media is not None:
            self.media_policy()  # checked now, so a bad key fails at start-up
        if self.dummy_weights is not None:
            from chatplex.models.dummy import check_shape

            check_shape(self.dummy_weights)
        if self.chat_template is not None and self.template is not None:
            raise ConfigError("template and chat_template: give one, not both.", param="chat_template")
        if self.template is not None:
            from chatplex.templates import check_template_name

            check_template_name(self.template)  # now, not after the weights have loaded
        for name in ("max_num_seqs", "max_num_batched_tokens", "kv_block_size"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if self.max_model_len is not None:
            _check_positive("max_model_len", self.max_model_len)
        if self.pad_tokens_to is not None and (
            not isinstance(self.pad_tokens_to, int) or isinstance(self.pad_tokens_to, bool) or self.pad_tokens_to < 0
        ):
            raise ConfigError(
                f"pad_tokens_to must be an integer >= 0 (0: no padding), got {self.pad_tokens_to!r}.",
                param="pad_tokens_to",
            )
        if self.max_waiting_requests is not None and (
            not isinstance(self.max_waiting_requests, int) or self.max_waiting_requests < 0
        ):
            raise ConfigError(
                f"max_waiting_requests must be an integer >= 0, got {self.max_waiting_requests!r}.",
                param="max_waiting_requests",
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}.",
                param="gpu_memory_utilization",
            )
        if self.kv_cache_memory_gb is not None and self.kv_cache_memory_gb <= 0:
            raise ConfigError("kv_cache_memory_gb must be > 0.", param="kv_cache_memory_gb")
        if self.batch_invariant and self.infer_backend != "huggingface":
            raise ConfigError(
                f"batch_invariant: the {self.infer_backend} engine batches in its own way; batch-invariant greedy "
                "output comes from infer_backend huggingface (on a CPU, in bfloat16).",
                param="batch_invariant",
            )
        if self.engine_process and self.infer_backend != "huggingface":
            raise ConfigError(
                f"engine_process: applies to infer_backend huggingface; the {self.infer_backend} engine runs where it "
                "runs (vLLM already has an engine process of its own).",
                param="engine_process",
            )
        if self.batch_invariant and self.enable_prefix_caching:
            raise ConfigError(
                "enable_prefix_caching: not with batch_invariant (a cached prefix was computed beside other requests, "
                "so reusing it would make output depend on them); turn one off.",
                param="enable_prefix_caching",
            )
        from chatplex.engines.parallel import check_keys

        check_keys(self)
        quant_keys = (self.quantization_method, self.quantization_bit, self.quantization_type)
        if quant_keys != ("bnb", None, "nf4") or self.kv_cache_dtype != "auto" or self.quantization_device_map:
            from chatplex.engines.quantization_keys import check_quantization_keys

            check_quantization_keys(self)

    def template_options(self) -> dict[str, Any]:
        """What `templates.resolve_template` takes from these arguments besides the template's name."""
        return {
            "generic_tool_prompt": self.generic_tool_prompt,
            "tool_format": self.tool_format,
            "enable_thinking": self.enable_thinking,
            "preserve_thinking": self.preserve_thinking,
        }

    def media_policy(self) -> MediaPolicy:
        """The `media:` policy; under a LLaMA-Factory template name, its plugins' sizing and frame sampling where
        `media` does not say otherwise (llamafactory_keys.MEDIA_DEFAULTS)."""
        from chatplex.media import MediaPolicy
        from chatplex.templates import llamafactory

        values = dict(self.media or {})
        if llamafactory.is_name(self.template):
            from chatplex.llamafactory_keys import MEDIA_DEFAULTS

            values = {**MEDIA_DEFAULTS, **values}
        return MediaPolicy.from_config(values)

    @property
    def adapter_paths(self) -> list[str]:
        """adapter_name_or_path split at commas (LLaMA-Factory's form)."""
        return [p.strip() for p in (self.adapter_name_or_path or "").split(",") if p.strip()]

    @property
    def lora_module_paths(self) -> dict[str, str]:
        """lora_modules as {name: path}, the form __post_init__ parses each accepted one into."""
        assert isinstance(self.lora_modules, dict)  # parsed by __post_init__
        return self.lora_modules


def parse_lora_modules(value: Any) -> dict[str, str]:
    """{name: path} from a mapping, "name=path,name2=path2", or a list of "name=path" items."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = (
            [value] if value.lstrip().startswith("{") else [item for item in value.replace(",", " ").split() if item]
        )
    if isinstance(value, list):
        value = dict(_lora_module(item) for item in value)
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(
            "lora_modules: must map adapter names to paths ({name: path} or name=path,...).", param="lora_modules"
        )
    return dict(value)


def _lora_module(item: Any) -> tuple[str, str]:
    """One adapter: "name=path", or vLLM's JSON form '{"name": ..., "path": ...}' (other keys ignored)."""
    text = str(item).strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"lora_modules: {text!r} is not valid JSON ({exc.msg}).", param="lora_modules") from None
        name, path = spec.get("name"), spec.get("path")
        if isinstance(name, str) and isinstance(path, str) and name.strip() and path.strip():
            return name.strip(), path.strip()
        raise ConfigError(f"lora_modules: {text!r} needs string fields 'name' and 'path'.", param="lora_modules")
    name, eq, path = text.partition("=")
    if not eq or not name.strip() or not path.strip():
        raise ConfigError(f"lora_modules: {item!r} is not name=path.", param="lora_modules")
    return name.strip(), path.strip()


@dataclass
class GeneratingArguments:
    """Generation defaults; each request may override them."""

    do_sample: bool = True
    temperature: float = 0.95
    top_p: float = 0.7
    top_k: int = 50
    min_p: float = 0.0
    num_beams: int = 1
    max_length: int | None = None
    max_new_tokens: int = 1024
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    skip_special_tokens: bool = True
    stop: list[str] | str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.num_beams != 1:
            raise ConfigError(
                f"num_beams={self.num_beams}: beam search is not supported: chatplex's engines decode each sequence "
                "on its own in a shared batch (as vLLM's serving engine does), with no beams to rank; use num_beams: 1 "
                "(greedy with do_sample: false), or n / num_return_sequences for several samples.",
                param="num_beams",
            )
        # Full validation happens when defaults merge with a request (chatplex.sampling).

    def as_request_defaults(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("num_beams")
        d.pop("length_penalty")  # only meaningful for beam search
        return {k: v for k, v in d.items() if v is not None}


@dataclass
class ChatplexArgs:
    model: ModelArguments = field(default_factory=ModelArguments)
    generating: GeneratingArguments = field(default_factory=GeneratingArguments)


def _looks_local(path: str) -> bool:
    # A hub id is "org/name"; a path starts with / . ~ or names a .gguf file or has more than one slash.
    return path.startswith(("/", ".", "~")) or path.endswith(".gguf") or path.count("/") > 1 or os.path.exists(path)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: {value!r} is not valid; choose one of {', '.join(choices)}.", param=name)


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.", param=name)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check (and for command-line strings, convert) a value against a field's type hint."""
    allowed = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{name} may not be null.", param=name)
    if isinstance(value, str) and (str not in allowed or value.lstrip().startswith(("[", "{"))):
        try:
            value = yaml.safe_load(value)  # "true" -> True, "0.5" -> 0.5, "[a, b]" -> list, "{a: 1}" -> dict
        except yaml.YAMLError:
            if str not in allowed:
                raise ConfigError(f"{name}: cannot read {value!r} as a value.", param=name) from None
            # a string after all (an inline Jinja template starts with "{%")
    for t in allowed:
        base = typing.get_origin(t) or t
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base in (bool, str, dict, list) and isinstance(value, base):
            return value
        if base is Any:
            return value
    names = " or ".join(getattr(typing.get_origin(t) or t, "__name__", str(t)) for t in allowed)
    raise ConfigError(f"{name}: expected {names}, got {value!r}.", param=name)


def args_from_dict(raw: dict[str, Any]) -> ChatplexArgs:
    """Split a flat LLaMA-Factory style dict into validated argument dataclasses."""
    model_types = _field_types(ModelArguments)
    gen_types = _field_types(GeneratingArguments)
    from chatplex import llamafactory_keys

    model_kw: dict[str, Any] = {}
    gen_kw: dict[str, Any] = {}
    flat = {str(key).replace("-", "_"): value for key, value in raw.items()}
    translated: dict[str, Any] = {k: flat[k] for k in ("infer_backend", "media", "sglang_config") if k in flat}
    for key, value in flat.items():
        if key in model_types or key in gen_types:
            continue
        if key == "stage":  # LLaMA-Factory's way of asking for a reward model; its other stages are training's
            if value == "rm":
                model_kw.setdefault("task", "score")
        elif not llamafactory_keys.translate(key, value, translated):
            valid = sorted([*model_types, *gen_types])
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown argument {key!r}.{hint} Valid arguments: {', '.join(valid)}.", param=key)
    flat.update(translated)
    for key, value in flat.items():
        if key in model_types:
            model_kw[key] = _coerce(key, value, model_types[key])
        elif key in gen_types:
            gen_kw[key] = _coerce(key, value, gen_types[key])
    return ChatplexArgs(ModelArguments(**model_kw), GeneratingArguments(**gen_kw))


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"Config file {path!r} does not exist.", param="config") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path!r} is not valid YAML: {e}", param="config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path!r} must hold a mapping of argument: value.", param="config")
    return data


def parse_argv(argv: list[str]) -> dict[str, Any]:
    """`config.yaml key=value ...` (LLaMA-Factory style) or `--key value` / `--key=value` flags."""
    raw: dict[str, Any] = {}
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        raw.update(load_yaml(argv[0]))
        argv = argv[1:]
    i = 0
    while i < len(argv):
        item = argv[i]
        if item.startswith("--"):
            key, eq, value = item[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    value = "true"  # a bare flag
                else:
                    i += 1
                    value = argv[i]
            raw[key] = value
        elif "=" in item:
            key, _, value = item.partition("=")
            raw[key] = value
        else:
            raise ConfigError(f"Cannot read argument {item!r}: use --key value or key=value.", param=item)
        i += 1
    return raw


def load_args(args: dict[str, Any] | str | None = None) -> ChatplexArgs:
    """A dict, a path to a YAML file, or None to read `sys.argv[1:]`."""
    if args is None:
        raw = parse_argv(sys.argv[1:])
    elif isinstance(args, str):
        raw = load_yaml(args)
    elif isinstance(args, dict):
        raw = dict(args)
    else:
        raise ConfigError(f"args must be a dict, a YAML path or None, got {type(args).__name__}.", param="args")
    return args_from_dict(raw)
