"""Launched servers (`infer_backend: sglang` / `ktransformers`): start the server process, wait until it is
healthy, then serve every request through the OpenAI engine; the process stops with the engine.

SGLang runs as `python -m sglang.launch_server` with chatplex's arguments mapped onto its flags:

    model_name_or_path  --model-path (the embedded model's safetensors copy when left out)
    sglang_tp_size      --tp-size (-1: tensor_parallel_size, whose -1 is one per visible CUDA device)
    pipeline_parallel_size, data_parallel_size   --pp-size, --dp-size
    nnodes, node_rank, dist_init_addr            --nnodes, --node-rank, --dist-init-addr (several machines: node 0
                        serves; `chatplex serve --node-rank R` on the others launches SGLang's workers there)
    sglang_maxlen       --context-length
    sglang_mem_fraction --mem-fraction-static
    infer_dtype         --dtype          trust_remote_code --trust-remote-code
    cache_dir           --download-dir   chat_template (a file) --chat-template
    sglang_config       {key: value} -> --key value (True -> a bare flag, False/None -> left out, a list ->
                        the flag once with every item)

KTransformers runs through its SGLang-based launcher (the `sglang-kt` build of `sglang.launch_server`, with
`kt-kernel`): the same flags plus its `--kt-*` options, given in `sglang_config` as `kt_weight_path`,
`kt_cpuinfer`, `kt_threadpool_count`, `kt_num_gpu_experts`, `kt_method`... `kt_weight_path` (the CPU expert
weights) is required; `kt_cpuinfer` defaults to the number of CPU cores.

Readiness: GET /health must answer 200 within `launch_timeout` seconds (default 900; big models load slowly).
A process that exits first, or a timeout, raises `EngineError` with the server's last log lines.

For tests only, the launched program can be replaced (the mapped flags are still appended): pass
`launch_command=[...]` to the engine, or set the environment variable `CHATPLEX_LAUNCH_COMMAND` (a shell-quoted
command line). chatplex's own tests use it to run a stand-in server, since SGLang cannot be installed there.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from chatplex.config import ChatplexArgs
from chatplex.embeddings import EmbeddingInput, Embeddings
from chatplex.engines.base import Engine, EngineStats
from chatplex.engines.fresh_thread import run_in_fresh_thread
from chatplex.engines.openai_client import OpenAIEngine
from chatplex.engines.parallel import Layout, fit_model, sglang_layout, worker_node_error
from chatplex.errors import ConfigError, EngineError
from chatplex.types import Delta, GenerationRequest

LAUNCH_COMMAND_ENV = "CHATPLEX_LAUNCH_COMMAND"
DEFAULT_LAUNCH_TIMEOUT_S = 900.0
STOP_GRACE_S = 15.0
LOG_TAIL_LINES = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flags_from_dict(options: dict[str, Any]) -> list[str]:
    """{"max_running_requests": 8, "enable_metrics": True} -> ["--max-running-requests", "8", "--enable-metrics"]."""
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def sglang_flags(args: ChatplexArgs, port: int, extra: dict[str, Any] | None = None) -> list[str]:
    """SGLang's launch flags for chatplex's arguments (see the module docstring for the mapping)."""
    m = args.model
    if m.adapter_name_or_path:
        raise ConfigError(
            "adapter_name_or_path: LoRA adapters are not supported with sglang/ktransformers yet.",
            param="adapter_name_or_path",
        )
    if m.model_name_or_path is None:
        from chatplex.models.embedded import embedded_model_dir

        model = embedded_model_dir()
    else:
        model = os.path.expanduser(m.model_name_or_path)
    layout = fitted_layout(args)
    flags = [
        "--model-path",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--tp-size",
        str(layout.tensor),
        "--context-length",
        str(m.sglang_maxlen),
        "--mem-fraction-static",
        str(m.sglang_mem_fraction),
        "--dtype",
        m.infer_dtype,
    ]
    if layout.pipeline > 1:
        flags += ["--pp-size", str(layout.pipeline)]
    if layout.data > 1:
        flags += ["--dp-size", str(layout.data)]
    if layout.nnodes > 1:
        assert layout.dist_init_addr is not None  # checked with the layout
        flags += ["--nnodes", str(layout.nnodes), "--node-rank", str(layout.node_rank)]
        flags += ["--dist-init-addr", layout.dist_init_addr]
    if m.trust_remote_code:
        flags.append("--trust-remote-code")
    if m.cache_dir:
        flags += ["--download-dir", m.cache_dir]
    if m.chat_template and os.path.isfile(m.chat_template):
        flags += ["--chat-template", m.chat_template]
    options = {**(m.sglang_config or {}), **(extra or {})}
    return flags + flags_from_dict(options)


def kt_options(args: ChatplexArgs) -> dict[str, Any]:
    """The `--kt-*` defaults KTransformers needs on top of `sglang_config`."""
    config = args.model.sglang_config or {}
    if not config.get("kt_weight_path"):
        raise ConfigError(
            "sglang_config.kt_weight_path: infer_backend ktransformers needs the path of the CPU expert weights "
            "(e.g. sglang_config: {kt_weight_path: /models/X-CPU-weight, kt_method: AMXINT4}).",
            param="sglang_config",
        )
    return {"kt_cpuinfer": config.get("kt_cpuinfer") or os.cpu_count() or 1}


class ServerProcess:
    """A launched server: its process (in its own process group), log file and health URL."""

    def __init__(self, command: list[str], port: int) -> None:
        self.command = command
        self.url = f"http://127.0.0.1:{port}"
        # Open for the server's whole life (closed in stop()), so no `with`.
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix="chatplex-launch-", suffix=".log", delete=False
        )
        self.log_path = self._log.name
        # Its own session: SGLang spawns scheduler and detokenizer processes that must stop with it.
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(self.kill)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:]).rstrip()
        except OSError:
            return "(no log)"

    async def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise EngineError(
                        f"The server exited with code {code} while starting ({shlex.join(self.command[:4])} ...). "
                        f"Last log lines ({self.log_path}):\n{self.log_tail()}"
                    )
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise EngineError(
                        f"The server at {self.url} was not healthy after {timeout:.0f} s "
                        f"({shlex.join(self.command[:4])} ...). Last log lines ({self.log_path}):\n{self.log_tail()}"
                    )
                await asyncio.sleep(0.5)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=grace)
        self._signal(signal.SIGKILL)  # children left behind by a parent that exited
        self._log.close()
        atexit.unregister(self.kill)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self._signal(signal.SIGKILL)


class SGLangEngine(Engine):
    backend = "sglang"
    module = "sglang.launch_server"

    def __init__(
        self, args: ChatplexArgs, *, launch_command: list[str] | None = None, launch_timeout: float | None = None
    ) -> None:
        self.args = args
        options = dict(getattr(args.model, "engine_config", None) or {})
        self.launch_timeout = launch_timeout or float(options.get("launch_timeout", DEFAULT_LAUNCH_TIMEOUT_S))
        self.stop_grace = float(options.get("stop_timeout", STOP_GRACE_S))  # SIGTERM -> SIGKILL
        env_command = os.environ.get(LAUNCH_COMMAND_ENV)
        self.program = launch_command or (
            shlex.split(env_command) if env_command else [sys.executable, "-m", self.module]
        )
        self.port = free_port()
        self.command = self.program + sglang_flags(args, self.port, self._extra_options())
        self.server: ServerProcess | None = None
        self.client: OpenAIEngine | None = None

    def _extra_options(self) -> dict[str, Any]:
        return {}

    @property
    def model_name(self) -> str:
        return self.client.model_name if self.client else self.backend

    async def start(self) -> None:
        layout = sglang_layout(self.args.model)
        if layout.is_worker_node:
            raise worker_node_error(layout)
        self.server = ServerProcess(self.command, self.port)
        try:
            await self.server.wait_healthy(self.launch_timeout)
            self.client = OpenAIEngine(self.args, api_base=f"{self.server.url}/v1", discover_model=True)
            await self.client.start()
        except BaseException:
            await self.close()
            raise

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        if self.client is None:
            raise EngineError("The server is not running.")
        return self.client.generate(request)

    async def embed(
        self,
        inputs: list[EmbeddingInput],
        *,
        pooling: str | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> Embeddings:
        """The launched server's /embeddings (SGLang serves embedding models with --is-embedding)."""
        if self.client is None:
            raise EngineError("The server is not running.")
        return await self.client.embed(inputs, pooling=pooling, dimensions=dimensions, prompt_name=prompt_name)

    async def rerank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """The launched server's /rerank."""
        if self.client is None:
            raise EngineError("The server is not running.")
        return await self.client.rerank(query, documents)

    def stats(self) -> EngineStats:
        return self.client.stats() if self.client else EngineStats()

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()
        if self.server is not None:
            server, self.server = self.server, None
            await run_in_fresh_thread(server.stop, self.stop_grace)


