"""Find the GGUF file and load it twice over: the Hugging Face tokenizer (for chatplex's templates) and the
llama.cpp model."""

from __future__ import annotations

import logging
import os
from typing import Any

from llama_cpp import Llama  # at import time, so a missing package gives the registry's install hint

from chatplex.errors import ConfigError
from chatplex.models.embedded import embedded_gguf_path

logger = logging.getLogger(__name__)


def gguf_file(path: str | None) -> str:
    """The GGUF file to load: the given file, the only .gguf in a given directory, or the embedded model."""
    if path is None:
        return embedded_gguf_path()
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        if len(found) != 1:
            raise ConfigError(
                f"model_name_or_path: infer_backend llama.cpp needs a .gguf file; {path!r} holds "
                f"{len(found)} ({', '.join(found) or 'none'}). Name the file.",
                param="model_name_or_path",
            )
        return os.path.join(path, found[0])
    if not path.endswith(".gguf") or not os.path.isfile(path):
        raise ConfigError(
            f"model_name_or_path: infer_backend llama.cpp needs an existing .gguf file, got {path!r}.",
            param="model_name_or_path",
        )
    return path


def load(path: str, max_model_len: int | None, options: dict[str, Any]) -> tuple[Any, Llama]:
    """(tokenizer, llama) for a GGUF file. `options` go to `llama_cpp.Llama` (n_threads, n_batch, n_gpu_layers...);
    the context is `max_model_len` tokens, or the model's own length when None."""
    from transformers import AutoTokenizer

    folder, name = os.path.split(os.path.abspath(path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # llama-cpp-python's own thread default (half the cores): llama.cpp threads spin at every barrier, so using
    # every core collapses throughput (~100x) when anything else needs the CPU; n_threads raises it.
    opts = {"n_batch": 512, **options}
    llama = Llama(model_path=path, n_ctx=max_model_len or 0, verbose=False, **opts)
    logger.info("Loaded %s with llama.cpp (context %d, %s)", path, llama.n_ctx(), opts)
    return tokenizer, llama
