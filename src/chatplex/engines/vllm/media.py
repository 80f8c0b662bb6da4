"""A request's images and audio -> vLLM's `multi_modal_data`, next to the prompt chatplex renders.

chatplex loads and checks the media (chatplex.media: sources, limits, decoding, the part index in errors) and
renders the prompt with the model's chat template, which writes one placeholder per item; vLLM's own processor
for the model family then expands each placeholder to the item's token count and runs the encoders. So any
family vLLM serves works here, as long as its template writes the placeholders vLLM expects. Under a LLaMA-Factory
format the prompt is its ids, encoded piece by piece as it encodes them, with its plugin's placeholders.

Which modalities a model takes, and how many per prompt, is what vLLM's processor allows (`allowed_mm_limits`);
anything else is refused before it reaches vLLM, naming the field. Video is refused for now: vLLM wants frames
with their timing metadata per family, and no video model runs on this CPU build to test it against.
"""

from __future__ import annotations

from typing import Any

from chatplex.engines.base import PromptPreparer
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from chatplex.media import MediaPolicy, collect_media, text_only_error
from chatplex.media.parts import ARGUMENT_FIELDS
from chatplex.types import GenerationRequest


class MediaInputs:
    """What one loaded vLLM model accepts, and the conversion of a request's media for it."""

    def __init__(self, mm_processor: Any, policy: MediaPolicy, model_name: str) -> None:
        self.policy = policy
        self.model_name = model_name
        # {modality: most items per prompt}; empty for a text-only model.
        self.limits: dict[str, int] = dict(mm_processor.info.allowed_mm_limits) if mm_processor is not None else {}
        self.audio_rate = _audio_rate(mm_processor) if "audio" in self.limits else None

    @classmethod
    def from_llm(cls, llm: Any, policy: MediaPolicy, model_name: str) -> MediaInputs:
        renderer = getattr(llm, "renderer", None)
        return cls(getattr(renderer, "mm_processor", None), policy, model_name)

    def check(self, items: list[tuple[str, str]]) -> None:
        """Refuse media items (chatplex.media.media_items) this model cannot take, naming the first offending
        field (cheap: nothing is loaded)."""
        for param, kind in items:
            if not self.limits:
                raise text_only_error(param, self.model_name)
            if kind == "video":
                raise UnsupportedFeatureError(f"{param}: the vllm engine does not take video input yet.", param=param)
            if kind not in self.limits:
                raise UnsupportedFeatureError(
                    f"{param}: {self.model_name} takes {', '.join(sorted(self.limits))} through vLLM, not {kind}.",
                    param=param,
                )

    def prepare(self, prompts: PromptPreparer, request: GenerationRequest) -> tuple[list[int], dict[str, list[Any]]]:
        """Load the media (blocking: run it in a thread), render and tokenize the prompt with one placeholder per
        item, and return the prompt ids with vLLM's `multi_modal_data` (after `check`)."""
        if request.messages is None:
            raise InvalidRequestError("images: media go with chat messages, not a raw prompt.", param="images")
        media = collect_media(request.messages, request.images, request.audios, self.policy, audio_rate=self.audio_rate)
        for kind, items in (("image", media.images), ("audio", media.audios)):
            if len(items) > self.limits.get(kind, 0):
                raise InvalidRequestError(
                    f"{ARGUMENT_FIELDS[kind]}: {len(items)} {kind}s in one request; {self.model_name} takes at most "
                    f"{self.limits[kind]} per prompt in vLLM (vllm_config limit_mm_per_prompt).",
                    param=ARGUMENT_FIELDS[kind],
                )
        # A LLaMA-Factory format is encoded piece by piece, as it encodes it (SentencePiece tokenizers give other ids
        # for the joined text), its plugin's placeholder written once per item for vLLM to expand.
        ids = prompts.message_ids(media.messages, request)
        prompts.check_fits(len(ids), request)
        data: dict[str, list[Any]] = {}
        if media.images:
            data["image"] = list(media.images)
        if media.audios:
            data["audio"] = [(clip.array, clip.sampling_rate) for clip in media.audios]
        return ids, data


def _audio_rate(mm_processor: Any) -> int | None:
    """The sampling rate the model's feature extractor wants (chatplex resamples; vLLM then needs none)."""
    try:
        extractor = mm_processor.info.get_hf_processor().feature_extractor
    except (AttributeError, ValueError, OSError):
        return None
    return getattr(extractor, "sampling_rate", None)
