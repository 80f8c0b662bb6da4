"""The engine protocol every backend implements, and the prompt preparation local engines share.

An engine turns a `GenerationRequest` into an async stream of `Delta`s. Closing that stream (the consumer went
away, or its task was cancelled) aborts the request inside the engine. Everything else in chatplex (non-streaming
chat, the CLI, the server, benchmarks) is built on `generate`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatplex.embeddings import EmbeddingInput, Embeddings
from chatplex.errors import ContextLengthExceededError, InvalidRequestError, UnsupportedFeatureError
from chatplex.templates import ChatTemplate, prompt_token_ids, render_prompt, resolve_template
from chatplex.types import Delta, GenerationRequest

if TYPE_CHECKING:
    from chatplex.config import ModelArguments


@dataclass
class EngineStats:
    """Counters an engine keeps; the server exports them as metrics and tests read them."""

    running: int = 0
    waiting: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    finished_requests: int = 0
    aborted_requests: int = 0
    preemptions: int = 0
    max_batch_size: int = 0
    # steps launched while the previous step's tokens were still on their way to the host (async scheduling)
    overlapped_steps: int = 0
    # prefix caching: prompt tokens of new requests looked up in the cache, and of those, found there
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(ABC):
    """One inference backend behind chatplex's interface."""

    #: the name users give as `infer_backend`
    backend: str = ""
    #: whether `GenerationRequest.constraint` (structured output, forced tool calls) is enforced
    supports_constraints: bool = False

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The model's name as shown to API clients."""

    @property
    def max_model_len(self) -> int | None:
        """The longest prompt + output the model takes, when known (in-process engines: their prompt preparer's)."""
        prompts = getattr(self, "prompts", None)
        return prompts.max_model_len if isinstance(prompts, PromptPreparer) else None

    @property
    def vocab_size(self) -> int | None:
        """Size of the model's vocabulary, when known (token ids in requests are checked against it)."""
        return None

    @property
    def template(self) -> ChatTemplate | None:
        """The chat template prompts are rendered with, for engines that render in-process (else None)."""
        prompts = getattr(self, "prompts", None)
        return prompts.template if isinstance(prompts, PromptPreparer) else None

    @property
    def is_reward_model(self) -> bool:
        return False

    async def start(self) -> None:
        """Load the model and start serving. Called once before any request."""

    @abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Stream the request's output. Closing the iterator early aborts the request."""

    async def score(
        self, inputs: list[Any], max_length: int | None = None, truncation_side: str = "right"
    ) -> list[float]:
        raise UnsupportedFeatureError(
            f"{self.model_name} is a generative model, not a reward model: scores need a model with a value head "
            "or a single-label sequence-classification head (a causal LM with LLaMA-Factory's value_head.safetensors "
            "scores when loaded with task: score, or stage: rm).",
            param="model",
        )

    async def embed(
        self,
        inputs: list[EmbeddingInput],
        *,
        pooling: str | None = None,
        dimensions: int | None = None,
        prompt_name: str | None = None,
    ) -> Embeddings:
        """One vector per input (checked by chatplex.embeddings.embedding_inputs)."""
        raise UnsupportedFeatureError(f"The {self.backend} engine cannot compute embeddings.", param="model")

    async def rerank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """Relevance of each document to `query` (a cross-encoder's), and the tokens the pairs took."""
        raise UnsupportedFeatureError(
            f"{self.model_name} cannot rerank: rerank needs a cross-encoder (an encoder *ForSequenceClassification "
            f"model with one label, such as a BERT cross-encoder) served by the huggingface engine, not this "
            f"{self.backend} engine's model.",
            param="model",
        )

    @property
    def local_tokenizer(self) -> Any:
        """The tokenizer this process holds (for /tokenize and /detokenize); engines that tokenize remotely raise."""
        prompts = getattr(self, "prompts", None)
        if isinstance(prompts, PromptPreparer):
            return prompts.tokenizer
        raise UnsupportedFeatureError(
            f"The {self.backend} engine tokenizes on its own server; chatplex holds no tokenizer for it.",
            param="model",
        )

    @property
    def adapters(self) -> list[str]:
        """Names of the LoRA adapters a request may pick (`GenerationRequest.adapter`)."""
        return []

    @property
    def adapter_paths(self) -> dict[str, str]:
        """Where each of `adapters` was loaded from, where the engine knows (for /v1/models' `root`)."""
        return {}

    async def load_adapter(self, name: str, path: str) -> None:
        raise UnsupportedFeatureError(
            f"The {self.backend} engine cannot load LoRA adapters at run time.", param="lora_name"
        )

    async def unload_adapter(self, name: str) -> None:
        raise UnsupportedFeatureError(f"The {self.backend} engine cannot unload LoRA adapters.", param="lora_name")

    @property
    def media_kinds(self) -> tuple[str, ...]:
        """The media the model takes ("image", "video", "audio"); () when text-only or not known here."""
        return ()

    @property
    def score_label(self) -> str:
        """The name of a reward model's score (its config's first label), for /classify answers."""
        return "LABEL_0"

    @property
    def healthy(self) -> bool:
        """False once the engine can serve no more (its process died): the server's /health says 503."""
        return True

    def count_prompt_tokens(self, request: GenerationRequest) -> int | None:
        """How many tokens the request's prompt takes, when the engine can tell without generating."""
        return None

    def stats(self) -> EngineStats:
        return EngineStats()

    async def close(self) -> None:
        """Stop serving and free the model. Safe to call twice."""


