"""Qwen3-VL images: Qwen2-VL's processing and per-request M-RoPE positions (qwen_vl.py), plus DeepStack: the
vision tower also yields features from some of its layers, which Qwen3-VL adds to the hidden states of the image
tokens after its first decoder layers.

The decoder takes those as `visual_pos_masks` / `deepstack_visual_embeds`, which Qwen3VLModel fills only from
pixels it encodes itself in the same call. chatplex encodes each request once at prefill and runs a flat batch, so
a forward pre-hook on the decoder hands it the step's image positions and their DeepStack rows. Video is refused:
Qwen3-VL's prompts carry a timestamp per frame, which the shared video path does not write yet.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from chatplex.engines.base import PromptPreparer
from chatplex.engines.hf.multimodal.qwen_vl import MediaInputs, VisionLanguage
from chatplex.media import MediaPolicy
from chatplex.types import GenerationRequest


@dataclass
class DeepstackInputs(MediaInputs):
    deepstack: list[torch.Tensor] | None = None  # per DeepStack layer [image tokens, hidden], filled with `embeds`


class Qwen3VisionLanguage(VisionLanguage):
    """Qwen3VLForConditionalGeneration, images only."""

    model_class = "Qwen3VLForConditionalGeneration"

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, policy: MediaPolicy | None = None) -> None:
        super().__init__(
            model, tokenizer, image_processor, policy, None,
            "video input is not supported for qwen3_vl yet (its prompts carry a timestamp per frame).",
        )
        # The step's (image positions [1, T], DeepStack rows per layer), set by step_inputs, read by the hook.
        self._deepstack: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        model.model.language_model.register_forward_pre_hook(self._feed_deepstack, with_kwargs=True)

    @classmethod
    def load(cls, model: Any, tokenizer: Any, source: str, policy: MediaPolicy | None = None) -> Qwen3VisionLanguage:
        from transformers import AutoImageProcessor

        return cls(model, tokenizer, AutoImageProcessor.from_pretrained(source), policy)

    def prepare(self, prompts: PromptPreparer, request: GenerationRequest) -> tuple[list[int], MediaInputs | None]:
        ids, media = super().prepare(prompts, request)
        if media is None:
            return ids, None
        return ids, DeepstackInputs(**{f.name: getattr(media, f.name) for f in fields(media)})

    # ---- run time (engine thread) --------------------------------------------------------------------------
    def embeddings(self, media: DeepstackInputs) -> torch.Tensor:
        if media.embeds is None:
            device = self.model.device
            out = self.model.model.get_image_features(
                media.pixel_values.to(device), media.image_grid_thw.to(device), return_dict=True
            )
            media.embeds = torch.cat(out.pooler_output, dim=0)
            media.deepstack = [torch.cat(layer, dim=0) for layer in out.deepstack_features]
        return media.embeds

    def step_inputs(self, items: list[Any], input_ids: torch.Tensor, positions: torch.Tensor) -> dict[str, Any]:
        inputs = super().step_inputs(items, input_ids, positions)
        mask = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        rows: list[list[torch.Tensor]] = []
        offset = 0
        for it in items:
            media: DeepstackInputs | None = it.seq.state.get("media")
            if media is not None:
                ranks = media.rank[it.start : it.start + it.num_tokens]
                hit = (ranks >= 0).nonzero()[:, 0]
                if len(hit):
                    mask[0, offset + hit.to(mask.device)] = True
                    assert media.deepstack is not None  # step_inputs above computed the embeddings
                    rows.append([layer[ranks[hit].to(layer.device)] for layer in media.deepstack])
            offset += it.num_tokens
        self._deepstack = (mask, [torch.cat(layer, dim=0) for layer in zip(*rows)]) if rows else None
        return inputs

    def _feed_deepstack(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if self._deepstack is not None and kwargs.get("deepstack_visual_embeds") is None:
            kwargs["visual_pos_masks"], kwargs["deepstack_visual_embeds"] = self._deepstack
        self._deepstack = None  # one step's rows feed one forward pass
        return args, kwargs
