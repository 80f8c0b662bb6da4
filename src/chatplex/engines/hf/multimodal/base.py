"""The interface a multimodal family implements, and what the families share: placeholder expansion and the
splice of a request's media embeddings into a step's flat batch of token embeddings."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from chatplex.engines.base import PromptPreparer
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from chatplex.media import MediaPolicy, collect_media, media_items
from chatplex.templates import render_prompt
from chatplex.templates.llamafactory.format import PIECE_SEPARATOR
from chatplex.types import GenerationRequest

_KIND_NAMES = {"image": "images", "video": "video", "audio": "audio"}
_Out = TypeVar("_Out")
# What transformers' processors raise for media they cannot take.
_PROCESSOR_ERRORS = (ValueError, TypeError, IndexError, RuntimeError)


class RequestMedia(Protocol):
    """One request's prepared media (shared by its n sequences), as the engine keeps it in `seq.media`."""

    rank: torch.Tensor  # [prompt_len]: row of the request's media embeddings for each token, -1 for text tokens


@dataclass
class ImageInputs:
    """One request's images for families whose tower takes one batch of pixel tensors (LLaVA, Gemma 3)."""

    pixel_values: torch.Tensor  # [images, 3, H, W] ([images, tiles, 3, H, W] for LLaVA-NeXT)
    rank: torch.Tensor  # [prompt_len]: index into the image embeddings, -1 for text tokens
    embeds: torch.Tensor | None = None  # [image tokens, hidden], filled by the first prefill that needs it
    # [prompt_len]: for models whose image tokens attend to each other both ways (Gemma 3), the image each
    # prompt token belongs to (0, 1, ...), -1 for text; None for causal-only models.
    spans: torch.Tensor | None = None
    image_sizes: torch.Tensor | None = None  # [images, 2] original (height, width), for LLaVA-NeXT's tiling


