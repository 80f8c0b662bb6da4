"""Images (and, per family, audio) for the Hugging Face engine: request media -> prompt ids and per-request
vision inputs; at run time, vision embeddings spliced into a step's flat batch and 3-D (M-RoPE) positions.

Families: Qwen2-VL / Qwen2.5-VL (images, `VisionLanguage`); Qwen2-Audio (audio, `AudioLanguage`). Each request's vision tower runs once, at the first prefill chunk
that reaches its image tokens; chunked prefill takes the embeddings of the tokens it covers. Qwen-VL models
keep `rope_deltas` as module state, which a batch of unrelated requests cannot share: chatplex computes each
request's 3-D positions at admission (`get_rope_index`) and passes explicit positions every step, so text and
image requests batch together. Text-only sequences get their 1-D position repeated on the three axes.
Qwen2-Audio keeps plain 1-D positions; its audio tower likewise runs once per request, at prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chatplex.engines.base import PromptPreparer
from chatplex.errors import InvalidRequestError, UnsupportedFeatureError
from chatplex.media import MediaPolicy, collect_media
from chatplex.messages import TEXT_PART_TYPES
from chatplex.templates import render_prompt
from chatplex.types import GenerationRequest

_VISION_TYPES = ("qwen2_vl", "qwen2_5_vl")
AUDIO_TYPES = ("qwen2_audio",)


def model_kind(config: Any) -> str | None:
    """The multimodal family chatplex serves this config as, or None for a text-only model."""
    kind = getattr(config, "model_type", None)
    return kind if kind in _VISION_TYPES or kind in AUDIO_TYPES else None


def has_media(request: GenerationRequest) -> bool:
    if request.images or request.audios or request.videos:
        return True
    return any(
        isinstance(m.get("content"), list) and any(p.get("type") not in TEXT_PART_TYPES for p in m["content"])
        for m in request.messages or []
    )


def refuse_media(request: GenerationRequest, model_name: str) -> UnsupportedFeatureError:
    """The error for media sent to a text-only model, naming the first media item."""
    param = "images" if request.images else "audios" if request.audios else "videos" if request.videos else "messages"
    for i, m in enumerate(request.messages or []):
        for j, p in enumerate(m.get("content") if isinstance(m.get("content"), list) else []):
            if p.get("type") not in TEXT_PART_TYPES and param == "messages":
                param = f"messages[{i}].content[{j}]"
    return UnsupportedFeatureError(f"{param}: {model_name} is a text-only model; it takes no images or audio.", param=param)


@dataclass
class MediaInputs:
    """One request's vision inputs (shared by its n sequences)."""

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    positions: torch.Tensor  # [3, prompt_len] M-RoPE positions of the prompt
    rope_delta: int  # output token i (absolute index p >= prompt_len) sits at p + rope_delta on every axis
    image_rank: torch.Tensor  # [prompt_len]: index into the image embeddings, -1 for text tokens
    embeds: torch.Tensor | None = None  # [image tokens, hidden], filled by the first prefill that needs it


