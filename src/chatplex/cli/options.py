"""Model options every command that loads a model shares, mapped to ChatModel argument keys."""

from __future__ import annotations

import argparse
import re
from typing import Any

from chatplex.config import DTYPES
from chatplex.engines import BACKENDS


def add_model_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("config", nargs="?", help="a LLaMA-Factory style YAML file of arguments (optional)")
    g.add_argument(
        "--model",
        dest="model_name_or_path",
        help="model directory or .gguf file (default: the embedded SmolLM2-135M-Instruct)",
    )
    g.add_argument("--adapter", dest="adapter_name_or_path", help="LoRA adapter path(s), comma-separated")
    g.add_argument(
        "--lora-modules",
        dest="lora_modules",
        nargs="+",
        action="extend",
        metavar="NAME=PATH",
        help="named LoRA adapters a request picks by its model field (vLLM's form; repeatable)",
    )
    g.add_argument(
        "--max-loras", dest="max_loras", type=int, help="how many named adapters may be resident (default: 8)"
    )
    g.add_argument("--template", help="built-in chat template name (default: the tokenizer's own)")
    g.add_argument("--chat-template", dest="chat_template", help="a Jinja chat template file")
    g.add_argument("--infer-backend", dest="infer_backend", choices=BACKENDS, help="engine (default: huggingface)")
    g.add_argument("--infer-dtype", dest="infer_dtype", choices=DTYPES, help="weights dtype (default: auto)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="device (default: auto)")
    g.add_argument("--system", dest="default_system", help="default system prompt")
    g.add_argument(
        "--trust-remote-code",
        dest="trust_remote_code",
        action="store_true",
        default=None,
        help="allow the model's own Python code from its directory (off by default)",
    )
    g.add_argument("--max-model-len", dest="max_model_len", type=int, help="context length cap")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="default output length cap")
    g.add_argument("--temperature", type=float, help="default sampling temperature")
    g.add_argument("--top-p", dest="top_p", type=float, help="default nucleus sampling p")
    g.add_argument("--top-k", dest="top_k", type=int, help="default top-k")
    p = parser.add_argument_group("more than one GPU or machine (infer_backend vllm or sglang)")
    p.add_argument(
        "--tensor-parallel-size",
        "-tp",
        dest="tensor_parallel_size",
        type=int,
        help="split each layer over this many GPUs (default: -1, every visible GPU)",
    )
    p.add_argument(
        "--pipeline-parallel-size",
        "-pp",
        dest="pipeline_parallel_size",
        type=int,
        help="split the layers into this many stages (default: 1)",
    )
    p.add_argument(
        "--data-parallel-size",
        "-dp",
        dest="data_parallel_size",
        type=int,
        help="replicas of the model behind one server (default: 1)",
    )
    p.add_argument(
        "--distributed-executor-backend",
        dest="distributed_executor_backend",
        choices=("mp", "ray", "uni"),
        help="vLLM's workers as processes (mp) or on a Ray cluster (ray) (default: vLLM's choice)",
    )
    p.add_argument("--ray-address", dest="ray_address", help="the Ray cluster to join (default: RAY_ADDRESS)")
    p.add_argument("--nnodes", type=int, help="machines the model spans (default: 1)")
    p.add_argument(
        "--node-rank",
        dest="node_rank",
        type=int,
        help="this machine's rank: 0 serves, 1.. run workers only (default: 0)",
    )
    p.add_argument(
        "--dist-init-addr",
        dest="dist_init_addr",
        metavar="HOST:PORT",
        help="node 0's address for torch.distributed, the same on every node",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other ChatModel argument, e.g. --set max_num_seqs=16 (repeatable)",
    )


MODEL_KEYS = [
    "model_name_or_path",
    "adapter_name_or_path",
    "lora_modules",
    "max_loras",
    "template",
    "chat_template",
    "infer_backend",
    "infer_dtype",
    "device",
    "default_system",
    "trust_remote_code",
    "max_model_len",
    "max_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "data_parallel_size",
    "distributed_executor_backend",
    "ray_address",
    "nnodes",
    "node_rank",
    "dist_init_addr",
]


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


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def llamafactory_argv(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """LLaMA-Factory's command-line forms as this parser's: `key=value` items and `--snake_case_key value` (or
    `--key=value`) flags the parser does not define become `--set key=value`, so
    `chatplex serve qwen3.yaml infer_backend=vllm vllm_enforce_eager=true` and
    `chatplex chat --model_name_or_path M --template qwen3` read as `llamafactory-cli` reads them. Unknown keys are
    then refused by the argument check with the valid ones listed."""
    known = set(parser._option_string_actions)
    out: list[str] = []
    values_left = 0  # items the last known flag still takes as its values
    i = 0
    while i < len(argv):
        item = argv[i]
        if item == "--":
            out += argv[i:]
            break
        if item.startswith("-") and item.split("=", 1)[0] in known:
            nargs = parser._option_string_actions[item.split("=", 1)[0]].nargs
            values_left = 0 if "=" in item or nargs == 0 else len(argv) if nargs in ("+", "*") else 1
            out.append(item)
        elif values_left and not item.startswith("-"):
            values_left -= 1
            out.append(item)
        elif item.startswith("--"):
            key, eq, value = item[2:].partition("=")
            if not eq:
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    i += 1
                    value = argv[i]
                else:
                    value = "true"  # a bare boolean flag, as HfArgumentParser takes it
            if _KEY.fullmatch(key):
                out += ["--set", f"{key.replace('-', '_')}={value}"]
            else:
                out.append(item)
            values_left = 0
        elif not item.startswith("-") and "=" in item and _KEY.fullmatch(item.split("=", 1)[0]):
            out += ["--set", item]
        else:
            out.append(item)
        i += 1
    return out