class PromptPreparer:
    """Renders a request to prompt token ids with a tokenizer and template, and checks it fits the context.

    Shared by every engine that holds a tokenizer in-process (Hugging Face, vLLM, llama.cpp).
    """

    def __init__(
        self, tokenizer: Any, template: ChatTemplate, max_model_len: int, vocab_size: int | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.max_model_len = max_model_len
        # The model's embedding size: a LLaMA-Factory format can name tokens (its stop words) that the tokenizer
        # gained only when the format set it up, and that this model never learnt.
        self.vocab_size = vocab_size

    @classmethod
    def for_model(
        cls, margs: ModelArguments, tokenizer: Any, max_model_len: int, vocab_size: int | None = None
    ) -> PromptPreparer:
        """With the chat template the model's arguments choose (`template`, `chat_template`, the tokenizer's own)."""
        template = resolve_template(margs.template, margs.chat_template, tokenizer, **margs.template_options())
        return cls(tokenizer, template, max_model_len, vocab_size)

    def message_ids(self, messages: list[Any], request: GenerationRequest) -> list[int]:
        """`messages` rendered with the template for `request` (its tools and template kwargs), as token ids: a
        LLaMA-Factory format encoded piece by piece, as LLaMA-Factory encodes it; a Jinja template's text whole."""
        tools, template_kwargs = request.tools, request.template_kwargs
        ids = prompt_token_ids(self.tokenizer, self.template, messages, tools=tools, template_kwargs=template_kwargs)
        if ids is not None:
            return ids
        text = render_prompt(self.tokenizer, self.template, messages, tools=tools, template_kwargs=template_kwargs)
        # The template already wrote any BOS it wants; adding special tokens again would double it.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
        elif request.prompt is not None:
            ids = self.tokenizer.encode(request.prompt, add_special_tokens=True)
        elif request.messages is not None:
            ids = self.message_ids(request.messages, request)
        else:
            raise InvalidRequestError("A request needs messages, a prompt or prompt token ids.", param="messages")
        if not ids:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        if self.vocab_size is not None and request.prompt_token_ids is None and max(ids) >= self.vocab_size:
            unknown = sorted({self.tokenizer.convert_ids_to_tokens(i) for i in ids if i >= self.vocab_size})
            raise InvalidRequestError(
                f"messages: the {self.template.name} template writes {', '.join(unknown)}, which this model's "
                f"vocabulary ({self.vocab_size} tokens) does not have: the model was not trained with this template. "
                "Use the template it was fine-tuned with, or its tokenizer's own (leave template out).",
                param="messages",
            )
        self.check_fits(len(ids), request)
        return ids

    def check_fits(self, prompt_len: int, request: GenerationRequest) -> None:
        limit = self.max_model_len
        if prompt_len >= limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens, but the prompt has {prompt_len} tokens. "
                "Shorten the messages."
            )
        sp = request.sampling
        if sp.max_new_tokens_requested and prompt_len + sp.max_new_tokens > limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens; the prompt has {prompt_len} tokens and "
                f"max_tokens asks for {sp.max_new_tokens} more ({prompt_len + sp.max_new_tokens} in all). "
                "Lower max_tokens or shorten the messages.",
                param="max_tokens",
            )

    def max_new_tokens(self, prompt_len: int, request: GenerationRequest) -> int:
        """The output budget: the request's limits, capped by what is left of the context."""
        sp = request.sampling
        budget = min(sp.max_new_tokens, self.max_model_len - prompt_len)
        if sp.max_length is not None:
            budget = min(budget, max(sp.max_length - prompt_len, 1))
        return max(budget, 1)
