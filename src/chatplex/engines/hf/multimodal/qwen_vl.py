"""Qwen2-VL / Qwen2.5-VL: image processor, `<|image_pad|>` expansion, M-RoPE (3-D) positions.

Each request's vision tower runs once, at the first prefill chunk that reaches its image tokens; chunked prefill
takes the embeddings of the tokens it covers. Qwen-VL models keep `rope_deltas` as module state, which a batch of
unrelated requests cannot share: chatplex computes each request's 3-D positions at admission (`get_rope_index`)
and passes explicit positions every step, so text and image requests batch together. Text-only sequences get
their 1-D position repeated on the three axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chatplex.engines.base import PromptPreparer
from chatplex.engines.hf.multimodal.base import MediaFamily
from chatplex.errors import UnsupportedFeatureError
from chatplex.media import MediaPolicy, collect_media
from chatplex.types import GenerationRequest


@dataclass
class MediaInputs:
    """One request's vision inputs (shared by its n sequences)."""

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    positions: torch.Tensor  # [3, prompt_len] M-RoPE positions of the prompt
    rope_delta: int  # output token i (absolute index p >= prompt_len) sits at p + rope_delta on every axis
    rank: torch.Tensor  # [prompt_len]: index into the image embeddings, -1 for text tokens
    embeds: torch.Tensor | None = None  # [image tokens, hidden], filled by the first prefill that needs it


class VisionLanguage(MediaFamily):
    """Qwen2-VL-style processing."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, policy: MediaPolicy | None = None) -> None:
        super().__init__(model, tokenizer)
        self.image_processor = image_processor
        self.policy = policy or MediaPolicy()
        config = model.config
        self.image_token_id = config.image_token_id
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.merge = config.vision_config.spatial_merge_size

    @classmethod
    def load(cls, model: Any, tokenizer: Any, source: str, policy: MediaPolicy | None = None) -> VisionLanguage:
        from transformers import AutoImageProcessor

        return cls(model, tokenizer, AutoImageProcessor.from_pretrained(source), policy)

    # ---- admission (asyncio side, in a worker thread) ------------------------------------------------------
    def prepare(self, prompts: PromptPreparer, request: GenerationRequest) -> tuple[list[int], MediaInputs | None]:
        """Load and check the request's media, render and tokenize the prompt with expanded image tokens."""
        if request.videos:
            raise UnsupportedFeatureError("videos: video input is not supported yet.", param="videos")
        if request.audios:
            raise UnsupportedFeatureError(f"audios: {self.model.config.model_type} takes no audio.", param="audios")
        media = collect_media(request.messages or [], request.images, None, self.policy)
        if media.audios:
            raise UnsupportedFeatureError(f"messages: {self.model.config.model_type} takes no audio.", param="messages")
        text = self.render(prompts, request, media.messages)
        if not media.images:
            return self.tokenize(prompts, request, text), None
        processed = self.image_processor(images=media.images, return_tensors="pt")
        grid = processed["image_grid_thw"]
        text = self.expand(text, self.image_token, (grid.prod(-1) // self.merge**2).tolist(), "image")
        ids = self.tokenize(prompts, request, text)
        return ids, self._inputs(ids, processed["pixel_values"], grid)

    def _inputs(self, ids: list[int], pixel_values: torch.Tensor, grid: torch.Tensor) -> MediaInputs:
        input_ids = torch.tensor([ids], dtype=torch.long)
        is_image = input_ids[0] == self.image_token_id
        positions, deltas = self.model.model.get_rope_index(
            input_ids, mm_token_type_ids=is_image.int()[None], image_grid_thw=grid
        )
        return MediaInputs(
            pixel_values, grid, positions[:, 0], int(deltas.reshape(-1)[0]), self.ranks(ids, [self.image_token_id])
        )

    # ---- run time (engine thread) --------------------------------------------------------------------------
    def step_inputs(self, items: list[Any], input_ids: torch.Tensor, positions: torch.Tensor) -> dict[str, Any]:
        """Model inputs for a flat step: embeddings (spliced where a prefill chunk covers image tokens) and
        `position_ids` [3, 1, T]."""
        pos3 = positions[None, :].repeat(3, 1)
        offset = 0
        for it in items:
            media: MediaInputs | None = it.seq.state.get("media")
            if media is not None:
                self._positions(media, it.start, it.num_tokens, pos3[:, offset : offset + it.num_tokens])
            offset += it.num_tokens
        return {**self.embedded(items, input_ids), "position_ids": pos3[:, None]}

    @staticmethod
    def _positions(media: MediaInputs, start: int, count: int, out: torch.Tensor) -> None:
        """Write positions [start, start + count) of a media sequence into `out` [3, count]."""
        prompt_len = media.positions.shape[1]
        n_prompt = max(0, min(count, prompt_len - start))
        if n_prompt:
            out[:, :n_prompt] = media.positions[:, start : start + n_prompt].to(out.device)
        if n_prompt < count:
            out[:, n_prompt:] += media.rope_delta

    def embeddings(self, media: MediaInputs) -> torch.Tensor:
        if media.embeds is None:
            device = self.model.device
            out = self.model.model.get_image_features(
                media.pixel_values.to(device), media.image_grid_thw.to(device), return_dict=True
            )
            media.embeds = torch.cat(out.pooler_output, dim=0)
        return media.embeds
