"""Embedding models and cross-encoders: a whole transformers model run on padded batches, outside the paged engine.

These models read each input once, often both ways (BERT, XLM-R), so they need no KV cache, scheduler or paged
attention: their own attention with an attention mask is right. `pooling_task` decides from the checkpoint's
files whether the HF engine serves one of these instead of a generative model:
  * "embed": a sentence-transformers folder (modules.json with a Pooling module), or task: embed;
  * "rerank": an encoder `*ForSequenceClassification` with one label (a cross-encoder such as ms-marco-MiniLM):
    query and document go in as a tokenizer pair; the score is the sigmoid of the logit, as sentence-transformers'
    CrossEncoder and vLLM do for one label, unless config.json's sentence_transformers.activation_fn says Identity.
Calls run on a worker thread, one at a time (a lock), in batches of at most BATCH_SIZE inputs.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import torch

from chatplex.config import ModelArguments
from chatplex.embeddings import EmbeddingInput, Embeddings
from chatplex.engines.checkpoints import check_one_label
from chatplex.engines.hf import loader, pooling, scoring
from chatplex.engines.hf.st_layout import POOLING_MODES, EmbeddingSpec, has_pooling_module, read_spec
from chatplex.errors import ConfigError, InvalidRequestError

BATCH_SIZE = 32  # inputs per forward pass: bounds activation memory for long lists of documents


def _config(model_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return {}


def is_encoder(model_type: str | None) -> bool:
    """An encoder model type: one transformers has a masked-LM head for (BERT, XLM-R, ModernBERT, DeBERTa...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def pooling_task(margs: ModelArguments) -> str | None:
    """ "embed" or "rerank" when this runner serves the model, None for the paged engine (generate / score)."""
    if margs.dummy_weights:
        return None  # a random-weight decoder shape: no checkpoint (and no embedded model needed)
    source = loader.model_source(margs)[0]
    if margs.task == "embed":
        if not has_pooling_module(source):
            raise ConfigError(
                f"task: embed needs a sentence-transformers model (modules.json with a Pooling module) and "
                f"{source!r} has none. A causal LM embeds on request (pooling: last | mean) with task generate.",
                param="task",
            )
        return "embed"
    if margs.task == "auto" and has_pooling_module(source):
        return "embed"
    if margs.task in ("auto", "score") and scoring.is_sequence_classifier(source):
        return "rerank" if is_encoder(_config(source).get("model_type")) else None
    return None


def _activation(config: dict[str, Any]) -> str:
    name = str((config.get("sentence_transformers") or {}).get("activation_fn") or "Sigmoid")
    return "identity" if name.endswith("Identity") else "sigmoid"


class EncoderModel:
    """A loaded embedding model or cross-encoder, with its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, kind: str, spec: EmbeddingSpec, activation: str) -> None:
        self.model, self.tokenizer, self.kind, self.spec = model, tokenizer, kind, spec
        self.activation = activation
        self.device = next(model.parameters()).device
        self.hidden_size = int(model.config.hidden_size)
        limits = [spec.max_seq_length, getattr(model.config, "max_position_embeddings", None)]
        limits.append(tokenizer.model_max_length if tokenizer.model_max_length < 1 << 20 else None)
        self.max_len = min(int(x) for x in limits if x) if any(limits) else 512
        self._lock = threading.Lock()  # one call at a time (tokenizer and forward): calls come from several threads

    @classmethod
    def load(cls, margs: ModelArguments, kind: str) -> EncoderModel:
        from transformers import AutoModel, AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a server start-up should not print transformers' loading bars

        for key, default in (("quantization_bit", None), ("kv_cache_dtype", "auto")):
            if getattr(margs, key) != default:
                raise ConfigError(
                    f"{key}: applies to generating and scoring models; an embedding or rerank encoder loads in "
                    "full precision and keeps no KV cache. Leave it out.",
                    param=key,
                )
        source = loader.model_source(margs)[0]
        device = loader.pick_device(margs.device)
        dtype = loader.resolve_dtype(margs, None, device)  # float32 on CPU under auto
        auto_class = AutoModel if kind == "embed" else AutoModelForSequenceClassification
        try:
            model = auto_class.from_pretrained(source, dtype=dtype, **loader.hub_kwargs(margs))
        except OSError as e:
            raise ConfigError(f"model_name_or_path: cannot load {source!r} ({e}).", param="model_name_or_path") from e
        if kind == "rerank":
            check_one_label(model.config)
        spec = read_spec(source) if kind == "embed" else EmbeddingSpec()
        return cls(model.to(device).eval(), loader.load_tokenizer(margs), kind, spec, _activation(_config(source)))

    # ---- embeddings ----------------------------------------------------------------------------------------
    def input_ids(self, inputs: list[EmbeddingInput], prompt_name: str | None) -> list[list[int]]:
        """Texts (after the named prompt, or the model's default one) tokenized and cut to the model's length."""
        name = prompt_name or self.spec.default_prompt_name
        if name is not None and name not in self.spec.prompts:
            known = ", ".join(self.spec.prompts) or "none"
            raise InvalidRequestError(
                f"prompt_name: {name!r} is not a prompt of this model ({known}).", param="prompt_name"
            )
        prefix = self.spec.prompts.get(name, "") if name else ""
        out = []
        for item in inputs:
            if isinstance(item, str):
                item = self.tokenizer(prefix + item, truncation=True, max_length=self.max_len)["input_ids"]
            out.append(list(item)[: self.max_len])
        return out

    def embed(
        self, inputs: list[EmbeddingInput], pool: str | None, dimensions: int | None, prompt_name: str | None
    ) -> Embeddings:
        if pool is not None and pool not in POOLING_MODES:
            raise InvalidRequestError(f"pooling: must be one of {', '.join(POOLING_MODES)}.", param="pooling")
        pooling.check_dimensions(dimensions, self.hidden_size, self.spec.matryoshka_dimensions, "This model")
        vectors = []
        # The tokenizer under the lock too: a fast tokenizer's truncation settings are shared state, and /tokenize
        # or another request changing them from another thread fails with "Already borrowed".
        with self._lock, torch.inference_mode():
            ids = self.input_ids(inputs, prompt_name)
            for start in range(0, len(ids), BATCH_SIZE):
                batch = self._pad(ids[start : start + BATCH_SIZE])
                hidden = self.model(**batch).last_hidden_state
                vectors.append(pooling.pool_padded(hidden, batch["attention_mask"], pool or self.spec.pooling))
        out = pooling.finish(torch.cat(vectors), self.spec.normalize, dimensions)
        return Embeddings(out, sum(map(len, ids)))

    def _pad(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt", return_attention_mask=True)
        return {k: v.to(self.device) for k, v in batch.items()}

    # ---- cross-encoder -------------------------------------------------------------------------------------
    def rerank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """Relevance of each document to the query, and the tokens the pairs took."""
        scores: list[float] = []
        tokens = 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(documents), BATCH_SIZE):
                docs = documents[start : start + BATCH_SIZE]
                batch = self.tokenizer(
                    [query] * len(docs),
                    docs,
                    padding=True,
                    truncation="longest_first",
                    max_length=self.max_len,
                    return_tensors="pt",
                ).to(self.device)
                tokens += int(batch["attention_mask"].sum())
                logits = self.model(**batch).logits[:, 0].float()
                scores += (torch.sigmoid(logits) if self.activation == "sigmoid" else logits).tolist()
        return scores, tokens
