"""LLaVA-style models, 1-D positions, the vision tower once per request (at the first prefill chunk that reaches
its image tokens), features through the model's own projector:

    Llava      LLaVA 1.5: fixed-size images, `<image>` expanded to one token per patch (+ CLS under "full")
    LlavaNext  LLaVA-NeXT ("anyres"): each image tiled by its size, so its token count depends on the size
"""

from __future__ import annotations

from typing import Any

import torch

from chatplex.engines.base import PromptPreparer
from chatplex.engines.hf.multimodal.base import ImageInputs, MediaFamily
from chatplex.media import MediaPolicy
from chatplex.types import GenerationRequest


def load_image_processor(source: str) -> Any:
    """The checkpoint's image processor. Without torchvision, transformers falls back to the PIL class itself
    (with a warning); the PIL classes give the same pixels, so no torchvision is needed here."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(source)


class Llava(MediaFamily):
    """LlavaForConditionalGeneration."""

    model_class = "LlavaForConditionalGeneration"

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, policy: MediaPolicy | None = None) -> None:
        super().__init__(model, tokenizer, policy)
        self.image_processor = image_processor
        config = model.config
        self.image_token_id = config.image_token_id
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.patch = config.vision_config.patch_size
        self.feature_layer = config.vision_feature_layer
        self.strategy = config.vision_feature_select_strategy

    @classmethod
    def load(cls, model: Any, tokenizer: Any, source: str, policy: MediaPolicy | None = None) -> Llava:
        return cls(model, tokenizer, load_image_processor(source), policy)

    # ---- admission (asyncio side, in a worker thread) ------------------------------------------------------
    def prepare(self, prompts: PromptPreparer, request: GenerationRequest) -> tuple[list[int], ImageInputs | None]:
        """Load and check the request's images, render and tokenize the prompt with expanded `<image>` tokens."""
        media = self.collect(request)
        text = self.render(prompts, request, media.messages)
        if not media.images:
            return self.tokenize(prompts, request, text), None
        pixels = self.process(
            media, "image", media.images, lambda imgs: self.image_processor(images=imgs, return_tensors="pt")
        )["pixel_values"]
        height, width = pixels.shape[-2:]
        # Patches, plus the CLS token that the "full" strategy keeps ("default" drops it).
        count = (height // self.patch) * (width // self.patch) + (self.strategy == "full")
        text = self.expand(text, self.image_token, [count] * len(pixels), "image")
        ids = self.tokenize(prompts, request, text)
        return ids, ImageInputs(pixels, self.ranks(ids, [self.image_token_id]))

    # ---- run time (engine thread) --------------------------------------------------------------------------
    def embeddings(self, media: ImageInputs) -> torch.Tensor:
        if media.embeds is None:
            tower = self.model.model.vision_tower
            out = self.model.model.get_image_features(
                media.pixel_values.to(tower.device, tower.dtype),
                vision_feature_layer=self.feature_layer,
                vision_feature_select_strategy=self.strategy,
                return_dict=True,
            )
            media.embeds = torch.cat(list(out.pooler_output), dim=0)
        return media.embeds


class LlavaNext(Llava):
    """LlavaNextForConditionalGeneration: the token count per image comes from transformers' LlavaNextProcessor
    (the same arithmetic its own expansion uses), packing (unpadding, row newlines) from the model."""

    model_class = "LlavaNextForConditionalGeneration"

    def __init__(self, model: Any, tokenizer: Any, processor: Any, policy: MediaPolicy | None = None) -> None:
        super().__init__(model, tokenizer, processor.image_processor, policy)
        self.processor = processor

    @classmethod
    def load(cls, model: Any, tokenizer: Any, source: str, policy: MediaPolicy | None = None) -> LlavaNext:
        from transformers import LlavaNextProcessor

        try:
            processor = LlavaNextProcessor.from_pretrained(source)
        except (OSError, ValueError, TypeError):
            processor = None
        if processor is None or processor.patch_size is None:
            # No processor_config.json: take its settings from the model config (CLIP-style towers add a CLS).
            config = model.config
            processor = LlavaNextProcessor(
                image_processor=load_image_processor(source),
                tokenizer=tokenizer,
                patch_size=config.vision_config.patch_size,
                vision_feature_select_strategy=config.vision_feature_select_strategy,
                num_additional_image_tokens=1,
                image_token=tokenizer.convert_ids_to_tokens(config.image_token_id),
            )
        return cls(model, tokenizer, processor, policy)

    def prepare(self, prompts: PromptPreparer, request: GenerationRequest) -> tuple[list[int], ImageInputs | None]:
        """Load and check the request's images, render and tokenize the prompt with `<image>` expanded by size."""
        media = self.collect(request)
        text = self.render(prompts, request, media.messages)
        if not media.images:
            return self.tokenize(prompts, request, text), None
        processed = self.process(
            media, "image", media.images, lambda imgs: self.image_processor(images=imgs, return_tensors="pt")
        )
        sizes = processed["image_sizes"]
        counts = self.processor._get_num_multimodal_tokens(image_sizes=sizes.tolist())["num_image_tokens"]
        text = self.expand(text, self.image_token, counts, "image")
        ids = self.tokenize(prompts, request, text)
        rank = self.ranks(ids, [self.image_token_id])
        return ids, ImageInputs(processed["pixel_values"], rank, image_sizes=sizes)

    def embeddings(self, media: ImageInputs) -> torch.Tensor:
        if media.embeds is None:
            assert media.image_sizes is not None  # LlavaNext.prepare always sets it
            tower = self.model.model.vision_tower
            out = self.model.model.get_image_features(
                media.pixel_values.to(tower.device, tower.dtype),
                media.image_sizes.to(tower.device),
                vision_feature_layer=self.feature_layer,
                vision_feature_select_strategy=self.strategy,
                return_dict=True,
            )
            media.embeds = torch.cat(list(out.pooler_output), dim=0)  # one [tokens, hidden] per image
        return media.embeds
