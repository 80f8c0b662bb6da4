"""The engine thread's failures reach the requests: a thread that dies (a bug, a lost device) ends every open and
later request with an EngineError naming the cause, never a hang; close() afterwards is clean."""

from __future__ import annotations

import pytest

from chatplex import ChatModel
from chatplex.errors import EngineClosedError, EngineError


def collect(model: ChatModel, prompt: str) -> str:
    async def main() -> str:
        request = model.build_request(prompt=prompt, do_sample=False, max_new_tokens=4)
        return "".join([d.text async for d in model.agenerate(request)])

    return model._loop.run(main())


def test_a_dead_engine_thread_fails_requests_instead_of_hanging(tiny_model_dir):
    with ChatModel({"model_name_or_path": tiny_model_dir("llama"), "infer_dtype": "float32"}) as model:
        collect(model, "Hi")  # serving

        def lost_device() -> None:  # a device failure cannot happen here on purpose: inject one
            raise RuntimeError("device lost")

        model.engine.core.steps.step = lost_device
        with pytest.raises(EngineError, match="engine stopped: RuntimeError: device lost"):
            collect(model, "Hi")
        with pytest.raises(EngineError, match="engine stopped: RuntimeError: device lost"):
            collect(model, "Hello again")
    with pytest.raises(EngineClosedError):
        collect(model, "Hi")
