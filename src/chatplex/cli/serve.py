"""`chatplex serve`: the OpenAI-compatible server over a ChatModel built from the shared model options.

Every flag has an environment variable (`CHATPLEX_*`), and LLaMA-Factory's API_HOST, API_PORT, API_KEY,
API_MODEL_NAME and FASTAPI_ROOT_PATH are honoured so its deployments keep working. Precedence: flag, then
CHATPLEX_*, then LLaMA-Factory's name, then the default.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

from chatplex.cli.options import add_model_options, model_args_from
from chatplex.server.settings import DEFAULT_MAX_BODY_BYTES, ServerSettings

logger = logging.getLogger(__name__)


def _env(*names: str, default: Any = None) -> Any:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return default


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a model over an OpenAI-compatible HTTP API (chat, completions, models, score, "
        "health, metrics) with a chat web page at /.",
    )
    add_model_options(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default=_env("CHATPLEX_HOST", "API_HOST", default="0.0.0.0"),
                   help="address to listen on [env CHATPLEX_HOST, API_HOST] (default: 0.0.0.0)")
    g.add_argument("--port", type=int, default=int(_env("CHATPLEX_PORT", "API_PORT", default=8000)),
                   help="port [env CHATPLEX_PORT, API_PORT] (default: 8000)")
    g.add_argument("--served-model-name", default=_env("CHATPLEX_SERVED_MODEL_NAME", "API_MODEL_NAME"),
                   help="model name clients use [env CHATPLEX_SERVED_MODEL_NAME, API_MODEL_NAME] (default: the model's)")
    g.add_argument("--root-path", default=_env("CHATPLEX_ROOT_PATH", "FASTAPI_ROOT_PATH", default=""),
                   help="URL prefix when behind a proxy [env CHATPLEX_ROOT_PATH, FASTAPI_ROOT_PATH]")
    g.add_argument("--api-key", default=_env("CHATPLEX_API_KEY", "API_KEY"),
                   help="require 'Authorization: Bearer KEY' [env CHATPLEX_API_KEY, API_KEY] (default: none)")
    g.add_argument("--allowed-origins", default=_env("CHATPLEX_ALLOWED_ORIGINS", default=""),
                   help="comma-separated CORS origins, or '*' [env CHATPLEX_ALLOWED_ORIGINS] (default: none)")
    g.add_argument("--max-body-size", type=int, default=int(_env("CHATPLEX_MAX_BODY_SIZE", default=DEFAULT_MAX_BODY_BYTES)),
                   help=f"largest request body in bytes; larger gets 413 [env CHATPLEX_MAX_BODY_SIZE] (default: {DEFAULT_MAX_BODY_BYTES})")
    queued = _env("CHATPLEX_MAX_QUEUED_REQUESTS")
    g.add_argument("--max-queued-requests", type=int, default=int(queued) if queued else None,
                   help="requests that may wait beyond the running batch; more get 429 "
                   "[env CHATPLEX_MAX_QUEUED_REQUESTS] (default: unbounded)")
    g.add_argument("--drain-timeout", type=float, default=float(_env("CHATPLEX_DRAIN_TIMEOUT", default=30.0)),
                   help="seconds in-flight requests get to finish after SIGTERM [env CHATPLEX_DRAIN_TIMEOUT] (default: 30)")
    p.set_defaults(run=run)


def settings_from(ns: argparse.Namespace) -> ServerSettings:
    try:
        return ServerSettings(
            host=ns.host, port=ns.port, served_model_name=ns.served_model_name, root_path=ns.root_path or "",
            api_key=ns.api_key, allowed_origins=tuple(ns.allowed_origins.split(",")) if ns.allowed_origins else (),
            max_body_bytes=ns.max_body_size, drain_timeout=ns.drain_timeout,
        )
    except ValueError as e:
        from chatplex.errors import ConfigError

        raise ConfigError(str(e)) from None


def run(ns: argparse.Namespace) -> NoReturn:
    from chatplex.server.runner import serve

    model_args = model_args_from(ns)
    if ns.max_queued_requests is not None:
        model_args["max_waiting_requests"] = ns.max_queued_requests
    code = serve(model_args, settings_from(ns), getattr(ns, "log_level", "warning"))
    # Everything is closed by now (requests, engine, sockets). Python's own teardown of torch and transformers
    # would still take 0.5-2 s on a small machine, which a SIGTERM caller waiting on `--drain-timeout` would see as
    # the server overrunning it; so the process ends here, after flushing what it wrote.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
