"""Model options every command that loads a model shares, mapped to ChatModel argument keys."""

from __future__ import annotations

import argparse
from typing import Any

from chatplex.config import BACKENDS, DTYPES


def add_model_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("config", nargs="?", help="a LLaMA-Factory style YAML file of arguments (optional)")
    g.add_argument("--model", dest="model_name_or_path", help="model directory or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--adapter", dest="adapter_name_or_path", help="LoRA adapter path(s), comma-separated")
    g.add_argument("--lora-modules", dest="lora_modules", nargs="+", action="extend", metavar="NAME=PATH",
                   help="named LoRA adapters a request picks by its model field (vLLM's form; repeatable)")
    g.add_argument("--max-loras", dest="max_loras", type=int, help="how many named adapters may be resident (default: 8)")
    g.add_argument("--template", help="built-in chat template name (default: the tokenizer's own)")
    g.add_argument("--chat-template", dest="chat_template", help="a Jinja chat template file")
    g.add_argument("--infer-backend", dest="infer_backend", choices=BACKENDS, help="engine (default: huggingface)")
    g.add_argument("--infer-dtype", dest="infer_dtype", choices=DTYPES, help="weights dtype (default: auto)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device (default: auto)")
    g.add_argument("--system", dest="default_system", help="default system prompt")
    g.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true", default=None,
                   help="allow the model's own Python code from its directory (off by default)")
    g.add_argument("--max-model-len", dest="max_model_len", type=int, help="context length cap")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="default output length cap")
    g.add_argument("--temperature", type=float, help="default sampling temperature")
    g.add_argument("--top-p", dest="top_p", type=float, help="default nucleus sampling p")
    g.add_argument("--top-k", dest="top_k", type=int, help="default top-k")
    g.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="any other ChatModel argument, e.g. --set max_num_seqs=16 (repeatable)",
    )


MODEL_KEYS = (
    "model_name_or_path adapter_name_or_path lora_modules max_loras template chat_template infer_backend infer_dtype device default_system "
    "trust_remote_code max_model_len max_new_tokens temperature top_p top_k"
).split()


def model_args_from(ns: argparse.Namespace) -> dict[str, Any]:
    """The ChatModel argument dict: YAML file first, then flags, then --set overrides."""
    from chatplex.config import load_yaml
    from chatplex.errors import ConfigError

    args: dict[str, Any] = load_yaml(ns.config) if getattr(ns, "config", None) else {}
    for key in MODEL_KEYS:
        value = getattr(ns, key, None)
        if value is not None:
            args[key] = value
    for item in getattr(ns, "overrides", []):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE.", param=item)
        args[key] = value
    return args
