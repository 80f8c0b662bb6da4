"""vLLM in-process (`infer_backend: vllm`): `engine.py` runs vLLM's `AsyncLLM` on its own event loop thread and
bridges requests to it, `params.py` maps chatplex settings to vLLM's engine args, sampling params and LoRA
requests, `output.py` turns vLLM's token ids into chatplex deltas, `stats.py` reads vLLM's scheduler counters."""

from chatplex.engines.vllm.engine import VLLMEngine

__all__ = ["VLLMEngine"]
