"""Gemma 3: a SigLIP tower on fixed-size images pooled to `mm_tokens_per_image` soft tokens; each
`<start_of_image>` the template writes becomes "\\n\\n<start_of_image>" + soft tokens + "<end_of_image>\\n\\n", as
Gemma3Processor writes it. Positions are 1-D.

Gemma 3 attends both ways among the soft tokens of one image during prefill (transformers' token_type_ids mask:
causal OR same-image, then the sliding window on local layers). chatplex gives the paged attention each prefill
chunk's image spans (`bidirectional`) and rewinds a chunk that would start inside an image to the image's start
(`align_chunks`), so an image's tokens always run in one chunk and see each other. Pan-and-scan crops are off.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from chatplex.engines.base import PromptPreparer
from chatplex.engines.hf.multimodal.base import ImageInputs, MediaFamily
from chatplex.engines.hf.multimodal.llava import load_image_processor
from chatplex.errors import InvalidRequestError
from chatplex.media import MediaPolicy
from chatplex.types import GenerationRequest


def image_spans(ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Which image (0, 1, ...) each token's run of image tokens is, -1 for other tokens."""
    is_image = ids == image_token_id
    starts = is_image & ~torch.cat([torch.zeros(1, dtype=torch.bool), is_image[:-1]])
    return torch.where(is_image, starts.cumsum(0) - 1, -1)


class Gemma3(MediaFamily):
    """Gemma3ForConditionalGeneration."""

    model_class = "Gemma3ForConditionalGeneration"

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, policy: MediaPolicy | None = None) -> None:
        super().__init__(model, tokenizer, policy)
        self.image_processor = image_processor
        config = model.config
        self.image_token_id = config.image_token_id
        self.boi = tokenizer.convert_ids_to_tokens(config.boi_token_id)
        soft, eoi = tokenizer.convert_ids_to_tokens([self.image_token_id, config.eoi_token_id])
        self.image_sequence = f"\n\n{self.boi}{soft * config.mm_tokens_per_image}{eoi}\n\n"

    @classmethod
    def load(cls, model: Any, tokenizer: Any, source: str, policy: MediaPolicy | None = None) -> Gemma3:
        return cls(model, tokenizer, load_image_processor(source), policy)

    # ---- admission (asyncio side, in a worker thread) ------------------------------------------------------
    def prepare(self, prompts: PromptPreparer, request: GenerationRequest) -> tuple[list[int], ImageInputs | None]:
        """Load and check the request's images, render and tokenize the prompt with each image's soft tokens."""
        media = self.collect(request)
        text = self.render(prompts, request, media.messages)
        if not media.images:
            return self.tokenize(prompts, request, text), None
        pieces = text.split(self.boi)
        if len(pieces) - 1 != len(media.images):
            raise InvalidRequestError(
                f"messages: the chat template wrote {len(pieces) - 1} {self.boi} for {len(media.images)} images.",
                param="messages",
            )
        pixels = self.process(
            media,
            "image",
            media.images,
            lambda imgs: self.image_processor(images=imgs, do_pan_and_scan=False, return_tensors="pt"),
        )["pixel_values"]
        ids = self.tokenize(prompts, request, self.image_sequence.join(pieces))
        spans = image_spans(torch.tensor(ids), self.image_token_id)
        return ids, ImageInputs(pixels, self.ranks(ids, [self.image_token_id]), spans=spans)

    # ---- run time (engine thread) --------------------------------------------------------------------------
    def embeddings(self, media: ImageInputs) -> torch.Tensor:
        if media.embeds is None:
            tower = self.model.model.vision_tower
            pixels = media.pixel_values.to(tower.device, tower.dtype)
            out = self.model.model.get_image_features(pixels, return_dict=True)
            media.embeds = out.pooler_output.flatten(0, 1)  # [images x mm_tokens_per_image, hidden]
        return media.embeds

    def bidirectional(self, item: Any) -> torch.Tensor | None:
        media = cast("ImageInputs | None", item.seq.media)  # this family's own kind
        if media is None or media.spans is None:
            return None
        end = item.start + item.num_tokens
        if not bool((media.spans[item.start : end] >= 0).any()):
            return None  # no image in this chunk: plain causal (and the fast unmasked path)
        spans = media.spans[:end]
        if end > len(spans):  # a recomputed sequence (after preemption) runs past its prompt
            spans = torch.cat([spans, spans.new_full((end - len(spans),), -1)])
        return spans.to(self.model.device)

    def align_chunks(self, batch: list[Any]) -> None:
        for item in batch:
            media = cast("ImageInputs | None", item.seq.media)  # this family's own kind
            if media is None or media.spans is None or not 0 < item.start < len(media.spans):
                continue
            span = int(media.spans[item.start])
            if span >= 0 and int(media.spans[item.start - 1]) == span:
                first = int((media.spans == span).nonzero()[0, 0])
                item.num_tokens += item.start - first
                item.start = first
