"""Qwen2-VL / Qwen2.5-VL: images and videos, `<|image_pad|>` / `<|video_pad|>` expansion, M-RoPE (3-D) positions.

Each request's vision tower runs once (images and videos together), at the first prefill chunk that reaches its
media tokens; chunked prefill
takes the embeddings of the tokens it covers. Qwen-VL models keep `rope_deltas` as module state, which a batch of
unrelated requests cannot share: chatplex computes each request's 3-D positions at admission (`get_rope_index`)
and passes explicit positions every step, so text and image requests batch together. Text-only sequences get
their 1-D position repeated on the three axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from chatplex.engines.base import PromptPreparer
from chatplex.engines.hf.multimodal.base import MediaFamily
from chatplex.errors import UnsupportedFeatureError
from chatplex.media import MediaPolicy, media_items
from chatplex.types import GenerationRequest


@dataclass
class MediaInputs:
    """One request's media inputs (shared by its n sequences)."""

    positions: torch.Tensor  # [3, prompt_len] M-RoPE positions of the prompt
    rope_delta: int  # output token i (absolute index p >= prompt_len) sits at p + rope_delta on every axis
    rank: torch.Tensor  # [prompt_len]: row of the embeddings (images, then videos, then audio), -1 for text
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    input_features: torch.Tensor | None = None  # audio (Qwen2.5-Omni): log-mel features and their frame mask
    feature_attention_mask: torch.Tensor | None = None
    embeds: torch.Tensor | None = None  # [media tokens, hidden], filled by the first prefill that needs it


def load_video_processor(source: str) -> tuple[Any, str]:
    """The checkpoint's video processor, or None and the reason a video request will be refused."""
    try:
        from transformers import AutoVideoProcessor

        return AutoVideoProcessor.from_pretrained(source), ""
    except ImportError as e:  # transformers' video processors are built on torchvision
        return None, f"video input needs torchvision next to this torch (pip install 'chatplex[video]'): {e}".strip()
    except (OSError, ValueError):
        return None, "the model directory has no video processor config (video_preprocessor_config.json)."


