"""Qwen3-VL images: Qwen2-VL's processing and per-request M-RoPE positions (qwen_vl.py), plus DeepStack: the
vision tower also yields features from some of its layers, which Qwen3-VL adds to the hidden states of the image
tokens after its first decoder layers.

The decoder takes those as `visual_pos_masks` / `deepstack_visual_embeds`, which Qwen3VLModel fills only from
pixels it encodes itself in the same call. chatplex encodes each request once at prefill and runs a flat batch, so
a forward pre-hook on the decoder hands it the step's image positions and their DeepStack rows. Videos take the
same path; their prompt carries each temporal patch's time (`<1.0 seconds>`) before its tokens, written by
Qwen3VLProcessor itself from the frames chatplex.media sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, cast

import torch

from chatplex.engines.base import PromptPreparer
from chatplex.engines.hf.multimodal.qwen_vl import MediaInputs, VisionLanguage, load_video_processor
from chatplex.media import MediaPolicy
from chatplex.types import GenerationRequest


@dataclass
class DeepstackInputs(MediaInputs):
    deepstack: list[torch.Tensor] | None = None  # per DeepStack layer [media tokens, hidden], filled with `embeds`


class Qwen3VisionLanguage(VisionLanguage):
    """Qwen3VLForConditionalGeneration: images and videos."""

    model_class = "Qwen3VLForConditionalGeneration"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        policy: MediaPolicy | None = None,
        video_processor: Any = None,
        no_video_reason: str = "this model has no video processor.",
    ) -> None:
        super().__init__(model, tokenizer, image_processor, policy, video_processor, no_video_reason)
        # The processor itself, built from the parts already loaded, for its video placeholder layout (expand_media).
        # Without a video processor (no torchvision) transformers cannot build one, and videos are refused anyway:
        # images then take VisionLanguage's expansion, which is what the processor writes for an image.
        self.processor: Any = None
        if video_processor is not None:
            from transformers import Qwen3VLProcessor

            self.processor = Qwen3VLProcessor(
                image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor
            )
        # The step's (image positions [1, T], DeepStack rows per layer), set by step_inputs, read by the hook.
        self._deepstack: tuple[torch.Tensor, list[torch.Tensor]] | None = None
        model.model.language_model.register_forward_pre_hook(self._feed_deepstack, with_kwargs=True)

    @classmethod
    def load(cls, model: Any, tokenizer: Any, source: str, policy: MediaPolicy | None = None) -> Qwen3VisionLanguage:
        from transformers import AutoImageProcessor

        video_processor, reason = load_video_processor(source)
        return cls(model, tokenizer, AutoImageProcessor.from_pretrained(source), policy, video_processor, reason)

    def prepare(self, prompts: PromptPreparer, request: GenerationRequest) -> tuple[list[int], MediaInputs | None]:
        ids, media = super().prepare(prompts, request)
        if media is None:
            return ids, None
        return ids, DeepstackInputs(**{f.name: getattr(media, f.name) for f in fields(media)})

    def expand_media(self, text: str, inputs: dict[str, Any], clips: list[Any]) -> str:
        """Qwen3VLProcessor writes the placeholders itself (each temporal patch's `<t seconds>` and its own vision
        start/end; transformers 5.25 also folds the template's wrapper around a video away): chatplex hands it the
        grids and the sampled frames' metadata rather than re-deriving its layout."""
        if self.processor is None:
            return super().expand_media(text, inputs, clips)
        from transformers.video_utils import VideoMetadata

        self.check_placeholders(text, self.image_token, len(inputs.get("image_grid_thw", ())), "image")
        self.check_placeholders(text, self.video_token, len(clips), "video")
        images = [self.processor.replace_image_token(inputs, i) for i in range(len(inputs.get("image_grid_thw", ())))]
        videos = []
        if clips:
            metadata = [
                VideoMetadata(total_num_frames=len(c.frames), fps=c.index_fps, frames_indices=c.indices) for c in clips
            ]
            video_inputs = {"video_grid_thw": inputs["video_grid_thw"], "video_metadata": metadata}
            videos = [self.processor.replace_video_token(video_inputs, i) for i in range(len(clips))]
        [text], _ = self.processor.get_text_with_replacements([text], images, videos)
        return text

    # ---- run time (engine thread) --------------------------------------------------------------------------
    def encode(self, media: MediaInputs) -> list[torch.Tensor]:
        """Image then video embeddings, with their DeepStack rows in the same order."""
        assert isinstance(media, DeepstackInputs)  # prepare wraps every request's media in one
        device, parts, deepstack = self.model.device, [], []
        for pixels, grid in (
            (media.pixel_values, media.image_grid_thw),
            (media.pixel_values_videos, media.video_grid_thw),
        ):
            if pixels is not None:
                assert grid is not None  # prepare sets each grid with its pixels
                out = self.model.model.get_image_features(pixels.to(device), grid.to(device), return_dict=True)
                parts.extend(out.pooler_output)
                deepstack.append([torch.cat(layer, dim=0) for layer in out.deepstack_features])  # split per item
        media.deepstack = [torch.cat(rows, dim=0) for rows in zip(*deepstack)]
        return parts

    def step_inputs(self, items: list[Any], input_ids: torch.Tensor, positions: torch.Tensor) -> dict[str, Any]:
        inputs = super().step_inputs(items, input_ids, positions)
        mask = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        rows: list[list[torch.Tensor]] = []
        offset = 0
        for it in items:
            media = cast("DeepstackInputs | None", it.seq.media)  # this family's own kind
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