def fitted_layout(args: ChatplexArgs) -> Layout:
    """SGLang's layout checked against the model's config.json where it is a local folder (an automatic tensor
    parallel size fitted to its heads); a hub id is SGLang's to fetch, and SGLang checks it itself, minutes later."""
    m = args.model
    layout = sglang_layout(m)
    path = os.path.expanduser(m.model_name_or_path) if m.model_name_or_path else None
    if layout.workers == 1 or path is None or not os.path.isfile(os.path.join(path, "config.json")):
        return layout
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=m.trust_remote_code)
    return fit_model(layout, config, os.path.basename(path))


def run_sglang_worker_node(args: ChatplexArgs) -> int:
    """Node `node_rank` >= 1 of a multi-node SGLang: launch SGLang with the same flags as node 0 (its schedulers
    join node 0 at dist_init_addr, and it answers /health itself) and run until it exits or this process is
    stopped. Returns its exit code."""
    engine = SGLangEngine(args) if args.model.infer_backend == "sglang" else KTransformersEngine(args)
    layout = sglang_layout(args.model)
    if not layout.is_worker_node:
        raise ConfigError("node_rank: node 0 serves requests; start it with `chatplex serve`.", param="node_rank")
    server = ServerProcess(engine.command, engine.port)

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        asyncio.run(server.wait_healthy(engine.launch_timeout))
        print(
            f"Node {layout.node_rank} of {layout.nnodes}: SGLang's workers joined node 0 at {layout.dist_init_addr} "
            f"(log: {server.log_path}).",
            flush=True,
        )
        return server.proc.wait()
    finally:
        server.stop(engine.stop_grace)


class KTransformersEngine(SGLangEngine):
    backend = "ktransformers"

    def _extra_options(self) -> dict[str, Any]:
        return kt_options(self.args)