class VisionLanguage:
    """Qwen2-VL-style processing: image processor, `<|image_pad|>` expansion, M-RoPE positions."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, policy: MediaPolicy | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
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
        text = render_prompt(
            prompts.tokenizer, prompts.template, media.messages, tools=request.tools, template_kwargs=request.template_kwargs
        )
        if not media.images:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            prompts.check_fits(len(ids), request)
            return ids, None
        processed = self.image_processor(images=media.images, return_tensors="pt")
        grid = processed["image_grid_thw"]
        text = self._expand(text, grid)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        prompts.check_fits(len(ids), request)
        return ids, self._inputs(ids, processed["pixel_values"], grid)

    def _expand(self, text: str, grid: torch.Tensor) -> str:
        """Each image placeholder the template wrote becomes one token per merged patch."""
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(grid):
            raise InvalidRequestError(
                f"messages: the chat template wrote {len(pieces) - 1} image placeholders for {len(grid)} images.",
                param="messages",
            )
        counts = (grid.prod(-1) // self.merge**2).tolist()
        return pieces[0] + "".join(self.image_token * n + piece for n, piece in zip(counts, pieces[1:]))

    def _inputs(self, ids: list[int], pixel_values: torch.Tensor, grid: torch.Tensor) -> MediaInputs:
        input_ids = torch.tensor([ids], dtype=torch.long)
        is_image = input_ids[0] == self.image_token_id
        positions, deltas = self.model.model.get_rope_index(
            input_ids, mm_token_type_ids=is_image.int()[None], image_grid_thw=grid
        )
        rank = torch.full((len(ids),), -1, dtype=torch.long)
        rank[is_image] = torch.arange(int(is_image.sum()))
        return MediaInputs(pixel_values, grid, positions[:, 0], int(deltas.reshape(-1)[0]), rank)

    # ---- run time (engine thread) --------------------------------------------------------------------------
    def step_inputs(self, items: list[Any], input_ids: torch.Tensor, positions: torch.Tensor) -> dict[str, Any]:
        """Model inputs for a flat step: `inputs_embeds` with image embeddings spliced in (when a prefill chunk
        covers image tokens) and `position_ids` [3, 1, T]."""
        pos3 = positions[None, :].repeat(3, 1)
        splice: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        offset = 0
        for it in items:
            media: MediaInputs | None = it.seq.state.get("media")
            if media is not None:
                self._positions(media, it.start, it.num_tokens, pos3[:, offset : offset + it.num_tokens])
                ranks = media.image_rank[it.start : min(it.start + it.num_tokens, len(media.image_rank))]
                hit = (ranks >= 0).nonzero()[:, 0]
                if len(hit):
                    embeds = self._embeds(media)
                    splice.append((offset, hit, embeds[ranks[hit].to(embeds.device)]))
            offset += it.num_tokens
        if not splice:
            return {"input_ids": input_ids, "position_ids": pos3[:, None]}
        embeds = self.model.get_input_embeddings()(input_ids)
        for start, hit, values in splice:
            embeds[0, start + hit.to(embeds.device)] = values.to(embeds.dtype)
        return {"inputs_embeds": embeds, "position_ids": pos3[:, None]}

    @staticmethod
    def _positions(media: MediaInputs, start: int, count: int, out: torch.Tensor) -> None:
        """Write positions [start, start + count) of a media sequence into `out` [3, count]."""
        prompt_len = media.positions.shape[1]
        n_prompt = max(0, min(count, prompt_len - start))
        if n_prompt:
            out[:, :n_prompt] = media.positions[:, start : start + n_prompt].to(out.device)
        if n_prompt < count:
            out[:, n_prompt:] += media.rope_delta

    def _embeds(self, media: MediaInputs) -> torch.Tensor:
        """The request's image embeddings, computed once (the vision tower's one run for this request)."""
        if media.embeds is None:
            device = self.model.device
            out = self.model.model.get_image_features(
                media.pixel_values.to(device), media.image_grid_thw.to(device), return_dict=True
            )
            media.embeds = torch.cat(out.pooler_output, dim=0)
        return media.embeds


# ---- audio (Qwen2-Audio) -----------------------------------------------------------------------------------


@dataclass
class AudioInputs:
    """One request's audio inputs (shared by its n sequences)."""

    features: torch.Tensor  # [audios, mel bins, frames] log-mel features, padded to the encoder's fixed length
    feature_mask: torch.Tensor  # [audios, frames] 1 for real frames
    audio_rank: torch.Tensor  # [prompt_len]: index into the audio embeddings, -1 for text tokens
    embeds: torch.Tensor | None = None  # [audio tokens, hidden], filled by the first prefill that needs it


