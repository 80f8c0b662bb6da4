"""`chatplex serve`: the OpenAI-compatible server over a ChatModel built from the shared model options.

Every flag has an environment variable (`CHATPLEX_*`), and LLaMA-Factory's API_HOST, API_PORT, API_KEY,
API_MODEL_NAME, FASTAPI_ROOT_PATH, API_VERBOSE, MAX_CONCURRENT, ALLOW_LOCAL_FILES and SAFE_MEDIA_PATH are honoured so
its deployments keep working. Precedence: flag, then
CHATPLEX_*, then LLaMA-Factory's name, then the default.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
from typing import Any, NoReturn

from chatplex.cli.options import add_model_options, model_args_from
from chatplex.server.settings import API_MODES, DEFAULT_MAX_BODY_BYTES, ServerSettings

logger = logging.getLogger(__name__)


def _env(*names: str, default: Any = None) -> Any:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve",
        aliases=["api"],
        help="serve a model over an OpenAI-compatible HTTP API (alias: api, as in llamafactory-cli)",
        description="Serve a model over an OpenAI-compatible HTTP API (chat, completions, models, score, "
        "health, metrics) with a chat web page at /.",
    )
    add_model_options(p)
    add_server_options(p, host_env=("CHATPLEX_HOST", "API_HOST"), port_env=("CHATPLEX_PORT", "API_PORT"), port=8000)
    p.set_defaults(run=run)


def add_server_options(
    p: argparse.ArgumentParser, *, host_env: tuple[str, ...], port_env: tuple[str, ...], port: int
) -> None:
    g = p.add_argument_group("server")
    g.add_argument(
        "--host",
        default=_env(*host_env, default="0.0.0.0"),
        help=f"address to listen on [env {', '.join(host_env)}] (default: 0.0.0.0)",
    )
    g.add_argument(
        "--port",
        type=int,
        default=int(_env(*port_env, default=port)),
        help=f"port [env {', '.join(port_env)}] (default: {port})",
    )
    served = _env("CHATPLEX_SERVED_MODEL_NAME", "API_MODEL_NAME")
    g.add_argument(
        "--served-model-name",
        nargs="+",
        default=served.split(",") if served else None,
        metavar="NAME",
        help="model name clients use; more names are aliases of it [env CHATPLEX_SERVED_MODEL_NAME, "
        "API_MODEL_NAME, comma-separated] (default: the model's)",
    )
    g.add_argument(
        "--accept-any-model",
        action="store_true",
        default=_env("CHATPLEX_ACCEPT_ANY_MODEL", default="").lower() in ("1", "true", "yes"),
        help="answer requests whatever model name they give, as LLaMA-Factory's server does "
        "[env CHATPLEX_ACCEPT_ANY_MODEL] (default: unknown names get 404)",
    )
    g.add_argument(
        "--api-mode",
        choices=API_MODES,
        default=_env("CHATPLEX_API_MODE"),
        help="'llamafactory': its API's meanings where they differ from OpenAI's (presence_penalty is the "
        "repetition penalty, a 'function' message is the assistant's tool call) and any model name "
        "[env CHATPLEX_API_MODE] (default: llamafactory under `chatplex api`, llamafactory-cli's name, "
        "else openai)",
    )
    g.add_argument(
        "--root-path",
        default=_env("CHATPLEX_ROOT_PATH", "FASTAPI_ROOT_PATH", default=""),
        help="URL prefix when behind a proxy [env CHATPLEX_ROOT_PATH, FASTAPI_ROOT_PATH]",
    )
    g.add_argument(
        "--api-key",
        default=_env("CHATPLEX_API_KEY", "API_KEY"),
        help="require 'Authorization: Bearer KEY' [env CHATPLEX_API_KEY, API_KEY] (default: none)",
    )
    g.add_argument(
        "--allowed-origins",
        default=_env("CHATPLEX_ALLOWED_ORIGINS", default=""),
        help="comma-separated CORS origins, or '*' [env CHATPLEX_ALLOWED_ORIGINS] (default: none)",
    )
    g.add_argument(
        "--max-body-size",
        type=int,
        default=int(_env("CHATPLEX_MAX_BODY_SIZE", default=DEFAULT_MAX_BODY_BYTES)),
        help="largest request body in bytes; larger gets 413 [env CHATPLEX_MAX_BODY_SIZE] "
        f"(default: {DEFAULT_MAX_BODY_BYTES})",
    )
    queued = _env("CHATPLEX_MAX_QUEUED_REQUESTS")
    g.add_argument(
        "--max-queued-requests",
        type=int,
        default=int(queued) if queued else None,
        help="requests that may wait beyond the running batch; more get 429 "
        "[env CHATPLEX_MAX_QUEUED_REQUESTS] (default: unbounded)",
    )
    g.add_argument(
        "--log-requests",
        action="store_true",
        default=_env("CHATPLEX_LOG_REQUESTS", "API_VERBOSE", default="").lower() in ("1", "true", "yes"),
        help="log every request body at INFO [env CHATPLEX_LOG_REQUESTS, API_VERBOSE] (default: off)",
    )
    g.add_argument(
        "--api-server-count",
        type=int,
        default=int(_env("CHATPLEX_API_SERVER_COUNT", default=1)),
        help="HTTP frontend processes sharing the port in front of one engine process (the Hugging Face engine; "
        "turns engine_process on) [env CHATPLEX_API_SERVER_COUNT] (default: 1)",
    )
    g.add_argument(
        "--drain-timeout",
        type=float,
        default=float(_env("CHATPLEX_DRAIN_TIMEOUT", default=30.0)),
        help="seconds in-flight requests get to finish after SIGTERM [env CHATPLEX_DRAIN_TIMEOUT] (default: 30)",
    )


def api_mode(ns: argparse.Namespace) -> str:
    """As asked; else LLaMA-Factory's API where the command is its name for serving (`chatplex api`), so its users'
    scripts (model "test", the `function` role) work against the command line they already type."""
    if ns.api_mode:
        return ns.api_mode
    return "llamafactory" if getattr(ns, "command", None) == "api" else "openai"


def settings_from(ns: argparse.Namespace) -> ServerSettings:
    try:
        return ServerSettings(
            host=ns.host,
            port=ns.port,
            served_model_name=ns.served_model_name[0] if ns.served_model_name else None,
            model_aliases=tuple(ns.served_model_name[1:]) if ns.served_model_name else (),
            accept_any_model=ns.accept_any_model,
            api_mode=api_mode(ns),
            log_requests=ns.log_requests,
            root_path=ns.root_path or "",
            api_key=ns.api_key,
            allowed_origins=tuple(ns.allowed_origins.split(",")) if ns.allowed_origins else (),
            max_body_bytes=ns.max_body_size,
            drain_timeout=ns.drain_timeout,
            api_server_count=ns.api_server_count,
        )
    except ValueError as e:
        from chatplex.errors import ConfigError

        raise ConfigError(str(e)) from None


def llamafactory_env(model_args: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory's API environment variables, where the arguments do not already say: SAFE_MEDIA_PATH is the one
    folder local media paths may name (ALLOW_LOCAL_FILES=0 allows none), MAX_CONCURRENT how many requests generate
    at once."""
    args = dict(model_args)
    allow_local = os.environ.get("ALLOW_LOCAL_FILES", "1").lower() not in ("0", "false", "no")
    media = dict(args.get("media") or {})
    if os.environ.get("SAFE_MEDIA_PATH") and allow_local:
        media.setdefault("local_root", os.environ["SAFE_MEDIA_PATH"])
    if not allow_local:
        media["local_root"] = None
    if media:
        args["media"] = media
    if os.environ.get("MAX_CONCURRENT") and "max_num_seqs" not in args:
        args["max_num_seqs"] = os.environ["MAX_CONCURRENT"]
    return args


