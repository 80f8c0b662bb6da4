"""run_in_fresh_thread: the result or exception comes back, and the thread that did the work is gone afterwards
(so its OpenMP pool does not slow the engine thread: see the module's docstring)."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import threading

import pytest

from chatplex.engines.fresh_thread import run_in_fresh_thread


def _work(x: int) -> tuple[int, threading.Thread]:
    return x * 2, threading.current_thread()


async def test_result_and_the_thread_ends() -> None:
    value, worker = await run_in_fresh_thread(_work, 21)
    assert value == 42
    assert worker is not threading.main_thread() and worker.name == "chatplex-_work"
    worker.join(timeout=5)
    assert not worker.is_alive()


async def test_exception_comes_back() -> None:
    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await run_in_fresh_thread(fail)


async def test_cancelled_caller_leaves_no_error_behind() -> None:
    release = threading.Event()
    task = asyncio.ensure_future(run_in_fresh_thread(release.wait, 5))
    await asyncio.sleep(0.05)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)  # the worker's late result is dropped without "Future already done" errors


def test_engine_loads_off_long_lived_threads(tiny_model_dir) -> None:
    """Once a model is loaded, no thread that ran torch work stays behind but the engine's own (asyncio's
    executor would keep its worker). A fresh process, so other tests' threads don't count."""
    code = (
        "import sys, threading; from chatplex import ChatModel; "
        "m = ChatModel({'model_name_or_path': sys.argv[1], 'infer_dtype': 'float32'}); "
        "m.chat([{'role': 'user', 'content': 'hi'}], max_tokens=2); "
        "print([t.name for t in threading.enumerate()]); m.close()"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tiny_model_dir("llama"))], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    names = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert "chatplex-hf-engine" in names
    assert not [n for n in names if n.startswith(("asyncio_", "chatplex-_load"))], names
