"""Qwen2-Audio: Whisper log-mel features, `<|AUDIO|>` expanded by the encoder's output length, audio embeddings
spliced into the flat batch at prefill (the audio tower runs once per request); positions stay 1-D."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from chatplex.engines.base import PromptPreparer
from chatplex.engines.hf.multimodal.base import MediaFamily
from chatplex.errors import InvalidRequestError
from chatplex.media import MediaPolicy
from chatplex.types import GenerationRequest


@dataclass
class AudioInputs:
    """One request's audio inputs (shared by its n sequences)."""

    features: torch.Tensor  # [audios, mel bins, frames] log-mel features, padded to the encoder's fixed length
    feature_mask: torch.Tensor  # [audios, frames] 1 for real frames
    rank: torch.Tensor  # [prompt_len]: index into the audio embeddings, -1 for text tokens
    embeds: torch.Tensor | None = None  # [audio tokens, hidden], filled by the first prefill that needs it


def audio_token_counts(frames: torch.Tensor) -> list[int]:
    """`<|AUDIO|>` tokens per clip from its real mel frames: the encoder's stride-2 conv, then its 2x average
    pool (transformers' `Qwen2AudioEncoder._get_feat_extract_output_lengths`)."""
    after_conv = (frames - 1) // 2 + 1
    return ((after_conv - 2) // 2 + 1).tolist()


def check_durations(media: Any, max_seconds: float, kind: str) -> None:
    """Refuse clips longer than the encoder's fixed window: cutting one silently would answer about part of it."""
    clips = [
        *zip(media.params["audio"], media.audios),
        *(
            (param, video.soundtrack)
            for param, video in zip(media.params["video"], media.videos)
            if video.soundtrack is not None
        ),
    ]
    for param, clip in clips:
        if clip.array.size / clip.sampling_rate > max_seconds:
            raise InvalidRequestError(
                f"{param}: the audio lasts {clip.array.size / clip.sampling_rate:.1f} s; "
                f"{kind} takes at most {max_seconds:g} s per clip.",
                param=param,
            )


class AudioLanguage(MediaFamily):
    """Qwen2-Audio processing."""

    towers = ("audio_config",)
    model_class = "Qwen2AudioForConditionalGeneration"
    kinds = ("audio",)

    def __init__(self, model: Any, tokenizer: Any, feature_extractor: Any, policy: MediaPolicy | None = None) -> None:
        super().__init__(model, tokenizer, policy)
        self.feature_extractor = feature_extractor
        self.audio_token_id = model.config.audio_token_id
        self.audio_token = tokenizer.convert_ids_to_tokens(self.audio_token_id)
        self.audio_rate = int(feature_extractor.sampling_rate)
        # The encoder takes a fixed number of mel frames (max_source_positions x its conv stride of 2).
        self.max_seconds = feature_extractor.n_samples / self.audio_rate

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
        media = self.collect(request)
        check_durations(media, self.max_seconds, self.model.config.model_type)
        text = self.render(prompts, request, media.messages)
        if not media.audios:
            return self.tokenize(prompts, request, text), None
        processed = self.feature_extractor(
            [clip.array for clip in media.audios],
            sampling_rate=self.audio_rate,
            padding="max_length",
            return_attention_mask=True,
            return_tensors="pt",
        )
        mask = processed["attention_mask"]
        text = self.expand(text, self.audio_token, audio_token_counts(mask.sum(-1)), "audio")
        ids = self.tokenize(prompts, request, text)
        return ids, AudioInputs(processed["input_features"], mask, self.ranks(ids, [self.audio_token_id]))

    def embeddings(self, media: AudioInputs) -> torch.Tensor:
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
