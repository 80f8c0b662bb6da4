"""Hidden states -> one vector per input: pooling, Matryoshka truncation and L2 normalisation.

Two layouts come in: a padded batch [B, T, H] with its attention mask (the encoder runner), and the HF engine's
flat batch [T, H] of inputs laid end to end (causal LM embeddings). Both pool each input over its own tokens only.
Pooling runs in float32 so a bf16 model's vectors do not lose precision in the sum.
"""

from __future__ import annotations

from typing import Any

import torch

from chatplex.embeddings import EmbeddingInput
from chatplex.errors import ContextLengthExceededError, InvalidRequestError


def pool_padded(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """[B, T, H] hidden states and [B, T] attention mask (1 = token) -> [B, H] float32, pooled per row.

    Padding may sit on either side: "last" takes each row's last unmasked position, "cls" its first."""
    hidden, mask = hidden.float(), mask.to(hidden.device).bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    rows = torch.arange(mask.shape[0], device=mask.device)
    if mode == "cls":
        first = torch.where(mask, positions, mask.shape[1]).min(dim=1).values
        return hidden[rows, first]
    if mode == "last":
        last = torch.where(mask, positions, -1).max(dim=1).values
        return hidden[rows, last]
    if mode == "max":
        return hidden.masked_fill(~mask[..., None], float("-inf")).max(dim=1).values
    summed = (hidden * mask[..., None]).sum(dim=1)
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1).float()
    return summed / (counts.sqrt() if mode == "mean_sqrt_len" else counts)


def pool_flat(hidden: torch.Tensor, lengths: list[int], mode: str) -> torch.Tensor:
    """[T, H] hidden states of inputs laid end to end (`lengths` tokens each) -> [N, H] float32."""
    out = []
    for seg in torch.split(hidden.float(), lengths):
        if mode == "last":
            out.append(seg[-1])
        elif mode == "cls":
            out.append(seg[0])
        elif mode == "max":
            out.append(seg.max(dim=0).values)
        else:
            scale = len(seg) ** 0.5 if mode == "mean_sqrt_len" else len(seg)
            out.append(seg.sum(dim=0) / scale)
    return torch.stack(out)


def check_dimensions(dimensions: int | None, hidden_size: int, matryoshka: list[int] | None, model: str) -> None:
    """A 400 naming `dimensions` unless the model was trained to be cut to that size (Matryoshka)."""
    if dimensions is None:
        return
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions <= 0:
        raise InvalidRequestError(f"dimensions: must be a positive integer, got {dimensions!r}.", param="dimensions")
    if matryoshka is None:
        raise InvalidRequestError(
            f"dimensions: {model} is not a Matryoshka model; it gives {hidden_size}-dimensional embeddings only "
            "(truncating them would lose meaning). Leave dimensions out.",
            param="dimensions",
        )
    if dimensions > hidden_size or (matryoshka and dimensions not in matryoshka):
        allowed = ", ".join(map(str, matryoshka)) if matryoshka else f"1 to {hidden_size}"
        raise InvalidRequestError(
            f"dimensions: {model} gives embeddings of {allowed} dimensions, not {dimensions}.", param="dimensions"
        )


def finish(vectors: torch.Tensor, normalize: bool, dimensions: int | None) -> list[list[float]]:
    """Cut to `dimensions` (Matryoshka) and L2-normalise: a cut vector is always renormalised (as vLLM does), since
    its norm no longer means anything."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if normalize or dimensions is not None:
        vectors = torch.nn.functional.normalize(vectors, p=2.0, dim=-1)
    return vectors.cpu().tolist()


# ---- a causal LM's embeddings (the huggingface and llama.cpp engines) ----
CAUSAL_POOLING = ("last", "mean")  # what a causal LM's final hidden states are pooled with


def causal_request(
    pooling: str | None, dimensions: int | None, prompt_name: str | None, hidden_size: int, model: str
) -> str:
    """The pooling mode to use; a 400 naming the field for anything a causal LM cannot do."""
    mode = pooling or "last"
    if mode not in CAUSAL_POOLING:
        raise InvalidRequestError(f"pooling: must be 'last' or 'mean' for a causal LM, got {mode!r}.", param="pooling")
    if prompt_name is not None:  # named prompts come from an embedding model's own files
        raise InvalidRequestError(
            f"prompt_name: {model} has no named prompts; put any instruction in the input text.", param="prompt_name"
        )
    check_dimensions(dimensions, hidden_size, None, model)
    return mode


def causal_input_ids(tokenizer: Any, inputs: list[EmbeddingInput], max_len: int) -> list[list[int]]:
    """Token ids per input: texts through the served tokenizer with its special tokens (BOS where the model has
    one), as sentence-transformers and vLLM tokenize them; token-id lists as they are."""
    ids = [tokenizer.encode(x) if isinstance(x, str) else list(x) for x in inputs]
    for i, x in enumerate(ids):
        if not x:
            raise InvalidRequestError(f"input[{i}]: the text has no tokens.", param="input")
        if len(x) > max_len:
            raise ContextLengthExceededError(
                f"input[{i}]: {len(x)} tokens, more than the model's {max_len}.", param="input"
            )
    return ids