class MediaFamily:
    """One family of multimodal models. Admission (`prepare`) runs in a worker thread; `step_inputs` runs on the
    engine thread for every step that holds at least one sequence of this model."""

    # Sub-configs whose towers keep transformers' SDPA attention: paged attention is for the decoder alone.
    towers: tuple[str, ...] = ("vision_config",)
    # The transformers Auto class (or model class) that loads the checkpoint.
    model_class: str = "AutoModelForImageTextToText"
    # The media kinds the family takes; requests with others are refused, naming the field.
    kinds: tuple[str, ...] = ("image",)
    audio_rate: int | None = None  # the rate audio is resampled to, for families that take audio

    def __init__(self, model: Any, tokenizer: Any, policy: MediaPolicy | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.policy = policy or MediaPolicy()  # limits and allowed sources for each request's media

    @classmethod
    def load(cls, model: Any, tokenizer: Any, source: str, policy: Any = None) -> MediaFamily:
        raise NotImplementedError

    @classmethod
    def checkpoint_kwargs(cls, config: Any) -> dict[str, Any]:
        """Extra `from_pretrained` arguments for this checkpoint (loading one part of a larger model, say)."""
        return {}

    def prepare(self, prompts: PromptPreparer, request: GenerationRequest) -> tuple[list[int], RequestMedia | None]:
        """Load and check the request's media; render and tokenize its prompt with expanded placeholders."""
        raise NotImplementedError

    def embeddings(self, media: Any) -> torch.Tensor:
        """The request's media embeddings [media tokens, hidden], computed once (at its first prefill chunk)."""
        raise NotImplementedError

    def step_inputs(self, items: list[Any], input_ids: torch.Tensor, positions: torch.Tensor) -> dict[str, Any]:
        """Model inputs for a flat step with 1-D positions; families with other positions override this."""
        return {**self.embedded(items, input_ids), "position_ids": positions[None]}

    def bidirectional(self, item: Any) -> torch.Tensor | None:
        """For a prefill chunk (a ScheduledSeq): the span id of each context position [0, start + num_tokens)
        whose tokens attend to each other both ways (-1 elsewhere), or None when the whole chunk is causal."""
        return None

    def align_chunks(self, batch: list[Any]) -> None:
        """Move a chunk that starts inside a bidirectional span back to the span's start, so the span's tokens
        run together and see each other (their cache entries from the earlier chunk are recomputed)."""

    # ---- shared helpers ------------------------------------------------------------------------------------
    def collect(self, request: GenerationRequest) -> Any:
        """The request's media, loaded and checked (chatplex.media's RequestMedia); kinds this family does not take
        are refused first, naming the field."""
        for param, kind in media_items(request):
            if kind in _KIND_NAMES and kind not in self.kinds:
                takes = " and ".join(_KIND_NAMES[k] for k in self.kinds)
                raise UnsupportedFeatureError(
                    f"{param}: {self.model.config.model_type} takes {takes} only, not {kind}.", param=param
                )
        media = collect_media(
            request.messages or [],
            request.images,
            request.audios,
            self.policy,
            audio_rate=self.audio_rate,
            videos=request.videos,
        )
        self.refuse_media_tokens(media.messages)
        return media

    @functools.cached_property
    def media_tokens(self) -> list[str]:
        """The token strings this model gives media meaning (its image / video / audio tokens)."""
        ids = [getattr(self, f"{kind}_token_id", None) for kind in self.kinds]
        return [t for t in self.tokenizer.convert_ids_to_tokens([i for i in ids if i is not None]) if t]

    def refuse_media_tokens(self, messages: list[Any]) -> None:
        """Message text that spells one of the model's media tokens would open embedding slots with no media
        behind them (a wrong answer, or a failed step for every request in it): refuse it, naming the part."""
        for param, text in _texts(messages):
            token = next((t for t in self.media_tokens if t in text), None)
            if token is not None:
                raise InvalidRequestError(
                    f"{param}: the text holds {token!r}, a token this model keeps for media; send media as "
                    "content parts (or images= / videos= / audios= with <image> / <video> / <audio>).",
                    param=param,
                )

    @staticmethod
    def process(media: Any, kind: str, items: list[Any], call: Callable[[list[Any]], _Out]) -> _Out:
        """`call(items)`: the model's processor over all of a request's items of one kind (`media` is the
        request's RequestMedia). When it refuses them, each item is tried alone to name the one it cannot take
        (a 1x300 image for Qwen-VL's resize, say)."""
        try:
            return call(items)
        except _PROCESSOR_ERRORS as exc:
            culprit, reason = "messages", exc
            for param, item in zip(media.params[kind], items):
                try:
                    call([item])
                except _PROCESSOR_ERRORS as one:
                    culprit, reason = param, one
                    break
            raise InvalidRequestError(
                f"{culprit}: the model's processor cannot take this {kind}: {reason}", param=culprit
            ) from None

    def render(self, prompts: PromptPreparer, request: GenerationRequest, messages: list[Any]) -> str:
        """The prompt text whose placeholders the family expands; a LLaMA-Factory format's pieces stay apart
        (PIECE_SEPARATOR) so that `tokenize` encodes them one by one, as LLaMA-Factory does."""
        return render_prompt(
            prompts.tokenizer,
            prompts.template,
            messages,
            tools=request.tools,
            template_kwargs=request.template_kwargs,
            piece_separator=PIECE_SEPARATOR if prompts.template.lf is not None else "",
        )

    def tokenize(self, prompts: PromptPreparer, request: GenerationRequest, text: str) -> list[int]:
        if prompts.template.lf is not None:
            ids = [
                i
                for piece in text.split(PIECE_SEPARATOR)
                if piece
                for i in self.tokenizer.encode(piece, add_special_tokens=False)
            ]
        else:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        prompts.check_fits(len(ids), request)
        return ids

    @staticmethod
    def expand(text: str, placeholder: str, counts: list[int], what: str) -> str:
        """Each placeholder the template wrote becomes `counts[i]` copies of itself (one per embedding row)."""
        return MediaFamily.replace_each(text, placeholder, [placeholder * n for n in counts], what)

    @staticmethod
    def replace_each(text: str, placeholder: str, replacements: list[str], what: str) -> str:
        """The i-th placeholder the template wrote becomes `replacements[i]`; the counts must agree."""
        MediaFamily.check_placeholders(text, placeholder, len(replacements), what)
        pieces = text.split(placeholder)
        return pieces[0] + "".join(new + piece for new, piece in zip(replacements, pieces[1:]))

    @staticmethod
    def check_placeholders(text: str, placeholder: str, count: int, what: str) -> None:
        """The template must have written one placeholder per media item."""
        written = text.count(placeholder)
        if written != count:
            raise InvalidRequestError(
                f"messages: the chat template wrote {written} {what} placeholders for {count} {what}s.",
                param="messages",
            )

    @staticmethod
    def ranks(ids: list[int], token_ids: list[int]) -> torch.Tensor:
        """Row of the media embeddings for each prompt token: tokens of `token_ids[0]` first (in prompt order),
        then those of `token_ids[1]`, ..., matching the order `embeddings` concatenates them in."""
        ids_t = torch.tensor(ids)
        rank = torch.full((len(ids),), -1, dtype=torch.long)
        start = 0
        for token in token_ids:
            hit = ids_t == token
            count = int(hit.sum())
            rank[hit] = torch.arange(start, start + count)
            start += count
        return rank

    def embedded(self, items: list[Any], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """`inputs_embeds` with media embeddings spliced in where a prefill chunk covers media tokens, else
        `input_ids` (a plain step)."""
        splice: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        offset = 0
        for it in items:
            media = it.seq.media
            if media is not None:
                ranks = media.rank[it.start : it.start + it.num_tokens]
                hit = (ranks >= 0).nonzero()[:, 0]
                if len(hit):
                    embeds = self.embeddings(media)
                    splice.append((offset, hit, embeds[ranks[hit].to(embeds.device)]))
            offset += it.num_tokens
        if not splice:
            return {"input_ids": input_ids}
        embeds = self.model.get_input_embeddings()(input_ids)
        for start, hit, values in splice:
            embeds[0, start + hit.to(embeds.device)] = values.to(embeds.dtype)
        return {"inputs_embeds": embeds}


def _texts(messages: list[Any]) -> Iterator[tuple[str, str]]:
    """(param, text) of every text in the messages: whole string contents and text parts."""
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            yield f"messages[{i}].content", content
        for j, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield f"messages[{i}].content[{j}]", part["text"]
