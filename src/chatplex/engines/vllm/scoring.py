"""Reward models on vLLM: a single-label `*ForSequenceClassification` model runs on vLLM's pooling runner, and
each input's raw score is the classifier's output at its last token (vLLM's `classify` task with the activation
off, so scores match the Hugging Face engine's and LLaMA-Factory's).

Inputs are turned into token ids as in the Hugging Face engine (`engines/hf/scoring.py`): strings as they are,
conversations rendered with chatplex's template, cut to `max_length`.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from vllm import PoolingParams
from vllm.inputs import TokensPrompt

from chatplex.engines.hf import scoring as hf_scoring
from chatplex.errors import ConfigError


def pooling(score_format: Any) -> bool:
    """Whether the model must start on vLLM's pooling runner; a ConfigError for a head vLLM cannot load."""
    if score_format is None:
        return False
    if score_format.kind != "sequence_classification":
        raise ConfigError(
            f"task: the vllm engine scores only *ForSequenceClassification models; LLaMA-Factory's value head "
            f"({score_format.value_head_path}) needs infer_backend huggingface.",
            param="task",
        )
    return True


def token_ids(prompts: Any, inputs: list[Any], max_length: int | None, truncation_side: str) -> list[list[int]]:
    """Token ids to score, one list per input (InvalidRequestError naming the bad input)."""
    hf_scoring.check_max_length(max_length)
    return [hf_scoring.input_ids(prompts, x, i, max_length, truncation_side) for i, x in enumerate(inputs)]


async def score_ids(llm: Any, ids: list[list[int]]) -> list[float]:
    """On vLLM's loop: the raw score of each token-id list, all submitted at once so vLLM batches them."""
    base = uuid.uuid4().hex[:8]

    async def one(index: int, prompt: list[int]) -> float:
        params = PoolingParams(task="classify", use_activation=False)
        result = None
        async for result in llm.encode(TokensPrompt(prompt_token_ids=prompt), params, f"score-{base}-{index}"):
            pass
        assert result is not None  # vLLM yields the finished output at least
        data = result.outputs.data  # [num_labels]; one label, checked at start
        return float(data.reshape(-1)[0])

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(ids))))
