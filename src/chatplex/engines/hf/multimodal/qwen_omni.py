"""Qwen2.5-Omni's thinker (the part that writes text; from a whole checkpoint only the thinker is loaded): images and
videos as in Qwen2.5-VL, plus audio clips, all in one prompt. Audio goes through the Whisper feature extractor and
the thinker's audio tower; `<|AUDIO|>` is
expanded by the encoder's output length, and the M-RoPE positions come from the thinker's own `get_rope_index`,
which gives audio tokens their own time axis. With `use_audio_in_video`, each video's soundtrack is read and placed
with its frames as Qwen2_5OmniProcessor and LLaMA-Factory's Qwen2OmniPlugin place it: `<|audio_bos|>` inside the
video's vision start, then the video's and the audio's tokens interleaved in 2-second chunks of their time axis.
"""

from __future__ import annotations

from typing import Any

import torch

from chatplex.engines.hf.multimodal.qwen2_audio import audio_token_counts, check_durations
from chatplex.engines.hf.multimodal.qwen_vl import MediaInputs, VisionLanguage, load_video_processor
from chatplex.media import MediaPolicy
from chatplex.types import GenerationRequest


class OmniThinker(VisionLanguage):
    towers = ("vision_config", "audio_config")
    model_class = "Qwen2_5OmniThinkerForConditionalGeneration"
    kinds = ("image", "video", "audio")

    @classmethod
    def checkpoint_kwargs(cls, config: Any) -> dict[str, Any]:
        """A whole Qwen2.5-Omni checkpoint (thinker, talker, vocoder): load the thinker alone, from its weights."""
        if config.model_type == "qwen2_5_omni":
            return {"config": config.thinker_config, "key_mapping": {r"^thinker\.": ""}}
        return {}

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, feature_extractor: Any, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, image_processor, **kwargs)
        self.feature_extractor = feature_extractor
        self.audio_token_id = model.config.audio_token_id
        self.audio_token = tokenizer.convert_ids_to_tokens(self.audio_token_id)
        self.audio_rate = int(feature_extractor.sampling_rate)
        self.max_seconds = feature_extractor.n_samples / self.audio_rate  # features are padded to this fixed window
        self.media_token_ids = [self.image_token_id, self.video_token_id, self.audio_token_id]
        # Qwen2_5OmniProcessor sizes video frames itself (qwen-omni-utils' 128..768 merged patches per frame),
        # over whatever the video processor's own config says: do as it does. LLaMA-Factory's plugin calls the
        # video processor alone, so under its templates the config's own size holds.
        from transformers import Qwen2_5OmniProcessor

        size = getattr(Qwen2_5OmniProcessor, "videos_kwargs", {}).get("size")
        self.video_kwargs = {"size": size} if size and self.policy.video_pipeline == "transformers" else {}
        # The processor itself, from the parts already loaded, for its layout of a video with its soundtrack.
        # Without a video processor (no torchvision) it cannot be built, and videos are refused anyway.
        self.processor: Any = None
        if self.video_processor is not None and self.policy.use_audio_in_video:
            self.processor = Qwen2_5OmniProcessor(
                image_processor=image_processor,
                video_processor=self.video_processor,
                feature_extractor=feature_extractor,
                tokenizer=tokenizer,
            )

    @classmethod
    def load(cls, model: Any, tokenizer: Any, source: str, policy: MediaPolicy | None = None) -> OmniThinker:
        from transformers import AutoImageProcessor, WhisperFeatureExtractor

        video_processor, reason = load_video_processor(source)
        return cls(
            model,
            tokenizer,
            AutoImageProcessor.from_pretrained(source),
            WhisperFeatureExtractor.from_pretrained(source),
            policy=policy,
            video_processor=video_processor,
            no_video_reason=reason,
        )

    # ---- admission -------------------------------------------------------------------------------------------
    def collect(self, request: GenerationRequest) -> Any:
        media = super().collect(request)
        check_durations(media, self.max_seconds, self.model.config.model_type)
        return media

    def expand_media(self, text: str, inputs: dict[str, Any], clips: list[Any]) -> str:
        if not self.policy.use_audio_in_video or not clips:
            return super().expand_media(text, inputs, clips)
        # the videos are laid out with their soundtracks in add_audio, once the audio token counts are known
        return super().expand_media(text, {k: v for k, v in inputs.items() if k != "video_grid_thw"}, clips)

    def add_audio(self, media: Any, text: str, inputs: dict[str, Any]) -> str:
        soundtracks = self.policy.use_audio_in_video and bool(media.videos)
        clips = _audio_in_prompt_order(media) if soundtracks else [("audio", clip) for clip in media.audios]
        if not clips:
            return text
        # The encoder's features in prompt order: audio tokens take them in the order they appear, whether a clip's
        # own or a video's soundtrack.
        processed = self.feature_extractor(
            [clip.array for _, clip in clips],
            sampling_rate=self.audio_rate,
            padding="max_length",
            return_attention_mask=True,
            return_tensors="pt",
        )
        inputs["input_features"] = processed["input_features"]
        inputs["feature_attention_mask"] = processed["attention_mask"]
        counts = audio_token_counts(processed["attention_mask"].sum(-1))
        text = self.expand(
            text, self.audio_token, [n for (kind, _), n in zip(clips, counts) if kind == "audio"], "audio"
        )
        if not soundtracks:
            return text
        config = self.model.config
        videos = {
            "video_grid_thw": inputs["video_grid_thw"].tolist(),
            "video_second_per_grid": [self.video_processor.temporal_patch_size / c.fps for c in media.videos],
        }
        tracks = {"num_audio_tokens": [n for (kind, _), n in zip(clips, counts) if kind == "video"]}
        layouts = [
            self.processor.replace_video_with_audio_token(
                videos,
                i,
                tracks,
                i,
                position_id_per_seconds=config.position_id_per_seconds,
                seconds_per_chunk=config.seconds_per_chunk,
            )
            for i in range(len(media.videos))
        ]
        return self.replace_each(text, self.video_token, layouts, "video")

    def rope_index(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], seconds_per_grid: list[float]
    ) -> tuple[torch.Tensor, int]:
        mask = inputs.get("feature_attention_mask")
        positions, deltas = self.model.model.get_rope_index(
            input_ids,
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            attention_mask=torch.ones_like(input_ids),
            use_audio_in_video=self.policy.use_audio_in_video and inputs.get("video_grid_thw") is not None,
            audio_seqlens=mask.sum(-1) if mask is not None else None,
            second_per_grids=torch.tensor(seconds_per_grid) if seconds_per_grid else None,
        )
        return positions[:, 0], int(deltas.reshape(-1)[0])

    # ---- run time --------------------------------------------------------------------------------------------
    def encode(self, media: MediaInputs) -> list[torch.Tensor]:
        parts = super().encode(media)
        if media.input_features is not None:
            assert media.feature_attention_mask is not None  # add_audio sets it with input_features
            tower = self.model.model.audio_tower
            out = self.model.model.get_audio_features(
                media.input_features.to(tower.device, tower.dtype),
                media.feature_attention_mask.to(tower.device),
                return_dict=True,
            )
            parts.append(out.last_hidden_state)
        return parts


def _audio_in_prompt_order(media: Any) -> list[tuple[str, Any]]:
    """("audio", clip) for each audio part and ("video", its soundtrack) for each video, in the prompt's order."""
    audios, videos = iter(media.audios), iter(media.videos)
    out: list[tuple[str, Any]] = []
    for message in media.messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if part.get("type") == "audio":
                out.append(("audio", next(audios)))
            elif part.get("type") == "video":
                out.append(("video", next(videos).soundtrack))
    return out