def check_api_server_count(args: Any, count: int) -> None:
    """Several frontends share one engine process: the Hugging Face engine's (vLLM has its own option)."""
    from chatplex.errors import ConfigError

    if args.model.infer_backend != "huggingface" or args.model.engine_process is False:
        raise ConfigError(
            f"api_server_count: {count} frontends share one engine process, which the Hugging Face engine runs "
            "with engine_process on; "
            + (
                "engine_process is false here."
                if args.model.infer_backend == "huggingface"
                else f"the {args.model.infer_backend} engine is served by one frontend."
            )
            + " Leave --api-server-count at 1.",
            param="api_server_count",
        )


def _has_gpu(args: Any) -> bool:
    """Whether a CUDA device is there, asked of the NVIDIA driver: importing torch to ask would cost the frontend
    seconds on a GPU host before it could start the engine process. (A CPU-only torch on a host with a driver gets
    an engine process too, running on the CPU.)"""
    if args.model.device not in ("auto", "cuda"):
        return False
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:  # no NVIDIA driver
        return False
    count = ctypes.c_int(0)
    return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def run(ns: argparse.Namespace) -> NoReturn:
    from chatplex.config import load_args
    from chatplex.engines.parallel import is_worker_node, run_worker_node

    model_args = llamafactory_env(model_args_from(ns))
    if ns.max_queued_requests is not None:
        model_args["max_waiting_requests"] = ns.max_queued_requests
    args = load_args(model_args)
    settings = settings_from(ns)
    engine_process = bool(args.model.engine_process)
    if settings.api_server_count > 1:
        check_api_server_count(args, settings.api_server_count)
        engine_process = True
    if args.model.engine_process is None and args.model.infer_backend == "huggingface" and _has_gpu(args):
        engine_process = True  # the HTTP frontend and the engine each get an interpreter of their own
    if engine_process:
        model_args["engine_process"] = True
    worker = is_worker_node(args)  # node 1.. of several machines: workers only, node 0 serves
    # The engine process starts before the frontend imports its HTTP stack, torch and transformers: the engine's
    # imports run meanwhile. It is stopped if anything fails before the server has it.
    launching: Any = contextlib.nullcontext()
    if engine_process and not worker:
        from chatplex.engines.process.launch import EngineLaunch

        launching = EngineLaunch()
    with launching as launch:
        from chatplex.server.runner import exit_without_teardown, serve

        log_level = getattr(ns, "log_level", "warning")
        code = run_worker_node(args) if worker else serve(model_args, settings, log_level, launch)
    exit_without_teardown(code)