class VisionLanguage(MediaFamily):
    """Qwen2-VL-style processing: images through the image processor, videos (frames sampled by
    chatplex.media) through the video processor, each expanded to one token per merged patch."""

    kinds: tuple[str, ...] = ("image", "video")

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        policy: MediaPolicy | None = None,
        video_processor: Any = None,
        no_video_reason: str = "this model has no video processor.",
    ) -> None:
        super().__init__(model, tokenizer, policy)
        self.image_processor = image_processor
        self.video_processor = video_processor
        self.no_video_reason = no_video_reason
        config = model.config
        self.image_token_id = config.image_token_id
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.video_token_id = config.video_token_id
        self.video_token = tokenizer.convert_ids_to_tokens(self.video_token_id)
        self.merge = config.vision_config.spatial_merge_size
        # Qwen2.5-VL spaces video frames on the time axis by seconds (`second_per_grid_ts`); Qwen2-VL by index.
        self.timed_video = config.model_type == "qwen2_5_vl"
        self.media_token_ids = [self.image_token_id, self.video_token_id]  # the order `embeddings` stacks them in
        self.video_kwargs: dict[str, Any] = {}  # what the model's processor adds to its video processor's call

    @classmethod
    def load(cls, model: Any, tokenizer: Any, source: str, policy: MediaPolicy | None = None) -> VisionLanguage:
        from transformers import AutoImageProcessor

        video_processor, reason = load_video_processor(source)
        return cls(model, tokenizer, AutoImageProcessor.from_pretrained(source), policy, video_processor, reason)

    # ---- admission (asyncio side, in a worker thread) ------------------------------------------------------
    def prepare(self, prompts: PromptPreparer, request: GenerationRequest) -> tuple[list[int], MediaInputs | None]:
        """Load and check the request's media, render and tokenize the prompt with expanded media tokens."""
        videos = [param for param, kind in media_items(request) if kind == "video"]
        if videos and self.video_processor is None:
            raise UnsupportedFeatureError(f"{videos[0]}: {self.no_video_reason}", param=videos[0])
        media = self.collect(request)
        if self.policy.video_pipeline == "llamafactory":  # as its Qwen2VLPlugin and those built on it do
            media.videos = [clip.padded_to(2) for clip in media.videos]
        text = self.render(prompts, request, media.messages)
        if not media:
            return self.tokenize(prompts, request, text), None
        inputs: dict[str, Any] = {}
        if media.images:
            processed = self.process(
                media, "image", media.images, lambda imgs: self.image_processor(images=imgs, return_tensors="pt")
            )
            inputs["pixel_values"], inputs["image_grid_thw"] = processed["pixel_values"], processed["image_grid_thw"]
        if media.videos:
            # Frames are already sampled (chatplex.media.video); the processor resizes and patches them.
            processed = self.process(
                media,
                "video",
                [clip.frames for clip in media.videos],
                lambda clips: self.video_processor(
                    videos=clips, do_sample_frames=False, return_tensors="pt", **self.video_kwargs
                ),
            )
            inputs["pixel_values_videos"] = processed["pixel_values_videos"]
            inputs["video_grid_thw"] = processed["video_grid_thw"]
        text = self.expand_media(text, inputs, media.videos)
        text = self.add_audio(media, text, inputs)
        ids = self.tokenize(prompts, request, text)
        seconds = [self.video_processor.temporal_patch_size / clip.fps for clip in media.videos]
        positions, delta = self.rope_index(torch.tensor([ids], dtype=torch.long), inputs, seconds)
        return ids, MediaInputs(positions, delta, self.ranks(ids, self.media_token_ids), **inputs)

    def expand_media(self, text: str, inputs: dict[str, Any], clips: list[Any]) -> str:
        """Each image / video placeholder becomes one token per merged patch (of all a video's frames)."""
        if "image_grid_thw" in inputs:
            text = self.expand(text, self.image_token, self._tokens(inputs["image_grid_thw"]), "image")
        if "video_grid_thw" in inputs:
            text = self.expand(text, self.video_token, self._tokens(inputs["video_grid_thw"]), "video")
        return text

    def add_audio(self, media: Any, text: str, inputs: dict[str, Any]) -> str:
        return text

    def _tokens(self, grid: torch.Tensor) -> list[int]:
        return (grid.prod(-1) // self.merge**2).tolist()

    def rope_index(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], seconds_per_grid: list[float]
    ) -> tuple[torch.Tensor, int]:
        """The prompt's M-RoPE positions [3, prompt_len] and the offset of the tokens generated after it."""
        types = (input_ids == self.image_token_id).int() + 2 * (input_ids == self.video_token_id).int()
        extra = {"second_per_grid_ts": torch.tensor(seconds_per_grid)} if self.timed_video and seconds_per_grid else {}
        positions, deltas = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=types,
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            **extra,
        )
        return positions[:, 0], int(deltas.reshape(-1)[0])

    # ---- run time (engine thread) --------------------------------------------------------------------------
    def step_inputs(self, items: list[Any], input_ids: torch.Tensor, positions: torch.Tensor) -> dict[str, Any]:
        """Model inputs for a flat step: embeddings (spliced where a prefill chunk covers image tokens) and
        `position_ids` [3, 1, T]."""
        pos3 = positions[None, :].repeat(3, 1)
        offset = 0
        for it in items:
            media = cast("MediaInputs | None", it.seq.media)  # this family's own kind
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
            media.embeds = torch.cat(self.encode(media), dim=0)
        return media.embeds

    def encode(self, media: MediaInputs) -> list[torch.Tensor]:
        """Run the towers: image embeddings, then video embeddings (the order of `media_token_ids`)."""
        device, parts = self.model.device, []
        if media.pixel_values is not None:
            assert media.image_grid_thw is not None  # prepare sets it with pixel_values
            out = self.model.model.get_image_features(
                media.pixel_values.to(device), media.image_grid_thw.to(device), return_dict=True
            )
            parts.extend(out.pooler_output)
        if media.pixel_values_videos is not None:
            assert media.video_grid_thw is not None  # prepare sets it with pixel_values_videos
            out = self.model.model.get_video_features(
                media.pixel_values_videos.to(device), media.video_grid_thw.to(device), return_dict=True
            )
            parts.extend(out.pooler_output)
        return parts
