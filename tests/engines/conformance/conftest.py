"""The engines the conformance suite runs against, all on the embedded SmolLM2-135M-Instruct.

`ENGINES` lists them; each builder returns an `EngineCase` or calls `pytest.skip` with the reason it cannot run
here (run with -rs to see the reasons). To add an engine, add a builder to `BUILDERS`. The vLLM builder already
tries `infer_backend: vllm` and skips until that backend is registered and vLLM is installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from chatplex import ChatModel
from chatplex.engines import _REGISTRY
from chatplex.engines.launcher import ServerProcess, free_port


@dataclass
class EngineCase:
    """One engine under test."""

    name: str
    model: ChatModel
    #: aborted requests as counted by whatever actually ran them (a remote server for the openai engine)
    aborted: Callable[[], int]
    #: False for remote engines, which never see token ids
    reports_token_ids: bool = True
    cleanup: list[Callable[[], object]] = field(default_factory=list)

    def close(self) -> None:
        self.model.close()
        for fn in self.cleanup:
            fn()


def _local(name: str, args: dict) -> EngineCase:
    model = ChatModel(args)
    return EngineCase(name, model, aborted=lambda: model.stats().aborted_requests)


def _needs(backend: str, module: str, hint: str) -> None:
    if backend not in _REGISTRY:
        pytest.skip(f"{backend}: not registered in chatplex.engines yet")
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{backend}: the {module!r} package is not installed ({hint})")


def huggingface() -> EngineCase:
    return _local("huggingface", {"infer_dtype": "float32"})


def llamacpp() -> EngineCase:
    _needs("llama.cpp", "llama_cpp", "make install-llamacpp")
    return _local("llama.cpp", {"infer_backend": "llama.cpp"})


def vllm() -> EngineCase:
    _needs("vllm", "vllm", "make test-vllm runs the suite in vLLM's own environment")
    from chatplex.models.embedded import embedded_model_dir

    return _local("vllm", {"infer_backend": "vllm", "model_name_or_path": embedded_model_dir(), "infer_dtype": "float32"})


def _aborted_on_server(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r"^chatplex:aborted_requests(?:_total)? ([0-9.e+]+)$", text, re.M)
    return int(float(match.group(1))) if match else 0


def openai() -> EngineCase:
    """The openai engine against a real `chatplex serve` (Hugging Face engine, fp32) on loopback."""
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "chatplex.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port), "--infer-dtype", "float32"],
        port,
    )
    try:
        asyncio.run(server.wait_healthy(240))
        model = ChatModel({"infer_backend": "openai", "api_base": f"{server.url}/v1"})
    except BaseException:
        server.stop()
        raise
    return EngineCase("openai", model, aborted=lambda: _aborted_on_server(server.url), reports_token_ids=False, cleanup=[server.stop])


BUILDERS: dict[str, Callable[[], EngineCase]] = {
    "huggingface": huggingface,
    "llama.cpp": llamacpp,
    "openai": openai,
    "vllm": vllm,
}
ENGINES = list(BUILDERS)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[EngineCase]:
    case = BUILDERS[request.param]()
    try:
        yield case
    finally:
        case.close()
