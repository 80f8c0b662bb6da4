"""llama.cpp in-process (GGUF models): `engine.py` wires requests to one worker thread, `loader.py` finds and
loads the GGUF, `runner.py` owns the llama.cpp context and the grammar mask."""

from chatplex.engines.llamacpp.engine import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
