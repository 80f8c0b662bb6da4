"""`chatplex webchat`: the chat page in a browser, where `llamafactory-cli webchat` users look for it.

The same server as `chatplex serve` (the page at /, the API beside it), on LLaMA-Factory's web chat address:
GRADIO_SERVER_NAME and GRADIO_SERVER_PORT are honoured (default 0.0.0.0:7860). GRADIO_SHARE asks Gradio for a
public share link through Gradio's relay; chatplex has no such relay, so it says so and serves locally.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any, NoReturn

from chatplex.cli import serve
from chatplex.cli.options import add_model_options

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "webchat",
        help="chat with a model in the browser (LLaMA-Factory's webchat port, 7860)",
        description="Serve the chat page (and the OpenAI-compatible API beside it) on LLaMA-Factory's web chat "
        "address.",
    )
    add_model_options(p)
    serve.add_server_options(p, host_env=("GRADIO_SERVER_NAME",), port_env=("GRADIO_SERVER_PORT",), port=7860)
    p.set_defaults(run=run)


def run(ns: argparse.Namespace) -> NoReturn:
    if os.environ.get("GRADIO_SHARE", "").lower() in ("1", "true", "yes"):
        logger.warning(
            "GRADIO_SHARE: chatplex makes no public share link (that is Gradio's relay service); the page "
            "is served on this machine only. Put it behind your own tunnel or proxy to share it."
        )
    host = "localhost" if ns.host in ("0.0.0.0", "::", "[::]") else ns.host
    print(f"chatplex webchat: open http://{host}:{ns.port}{ns.root_path or ''}/ in a browser", flush=True)
    serve.run(ns)