def audio_token_counts(frames: torch.Tensor) -> list[int]:
    """`<|AUDIO|>` tokens per clip from its real mel frames: the encoder's stride-2 conv, then its 2x average
    pool (transformers' `Qwen2AudioEncoder._get_feat_extract_output_lengths`)."""
    after_conv = (frames - 1) // 2 + 1
    return ((after_conv - 2) // 2 + 1).tolist()


class AudioLanguage:
    """Qwen2-Audio processing: Whisper log-mel features, `<|AUDIO|>` expansion by the encoder's output length,
    audio embeddings spliced into the flat batch at prefill; positions stay 1-D."""

    def __init__(self, model: Any, tokenizer: Any, feature_extractor: Any, policy: MediaPolicy | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.policy = policy or MediaPolicy()
        self.audio_token_id = model.config.audio_token_id
        self.audio_token = tokenizer.convert_ids_to_tokens(self.audio_token_id)
        self.rate = int(feature_extractor.sampling_rate)
        # The encoder takes a fixed number of mel frames (max_source_positions x its conv stride of 2).
        self.max_seconds = feature_extractor.n_samples / self.rate

    @classmethod
    def load(cls, model: Any, tokenizer: Any, source: str, policy: MediaPolicy | None = None) -> AudioLanguage:
        from transformers import WhisperFeatureExtractor

        try:
            extractor = WhisperFeatureExtractor.from_pretrained(source)
        except OSError:  # no preprocessor_config.json: Qwen2-Audio's (128 mel bins), sized to the encoder
            audio = model.config.audio_config
            frames = audio.max_source_positions * 2
            extractor = WhisperFeatureExtractor(
                feature_size=audio.num_mel_bins, chunk_length=frames * 160 // 16000, hop_length=160, sampling_rate=16000
            )
        return cls(model, tokenizer, extractor, policy)

    # ---- admission (asyncio side, in a worker thread) ------------------------------------------------------
    def prepare(self, prompts: PromptPreparer, request: GenerationRequest) -> tuple[list[int], AudioInputs | None]:
        """Load and check the request's audio, render and tokenize the prompt with expanded audio tokens."""
        if request.videos:
            raise UnsupportedFeatureError("videos: video input is not supported yet.", param="videos")
        if request.images:
            raise UnsupportedFeatureError(f"images: {self.model.config.model_type} takes no images.", param="images")
        media = collect_media(request.messages or [], None, request.audios, self.policy, audio_rate=self.rate)
        if media.images:
            raise UnsupportedFeatureError(f"messages: {self.model.config.model_type} takes no images.", param="messages")
        for i, clip in enumerate(media.audios):
            if clip.array.size / clip.sampling_rate > self.max_seconds:
                # The encoder's window is fixed; cutting the clip silently would answer about part of it.
                raise InvalidRequestError(
                    f"audios[{i}]: the audio lasts {clip.array.size / clip.sampling_rate:.1f} s; "
                    f"{self.model.config.model_type} takes at most {self.max_seconds:g} s per clip.",
                    param="audios" if request.audios else "messages",
                )
        text = render_prompt(
            prompts.tokenizer, prompts.template, media.messages, tools=request.tools, template_kwargs=request.template_kwargs
        )
        if not media.audios:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            prompts.check_fits(len(ids), request)
            return ids, None
        processed = self.feature_extractor(
            [clip.array for clip in media.audios], sampling_rate=self.rate, padding="max_length",
            return_attention_mask=True, return_tensors="pt",
        )
        mask = processed["attention_mask"]
        text = self._expand(text, audio_token_counts(mask.sum(-1)))
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        prompts.check_fits(len(ids), request)
        is_audio = torch.tensor(ids) == self.audio_token_id
        rank = torch.full((len(ids),), -1, dtype=torch.long)
        rank[is_audio] = torch.arange(int(is_audio.sum()))
        return ids, AudioInputs(processed["input_features"], mask, rank)

    def _expand(self, text: str, counts: list[int]) -> str:
        """Each audio placeholder the template wrote becomes one token per encoder output frame."""
        pieces = text.split(self.audio_token)
        if len(pieces) - 1 != len(counts):
            raise InvalidRequestError(
                f"messages: the chat template wrote {len(pieces) - 1} audio placeholders for {len(counts)} audios.",
                param="messages",
            )
        return pieces[0] + "".join(self.audio_token * n + piece for n, piece in zip(counts, pieces[1:]))

    # ---- run time (engine thread) --------------------------------------------------------------------------
    def step_inputs(self, items: list[Any], input_ids: torch.Tensor, positions: torch.Tensor) -> dict[str, Any]:
        """Model inputs for a flat step: `inputs_embeds` with audio embeddings spliced in (when a prefill chunk
        covers audio tokens), else `input_ids`; `position_ids` [1, T]."""
        splice: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        offset = 0
        for it in items:
            media: AudioInputs | None = it.seq.state.get("media")
            if media is not None:
                ranks = media.audio_rank[it.start : min(it.start + it.num_tokens, len(media.audio_rank))]
                hit = (ranks >= 0).nonzero()[:, 0]
                if len(hit):
                    embeds = self._embeds(media)
                    splice.append((offset, hit, embeds[ranks[hit].to(embeds.device)]))
            offset += it.num_tokens
        if not splice:
            return {"input_ids": input_ids, "position_ids": positions[None]}
        embeds = self.model.get_input_embeddings()(input_ids)
        for start, hit, values in splice:
            embeds[0, start + hit.to(embeds.device)] = values.to(embeds.dtype)
        return {"inputs_embeds": embeds, "position_ids": positions[None]}

    def _embeds(self, media: AudioInputs) -> torch.Tensor:
        """The request's audio embeddings, computed once (the audio tower's one run for this request), masked to
        each clip's real frames as Qwen2-Audio's own forward does."""
        if media.embeds is None:
            from transformers.masking_utils import create_bidirectional_mask

            inner = self.model.model
            tower = inner.audio_tower
            device = tower.device
            features = media.features.to(device, tower.conv1.weight.dtype)
            conv_lens, out_lens = tower._get_feat_extract_output_lengths(media.feature_mask.sum(-1).to(device))
            n_conv = (features.shape[-1] - 2) // 2 + 1
            valid = torch.arange(n_conv, device=device)[None] < conv_lens[:, None]
            mask = create_bidirectional_mask(
                config=tower.config,
                inputs_embeds=torch.zeros(len(features), n_conv, 1, dtype=features.dtype, device=device),
                attention_mask=valid.long(),
            )
            hidden = inner.multi_modal_projector(tower(features, attention_mask=mask).last_hidden_state)
            keep = torch.arange(hidden.shape[1], device=device)[None] < out_lens[:, None]
            media.embeds = hidden[keep]
        return media.embeds
