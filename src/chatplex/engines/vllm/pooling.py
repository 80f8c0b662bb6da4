"""Embedding models and cross-encoders on vLLM's pooling runner (`task: embed`, or picked from the checkpoint's
files as the Hugging Face engine picks them: `engines/hf/encoder.pooling_task`).

vLLM reads a sentence-transformers folder's pooling and Normalize modules itself when it loads the model, so the
pooling mode is fixed at start; chatplex adds what vLLM leaves to its own server: the named prompts, the length
limit, the checks of `dimensions`, and a cross-encoder's tokenizer pairs (token ids, and where the document's
token types start, as vLLM's /rerank sends them). A cross-encoder's score is vLLM's `classify` output with the
model's activation (the sigmoid for one label, as sentence-transformers and the Hugging Face engine).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import torch
from vllm import PoolingParams
from vllm.inputs import TokensPrompt

from chatplex.embeddings import EmbeddingInput
from chatplex.engines.hf import pooling as hf_pooling
from chatplex.engines.hf.st_layout import POOLING_MODES, EmbeddingSpec, read_spec
from chatplex.errors import ConfigError, InvalidRequestError, UnsupportedFeatureError

VLLM_POOLING = ("cls", "mean", "last")  # vLLM's sequence poolers; it would read mean_sqrt_len as mean


def refuse_adapters(kind: str) -> None:
    role = "an embedding model" if kind == "embed" else "a cross-encoder"
    raise ConfigError(
        f"adapter_name_or_path: the vllm engine runs {role} with its own weights only; merge the adapter into the "
        "model (peft's merge_and_unload) or use infer_backend huggingface.",
        param="adapter_name_or_path",
    )


def not_started_for(kind: str, name: str) -> UnsupportedFeatureError:
    """What a model started on vLLM to generate (or score) says when asked to embed or rerank."""
    if kind == "rerank":
        return UnsupportedFeatureError(
            f"{name} cannot rerank: on vLLM, rerank needs a cross-encoder (an encoder *ForSequenceClassification "
            "model with one label) started as one; this engine was started to generate or score.",
            param="model",
        )
    return UnsupportedFeatureError(
        f"{name} was started on vLLM to generate (or score): vLLM cannot generate and pool from one engine. "
        "Start it as an embedding model (task: embed, a sentence-transformers folder) or use infer_backend "
        "huggingface, which pools a causal LM's hidden states.",
        param="model",
    )


def read(kind: str, model_dir: str) -> EmbeddingSpec:
    """The model's embedding recipe, checked before vLLM loads it (a ConfigError for a pooling vLLM lacks)."""
    spec = read_spec(model_dir) if kind == "embed" else EmbeddingSpec()
    if spec.pooling not in VLLM_POOLING:
        raise ConfigError(
            f"model_name_or_path: vLLM pools with {', '.join(VLLM_POOLING)}, not {spec.pooling} (from the model's "
            "1_Pooling/config.json); use infer_backend huggingface.",
            param="model_name_or_path",
        )
    return spec


class Encoder:
    """An embedding model or cross-encoder served by vLLM: its recipe, tokenizer and length limit."""

    def __init__(self, kind: str, spec: EmbeddingSpec, tokenizer: Any, max_model_len: int) -> None:
        self.kind, self.spec, self.tokenizer = kind, spec, tokenizer
        self.max_len = min(x for x in (self.spec.max_seq_length, max_model_len) if x)

    def embedding_ids(
        self,
        inputs: list[EmbeddingInput],
        pool: str | None,
        dimensions: int | None,
        prompt_name: str | None,
        hidden: int,
    ) -> list[list[int]]:
        """Token ids of each input (after the named prompt, or the model's default one), cut to the model's length."""
        if pool is not None and pool not in POOLING_MODES:
            raise InvalidRequestError(f"pooling: must be one of {', '.join(POOLING_MODES)}.", param="pooling")
        if pool is not None and pool != self.spec.pooling:
            raise InvalidRequestError(
                f"pooling: vLLM pools this model as it was started ({self.spec.pooling}, from its sentence-"
                f"transformers files), not {pool}; leave pooling out.",
                param="pooling",
            )
        hf_pooling.check_dimensions(dimensions, hidden, self.spec.matryoshka_dimensions, "This model")
        name = prompt_name or self.spec.default_prompt_name
        if name is not None and name not in self.spec.prompts:
            known = ", ".join(self.spec.prompts) or "none"
            raise InvalidRequestError(
                f"prompt_name: {name!r} is not a prompt of this model ({known}).", param="prompt_name"
            )
        prefix = self.spec.prompts.get(name, "") if name else ""
        return [
            self.tokenizer(prefix + x, truncation=True, max_length=self.max_len)["input_ids"]
            if isinstance(x, str)
            else list(x)[: self.max_len]
            for x in inputs
        ]

    def pair(self, query: str, document: str) -> tuple[list[int], int]:
        """A (query, document) tokenizer pair: its token ids and where the document's token types begin."""
        enc = self.tokenizer(query, document, truncation="longest_first", max_length=self.max_len)
        ids = enc["input_ids"]
        types = enc.get("token_type_ids")
        return ids, types.index(1) if types and 1 in types else len(ids)


async def _encode(llm: Any, ids: list[list[int]], make_params: Any, kind: str) -> list[Any]:
    """On vLLM's loop: the pooled output of each token-id list, all submitted at once so vLLM batches them."""
    base = uuid.uuid4().hex[:8]

    async def one(index: int, prompt: list[int]) -> Any:
        result = None
        async for result in llm.encode(
            TokensPrompt(prompt_token_ids=prompt), make_params(index), f"{kind}-{base}-{index}"
        ):
            pass
        assert result is not None  # vLLM yields the finished output at least
        return result.outputs.data

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(ids))))


async def embed(llm: Any, ids: list[list[int]], dimensions: int | None) -> list[list[float]]:
    """On vLLM's loop: one vector per input; a Matryoshka cut is renormalised, as the Hugging Face engine does."""
    data = await _encode(llm, ids, lambda _: PoolingParams(task="embed", dimensions=dimensions), "embed")
    vectors = torch.stack([d.reshape(-1).float() for d in data])
    return hf_pooling.finish(vectors, False, dimensions)


async def rerank(llm: Any, pairs: list[tuple[list[int], int]]) -> list[float]:
    """On vLLM's loop: the relevance score of each tokenizer pair (the classifier's one label, activated)."""

    def params(index: int) -> PoolingParams:
        return PoolingParams(task="classify", extra_kwargs={"compressed_token_type_ids": pairs[index][1]})

    data = await _encode(llm, [ids for ids, _ in pairs], params, "rerank")
    return [float(d.reshape(-1)[0]) for d in data]
